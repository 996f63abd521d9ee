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
