"""Random crystals with a chosen space-group symmetry (PyXtal), for a composition.

PyXtal places the atoms of a composition on Wyckoff positions of a space group
so that the crystal has exactly that symmetry, keeping atoms apart by its
tolerance matrix (a fraction of the sum of covalent radii). The volume is
PyXtal's estimate (1.1 times the atoms' volumes); a crystal whose symmetry,
as pymatgen's ``SpacegroupAnalyzer`` finds it, is not the group asked for is
drawn again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymatgen.core import Composition

from matforge.engine.materials.chemistry import charge_balanced_compositions
from matforge.engine.materials.generate import Candidate, Generator

COMMON_SPACE_GROUPS = (2, 12, 14, 62, 63, 139, 166, 186, 191, 194, 216, 221, 225, 227, 229)
"""Space groups of most known inorganic crystals' structure types, low to high symmetry."""


class SymmetricGenerator(Generator):
    """Random crystals in chosen space groups (PyXtal), minimum distances respected.

    Compositions are the campaign's charge-balanced ones where its elements allow
    (:func:`~matforge.engine.materials.chemistry.charge_balanced_compositions`), else
    random compositions of 2..``max_species`` elements; each is placed, with as many
    formula units as fit in ``max_atoms`` (primitive cell), in a space group drawn from
    ``space_groups`` that admits it.

    Parameters
    ----------
    elements : the campaign's elements
    space_groups : international numbers (1-230) to draw from
    max_atoms : most atoms in a candidate's primitive cell
    max_species : most distinct elements in a candidate
    formula_atoms : most atoms in a formula unit of a charge-balanced composition
    """

    name = "symmetric"

    def __init__(self, elements: Sequence[str], space_groups: Sequence[int] = COMMON_SPACE_GROUPS,
                 max_atoms: int = 16, max_species: int = 3, formula_atoms: int = 8):
        groups = [int(g) for g in space_groups]
        bad = [g for g in groups if not 1 <= g <= 230]
        if bad or not groups:
            raise ValueError(f"space_groups: {bad or 'none given'}: numbers 1-230")
        self.elements = list(elements)
        self.space_groups = groups
        self.max_atoms = int(max_atoms)
        self.max_species = int(max_species)
        self.compositions = charge_balanced_compositions(
            self.elements, min(int(formula_atoms), self.max_atoms), self.max_species)
        self.charged = bool(self.compositions)

    def _composition(self, rng: np.random.Generator) -> Composition:
        if self.charged:
            return self.compositions[int(rng.integers(len(self.compositions)))]
        k = int(rng.integers(min(2, len(self.elements)),
                             min(self.max_species, len(self.elements)) + 1))
        chosen = rng.choice(self.elements, size=k, replace=False)
        return Composition({str(e): int(rng.integers(1, 4)) for e in chosen})

    def sample(self, rng: np.random.Generator) -> Candidate | None:
        """One crystal, or None when the drawn group admits no arrangement of the drawn
        composition within ``max_atoms``."""
        from pyxtal import pyxtal
        from pyxtal.symmetry import Group

        composition = self._composition(rng)
        counts = {e.symbol: int(round(a)) for e, a in composition.items()}
        group = self.space_groups[int(rng.integers(len(self.space_groups)))]
        # atoms are counted in the conventional cell: a centred one holds several primitive
        centring = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "R": 3, "F": 4}[Group(group).symbol[0]]
        units = int(rng.integers(1, max(1, centring * self.max_atoms
                                        // sum(counts.values())) + 1))
        crystal = pyxtal()
        try:
            crystal.from_random(3, group, list(counts), [n * units for n in counts.values()],
                                random_state=rng, max_count=5)
        except Exception:  # pyxtal raises its own kinds for a composition a group cannot hold
            return None
        if not crystal.valid:
            return None
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        structure = crystal.to_pymatgen().get_primitive_structure()
        if len(structure) > self.max_atoms:
            return None
        # an arrangement may have more symmetry than asked for in a smaller cell (two
        # Wyckoff sets of one element that together form a simpler lattice): not this group
        if SpacegroupAnalyzer(structure, symprec=0.01).get_space_group_number() != group:
            return None
        return Candidate(structure, f"{self.name}:{group}")

    def propose(self, n, rng, parents=()) -> list[Candidate]:
        """Up to ``n`` crystals (a draw a group cannot hold is drawn again, 10 times at most);
        ``parents`` are not used."""
        out = []
        for _ in range(n):
            for _ in range(10):
                candidate = self.sample(rng)
                if candidate is not None:
                    out.append(candidate)
                    break
        return out
