"""Deduplication of candidate structures that agrees with pymatgen's ``StructureMatcher``.

Two structures are the same material when ``StructureMatcher`` (lattice, site and
angle tolerances of 0.2, 0.3 and 5°, volumes scaled, primitive cells compared)
says so. Running the matcher against every stored structure would take hours for
100,000 of them, so each structure is compared through cheap keys first:

1. the canonical fingerprint (:func:`~matforge.engine.materials.structures.fingerprint`):
   equal fingerprints are the same structure (invariant to rotation, translation,
   atom order and supercell), no matcher needed;
2. the reduced formula: a structure whose formula nothing kept shares is new, and
   costs nothing more;
3. the space group (spglib at a loose tolerance), computed only where the formula is
   shared: only structures sharing formula and space group meet the matcher.

A campaign's history takes part without being loaded: :class:`StructureIndex` is
given the stored fingerprints and reduced formulas, and a function that returns the
stored structures of one formula and space group when a candidate needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matforge.engine.materials.structures import fingerprint as fingerprint_of

SYMPREC = 0.3
"""spglib tolerance (Å) of the space-group key: loose, so that two structures the matcher
calls equal fall in one group. Measured on rock-salt MgO rattled 30 times: at 0.1 Å the
group stayed Fm-3m for 24 of 30 rattles of 0.05 Å and 1 of 30 of 0.1 Å; at 0.3 Å for all
60, and 12 of 30 rattles of 0.2 Å; of 300 rattles of up to 0.1 Å (pymatgen's ``perturb``,
seeds 0-299) one (seed 165) fell to C2/m. Structures the matcher calls equal whose symmetry
differs even at 0.3 Å (rattles of 0.2 Å and more, before relaxation; rarely less) are both
kept."""


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
    return StructureKey(fingerprint_of(structure), structure.composition.reduced_formula,
                        space_group(structure))


StoredLoader = Callable[[str, int], Iterable[tuple[str, Structure, "int | None"]]]
"""``(formula, space_group) -> (fingerprint, structure, space_group or None)`` of the stored
structures of that reduced formula whose space group is that one or was never computed."""


@dataclass
class _Kept:
    fingerprint: str
    structure: Structure
    space_group: int | None  # computed when a structure of the same formula asks
    reduced: Structure | None = None  # the matcher's primitive, Niggli-reduced cell, once


@dataclass
class StructureIndex:
    """Structures seen so far, for "is this one new?" questions.

    ``add`` returns whether a structure was new (and keeps it); ``find`` returns the
    fingerprint of the kept or stored structure it matches, or None. ``comparisons``
    counts matcher calls.

    Parameters
    ----------
    stored_fingerprints, stored_formulas : of the structures kept elsewhere (a store)
    load_stored : fetches stored structures by formula and space group (:data:`StoredLoader`)
    """

    stored_fingerprints: Iterable[str] = ()
    stored_formulas: Iterable[str] = ()
    load_stored: StoredLoader | None = None
    matcher: StructureMatcher = field(default_factory=lambda: StructureMatcher(
        ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=True, scale=True))
    comparisons: int = 0

    def __post_init__(self):
        self._fingerprints = set(self.stored_fingerprints)
        self._aliases: dict[str, str] = {}  # fingerprint -> the one kept it matched
        self._stored_formulas = set(self.stored_formulas)
        self._kept: dict[str, list[_Kept]] = {}  # by reduced formula: added and loaded
        self._loaded: set[tuple[str, int]] = set()
        self._added = 0

    def __len__(self) -> int:
        """How many structures were added (stored ones not counted)."""
        return self._added

    def has_fingerprint(self, fingerprint: str) -> bool:
        """Whether a structure with this fingerprint was kept, stored or found to match one
        (no matcher asked)."""
        return fingerprint in self._fingerprints or fingerprint in self._aliases

    def find(self, structure: Structure, fingerprint: str | None = None) -> str | None:
        """The fingerprint of the kept or stored structure ``structure`` matches, or None."""
        found, _ = self._find(structure, fingerprint or fingerprint_of(structure), None)
        return found

    def _find(self, structure, fp, group) -> tuple[str | None, int | None]:
        if fp in self._fingerprints:
            return fp, group
        if fp in self._aliases:
            return self._aliases[fp], group
        if isinstance(structure, Composition):
            return None, None  # a composition's fingerprint is its reduced formula
        formula = structure.composition.reduced_formula
        kept = self._kept.get(formula, [])
        if not kept and formula not in self._stored_formulas:
            return None, group
        group = space_group(structure) if group is None else group
        if formula in self._stored_formulas and (formula, group) not in self._loaded:
            self._loaded.add((formula, group))
            known = {k.fingerprint for k in kept}
            kept.extend(_Kept(f, s, g) for f, s, g in self.load_stored(formula, group)
                        if f not in known)
            self._kept[formula] = kept
        reduced = None
        for k in kept:
            if k.space_group is None:
                k.space_group = space_group(k.structure)
            if k.space_group == group:
                self.comparisons += 1
                # each cell reduced once, not at every comparison (pymatgen's own
                # skip_structure_reduction, for fitting one set several times)
                reduced = self._reduced(structure) if reduced is None else reduced
                k.reduced = self._reduced(k.structure) if k.reduced is None else k.reduced
                if self.matcher.fit(reduced, k.reduced, skip_structure_reduction=True):
                    return k.fingerprint, group
        return None, group

    def _reduced(self, structure: Structure) -> Structure:
        """``structure`` reduced as the matcher reduces it before comparing."""
        return self.matcher._get_reduced_structure(structure, self.matcher._primitive_cell)

    def add(self, structure: Structure, fingerprint: str | None = None) -> bool:
        """Keep ``structure`` unless it matches one kept or stored; returns whether it was new.

        A structure that matches one kept under another fingerprint leaves its own
        fingerprint behind as seen: the next with that fingerprint (the same crystal) is
        known without the matcher."""
        fp = fingerprint or fingerprint_of(structure)
        found, group = self._find(structure, fp, None)
        if found is not None:
            if found != fp:
                self._aliases[fp] = found
            return False
        self._keep(structure, fp, group)
        return True

    def insert(self, structure: Structure, key: StructureKey) -> None:
        """Keep ``structure`` without looking for it first (one known to be new)."""
        self._keep(structure, key.fingerprint, key.space_group)

    def _keep(self, structure: Structure, fp: str, group: int | None) -> None:
        self._fingerprints.add(fp)
        if not isinstance(structure, Composition):
            self._kept.setdefault(structure.composition.reduced_formula, []).append(
                _Kept(fp, structure, group))
        self._added += 1

    def extend(self, structures: Iterable[Structure]) -> list[bool]:
        return [self.add(s) for s in structures]
