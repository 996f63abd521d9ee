from __future__ import annotations

import pytest

from matforge.engine.config import ConfigError, load_config, parse_config
from matforge.engine.loop.campaign import strategy as campaign_strategy

GOOD = {"name": "t", "elements": ["Cu", "Au"]}


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"elements": ["Cu", "Qq"]}, "elements", "'Qq' is not a chemical element"),
        ({"batch_size": 0}, "batch_size", "greater than or equal to 1"),
        ({"budget": "lots"}, "budget", "valid integer"),
        ({"colour": "red"}, "colour", "unknown field"),
        ({"objective": {"direction": "up"}}, "objective.direction", "'minimize' or 'maximize'"),
        (
            {"generator": {"pool_size": 4}, "batch_size": 8},
            "batch_size",
            "larger than generator.pool_size",
        ),
    ],
)
def test_bad_fields_are_named_with_the_reason(change, field, reason):
    with pytest.raises(ConfigError) as info:
        parse_config({**GOOD, **change})
    assert f"field '{field}'" in str(info.value)
    assert reason in str(info.value)


def test_missing_name_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="field 'name': required"):
        parse_config({"elements": ["Cu"]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_relative_store_and_workdir_resolve_beside_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: t\nelements: [Cu, Au]\nstore: sqlite:///here.db\n")
    config = load_config(path)
    assert config.store == f"sqlite:///{tmp_path / 'here.db'}"
    assert config.workdir == str(tmp_path / "matforge-runs")


def test_surrogate_and_acquisition_choices():
    config = parse_config({"name": "c", "elements": ["Cu"]})
    assert (config.surrogate.kind, config.acquisition.kind, config.acquisition.top_share) == (
        "gp", "ptop", 0.05,
    )
    config = parse_config({
        "name": "c", "elements": ["Cu"],
        "surrogate": {"kind": "forest", "parameters": {"n_estimators": 50}},
        "acquisition": {"kind": "thompson"},
    })
    assert config.surrogate.parameters == {"n_estimators": 50}
    with pytest.raises(ConfigError, match="field 'surrogate'.*kernal not accepted by 'gp'"):
        parse_config({"name": "c", "elements": ["Cu"],
                      "surrogate": {"kind": "gp", "parameters": {"kernal": "rbf"}}})
    with pytest.raises(ConfigError, match="field 'acquisition.kind'"):
        parse_config({"name": "c", "elements": ["Cu"], "acquisition": {"kind": "magic"}})
    with pytest.raises(ConfigError, match="field 'acquisition.beta'"):
        parse_config({"name": "c", "elements": ["Cu"], "acquisition": {"beta": -1}})
    with pytest.raises(ConfigError, match="field 'acquisition.top_share'"):
        parse_config({"name": "c", "elements": ["Cu"], "acquisition": {"top_share": 1.5}})
    config = parse_config({"name": "c", "elements": ["Cu"],
                           "acquisition": {"kind": "ptop", "top_share": 0.1}})
    assert campaign_strategy(config).top_share == 0.1
    assert campaign_strategy(config).budget == config.budget  # ptop aims by what it can spend
    assert (config.find, campaign_strategy(config).find) == ("best", "best")
    config = parse_config({"name": "c", "elements": ["Cu"], "find": "top_share"})
    assert campaign_strategy(config).find == "top_share"
    with pytest.raises(ConfigError, match="field 'find'"):
        parse_config({"name": "c", "elements": ["Cu"], "find": "everything"})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"budget": True}, "budget"),
        ({"batch_size": "4"}, "batch_size"),
        ({"generator": {"pool_size": 20.0}}, "generator.pool_size"),
        ({"anomaly": {"enabled": "yes"}}, "anomaly.enabled"),
        ({"evaluator": {"retries": "2"}}, "evaluator.retries"),
    ],
)
def test_types_are_strict_not_coerced(change, field):
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        parse_config({**GOOD, **change})


def test_strict_types_still_read_files_and_stored_configs(tmp_path):
    import glob
    import json
    from pathlib import Path

    for example in glob.glob(str(Path(__file__).parents[2] / "examples" / "*.yaml")):
        config = load_config(example)
        # a stored configuration is the JSON copy; it must load again for `matforge status`
        assert parse_config(json.loads(json.dumps(config.model_dump(mode="json")))) == config
    path = tmp_path / "c.yaml"
    path.write_text("name: t\nelements: [Cu, Au]\nacquisition: {top_share: 5e-2, beta: 2}\n"
                    "generator: {lattices: [fcc, bcc]}\nevaluator: {timeout: 30}\n")
    config = load_config(path)
    assert config.acquisition.top_share == 0.05 and config.acquisition.beta == 2.0
    assert config.generator.lattices == ["fcc", "bcc"] and config.evaluator.timeout == 30.0


def test_yaml_alias_bombs_and_huge_files_are_refused_quickly(tmp_path):
    import time

    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nname: t\nelements: [Cu]\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="too large once its YAML aliases are expanded") as info:
        load_config(bomb)
    assert time.perf_counter() - started < 5 and len(str(info.value)) < 300
    big = tmp_path / "big.yaml"
    big.write_text("name: t\nelements: [Cu]\n# " + "x" * 2_000_000 + "\n")
    with pytest.raises(ConfigError, match="larger than 1000000 bytes"):
        load_config(big)
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 200_000)
    with pytest.raises(ConfigError, match=str(deep)):
        load_config(deep)


def test_a_long_bad_value_is_shown_shortened():
    with pytest.raises(ConfigError) as info:
        parse_config({**GOOD, "objective": {"direction": "x" * 5000}})
    assert len(str(info.value)) < 300 and str(info.value).endswith("…")


def test_elements_the_adapter_cannot_compute_are_named():
    from matforge.adapters.ase_calc import EMTEvaluator
    from matforge.engine.config import check_elements

    config = parse_config({"name": "t", "elements": ["Cu", "Fe", "Li"]})
    with pytest.raises(ConfigError) as info:
        check_elements(config, "emt", EMTEvaluator.supported_elements, "c.yaml")
    message = str(info.value)
    assert "field 'elements'" in message and "Fe, Li" in message and "Au" in message
    check_elements(parse_config(GOOD), "emt", EMTEvaluator.supported_elements)
    check_elements(config, "any", None)  # None: the adapter takes any element


def test_relative_paths_stay_under_the_campaign_directory(tmp_path):
    from matforge.engine.config import check_paths

    home = tmp_path / "campaigns" / "one"
    home.mkdir(parents=True)
    path = home / "c.yaml"
    path.write_text("name: t\nelements: [Cu]\nworkdir: ../../elsewhere\n")
    with pytest.raises(ConfigError, match="field 'workdir': '../../elsewhere' leads outside"):
        load_config(path)
    path.write_text(f"name: t\nelements: [Cu]\nworkdir: {tmp_path / 'elsewhere'}\n")
    assert load_config(path).workdir == str(tmp_path / "elsewhere")  # absolute: meant
    config = parse_config({**GOOD, "evaluator": {"parameters": {"ledger": "../ledger.txt"}}})
    with pytest.raises(ConfigError, match="field 'evaluator.parameters.ledger'"):
        check_paths(config, home, ("ledger",), "c.yaml")
    config = parse_config({**GOOD, "evaluator": {"parameters": {"ledger": "runs/ledger.txt"}}})
    resolved = check_paths(config, home, ("ledger",), "c.yaml")
    assert resolved.evaluator.parameters["ledger"] == str(home / "runs" / "ledger.txt")
    assert resolved.workdir == str(home / "matforge-runs")


def test_a_misspelled_field_or_plugin_gets_a_suggestion_without_importing_the_science():
    """A campaign-file error comes back at once: validating imports neither torch nor the
    plug-ins (21-28 s before, torch and every default plug-in were imported first)."""
    import subprocess
    import sys

    code = """
import sys
from matforge.engine.config import ConfigError, parse_config
for raw in ({"name": "c", "elements": ["Cu"], "budgt": 5},
            {"name": "c", "elements": ["Cu"], "generator": {"pool_sise": 5}},
            {"name": "c", "elements": ["Cu"], "evaluator": {"adapter": "emtt"}},
            {"name": "c", "elements": ["Cu"], "surrogate": {"kind": "forrest"}}):
    try:
        parse_config(raw)
    except ConfigError as error:
        print(error)
parse_config({"name": "c", "elements": ["Cu"]})
print(sorted(m for m in ("torch", "botorch", "sklearn", "matforge.engine.models.gp")
             if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.splitlines()
    assert "field 'budgt': unknown field; did you mean 'budget'?" in out[0]
    assert "field 'generator.pool_sise': unknown field; did you mean 'pool_size'?" in out[1]
    assert "adapter 'emtt' is not installed" in out[2] and "(did you mean 'emt'?)" in out[2]
    assert "(did you mean 'forest'?)" in out[3]
    assert out[4] == "[]"
