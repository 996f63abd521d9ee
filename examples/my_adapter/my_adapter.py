"""A complete matforge adapter: single-point Lennard-Jones energies of noble-gas crystals."""

from pathlib import Path

from ase.calculators.lj import LennardJones
from ase.units import GPa
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters import EvaluationError, EvaluationResult, Evaluator
from matforge.adapters.base import Resources

# sigma (Å) and epsilon (eV) per element
PARAMETERS = {"Ne": (2.78, 0.0031), "Ar": (3.40, 0.0104), "Kr": (3.65, 0.0140),
              "Xe": (3.98, 0.0200)}


class LennardJonesEvaluator(Evaluator):
    name = "lj"
    implemented_properties = {"energy": "eV", "energy_per_atom": "eV/atom", "pressure": "GPa"}
    supported_elements = frozenset(PARAMETERS)
    resources = Resources(cores=1, memory_gb=0.5, walltime=60)

    def __init__(self, cutoff: float = 10.0):
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
        self.cutoff = float(cutoff)

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        symbols = {el.symbol for el in structure.composition}
        if missing := symbols - self.supported_elements:
            raise EvaluationError(f"no Lennard-Jones parameters for {', '.join(sorted(missing))}")
        if len(symbols) > 1:
            raise EvaluationError("one element per structure (no mixing rule here)")
        sigma, epsilon = PARAMETERS[symbols.pop()]
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = LennardJones(sigma=sigma, epsilon=epsilon, rc=self.cutoff)
        energy = float(atoms.get_potential_energy())
        pressure = -float(atoms.get_stress(voigt=True)[:3].mean()) / GPa
        Path(workdir).mkdir(parents=True, exist_ok=True)
        (Path(workdir) / "energy.txt").write_text(f"{energy!r}\n")
        return EvaluationResult(energy=energy, energy_per_atom=energy / len(atoms),
                                properties={"pressure": pressure})

    @classmethod
    def conformance_structure(cls) -> Structure:
        return Structure(Lattice.cubic(5.26), ["Ar"] * 4,
                         [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
