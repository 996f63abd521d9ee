"""Results are checked before they can become training data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters.ase_calc import EMTEvaluator
from matforge.engine.validation import ResultError, positive_int, validate_result

OBJ = "formation_energy_per_atom"


@pytest.fixture(scope="module")
def emt_result(tmp_path_factory):
    structure = AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.6, cubic=True))
    result = EMTEvaluator(fmax=0.1).evaluate(structure, Path(tmp_path_factory.mktemp("emt")))
    return result.model_dump(), len(structure)


def test_a_real_emt_result_passes_and_gives_its_objective(emt_result):
    result, n = emt_result
    assert validate_result(result, n, OBJ) == pytest.approx(result[OBJ])
    assert validate_result(result, n, OBJ) == pytest.approx(0.0, abs=1e-3)  # pure Cu


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"energy": math.nan}, "energy is nan, not finite"),
        ({"energy": math.inf, "energy_per_atom": math.inf}, "energy is inf"),
        ({"energy": "a lot"}, "energy is 'a lot', not a number"),
        ({"energy_per_atom": -3.0}, "is not energy_per_atom × 4 atoms"),
        ({"energy": -4e7, "energy_per_atom": -1e7}, "not physical"),
        ({OBJ: 55.0}, "formation energy 55 eV/atom is beyond"),
        ({OBJ: math.nan}, "formation_energy_per_atom is nan"),
        ({"forces": [[0.0, 0.0, 0.0]] * 3}, "forces have shape (3, 3), expected (4, 3)"),
        ({"forces": [[0.0, 0.0]] * 4}, "forces have shape (4, 2), expected (4, 3)"),
        ({"forces": [[0.0, math.nan, 0.0]] * 4}, "forces contain NaN"),
        ({"forces": [["x", 0, 0]] * 4}, "forces are not a numeric array"),
        ({"converged": False}, "did not converge"),
    ],
)
def test_broken_results_are_refused_with_the_reason(emt_result, change, reason):
    result, n = emt_result
    with pytest.raises(ResultError) as info:
        validate_result({**result, **change}, n, OBJ)
    assert reason in str(info.value)


def test_missing_objective_and_non_mapping(emt_result):
    result, n = emt_result
    with pytest.raises(ResultError, match="no 'band_gap'"):
        validate_result(result, n, "band_gap")
    assert validate_result({**result, "properties": {"band_gap": 1.5}}, n, "band_gap") == 1.5
    with pytest.raises(ResultError, match="band_gap is nan"):
        validate_result({**result, "properties": {"band_gap": math.nan}}, n, "band_gap")
    with pytest.raises(ResultError, match="not a mapping"):
        validate_result([1, 2], n, OBJ)
    # energy is not required: a lab measures a property, not an energy
    assert validate_result({"properties": {"band_gap": 1.5}}, n, "band_gap") == 1.5
    with pytest.raises(ResultError, match="no 'formation_energy_per_atom'"):
        validate_result({"energy_per_atom": 1.0}, n, OBJ)
    with pytest.raises(ResultError, match="energy per atom 1e\\+07 eV is beyond"):
        validate_result({"energy_per_atom": 1e7, "properties": {"x": 1.0}}, n, "x")


def test_positive_int_takes_whole_numbers_and_names_what_it_refuses():
    import numpy as np

    assert positive_int("budget", 3) == 3 and positive_int("budget", 2.0) == 2
    assert positive_int("budget", np.int64(7)) == 7
    for bad in (0, -1, 2.5, float("nan"), float("inf"), "3", True, None):
        with pytest.raises(ValueError, match=r"batch_size must be a whole number >= 1, got"):
            positive_int("batch_size", bad)
