"""Candidate generators: decorations of small supercells and mutations of good results.

A generator turns a random stream into candidate structures for the campaign's
elements. Decorations explore; mutations (swap two unlike atoms, substitute one
atom) exploit around the best results so far. Every generator subclasses
:class:`Generator`; plug-ins register theirs under the entry-point group
``matforge.generators``, as the built-ins do.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import product

import numpy as np
from pymatgen.core import Composition, Lattice, Structure

from matforge.engine.materials.dedup import StructureIndex
from matforge.engine.materials.structures import fingerprint, vegard_volume

PRIMITIVE_CELLS = {
    # lattice vectors in units of the cubic (or hexagonal a) lattice constant
    "fcc": (np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]), [[0, 0, 0]]),
    "bcc": (np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]]), [[0, 0, 0]]),
    "hcp": (
        np.array([[1.0, 0.0, 0.0], [-0.5, np.sqrt(3) / 2, 0.0], [0.0, 0.0, np.sqrt(8 / 3)]]),
        [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]],
    ),
}
CONVENTIONAL_CELLS = {
    "fcc": (np.eye(3), [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]),
    "bcc": (np.eye(3), [[0, 0, 0], [0.5, 0.5, 0.5]]),
}


def _supercell_shapes(max_atoms: int) -> list[tuple[int, int, int]]:
    shapes = {tuple(sorted(s)) for s in product(range(1, 5), repeat=3)}
    return sorted(s for s in shapes if np.prod(s) <= max_atoms)


def parent_cells(lattice: str, max_atoms: int) -> list[Structure]:
    """All unit-spaced supercells of ``lattice`` with at most ``max_atoms`` sites (species: X0+)."""
    cells = []
    for table in (PRIMITIVE_CELLS, CONVENTIONAL_CELLS):
        if lattice not in table:
            continue
        vectors, coords = table[lattice]
        base = Structure(Lattice(vectors), ["H"] * len(coords), coords)
        for shape in _supercell_shapes(max_atoms // len(coords)):
            cells.append(base * shape)
    return cells


@dataclass
class Candidate:
    """A proposed structure with where it came from.

    ``fingerprint`` is the canonical hash from
    :func:`matforge.engine.materials.structures.fingerprint`.
    """

    structure: Structure
    generator: str
    parent: str | None = None
    fingerprint: str = field(default="")

    def __post_init__(self):
        if not self.fingerprint:
            self.fingerprint = fingerprint(self.structure)


class Generator(abc.ABC):
    """Proposes candidate structures over a campaign's elements.

    Settings go in the constructor, whose first argument is the campaign's
    ``elements`` (it may also take the ``generator`` section's ``lattices``,
    ``max_atoms`` and ``max_species``); the round's state goes in the call.
    Duplicates and candidates already in the store are dropped by the caller, so
    a generator need not track them.

    ``makes`` says what its candidates are: structures, or compositions for a campaign
    of compositions (``candidates: composition``). One that can make either takes a
    ``candidates`` argument.
    """

    name: str = ""
    makes: tuple[str, ...] = ("structure",)

    @abc.abstractmethod
    def propose(
        self, n: int, rng: np.random.Generator, parents: Sequence[Candidate] = ()
    ) -> list[Candidate]:
        """Up to ``n`` candidates drawn from ``rng``; ``parents`` are the campaign's best
        results so far, best first (empty in the first round)."""


def _scaled(structure: Structure) -> Structure:
    """Scale the cell so its volume matches Vegard's law for its composition."""
    structure = structure.copy()
    structure.scale_lattice(vegard_volume(structure))
    return structure


class DecorationGenerator(Generator):
    """Random decorations of small fcc / bcc / hcp supercells.

    Parameters
    ----------
    elements : symbols that may occupy sites
    lattices : parent lattices to decorate
    max_atoms : largest supercell
    max_species : most distinct elements in one candidate
    """

    name = "decoration"

    def __init__(
        self,
        elements: Sequence[str],
        lattices: Sequence[str] = ("fcc", "bcc", "hcp"),
        max_atoms: int = 16,
        max_species: int = 3,
    ):
        self.elements = list(elements)
        self.lattices = list(lattices)
        self.max_atoms = max_atoms
        self.max_species = max_species
        # one-site cells can only hold pure elements, whose formation energy is zero by definition
        min_sites = 2 if min(max_species, len(self.elements)) >= 2 else 1
        self._cells = {
            lat: [c for c in parent_cells(lat, max_atoms) if len(c) >= min_sites]
            for lat in self.lattices
        }

    def sample(self, rng: np.random.Generator) -> Candidate:
        """Draw one decorated supercell."""
        lattice = self.lattices[rng.integers(len(self.lattices))]
        cells = self._cells[lattice]
        cell = cells[rng.integers(len(cells))]
        n = len(cell)
        k_max = min(self.max_species, len(self.elements), n)
        k = int(rng.integers(min(2, k_max), k_max + 1))
        chosen = rng.choice(self.elements, size=k, replace=False)
        # every chosen element appears at least once
        occupation = np.concatenate([chosen, rng.choice(chosen, size=n - k)])
        rng.shuffle(occupation)
        structure = Structure(cell.lattice, list(occupation), cell.frac_coords)
        return Candidate(_scaled(structure), f"{self.name}:{lattice}")

    def propose(self, n, rng, parents=()) -> list[Candidate]:
        """``n`` random decorations; ``parents`` are not used."""
        return [self.sample(rng) for _ in range(n)]

    @property
    def site_counts(self) -> list[int]:
        """Sizes of the supercells this generator decorates, ascending."""
        return sorted({len(c) for cells in self._cells.values() for c in cells})

    def decorate(self, composition: Composition, rng: np.random.Generator) -> Candidate:
        """A random arrangement of exactly ``composition`` on a supercell of matching size.

        The supercell holds the composition's atom count or a whole multiple of it
        (the counts scaled up), drawn uniformly among all lattices' cells that fit.
        The ``max_species`` limit is not applied: the composition is taken as asked.

        Parameters
        ----------
        composition : whole-number atom counts of the campaign's elements, e.g. ``Cu3Au``
        rng : random stream for the choice of cell and the arrangement
        """
        composition = Composition(composition)
        counts = composition.get_el_amt_dict()
        unknown = sorted(set(counts) - set(self.elements))
        if unknown:
            raise ValueError(f"composition {composition.formula} has elements {unknown} "
                             f"outside the generator's {self.elements}")
        if any(abs(a - round(a)) > 1e-8 or a < 0 for a in counts.values()):
            raise ValueError(f"composition {composition.formula} needs whole atom counts")
        n = int(round(sum(counts.values())))
        if n < 1:
            raise ValueError("composition is empty")
        fits = [(lat, c) for lat in self.lattices for c in self._cells[lat] if len(c) % n == 0]
        if not fits:
            raise ValueError(
                f"no supercell holds {n} atoms or a multiple of it; sizes here: {self.site_counts}"
            )
        lattice, cell = fits[int(rng.integers(len(fits)))]
        k = len(cell) // n
        occupation = np.repeat(list(counts), [k * int(round(a)) for a in counts.values()])
        rng.shuffle(occupation)
        structure = Structure(cell.lattice, list(occupation), cell.frac_coords)
        return Candidate(_scaled(structure), f"{self.name}:{lattice}")


class MutationGenerator(Generator):
    """Swap two unlike atoms or substitute one atom of a parent structure.

    Parameters
    ----------
    elements : symbols a substitution may introduce
    max_species : most distinct elements a mutant may hold
    """

    name = "mutation"

    def __init__(self, elements: Sequence[str], max_species: int = 3):
        self.elements = list(elements)
        self.max_species = max_species

    def propose(self, n, rng, parents=()) -> list[Candidate]:
        """Mutants of randomly chosen ``parents`` (none without parents), up to ``n``."""
        if not parents:
            return []
        mutants = (self.mutate(parents[int(rng.integers(len(parents)))], rng) for _ in range(n))
        return [m for m in mutants if m is not None]

    def mutate(self, parent: Candidate, rng: np.random.Generator) -> Candidate | None:
        """One mutant of ``parent``, or None when no mutation applies.

        The mutation is drawn first; a mutant this process made before from the same
        parent cell by the same mutation is taken from :data:`_MUTANTS` (a copy, with its
        fingerprint) instead of built and fingerprinted again: small cells have few
        mutants, and most draws repeat one (``benchmarks/orchestration.py``).
        """
        structure = parent.structure
        species = [site.specie.symbol for site in structure]
        unlike = len(set(species)) > 1
        if unlike and rng.random() < 0.5:
            i = int(rng.integers(len(species)))
            others = [j for j, s in enumerate(species) if s != species[i]]
            j = int(rng.choice(others))
            kind, change = "swap", (i, j)
        else:
            i = int(rng.integers(len(species)))
            present = set(species)
            options = [e for e in self.elements if e != species[i]]
            if len(present) >= self.max_species and species.count(species[i]) > 1:
                options = [e for e in options if e in present]
            if not options:
                return None
            kind, change = "substitute", (i, str(rng.choice(options)))
        key = (_cell_key(structure, species), kind, change)
        if key not in _MUTANTS:
            mutant = structure.copy()
            if kind == "swap":
                mutant.replace(i, species[j])
                mutant.replace(j, species[i])
            else:
                mutant.replace(i, change[1])
                mutant = _scaled(mutant)
            if len(_MUTANTS) >= _MUTANTS_MAX:
                _MUTANTS.clear()
            _MUTANTS[key] = (mutant, fingerprint(mutant))
        mutant, print_ = _MUTANTS[key]
        return Candidate(mutant.copy(), f"{self.name}:{kind}", parent=parent.fingerprint,
                         fingerprint=print_)


_MUTANTS: dict[tuple, tuple[Structure, str]] = {}
"""Mutants made in this process, with their fingerprints, by (parent cell, mutation)."""
_MUTANTS_MAX = 100_000


def _cell_key(structure: Structure, species: list[str]) -> tuple:
    """The exact content of a cell: lattice, fractional coordinates and species."""
    return (structure.lattice.matrix.tobytes(), structure.frac_coords.tobytes(), tuple(species))


MISSES_PER_TRY = 10
"""A generator stops after ``MISSES_PER_TRY * max_tries`` draws in a row gave nothing new."""


def draw_candidates(
    quotas: Sequence[tuple[Generator, int]],
    rng: np.random.Generator,
    parents: Sequence[Candidate] = (),
    exclude: Iterable[str] | StructureIndex = (),
    max_tries: int = 20,
    filters=None,
    refused: Counter | None = None,
) -> list[Candidate]:
    """Distinct candidates, ``quota`` from each generator in turn, none seen before and
    none equal to a parent; with ``filters``
    (:class:`~matforge.engine.materials.validity.Filters`) only valid ones, each refusal
    counted in ``refused`` by its reason.

    "Seen" is what ``exclude`` holds: fingerprints, or a
    :class:`~matforge.engine.materials.dedup.StructureIndex` (a campaign's history, as
    ``StructureMatcher`` sees it), to which the candidates drawn are added. Candidates are
    also distinct from each other as the matcher sees them.

    Each generator is asked for one candidate at a time until it has given its
    quota of new ones, or ``max_tries * quota`` draws gave no more, or the last
    ``MISSES_PER_TRY * max_tries`` draws in a row gave nothing new (a small, exhausted
    search space: mutants of a few small parents, most of them seen); its shortfall is
    not made up by the others.
    """
    index = exclude if isinstance(exclude, StructureIndex) else StructureIndex(exclude)
    for p in parents:
        index.add(p.structure, p.fingerprint)
    out: list[Candidate] = []
    for generator, quota in quotas:
        goal = len(out) + quota
        misses = 0
        for _ in range(max_tries * max(quota, 1)):
            if len(out) >= goal or misses >= MISSES_PER_TRY * max_tries:
                break
            misses += 1
            for cand in generator.propose(1, rng, parents):
                if index.has_fingerprint(cand.fingerprint):
                    continue  # the cheap test first: most repeats are exact
                reason = filters.reason(cand.structure) if filters is not None else None
                if reason is not None:
                    if refused is not None:
                        refused[reason] += 1
                    continue
                if index.add(cand.structure, cand.fingerprint):
                    out.append(cand)
                    misses = 0
    return out


def propose_candidates(
    n: int,
    rng: np.random.Generator,
    decorator: DecorationGenerator,
    mutator: MutationGenerator | None = None,
    parents: Sequence[Candidate] = (),
    mutation_fraction: float = 0.5,
    exclude: Iterable[str] = (),
    max_tries: int = 20,
) -> list[Candidate]:
    """Up to ``n`` distinct candidates, none in ``exclude`` and none equal to a parent.

    A share ``mutation_fraction`` comes from mutating ``parents`` (when there are
    any); the rest are decorations, which also make up for mutations a small
    search space could not give.
    """
    n_mut = int(round(mutation_fraction * n)) if (mutator and parents) else 0
    quotas = [(mutator, n_mut)] if n_mut else []
    mutants = draw_candidates(quotas, rng, parents, exclude, max_tries)
    taken = set(exclude) | {c.fingerprint for c in mutants}
    return mutants + draw_candidates([(decorator, n - len(mutants))], rng, parents, taken,
                                     max_tries)
