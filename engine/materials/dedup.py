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
stored structures of one formula and space group when a candidate needs them. What the
matcher learns (space groups, reduced cells, verdicts on pairs) is kept by fingerprint in
a :class:`MatchMemo`, which a campaign's rounds share.
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


class MatchMemo:
    """What the matcher learned, by fingerprint: each structure's space group and reduced
    cell (the matcher's primitive, Niggli-reduced one), and the verdict on each pair it
    compared.

    An index makes its own. A campaign's run shares one among its rounds' indexes
    (:func:`matforge.engine.loop.round.history`), so candidates drawn again round after
    round (mutants of the same parents), and the stored structures they meet, are
    grouped, reduced and compared once per run rather than once per round. Equal
    fingerprints are the same structure up to rotation, translation, atom order and
    supercell, under which all three are invariant. Each table forgets its older half
    when it reaches its limit (``structures`` cells and groups, ``pairs`` verdicts);
    what it forgot is worked out again when asked. Its verdicts are those of the
    index's default matcher (tolerances 0.2, 0.3 and 5°).
    """

    def __init__(self, structures: int = 20_000, pairs: int = 200_000):
        self.limits = (structures, pairs)
        self._groups: dict[str, int] = {}
        self._reduced: dict[str, Structure] = {}
        self._verdicts: dict[tuple[str, str], bool] = {}

    @staticmethod
    def _remember(table: dict, key, value, limit: int):
        if len(table) >= limit:
            for old in list(table)[: limit // 2]:  # the oldest half, in insertion order
                table.pop(old, None)
        table[key] = value
        return value

    def group(self, fingerprint: str, structure: Structure) -> int:
        found = self._groups.get(fingerprint)
        if found is None:
            found = self._remember(self._groups, fingerprint, space_group(structure),
                                   self.limits[0])
        return found

    def know_group(self, fingerprint: str, group: int) -> None:
        self._groups.setdefault(fingerprint, group)

    def reduced(self, fingerprint: str, structure: Structure,
                reduce: Callable[[Structure], Structure]) -> Structure:
        found = self._reduced.get(fingerprint)
        if found is None:
            found = self._remember(self._reduced, fingerprint, reduce(structure),
                                   self.limits[0])
        return found

    def verdict(self, a: str, b: str) -> bool | None:
        """Whether the matcher called ``a`` and ``b`` the same, or None if never asked."""
        return self._verdicts.get((a, b) if a < b else (b, a))

    def record(self, a: str, b: str, same: bool) -> bool:
        return self._remember(self._verdicts, (a, b) if a < b else (b, a), same,
                              self.limits[1])


@dataclass
class _Kept:
    fingerprint: str
    structure: Structure


@dataclass
class StructureIndex:
    """Structures seen so far, for "is this one new?" questions.

    ``add`` returns whether a structure was new (and keeps it); ``find`` returns the
    fingerprint of the kept or stored structure it matches, or None. ``comparisons``
    counts matcher calls (verdicts the memo held are not calls).

    Parameters
    ----------
    stored_fingerprints, stored_formulas : of the structures kept elsewhere (a store)
    load_stored : fetches stored structures by formula and space group (:data:`StoredLoader`)
    memo : space groups, reduced cells and verdicts known from earlier indexes
    """

    stored_fingerprints: Iterable[str] = ()
    stored_formulas: Iterable[str] = ()
    load_stored: StoredLoader | None = None
    matcher: StructureMatcher = field(default_factory=lambda: StructureMatcher(
        ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=True, scale=True))
    comparisons: int = 0
    memo: MatchMemo = field(default_factory=MatchMemo)

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
        memo = self.memo
        group = memo.group(fp, structure) if group is None else group
        if formula in self._stored_formulas and (formula, group) not in self._loaded:
            self._loaded.add((formula, group))
            known = {k.fingerprint for k in kept}
            for f, s, g in self.load_stored(formula, group):
                if f not in known:
                    if g is not None:
                        memo.know_group(f, g)
                    kept.append(_Kept(f, s))
            self._kept[formula] = kept
        for k in kept:
            if memo.group(k.fingerprint, k.structure) != group:
                continue
            same = memo.verdict(fp, k.fingerprint)
            if same is None:
                self.comparisons += 1
                # each cell reduced once, not at every comparison (pymatgen's own
                # skip_structure_reduction, for fitting one set several times)
                same = memo.record(fp, k.fingerprint, self.matcher.fit(
                    memo.reduced(fp, structure, self._reduced),
                    memo.reduced(k.fingerprint, k.structure, self._reduced),
                    skip_structure_reduction=True))
            if same:
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
            if group is not None:
                self.memo.know_group(fp, group)
            self._kept.setdefault(structure.composition.reduced_formula, []).append(
                _Kept(fp, structure))
        self._added += 1

    def extend(self, structures: Iterable[Structure]) -> list[bool]:
        return [self.add(s) for s in structures]
