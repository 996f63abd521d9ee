"""Property-based: bad structures and bad campaign files are refused with a reason, never a crash.

Over 1000 generated inputs in all: every structure is either valid or raises
:class:`StructureError`, every campaign file is either valid or raises
:class:`ConfigError`, and the CLI answers a refused file with exit 2, one line
and nothing written.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from matforge.adapters import AdapterError, load_evaluator
from matforge.engine.config import ConfigError, load_config
from matforge.engine.materials.structures import (
    StructureError,
    check_structure,
    structure_from_dict,
)
from matforge.flows.cli import main

MAX_ATOMS = 64

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
small = st.floats(-20, 20, allow_nan=False)
symbols = st.sampled_from(["Cu", "Au", "Pt", "Xx", "Q", "", "cu", "Uuo", "D", "X", "Nonium", "42"])
vec = st.lists(floats | small, min_size=3, max_size=3)
matrix = (
    st.lists(vec, min_size=3, max_size=3) | st.lists(vec, max_size=5) | st.just([[0, 0, 0]] * 3)
)


def _site(species, abc) -> dict:
    return {"species": [{"element": species, "occu": 1}], "abc": abc, "properties": {}}


@st.composite
def bad_structure_dicts(draw):
    """Pymatgen-shaped dicts with one or more defects, or plain junk."""
    kind = draw(
        st.sampled_from(["random", "empty", "overlap", "flat", "nan", "many", "unknown", "junk"])
    )
    lattice = {"matrix": draw(matrix), "pbc": [True, True, True]}
    sites = [_site(draw(symbols), draw(vec)) for _ in range(draw(st.integers(0, 6)))]
    if kind == "empty":
        sites = []
        lattice = {"matrix": [[3.6, 0, 0], [0, 3.6, 0], [0, 0, 3.6]]}
    elif kind == "overlap":
        x = draw(st.floats(0, 1))
        lattice = {"matrix": [[3.6, 0, 0], [0, 3.6, 0], [0, 0, 3.6]]}
        sites = [_site("Cu", [x, 0, 0]), _site("Au", [x + draw(st.floats(0, 0.1)), 0, 0])]
    elif kind == "flat":
        a = draw(st.floats(-5, 5))
        lattice = {"matrix": [[3.6, 0, 0], [0, 3.6, 0], [a, draw(st.floats(-1, 1)) * 3.6, 0]]}
        sites = [_site("Cu", [0, 0, 0])]
    elif kind == "nan":
        lattice = {"matrix": [[3.6, 0, 0], [0, 3.6, 0], [0, 0, 3.6]]}
        sites = [_site("Cu", [0, 0, 0]), _site("Cu", [math.nan, draw(floats), 0.5])]
    elif kind == "many":
        lattice = {"matrix": [[300.0, 0, 0], [0, 300.0, 0], [0, 0, 300.0]]}
        n = draw(st.integers(MAX_ATOMS + 1, 5 * MAX_ATOMS))
        sites = [_site("Cu", [i / n, 0, 0]) for i in range(n)]
    elif kind == "unknown":
        lattice = {"matrix": [[3.6, 0, 0], [0, 3.6, 0], [0, 0, 3.6]]}
        sites = [_site(draw(st.sampled_from(["Xx", "Q", "", "Nonium", "X0+"])), [0, 0, 0])]
    elif kind == "junk":
        return kind, draw(
            st.recursive(
                st.none() | st.booleans() | floats | st.text(max_size=5),
                lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                    st.sampled_from(["lattice", "sites", "matrix", "species", "abc", "x"]), inner,
                    max_size=4,
                ),
                max_leaves=12,
            )
        )
    data = {
        "@module": "pymatgen.core.structure",
        "@class": "Structure",
        "lattice": lattice,
        "sites": sites,
    }
    return kind, data


def _huge_cell(axis_length):
    lattice = {"matrix": [[1.0, 0.0, -1.0], [0.0, 0.0, axis_length], [0.0, 1.0, 0.0]]}
    sites = [_site("Cu", [0, 0, 0]), _site("Cu", [0, 0, 0])]
    return "random", {"@module": "pymatgen.core.structure", "@class": "Structure",
                      "lattice": lattice, "sites": sites}


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_structure_dicts())
# cells so long that pymatgen's cell reduction overflowed instead of refusing them
@example(_huge_cell(-1.8446744073709552e19))
@example(_huge_cell(-1.3407807929942597e154))
def test_bad_structures_are_refused_with_a_reason(case):
    kind, data = case
    try:
        structure = structure_from_dict(data, max_atoms=MAX_ATOMS)
    except StructureError as error:
        assert str(error).strip()
        return
    # only a random draw may happen to be a valid structure, and then it really is one
    assert kind == "random", f"{kind} structure was accepted: {data}"
    check_structure(structure, max_atoms=MAX_ATOMS)
    assert 0 < len(structure) <= MAX_ATOMS and structure.volume > 0


VALID = {
    "name": "fuzz",
    "elements": ["Cu", "Au"],
    "generator": {"pool_size": 20, "max_atoms": 8},
    "batch_size": 4,
    "budget": 8,
    "evaluator": {"adapter": "emt", "parameters": {"fmax": 0.1}},
    "store": "sqlite:///store.db",
    "seed": 0,
}

junk_values = (
    st.none()
    | st.booleans()
    | st.integers(-10**12, 10**12)
    | floats
    | st.text(max_size=8)
    | st.lists(st.integers(-3, 3) | st.text(max_size=3), max_size=3)
    | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)
)


@st.composite
def bad_campaign_texts(draw):
    kind = draw(st.sampled_from(["field", "unknown", "budget", "nested", "yaml", "drop"]))
    config = yaml.safe_load(yaml.safe_dump(VALID))
    if kind == "field":
        config[draw(st.sampled_from(sorted(VALID)))] = draw(junk_values)
    elif kind == "unknown":
        config[
            draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in VALID))
        ] = draw(junk_values)
    elif kind == "budget":
        config["budget"] = draw(st.integers(-10**6, 0) | st.integers(10**7 + 1, 10**12))
        config["batch_size"] = draw(st.integers(-5, 10**5))
    elif kind == "nested":
        section = draw(st.sampled_from(["generator", "evaluator", "anomaly", "objective"]))
        field = draw(st.sampled_from(
            ["pool_size", "max_atoms", "lattices", "adapter", "timeout", "retries", "retry_on",
             "eps", "min_samples", "direction", "bogus"]
        ))
        config[section] = {**config.get(section, {}), field: draw(junk_values)}
    elif kind == "drop":
        for key in draw(st.lists(st.sampled_from(sorted(VALID)), min_size=1, max_size=3)):
            config.pop(key, None)
    if kind == "yaml":
        text = yaml.safe_dump(config)
        cut = draw(st.integers(0, len(text)))
        return (
            text[:cut]
            + draw(st.sampled_from(["\t:", ": [", "{", "- ]", "\x00", "&a *b", "'"]))
            + text[cut:]
        )
    return yaml.safe_dump(config)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_campaign_texts())
def test_bad_campaign_files_are_refused_with_one_message_and_exit_2(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "campaign.yaml"
        path.write_text(text)
        try:
            config = load_config(path)
        except ConfigError as error:
            message = str(error)
            assert message.strip() and str(path) in message
        else:
            try:
                load_evaluator(config.evaluator.adapter, config.evaluator.parameters)
            except (AdapterError, ValueError):
                pass
            else:
                return  # a valid campaign: running it is the flow tests' business
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["run", str(path)])
        assert code == 2
        assert err.getvalue().startswith("matforge: error: ") and err.getvalue().count("\n") == 1
        assert [p.name for p in Path(tmp).iterdir()] == ["campaign.yaml"]


def _cli(argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr of one ``matforge`` command (argparse's refusals exit by SystemExit)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    return code, err.getvalue()


def _refused_once(code: int, err: str) -> bool:
    return (code == 2 and err.startswith("matforge: error: ") and err.count("\n") == 1
            and "Traceback" not in err)


@contextlib.contextmanager
def _workspace():
    """A directory with a campaign file, a pool table and a store holding campaign 'fuzz';
    on exit, checks that nothing was created there and no file changed."""
    from matforge.engine.store.sql import CampaignStore

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "campaign.yaml").write_text(yaml.safe_dump(VALID))
        (root / "pool.csv").write_text(
            "x,y\n" + "".join(f"{i},{(i * 7) % 5}\n" for i in range(8))
        )
        store = CampaignStore(f"sqlite:///{root / 'store.db'}")
        store.campaign_id("fuzz", VALID)
        store.close()
        before = {p.name: p.read_bytes() for p in root.iterdir()}
        yield root
        assert {p.name: p.read_bytes() for p in root.iterdir()} == before


BAD_STORES = [
    "{root}",  # a directory
    "sqlite:///{root}",
    "sqlite:///{root}/missing/dir/store.db",
    "sqlite:///{root}/campaign.yaml/store.db",  # parent is a file
    "sqlite:///{root}/campaign.yaml",  # not a database
    "not a url",
    "://user:pw@host/db",
    "mysql://user:pw@127.0.0.1/db",
    "postgresql+asyncpg://postgres:pw@127.0.0.1:5432/test",
    "nosuchdriver://x",
    "postgresql+psycopg2://postgres:pw@127.0.0.1:{port}/test",  # refused port
    "postgresql+psycopg2://postgres:pw@127.0.0.1:5432/mf_no_such_database",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    template=st.sampled_from(BAD_STORES),
    command=st.sampled_from(["run", "status", "review"]),
)
def test_bad_store_urls_are_refused_with_one_line_and_change_nothing(
    template, command, free_port
):
    with _workspace() as root:
        url = template.format(root=root, port=free_port())
        if command == "run":
            (root / "campaign.yaml").write_text(yaml.safe_dump({**VALID, "store": url}))
            argv = ["run", str(root / "campaign.yaml")]
        else:
            argv = [command, "fuzz", "--store", url]
        code, err = _cli(argv)
        assert _refused_once(code, err), (argv, code, err)
        assert ":pw@" not in err
        if command == "run":  # put the file back as _workspace wrote it
            (root / "campaign.yaml").write_text(yaml.safe_dump(VALID))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=30))
def test_junk_store_urls_are_refused_without_creating_anything(junk):
    with _workspace() as root:
        code, err = _cli(["status", "fuzz", "--store", junk.replace("\x00", "")])
        # a junk string is never this workspace's store, so it is never opened as one
        assert _refused_once(code, err), (junk, code, err)
        assert not (root / "matforge.db").exists()


not_positive = st.integers(-10**6, 0).map(str)
not_integers = st.sampled_from(["1.5", "abc", "", "1e3", "0x10", "--", "NaN", "3x"])


@st.composite
def bad_command_lines(draw):
    kind = draw(st.sampled_from(
        ["top", "pool-number", "pool-seed", "not-int", "review-both", "run-budget", "missing"]
    ))
    store = ["--store", "sqlite:///{root}/store.db"]
    if kind == "top":
        return ["status", "fuzz", *store, "--top", draw(not_positive)]
    if kind == "pool-number":
        flag = draw(st.sampled_from(["--budget", "--repeats", "--init", "--batch"]))
        return ["benchmark", "pool", "{root}/pool.csv", "--target", "y", flag, draw(not_positive)]
    if kind == "pool-seed":
        return ["benchmark", "pool", "{root}/pool.csv", "--target", "y", "--seed",
                str(draw(st.integers(-10**6, -1)))]
    if kind == "not-int":
        return draw(st.sampled_from([
            ["status", "fuzz", *store, "--top"],
            ["benchmark", "pool", "{root}/pool.csv", "--target", "y", "--budget"],
            ["run", "{root}/campaign.yaml", "--budget"],
            ["review", "fuzz", *store, "--accept"],
        ])) + [draw(not_integers)]
    if kind == "review-both":
        n = str(draw(st.integers(-3, 10**6)))
        return ["review", "fuzz", *store, "--accept", n, "--reject", n]
    if kind == "run-budget":
        return ["run", "{root}/campaign.yaml", "--budget", draw(not_positive)]
    return draw(st.sampled_from([
        ["run", "{root}/missing.yaml"],
        ["run", "{root}"],
        ["status", "{root}/missing.yaml"],
        ["review", "{root}/missing.yaml"],
        ["status", "{root}"],
        ["status", "no-such-campaign", *store],
        ["review", "no-such-campaign", *store],
        ["benchmark", "pool", "{root}/missing.csv", "--target", "y"],
        ["benchmark", "pool", "{root}/pool.csv", "--target", "y", "--out", "{root}"],
        ["benchmark", "pool", "{root}/pool.csv", "--target", "y", "--out", "{root}/no/r.json"],
        ["frobnicate"],
        [],
    ]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_command_lines())
def test_bad_flags_and_missing_files_are_refused_with_one_line(argv):
    with _workspace() as root:
        argv = [a.format(root=root) for a in argv]
        code, err = _cli(argv)
        assert _refused_once(code, err), (argv, code, err)
