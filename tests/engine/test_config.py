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
