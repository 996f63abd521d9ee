"""Deduplication of candidate structures that agrees with pymatgen's ``StructureMatcher``.

Two structures are the same material when ``StructureMatcher`` (lattice, site and
angle tolerances of 0.2, 0.3 and 5°, volumes scaled, primitive cells compared)
says so. Running the matcher against every stored structure would take hours for
100,000 of them, so each structure gets a cheap key first:

1. the canonical fingerprint (:func:`~matforge.engine.materials.structures.fingerprint`):
   equal fingerprints are the same structure (invariant to rotation, translation,
   atom order and supercell), no matcher needed;
2. the reduced formula and the space group (spglib at a loose tolerance): only
   structures sharing both are compared with the matcher.

The key is computed once per structure (:func:`structure_key`) and may be kept, so
an index of stored structures is rebuilt from keys without recomputing symmetry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matforge.engine.materials.structures import fingerprint

SYMPREC = 0.3
"""spglib tolerance (Å) of the space-group key: loose, so that two structures the matcher
calls equal fall in one group. Measured on rock-salt MgO rattled 30 times: at 0.1 Å the
group stayed Fm-3m for 24 of 30 rattles of 0.05 Å and 1 of 30 of 0.1 Å; at 0.3 Å for all
60, and 12 of 30 rattles of 0.2 Å. Structures the matcher calls equal whose symmetry
differs even at 0.3 Å (rattles of 0.2 Å and more, before relaxation) are both kept."""


def space_group(structure: Structure) -> int:
    """The international number of ``structure``'s space group at :data:`SYMPREC` (1 when
    spglib finds none)."""
    try:
        return int(SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_number())
    except Exception:  # spglib fails on some degenerate cells: no symmetry claimed
        return 1


@dataclass(frozen=True)
class StructureKey:
    """What the index compares before the matcher: fingerprint, reduced formula, space group."""

    fingerprint: str
    formula: str
    space_group: int


def structure_key(structure: Structure) -> StructureKey:
    return StructureKey(fingerprint(structure), structure.composition.reduced_formula,
                        space_group(structure))


@dataclass
class StructureIndex:
    """Structures seen so far, for "is this one new?" questions.

    ``add`` returns whether a structure was new (and keeps it); ``find`` returns the
    kept structure it matches, or None. ``comparisons`` counts matcher calls.
    """

    matcher: StructureMatcher = field(default_factory=lambda: StructureMatcher(
        ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=True, scale=True))
    comparisons: int = 0
    _fingerprints: dict[str, int] = field(default_factory=dict)
    _groups: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    _structures: list[Structure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._structures)

    def find(self, structure: Structure, key: StructureKey | None = None) -> int | None:
        """The index of the kept structure ``structure`` matches, or None."""
        key = key or structure_key(structure)
        if key.fingerprint in self._fingerprints:
            return self._fingerprints[key.fingerprint]
        for i in self._groups.get((key.formula, key.space_group), ()):
            self.comparisons += 1
            if self.matcher.fit(structure, self._structures[i]):
                return i
        return None

    def add(self, structure: Structure, key: StructureKey | None = None) -> bool:
        """Keep ``structure`` unless it matches one kept already; returns whether it was new."""
        key = key or structure_key(structure)
        if self.find(structure, key) is not None:
            return False
        self.insert(structure, key)
        return True

    def insert(self, structure: Structure, key: StructureKey) -> None:
        """Keep ``structure`` without looking for it first (one known to be new: a stored
        result, which was deduplicated when it was proposed)."""
        i = len(self._structures)
        self._structures.append(structure)
        self._fingerprints[key.fingerprint] = i
        self._groups.setdefault((key.formula, key.space_group), []).append(i)

    def extend(self, structures: Iterable[Structure]) -> list[bool]:
        return [self.add(s) for s in structures]
