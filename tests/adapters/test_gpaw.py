"""The GPAW adapter: plane-wave energies exactly as GPAW gives them, failures named."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from ase.build import bulk
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters import EvaluationError, load_evaluator
from matforge.adapters.conformance import check_adapter

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gpaw") is None,
                                reason="GPAW is not installed (pip install gpaw)")

SI = {"xc": "LDA", "ecut": 300.0, "kspacing": 0.6}  # a 4x4x4 mesh for primitive Si


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("MATFORGE_THREADS", "1")
    monkeypatch.delenv("MATFORGE_PROFILES", raising=False)


@pytest.mark.slow
def test_si2_energy_matches_a_direct_gpaw_run(tmp_path):
    import gpaw

    si2 = bulk("Si", "diamond", a=5.43)
    result = load_evaluator("gpaw", SI).evaluate(AseAtomsAdaptor.get_structure(si2),
                                                 tmp_path / "si2")
    direct = si2.copy()
    direct.calc = gpaw.GPAW(mode=gpaw.PW(300), xc="LDA", kpts={"size": (4, 4, 4), "gamma": True},
                            occupations=gpaw.FermiDirac(0.05), txt=str(tmp_path / "direct.txt"))
    assert result.energy == pytest.approx(direct.get_potential_energy(), abs=1e-6)
    assert result.energy_per_atom == pytest.approx(result.energy / 2)
    assert np.abs(result.forces).max() < 1e-3  # both atoms are inversion centres
    assert result.stress == pytest.approx(direct.get_stress(voigt=True).tolist(), abs=1e-6)
    # GPAW's log lands in the evaluation's directory; the Si reference is the same crystal
    assert "Converged" in (tmp_path / "si2" / "gpaw.txt").read_text()
    assert result.formation_energy_per_atom == pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "gpaw-references.json").exists()


def test_an_scf_that_does_not_converge_raises_and_says_why(tmp_path):
    structure = AseAtomsAdaptor.get_structure(bulk("Si", "diamond", a=5.43))
    evaluator = load_evaluator("gpaw", {**SI, "ecut": 200.0, "kspacing": 1.5, "maxiter": 1})
    with pytest.raises(EvaluationError, match="SCF of Si2 did not converge in maxiter=1"):
        evaluator.evaluate(structure, tmp_path)


def test_missing_datasets_and_bad_parameters_are_refused(tmp_path):
    technetium = Structure(Lattice.cubic(3.0), ["Tc"], [[0, 0, 0]])
    with pytest.raises(EvaluationError, match="PAW datasets have no Tc"):
        load_evaluator("gpaw").evaluate(technetium, tmp_path)
    for bad, message in (({"xc": "B3LYP"}, "xc"), ({"calculation": "md"}, "calculation"),
                         ({"ecut": -300.0}, "ecut"), ({"kspacing": 0}, "kspacing"),
                         ({"maxiter": 0}, "maxiter")):
        with pytest.raises(ValueError, match=message):
            load_evaluator("gpaw", bad)


@pytest.mark.slow
def test_the_gpaw_adapter_conforms():
    assert check_adapter("gpaw", {"xc": "LDA", "ecut": 250.0, "kspacing": 0.6}) == []
