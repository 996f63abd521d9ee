"""matforge's own potential as a screen, trained on the campaign's own results.

Each round, before the pool is screened, the Behler–Parrinello ensemble
(:class:`~matforge.engine.models.potential.BPEnsemble`) is fitted again on every
accepted result so far: the relaxed structure with the expensive code's energy and
forces. It then predicts each candidate's energy (its structure as proposed, or after
``relax_steps`` BFGS steps on the potential), and the formation energy against
chemical potentials fitted to the same results (each result's energy minus its atom
count times its formation energy is the sum of its elements' reference energies, a
least-squares problem). The ensemble's spread is the screen's uncertainty
(``energy_std_per_atom``).

A candidate with an element the results do not hold yet is not predicted (it is not
dropped for that: see ``matforge.engine.loop.screen``), so a young campaign keeps
exploring where its potential knows nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters.base import EvaluationError, EvaluationResult, Evaluator, Resources


class OwnPotentialEvaluator(Evaluator):
    """Energies and formation energies from matforge's own potential, trained on the
    campaign's results (``fit``) before each round's screen.

    Parameters
    ----------
    n_models : networks in the ensemble
    hidden : hidden-layer widths of each element's network
    cutoff : symmetry-function cutoff, Å
    epochs : training steps per fit
    force_weight : weight of the forces against the energies in the loss
    relax_steps : BFGS steps on the potential before predicting (0: as proposed)
    fmax : force criterion of that relaxation, eV/Å
    min_results : fewest results to train on; below it the potential is not ready
    random_state : seed of the networks and the bootstrap
    """

    name = "bpnn"
    implemented_properties: ClassVar[dict[str, str]] = {
        "energy": "eV",
        "energy_per_atom": "eV/atom",
        "formation_energy_per_atom": "eV/atom",
        "energy_std_per_atom": "eV/atom",
    }
    resources: ClassVar[Resources] = Resources(cores=1, memory_gb=2.0, walltime=600.0)
    trainable: ClassVar[bool] = True

    def __init__(self, n_models: int = 4, hidden: Sequence[int] = (32, 32), cutoff: float = 5.0,
                 epochs: int = 200, force_weight: float = 0.1, relax_steps: int = 0,
                 fmax: float = 0.05, min_results: int = 4, random_state: int = 0):
        if int(n_models) < 2:
            raise ValueError(f"n_models must be >= 2 (the spread is the uncertainty), got "
                             f"{n_models}")
        if int(relax_steps) < 0 or int(min_results) < 1:
            raise ValueError("relax_steps must be >= 0 and min_results >= 1")
        self.n_models = int(n_models)
        self.hidden = tuple(int(h) for h in hidden)
        self.cutoff = float(cutoff)
        self.epochs = int(epochs)
        self.force_weight = float(force_weight)
        self.relax_steps = int(relax_steps)
        self.fmax = float(fmax)
        self.min_results = int(min_results)
        self.random_state = int(random_state)
        self.model_ = None
        self.chemical_potentials_: dict[str, float] = {}
        self.version_: str | None = None

    # training -------------------------------------------------------------------------

    def fit(self, results: Sequence[dict[str, Any]]) -> OwnPotentialEvaluator | None:
        """A copy trained on ``results`` (stored result dicts with a relaxed ``structure``,
        ``energy`` and, where given, ``forces``), or None with fewer than ``min_results``."""
        from ase.calculators.singlepoint import SinglePointCalculator

        from matforge.engine.models.potential import BPEnsemble

        usable = [r for r in results if r and r.get("structure") and _finite(r.get("energy"))]
        if len(usable) < self.min_results:
            return None
        images = []
        for r in usable:
            atoms = AseAtomsAdaptor.get_atoms(Structure.from_dict(r["structure"]))
            forces = np.asarray(r["forces"], float) if r.get("forces") is not None else None
            atoms.calc = SinglePointCalculator(atoms, energy=float(r["energy"]), forces=forces)
            images.append(atoms)
        fitted = copy.copy(self)
        fitted.model_ = BPEnsemble(
            n_models=self.n_models, hidden=self.hidden, cutoff=self.cutoff, epochs=self.epochs,
            force_weight=self.force_weight, random_state=self.random_state,
        ).fit(images)
        fitted.chemical_potentials_ = chemical_potentials(usable)
        digest = hashlib.sha256(json.dumps(
            [[r["structure"], r["energy"]] for r in usable], sort_keys=True, default=str).encode())
        fitted.version_ = digest.hexdigest()[:16]
        return fitted

    @classmethod
    def conformance_training(cls) -> list[dict[str, Any]]:
        """EMT results of six small Cu-Au cells, as a campaign would have stored them."""
        from ase.build import bulk
        from ase.symbols import string2symbols

        from matforge.adapters.ase_calc import EMTEvaluator

        evaluator = EMTEvaluator(fmax=0.05, max_steps=100)
        results = []
        with tempfile.TemporaryDirectory() as workdir:
            for i, symbols in enumerate(["Cu4", "Au4", "Cu3Au", "CuAu3", "Cu2Au2", "Cu2Au2"]):
                atoms = bulk("Cu", "fcc", a=3.8, cubic=True)
                atoms.set_chemical_symbols(string2symbols(symbols))
                if i == 5:
                    atoms.rattle(0.05, seed=i)
                structure = AseAtomsAdaptor.get_structure(atoms)
                results.append(evaluator.evaluate(structure, Path(workdir)).model_dump())
        return results

    # prediction -----------------------------------------------------------------------

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        from ase.optimize import BFGS

        from matforge.engine.models.potential import BPCalculator

        if self.model_ is None:
            raise EvaluationError("the own potential is not trained yet (call fit with the "
                                  "campaign's results)")
        symbols = sorted({el.symbol for el in structure.composition})
        unknown = [s for s in symbols if s not in self.model_.elements_]
        if unknown:
            raise EvaluationError(f"the own potential has seen no {', '.join(unknown)} yet")
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = BPCalculator(self.model_)
        converged = True
        if self.relax_steps:
            converged = bool(BFGS(atoms, logfile=None).run(fmax=self.fmax,
                                                           steps=self.relax_steps))
        energy = float(atoms.get_potential_energy())
        spread = float(atoms.calc.results.get("energy_std", np.nan))
        n = len(atoms)
        properties = {"energy_std_per_atom": spread / n}
        formation = None
        mu = self.chemical_potentials_
        if all(s in mu for s in symbols):
            formation = (energy - sum(mu[s] for s in atoms.get_chemical_symbols())) / n
        return EvaluationResult(
            energy=energy, energy_per_atom=energy / n, formation_energy_per_atom=formation,
            converged=converged, properties=properties,
            structure=json.loads(AseAtomsAdaptor.get_structure(atoms).to_json()),
        )


def chemical_potentials(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per-element reference energies (eV/atom) implied by results that report both an
    energy and a formation energy per atom: ``E - n * E_f = sum_i n_i mu_i``, solved by
    least squares. Elements that no such result separates from the others are left out."""
    rows, targets, elements = [], [], set()
    for r in results:
        if not (_finite(r.get("energy")) and _finite(r.get("formation_energy_per_atom"))):
            continue
        counts = Structure.from_dict(r["structure"]).composition.get_el_amt_dict()
        rows.append(counts)
        targets.append(r["energy"] - sum(counts.values()) * r["formation_energy_per_atom"])
        elements |= set(counts)
    if not rows:
        return {}
    order = sorted(elements)
    A = np.array([[row.get(e, 0.0) for e in order] for row in rows])
    if np.linalg.matrix_rank(A) < len(order):
        return {}
    mu, *_ = np.linalg.lstsq(A, np.array(targets), rcond=None)
    return {e: float(m) for e, m in zip(order, mu)}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and bool(np.isfinite(x))
