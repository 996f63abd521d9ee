"""Quantum ESPRESSO through the template/profile split, on real pw.x runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.espresso import Espresso, EspressoProfile
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters import EvaluationError, load_evaluator
from matforge.adapters.conformance import check_adapter
from matforge.adapters.espresso import choose_pseudopotential, kpoints
from matforge.engine.validation import ResultError, validate_result

pytestmark = pytest.mark.skipif(shutil.which("pw.x") is None,
                                reason="Quantum ESPRESSO (pw.x) is not installed")

PSEUDO = "/usr/share/espresso/pseudo"
SI = {"xc": "pbe", "ecutwfc": 25.0, "kspacing": 0.5, "smearing": "none"}


def _direct(atoms, evaluator, calculation, directory: Path) -> float:
    """The same calculation through ASE's own Espresso calculator."""
    profile = evaluator.profile()
    pseudos = evaluator._pseudopotentials(atoms.get_chemical_symbols(), profile)
    calc = Espresso(
        profile=EspressoProfile(command="pw.x", pseudo_dir=PSEUDO),
        input_data=evaluator.input_data(calculation, profile, pseudos),
        pseudopotentials=pseudos, kpts=kpoints(atoms.cell.array, evaluator.kspacing),
        directory=str(directory),
    )
    atoms = atoms.copy()
    atoms.calc = calc
    return float(atoms.get_potential_energy())


def test_si2_scf_matches_a_direct_ase_run(tmp_path):
    evaluator = load_evaluator("qe", SI)
    si = bulk("Si")
    result = evaluator.evaluate(AseAtomsAdaptor.get_structure(si), tmp_path / "runs" / "si")
    assert result.converged and result.n_steps == 1
    assert abs(result.energy - _direct(si, evaluator, "scf", tmp_path / "direct")) < 1e-6
    assert result.formation_energy_per_atom == pytest.approx(0.0, abs=1e-6)  # its own reference
    assert np.abs(result.forces).max() < 1e-3  # by symmetry
    assert validate_result(result.model_dump(), 2, "energy_per_atom") == result.energy / 2


@pytest.mark.slow
def test_a_distorted_cuau_cell_relaxes_like_a_direct_ase_run(tmp_path):
    parameters = {"xc": "lda", "calculation": "relax", "ecutwfc": 25.0, "kspacing": 0.6,
                  "conv_thr": 1e-7}
    evaluator = load_evaluator("qe", parameters)
    cuau = Structure(Lattice.tetragonal(2.85, 3.75), ["Cu", "Au"],
                     [[0, 0, 0], [0.5, 0.5, 0.45]])  # Au pushed off its site
    result = evaluator.evaluate(cuau, tmp_path / "runs" / "cuau")
    assert result.converged and result.n_steps > 1
    assert np.abs(result.forces).max() < 0.05  # pw.x's default force threshold, in eV/Å
    direct = _direct(AseAtomsAdaptor.get_atoms(cuau), evaluator, "relax", tmp_path / "direct")
    assert abs(result.energy - direct) < 1e-6
    references = (tmp_path / "runs" / "qe-references.json").read_text()
    assert '"Cu"' in references and '"Au"' in references


def test_the_pseudopotential_choice_and_a_missing_one(tmp_path):
    assert choose_pseudopotential(PSEUDO, "Cu", "lda") == "Cu.pz-d-rrkjus.UPF"
    assert choose_pseudopotential(PSEUDO, "Pt", "lda") == "Pt.rel-pz-n-rrkjus.UPF"
    assert choose_pseudopotential(PSEUDO, "Si", "pbe") == "Si.pbe-nl-rrkjus_psl.1.0.0.UPF"
    with pytest.raises(EvaluationError, match=r"no LDA pseudopotential for Ag in .*none"):
        choose_pseudopotential(PSEUDO, "Ag", "lda")
    evaluator = load_evaluator("qe", SI)
    ag = Structure(Lattice.cubic(4.1), ["Ag"], [[0, 0, 0]])
    with pytest.raises(EvaluationError, match="no PBE pseudopotential for Ag"):
        evaluator.evaluate(ag, tmp_path / "ag")


def test_an_scf_that_does_not_converge_is_reported_and_never_accepted(tmp_path):
    evaluator = load_evaluator("qe", {**SI, "electron_maxstep": 1})
    result = evaluator.evaluate(AseAtomsAdaptor.get_structure(bulk("Si")), tmp_path / "si")
    assert not result.converged and result.energy is None
    with pytest.raises(ResultError, match="did not converge"):
        validate_result(result.model_dump(), 2, "energy_per_atom")


def test_the_profile_comes_from_the_machine_not_the_campaign(tmp_path, monkeypatch):
    evaluator = load_evaluator("qe", SI)
    parameters = evaluator.parameters()
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("qe:\n  command: [pw-not-here.x]\n  ranks: 2\n  mpi: [mpirun, -np]\n")
    monkeypatch.setenv("MATFORGE_PROFILES", str(profiles))
    profile = evaluator.profile()
    assert profile.argv("-in", "x") == ["mpirun", "-np", "2", "pw-not-here.x", "-in", "x"]
    assert profile.data_dir == PSEUDO  # the default where the file says nothing
    assert evaluator.parameters() == parameters  # the evaluation key does not move
    monkeypatch.setenv("MATFORGE_PROFILES", str(tmp_path / "p2.yaml"))
    (tmp_path / "p2.yaml").write_text("qe:\n  command: [pw-not-here.x]\n")
    with pytest.raises(EvaluationError, match="pw-not-here.x not found"):
        evaluator.evaluate(AseAtomsAdaptor.get_structure(bulk("Si")), tmp_path / "si")


def test_the_qe_adapter_conforms():
    assert check_adapter("qe", {"ecutwfc": 20.0, "kspacing": 0.6}) == []
