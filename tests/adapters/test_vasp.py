"""VASP through the template/profile split, replayed from recorded runs.

VASP cannot run here, so the profile's command is ``tests/data/vasp/replay.py``: it checks
the INCAR, KPOINTS, POSCAR and POTCAR the adapter wrote against a plan and copies the outputs
of a real VASP run in (atomate2's ``utils/testing/vasp.py`` does the same). The recorded
runs and where they come from are described in ``tests/data/vasp/README.md``. POTCARs are
licensed, so the tests write stand-ins that carry only the header lines ASE and VASP read.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.io import read
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.vasp import Incar, Kpoints, Poscar

from matforge.adapters import EvaluationError, load_evaluator
from matforge.adapters.fileio import Profile
from matforge.adapters.vasp import ASE_KEYWORDS, VaspEvaluator
from matforge.engine.validation import ResultError, validate_result

DATA = Path(__file__).parents[1] / "data" / "vasp"
REPLAY = DATA / "replay.py"

RECORDED = {"encut": 300.0, "kspacing": 0.5, "smearing": "gaussian", "sigma": 0.05,
            "ediff": 1e-6}
"""The settings of the recorded Si2 runs (ENCUT 300, ISMEAR 0, SIGMA 0.05, EDIFF 1e-6, and a
4x4x4 mesh, which kspacing 0.5 gives their cell)."""

SI2 = VaspEvaluator.conformance_structure()
"""The recorded runs' Si2: both atoms off the diamond sites, so the forces are large."""

TITLES = {"Si": "PAW_PBE Si 05Jan2001", "Al": "PAW_PBE Al 04Jan2001",
          "Cu_pv": "PAW_PBE Cu_pv 06Sep2000", "P": "PAW_PBE P 06Sep2000",
          "S": "PAW_PBE S 06Sep2000", "Zn": "PAW_PBE Zn 06Sep2000"}
VALENCE = {"Si": 4, "Al": 3, "Cu_pv": 17, "P": 5, "S": 6, "Zn": 12}

SI2_STATIC_ENERGY = -6.50161629
"""E0 of the recorded static run (``E0= -.65016163E+01`` in its stdout)."""
SI_REFERENCE_ENERGY = -10.79449573
"""Ideal diamond Si2 (recorded ``si2-ideal``), the Si reference in these replays."""


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MATFORGE_THREADS", "1")
    monkeypatch.delenv("MATFORGE_PROFILES", raising=False)


@pytest.fixture
def potcars(tmp_path) -> Path:
    """A POTCAR root of stand-ins: the header lines ASE and VASP read, no dataset."""
    root = tmp_path / "potcars"
    for folder, lexch in (("potpaw_PBE", "PE"), ("potpaw", "CA"), ("potpaw_PBE.64", "PE")):
        for name, title in TITLES.items():
            if folder != "potpaw_PBE" and name != "Si":
                continue
            if folder == "potpaw":
                title = title.replace("PAW_PBE", "PAW")
            directory = root / folder / name
            directory.mkdir(parents=True)
            element = name.split("_")[0]
            (directory / "POTCAR").write_text(
                f"  {title}\n {VALENCE[name]:.17f}\n parameters from PSCTR are:\n"
                f"   VRHFIN ={element}: stand-in\n   LEXCH  = {lexch}\n"
                f"   TITEL  = {title}\n   POMASS =   1.000; ZVAL   =   {VALENCE[name]:.3f}"
                "    mass and valenz\n End of Dataset\n")
    return root


def _written(evaluator, structure, workdir: Path, potcars: Path):
    workdir.mkdir(parents=True, exist_ok=True)
    evaluator.write_inputs(structure, workdir, Profile(command=["vasp_std"],
                                                       data_dir=str(potcars)))
    titles = [line.split("=", 1)[1].strip()
              for line in (workdir / "POTCAR").read_text().splitlines() if "TITEL" in line]
    return (Incar.from_file(workdir / "INCAR"), Kpoints.from_file(workdir / "KPOINTS"),
            Poscar.from_file(workdir / "POSCAR", check_for_potcar=False), titles)


def _case(name: str, structure: Structure, outputs: str | Path, incar: dict, mesh,
          potcar=("Si",), when=None, absent=(), exit=0) -> dict:
    return {"name": name, "outputs": str(DATA / outputs), "incar": incar, "absent": list(absent),
            "when": when or {}, "exit": exit,
            "poscar": {"species": [s.specie.symbol for s in structure],
                       "lattice": structure.lattice.matrix.tolist(),
                       "cart": structure.cart_coords.tolist()},
            "kpoints": {"style": "Gamma", "mesh": list(mesh)},
            "potcar": [TITLES[p] for p in potcar]}


def _replay(tmp_path: Path, potcars: Path, cases: list[dict]) -> tuple[Path, Path]:
    """A profiles file whose ``vasp`` command replays ``cases``; the plan's run log."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(cases))
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(yaml.safe_dump({"vasp": {
        "command": [sys.executable, str(REPLAY), str(plan)], "data_dir": str(potcars)}}))
    return profiles, Path(f"{plan}.log")


def _runs(log: Path) -> list[str]:
    return [line.split("\t")[0] for line in log.read_text().splitlines()] if log.exists() else []


SCF = {"IBRION": -1, "NSW": 0, "ISIF": 2, "ENCUT": 300, "EDIFF": 1e-6, "ISMEAR": 0,
       "SIGMA": 0.05, "GGA": "PE", "PREC": "Accurate", "LREAL": False, "ISPIN": 1}
SI_REFERENCE = AseAtomsAdaptor.get_structure(bulk("Si"))
SI_REFERENCE_MESH = (5, 5, 5)
"""bulk("Si"), a = 5.43 Å: |b| = 2π√3/a = 2.004 Å⁻¹, so 5 points at 0.5 Å⁻¹ (4 for the
recorded cell, a = 5.469 Å: 1.990 Å⁻¹)."""


def _si_reference_case(calculation: str = "scf") -> dict:
    incar = dict(SCF) if calculation == "scf" else {
        **SCF, "IBRION": 2, "ISIF": 3, "NSW": 99, "EDIFFG": -0.02}
    return _case(f"Si reference ({calculation})", SI_REFERENCE, "si2-ideal", incar,
                 SI_REFERENCE_MESH)


# the template --------------------------------------------------------------------------

@pytest.mark.parametrize("calculation, ibrion, isif", [("scf", -1, 2), ("relax", 2, 2),
                                                       ("vc-relax", 2, 3)])
def test_the_incar_follows_the_calculation(calculation, ibrion, isif, potcars, tmp_path):
    evaluator = VaspEvaluator(calculation=calculation, nsw=40, ediffg=-0.03, nelm=60,
                              smearing="mp", sigma=0.2, encut=400, ediff=1e-5)
    incar, _, _, _ = _written(evaluator, SI2, tmp_path, potcars)
    assert (incar["IBRION"], incar["ISIF"]) == (ibrion, isif)
    assert (incar["ENCUT"], incar["EDIFF"], incar["NELM"]) == (400, 1e-5, 60)
    assert (incar["ISMEAR"], incar["SIGMA"], incar["GGA"].upper()) == (1, 0.2, "PE")
    if calculation == "scf":
        assert incar["NSW"] == 0 and "EDIFFG" not in incar
    else:
        assert incar["NSW"] == 40 and incar["EDIFFG"] == -0.03
    assert incar["LWAVE"] is False and incar["LCHARG"] is False and incar["ISPIN"] == 1


def test_the_kpoint_mesh_follows_kspacing(potcars, tmp_path):
    cell = Structure(Lattice.tetragonal(3.0, 6.0), ["Si"], [[0, 0, 0]])
    # 2π/3 Å = 2.094 Å⁻¹ and 2π/6 Å = 1.047 Å⁻¹ between Γ and the next zone
    for spacing, mesh in ((0.3, [7, 7, 4]), (0.6, [4, 4, 2]), (3.0, [1, 1, 1])):
        _, kpoints, _, _ = _written(VaspEvaluator(kspacing=spacing), cell,
                                    tmp_path / str(spacing), potcars)
        assert kpoints.style.name == "Gamma"
        assert list(kpoints.kpts[0]) == mesh


def test_the_poscar_groups_the_species_in_the_potcar_order(potcars, tmp_path):
    mixed = Structure(Lattice.cubic(6.0), ["Cu", "Al", "Cu", "Si", "Al"],
                      [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]])
    evaluator = VaspEvaluator(setups={"base": "recommended", "Cu": "_pv"})
    _, _, poscar, titles = _written(evaluator, mixed, tmp_path, potcars)
    assert poscar.site_symbols == ["Cu", "Al", "Si"] and poscar.natoms == [2, 2, 1]
    assert titles == [TITLES["Cu_pv"], TITLES["Al"], TITLES["Si"]]
    order = [0, 2, 1, 4, 3]  # grouped in the order each species first occurs
    assert np.allclose(poscar.structure.cart_coords, mixed.cart_coords[order])
    sort = np.loadtxt(tmp_path / "ase-sort.dat", dtype=int)
    assert sort[:, 0].tolist() == order


@pytest.mark.parametrize("xc, folder, tag", [
    ("lda", "potpaw", None), ("pbesol", "potpaw_PBE", ("GGA", "PS")),
    ("r2scan", "potpaw_PBE", ("METAGGA", "R2SCAN"))])
def test_the_functional_picks_its_tags_and_potcar_set(xc, folder, tag, potcars, tmp_path):
    incar, _, _, titles = _written(VaspEvaluator(xc=xc), SI2, tmp_path, potcars)
    expected = (potcars / folder / "Si" / "POTCAR").read_text()
    assert (tmp_path / "POTCAR").read_text() == expected
    if tag is None:
        assert "GGA" not in incar and "METAGGA" not in incar
    else:
        assert incar[tag[0]].upper() == tag[1]
    _written(VaspEvaluator(pp_version="64"), SI2, tmp_path / "v64", potcars)
    assert (tmp_path / "v64" / "POTCAR").read_text() == (
        potcars / "potpaw_PBE.64" / "Si" / "POTCAR").read_text()


def test_a_missing_potcar_names_the_element_and_the_directory(potcars, tmp_path, monkeypatch):
    gaas = Structure(Lattice.cubic(5.65), ["Ga", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    where = re.escape(str(potcars / "potpaw_PBE"))
    with pytest.raises(EvaluationError, match=rf"no POTCAR for Ga \(Ga_d\) in {where}: "):
        _written(VaspEvaluator(), gaas, tmp_path / "gaas", potcars)
    with pytest.raises(EvaluationError, match=r"no POTCAR for Si \(Si\) in .*potpaw_PBE\.54"):
        _written(VaspEvaluator(pp_version="54"), SI2, tmp_path / "v54", potcars)
    monkeypatch.delenv("VASP_PP_PATH", raising=False)
    with pytest.raises(EvaluationError, match="no POTCAR directory: set data_dir"):
        VaspEvaluator().evaluate(SI2, tmp_path / "nowhere")
    monkeypatch.setenv("VASP_PP_PATH", str(potcars))  # where the profile names no directory
    assert VaspEvaluator().potcar_root(Profile(command=["vasp_std"])) == potcars


@pytest.mark.parametrize("parameters, message", [
    ({"xc": "b3lyp"}, "xc must be one of"),
    ({"calculation": "md"}, "calculation must be one of"),
    ({"encut": -300}, "encut must be a finite number > 0"),
    ({"kspacing": math.nan}, "kspacing must be a finite number > 0"),
    ({"ediffg": 0}, "ediffg must be non-zero"),
    ({"nelm": 0}, "nelm must be an integer >= 1"),
    ({"nsw": 2.5}, "nsw must be an integer >= 1"),
    ({"smearing": "cold"}, "smearing must be one of"),
    ({"setups": "best"}, "setups must be one of"),
    ({"setups": {"Xx": "_sv"}}, "'Xx' is not an element symbol"),
    ({"setups": {"Li": "/etc"}}, "the suffix of Li must be like"),
    ({"pp_version": "../x"}, "pp_version must be like"),
    ({"incar": {"ENCUT": 400}}, "ENCUT is set from the adapter's parameters"),
    ({"incar": {"kpts": 3}}, "KPTS is set from the adapter's parameters"),
    ({"incar": {"ALGO": None}}, "ALGO must be a string, number"),
    ({"incar": {"1X": 1}}, "'1X' is not an INCAR tag"),
])
def test_bad_parameters_are_refused_with_the_reason(parameters, message):
    with pytest.raises(ValueError, match=message):
        VaspEvaluator(**parameters)


def test_the_writer_keywords_that_are_not_incar_tags_are_all_refused():
    from ase.calculators.vasp.create_input import GenerateVaspInput

    assert ASE_KEYWORDS == {key.upper() for key in GenerateVaspInput().input_params}


def test_extra_incar_tags_are_written_and_override_the_defaults(potcars, tmp_path):
    evaluator = VaspEvaluator(incar={"ALGO": "Fast", "LREAL": "Auto", "LASPH": True},
                              spin_polarized=True)
    magnetic = SI2.copy(site_properties={"magmom": [1.5, -0.5]})
    incar, _, _, _ = _written(evaluator, magnetic, tmp_path, potcars)
    assert (incar["ALGO"], incar["LREAL"], incar["LASPH"]) == ("Fast", "Auto", True)
    assert incar["ISPIN"] == 2 and incar["MAGMOM"] == [1.5, -0.5]


# replayed runs ----------------------------------------------------------------------------

def test_a_replayed_static_run_gives_the_recorded_energy_forces_and_stress(
        potcars, tmp_path, monkeypatch):
    profiles, log = _replay(tmp_path, potcars, [
        _case("Si2 static", SI2, "si2-static", {**SCF, "NELM": 100}, (4, 4, 4),
              absent=["EDIFFG"]),
        _si_reference_case()])
    monkeypatch.setenv("MATFORGE_PROFILES", str(profiles))
    evaluator = load_evaluator("vasp", RECORDED)
    result = evaluator.evaluate(SI2, tmp_path / "campaign" / "si2")

    # the same run read by another parser from another of its files
    outcar = read(DATA / "si2-static" / "OUTCAR.gz", format="vasp-out", index=-1)
    assert result.converged and result.n_steps == 1
    assert result.energy == pytest.approx(SI2_STATIC_ENERGY, abs=1e-8)
    assert result.energy == pytest.approx(outcar.get_potential_energy(), abs=1e-7)
    assert np.allclose(result.forces, outcar.get_forces(), atol=1e-5)
    assert np.abs(result.forces).max() > 10  # atoms far off their sites: a real test of order
    assert np.allclose(result.stress, outcar.get_stress(), atol=1e-7)
    assert result.get("pressure") == pytest.approx(-outcar.get_stress()[:3].mean() * 160.21766,
                                                   rel=1e-5)
    assert Structure.from_dict(result.structure) == SI2
    assert result.get("volume_per_atom") == pytest.approx(SI2.volume / 2)
    # against ideal diamond Si the displaced pair is 2.15 eV/atom higher
    formation = (SI2_STATIC_ENERGY - SI_REFERENCE_ENERGY) / 2
    assert result.formation_energy_per_atom == pytest.approx(formation, abs=1e-8)
    assert validate_result(result.model_dump(), 2, "formation_energy_per_atom") == formation

    again = evaluator.evaluate(SI2, tmp_path / "campaign" / "si2")  # same directory
    other = evaluator.evaluate(SI2, tmp_path / "campaign" / "copy")  # same campaign
    assert again.model_dump() == result.model_dump()
    assert other.formation_energy_per_atom == result.formation_energy_per_atom
    assert _runs(log) == ["Si2 static", "Si reference (scf)", "Si2 static", "Si2 static"]
    stored = json.loads((tmp_path / "campaign" / "vasp-references.json").read_text())
    assert list(stored.values()) == [{"Si": pytest.approx(SI_REFERENCE_ENERGY / 2)}]


def test_forces_and_structure_come_back_in_the_order_given(potcars, tmp_path):
    recorded = read(DATA / "zn3p2s8" / "vasprun.xml.gz", format="vasp-xml", index=-1)
    sites = AseAtomsAdaptor.get_structure(recorded)  # P4 S16 Zn6, grouped as VASP had them
    groups = [[i for i, s in enumerate(sites) if s.specie.symbol == e] for e in ("P", "S", "Zn")]
    # dealt like cards, P S Zn P S Zn ..., each species keeping its own order
    given = [i for rank in range(16) for group in groups for i in group[rank:rank + 1]]
    structure = Structure.from_sites([sites[i] for i in given])
    evaluator = VaspEvaluator(xc="pbesol", encut=359.7399, smearing="gaussian", sigma=0.01,
                              ediff=1e-8, kspacing=0.3)
    incar, _, poscar, titles = _written(evaluator, structure, tmp_path, potcars)
    assert incar["GGA"].upper() == "PS"
    assert poscar.site_symbols == ["P", "S", "Zn"]
    assert titles == [TITLES["P"], TITLES["S"], TITLES["Zn"]]
    assert np.allclose(poscar.structure.cart_coords, sites.cart_coords, atol=1e-8)
    with gzip.open(DATA / "zn3p2s8" / "vasprun.xml.gz") as packed:
        (tmp_path / "vasprun.xml").write_bytes(packed.read())

    result = evaluator.read_outputs(structure, tmp_path)
    assert result.converged and result.energy == pytest.approx(-115.01774737, abs=1e-8)
    assert np.allclose(result.forces, recorded.get_forces()[given], atol=1e-10)
    assert [s.specie.symbol for s in Structure.from_dict(result.structure)] == [
        s.specie.symbol for s in structure]
    assert np.allclose(Structure.from_dict(result.structure).cart_coords,
                       structure.cart_coords, atol=1e-6)
    with pytest.raises(EvaluationError, match="is a run of P4S16Zn6, not of the Si2 written"):
        evaluator.read_outputs(SI2, tmp_path)  # a stale vasprun.xml of another structure


def test_a_relaxation_stopped_at_nsw_is_returned_unconverged(potcars, tmp_path, monkeypatch):
    relax = {**SCF, "IBRION": 2, "ISIF": 2, "NSW": 5, "EDIFFG": -0.02}
    profiles, log = _replay(tmp_path, potcars, [
        _case("Si2 relax", SI2, "si2-nsw", relax, (4, 4, 4))])
    monkeypatch.setenv("MATFORGE_PROFILES", str(profiles))
    evaluator = load_evaluator("vasp", {**RECORDED, "calculation": "relax", "nsw": 5})
    result = evaluator.evaluate(SI2, tmp_path / "campaign" / "si2")
    assert not result.converged and result.n_steps == 5
    assert result.energy == pytest.approx(-10.53701997, abs=1e-8)  # E0 of its 5th step
    assert result.formation_energy_per_atom is None  # no reference paid for a rejected result
    moved = Structure.from_dict(result.structure)
    assert moved.lattice == SI2.lattice and moved.frac_coords[0] == pytest.approx(
        [0.8330894, 0.62756094, 0.70970781])
    assert _runs(log) == ["Si2 relax"]
    with pytest.raises(ResultError, match="did not converge"):
        validate_result(result.model_dump(), 2, "energy_per_atom")


def test_an_scf_stopped_at_nelm_is_returned_unconverged(potcars, tmp_path, monkeypatch):
    profiles, _ = _replay(tmp_path, potcars, [
        _case("Si2 NELM 8", SI2, "si2-nelm", {**SCF, "NELM": 8}, (4, 4, 4))])
    monkeypatch.setenv("MATFORGE_PROFILES", str(profiles))
    result = load_evaluator("vasp", {**RECORDED, "nelm": 8}).evaluate(SI2, tmp_path / "si2")
    assert not result.converged and result.n_steps == 1 and result.energy is None
    with pytest.raises(ResultError, match="did not converge"):
        validate_result(result.model_dump(), 2, "energy_per_atom")


def test_a_vc_relax_returns_the_relaxed_cell(potcars, tmp_path, monkeypatch):
    recorded = read(DATA / "si1-vc-relax" / "vasprun.xml.gz", format="vasp-xml", index=0)
    fcc_si = AseAtomsAdaptor.get_structure(recorded)  # the run's starting cell
    vc_relax = {**SCF, "IBRION": 2, "ISIF": 3, "NSW": 99, "EDIFFG": -0.02}
    profiles, log = _replay(tmp_path, potcars, [
        # fcc, a = 3.853 Å: |b| = 2π√3/a = 2.825 Å⁻¹, so 6 points at 0.5 Å⁻¹
        _case("fcc Si vc-relax", fcc_si, "si1-vc-relax", vc_relax, (6, 6, 6)),
        _si_reference_case("vc-relax")])
    monkeypatch.setenv("MATFORGE_PROFILES", str(profiles))
    evaluator = load_evaluator("vasp", {**RECORDED, "calculation": "vc-relax"})
    result = evaluator.evaluate(fcc_si, tmp_path / "campaign" / "fcc")
    assert result.converged and result.n_steps == 3
    relaxed = Structure.from_dict(result.structure)
    assert relaxed.lattice.matrix[0, 0] == pytest.approx(1.92656079)  # the last cell,
    assert fcc_si.lattice.matrix[0, 0] == pytest.approx(1.92641054)  # not the first
    assert result.energy == pytest.approx(-4.82820291, abs=1e-8)
    # fcc Si lies 0.57 eV/atom above diamond
    assert result.formation_energy_per_atom == pytest.approx(
        -4.82820291 - SI_REFERENCE_ENERGY / 2, abs=1e-8)
    assert 0.3 < result.formation_energy_per_atom < 0.8
    assert _runs(log) == ["fcc Si vc-relax", "Si reference (vc-relax)"]


def test_a_crashed_run_is_an_evaluation_error_not_the_last_run_again(potcars, tmp_path,
                                                                      monkeypatch):
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    static = {**SCF, "NELM": 100}
    crashes = [(_case("segfault", SI2, nothing, static, (4, 4, 4), exit=139),
                "exited with code 139"),
               (_case("silent", SI2, nothing, static, (4, 4, 4)), "VASP wrote no vasprun.xml"),
               (_case("truncated", SI2, "si2-crashed", static, (4, 4, 4)),
                "is incomplete or unreadable, VASP did not finish"),
               (_case("killed", SI2, "si2-crashed", static, (4, 4, 4), exit=137),
                "exited with code 137")]
    profiles, _ = _replay(tmp_path, potcars, [
        _case("Si2 static", SI2, "si2-static", static, (4, 4, 4)), _si_reference_case()])
    monkeypatch.setenv("MATFORGE_PROFILES", str(profiles))
    evaluator = load_evaluator("vasp", RECORDED)
    workdir = tmp_path / "campaign" / "si2"
    assert evaluator.evaluate(SI2, workdir).converged  # a finished run's files stay behind
    for case, message in crashes:
        _replay(tmp_path, potcars, [case])  # the same profile, now replaying a crash
        with pytest.raises(EvaluationError, match=message):
            evaluator.evaluate(SI2, workdir)


# the contract -----------------------------------------------------------------------------

CHECK = ("import json, sys\n"
         "from matforge.adapters.conformance import check_adapter\n"
         "print(json.dumps(check_adapter('vasp', json.loads(sys.argv[1]))))\n")


@pytest.mark.slow  # about 30 s: a process of its own, its fork server, four evaluations
def test_the_vasp_adapter_conforms_with_the_replay_profile(potcars, tmp_path):
    static = {**SCF, "NELM": 100}
    profiles, log = _replay(tmp_path, potcars, [
        _case("Si2 static", SI2, "si2-static", static, (4, 4, 4), when={"NELM": 100}),
        _case("Si2 NELM 8", SI2, "si2-nelm", {**SCF, "NELM": 8}, (4, 4, 4), when={"NELM": 8}),
        _si_reference_case()])
    # a process of its own: the evaluations fork from a server that keeps the environment
    # it started with
    out = subprocess.run([sys.executable, "-c", CHECK, json.dumps(RECORDED)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MATFORGE_PROFILES": str(profiles)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    runs = _runs(log)
    assert runs.count("Si2 NELM 8") == 1 and runs.count("Si reference (scf)") == 1
    assert runs.count("Si2 static") >= 2  # the run and its re-run in the same directory


def test_the_template_runs_with_prefect_unavailable(potcars, tmp_path):
    code = ("import sys; sys.modules['prefect'] = None\n"
            "from pathlib import Path\n"
            "from matforge.adapters.fileio import Profile\n"
            "from matforge.adapters.vasp import VaspEvaluator\n"
            "ev = VaspEvaluator()\n"
            "ev.write_inputs(ev.conformance_structure(), Path(sys.argv[1]),\n"
            "                Profile(command=['vasp_std'], data_dir=sys.argv[2]))\n"
            "print(ev.finished(Path(sys.argv[1])))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(potcars)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False" and (tmp_path / "INCAR").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("vasp_std") is None or not os.environ.get("VASP_PP_PATH"),
                    reason="VASP (vasp_std) and its POTCARs (VASP_PP_PATH) are not installed")
def test_a_real_vasp_run_on_si2(tmp_path):
    evaluator = load_evaluator("vasp", {"encut": 300.0, "kspacing": 0.4})
    result = evaluator.evaluate(SI_REFERENCE, tmp_path / "campaign" / "si")
    assert result.converged and result.n_steps == 1
    assert -5.6 < result.energy_per_atom < -5.2  # PBE diamond Si, about -5.42 eV/atom
    assert np.abs(result.forces).max() < 1e-3  # by symmetry
    assert result.formation_energy_per_atom == pytest.approx(0.0, abs=1e-6)  # itself
