"""Ionic chemistry for generators: charge-balanced compositions, prototypes, substitution.

Oxidation states are the ones seen in the ICSD (pymatgen's
``Element.icsd_oxidation_states``, shipped with pymatgen). A composition is
charge-balanced when its anions (its most electronegative elements, taking
negative states) and its cations (the rest, taking positive states) can be given
states that sum to zero; an element's atoms may take different states (mixed
valence, as Mn3+/Mn4+ in LiMn2O4), as in pymatgen's ``oxi_state_guesses``.

Structures come from common prototypes: a cation and an anion sublattice
(rock salt, zinc blende, wurtzite, fluorite, perovskite, spinel) decorated with
a composition whose cation : anion ratio fits, scaled so that the shortest
cation–anion distance is the sum of the ions' Shannon radii.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from itertools import product

import numpy as np
from pymatgen.core import Composition, Element, Lattice, Species, Structure

from matforge.engine.materials.generate import Candidate, Generator


@cache
def oxidation_states(symbol: str) -> tuple[int, ...]:
    """ICSD oxidation states of an element (its common ones where the ICSD lists none)."""
    element = Element(symbol)
    return tuple(element.icsd_oxidation_states or element.common_oxidation_states)


def _sums(states: Sequence[int], n: int) -> set[int]:
    """Every total charge ``n`` atoms can carry, each in one of ``states``."""
    totals = {0}
    for _ in range(n):
        totals = {t + s for t in totals for s in states}
    return totals


def charge_states(counts: dict[str, int]) -> dict[str, float] | None:
    """Mean oxidation state of each element of a charge-balanced composition (None: none).

    Anions are the ``k`` most electronegative elements (each in its negative states),
    cations the rest (positive states), for the smallest ``k`` that balances; each
    element's atoms may split over its states. Of the balancing assignments, the one
    closest to each element's first listed state is returned.
    """
    symbols = sorted(counts, key=lambda s: Element(s).X)  # cations first
    for k in range(1, len(symbols)):
        anions = symbols[-k:]
        options = {}
        for s in symbols:
            sign = -1 if s in anions else 1
            states = [q for q in oxidation_states(s) if q * sign > 0]
            if not states:
                break
            options[s] = sorted(_sums(states, counts[s]))
        else:
            found = _balance(options, counts)
            if found is not None:
                return found
    return None


def _balance(options: dict[str, list[int]], counts: dict[str, int]) -> dict[str, float] | None:
    """Totals per element, one from each option list, summing to zero (fewest changes
    of state first: the totals nearest the elements' usual single states)."""
    symbols = list(options)
    best, best_cost = None, math.inf
    # small: at most a few hundred totals per element for formula units of <= 20 atoms
    for totals in product(*(options[s] for s in symbols[:-1])):
        rest = -sum(totals)
        if rest not in set(options[symbols[-1]]):
            continue
        chosen = dict(zip(symbols, [*totals, rest]))
        cost = sum(abs(chosen[s] / counts[s] - oxidation_states(s)[0]) for s in symbols)
        if cost < best_cost:
            best, best_cost = chosen, cost
    if best is None:
        return None
    return {s: best[s] / counts[s] for s in symbols}


def charge_balanced_compositions(elements: Sequence[str], max_atoms: int = 12,
                                 max_species: int = 3) -> list[Composition]:
    """Every charge-balanced reduced composition of 2..``max_species`` of ``elements`` with at
    most ``max_atoms`` atoms per formula unit, sorted by formula."""
    found: dict[str, Composition] = {}
    elements = list(dict.fromkeys(elements))
    for counts in product(range(max_atoms + 1), repeat=len(elements)):
        present = {e: c for e, c in zip(elements, counts) if c}
        if not 2 <= len(present) <= max_species or sum(present.values()) > max_atoms:
            continue
        if math.gcd(*present.values()) != 1:
            continue  # the reduced formula is counted once
        if charge_states(present) is not None:
            composition = Composition(present)
            found[composition.reduced_formula] = composition
    return [found[k] for k in sorted(found)]


@dataclass(frozen=True)
class Prototype:
    """A structure prototype: its conventional cell at lattice constant 1 with each site
    marked cation (``"A"``, ``"B"``: distinct cation sites) or anion (``"X"``)."""

    name: str
    structure: Structure  # species are placeholders; roles in site_properties["role"]

    @property
    def roles(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for role in self.structure.site_properties["role"]:
            counts[role] = counts.get(role, 0) + 1
        return counts


IONIC_PLACEHOLDERS = {"A": "Na", "B": "Mg", "X": "Cl"}


def prototype_cell(name: str, lattice: Lattice, group: str, sites: list[tuple[str, list[float]]],
               placeholders: dict[str, str] = IONIC_PLACEHOLDERS) -> Prototype:
    """The primitive cell of ``sites`` (role, fractional coordinates) in space group ``group``,
    each site's role kept; ``placeholders`` stand in one distinct element per role, so that
    the primitive-cell search keeps the roles apart."""
    # built at a realistic size: the primitive-cell search's tolerance is in Å
    structure = Structure.from_spacegroup(group, Lattice(lattice.matrix * 5.0),
                                          [placeholders[r] for r, _ in sites],
                                          [c for _, c in sites])
    primitive = structure.get_primitive_structure()
    primitive.scale_lattice(primitive.volume / 125.0)
    role_of = {v: k for k, v in placeholders.items()}
    primitive.add_site_property("role", [role_of[s.specie.symbol] for s in primitive])
    return Prototype(name, primitive)


@cache
def builtin_prototypes() -> dict[str, Prototype]:
    """The built-in ionic prototypes, primitive cells."""
    cubic = Lattice.cubic(1.0)
    return {p.name: p for p in (
        prototype_cell("rocksalt", cubic, "Fm-3m", [("A", [0, 0, 0]), ("X", [0.5, 0.5, 0.5])]),
        prototype_cell("zincblende", cubic, "F-43m", [("A", [0, 0, 0]), ("X", [0.25, 0.25, 0.25])]),
        prototype_cell("wurtzite", Lattice.hexagonal(1.0, math.sqrt(8 / 3)), "P6_3mc",
                   [("A", [1 / 3, 2 / 3, 0]), ("X", [1 / 3, 2 / 3, 0.375])]),
        prototype_cell("fluorite", cubic, "Fm-3m", [("A", [0, 0, 0]), ("X", [0.25, 0.25, 0.25])]),
        prototype_cell("perovskite", cubic, "Pm-3m",
                   [("A", [0, 0, 0]), ("B", [0.5, 0.5, 0.5]), ("X", [0.5, 0.5, 0])]),
        # origin choice 1: A on 8a, B on 16d, X on 32e
        prototype_cell("spinel", cubic, "Fd-3m",
                   [("A", [0, 0, 0]), ("B", [0.625, 0.625, 0.625]),
                    ("X", [0.3875, 0.3875, 0.3875])]),
    )}


ROMAN = {2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI", 7: "VII", 8: "VIII", 9: "IX", 10: "X",
         12: "XII"}


def ionic_radius(symbol: str, charge: float, coordination: int | None = None) -> float:
    """Shannon radius (Å) of an ion at its nearest listed integer charge, for
    ``coordination`` neighbours where Shannon lists it (high spin first), else the ion's
    default radius, else the atom's."""
    species = Species(symbol, _nearest_state(symbol, charge))
    if coordination in ROMAN:
        for spin in ("", "High Spin", "Low Spin"):
            try:
                with warnings.catch_warnings():  # "spin '' not consistent with High Spin"
                    warnings.simplefilter("ignore")
                    return float(species.get_shannon_radius(ROMAN[coordination], spin))
            except (KeyError, ValueError):
                continue
    try:
        with warnings.catch_warnings():  # "no default radius for Mn4+, using low-spin data"
            warnings.simplefilter("ignore")
            radius = species.ionic_radius
    except ValueError:
        radius = None
    return float(radius) if radius else float(Element(symbol).atomic_radius or 1.5)


def scale_to_radii(structure: Structure, charges: dict[str, float]) -> Structure:
    """``structure`` scaled as little as needed for every cation to sit at least the sum of
    the two ions' Shannon radii (for their coordination here) from its nearest anion: the
    tightest cation–anion pair touches."""
    structure = structure.copy()
    symbols = [site.specie.symbol for site in structure]
    # the first shells lie within a few mean atomic spacings
    reach = 2.5 * (structure.volume / len(structure)) ** (1 / 3)
    around = structure.get_all_neighbors(reach)

    def shell(i: int, opposite) -> tuple[float, int, int]:
        """(distance, index, count) of site i's nearest sites of the other sign."""
        neighbours = [n for n in around[i] if opposite(charges[n.specie.symbol])]
        nearest = min(neighbours, key=lambda n: n.nn_distance)
        count = sum(1 for n in neighbours if n.nn_distance < nearest.nn_distance * 1.1)
        return nearest.nn_distance, nearest.index, count

    radius: dict[int, float] = {}
    for i, symbol in enumerate(symbols):
        _, _, count = shell(i, (lambda q: q > 0) if charges[symbol] < 0 else (lambda q: q < 0))
        radius[i] = ionic_radius(symbol, charges[symbol], count)
    scale = 0.0
    for i, symbol in enumerate(symbols):
        if charges[symbol] > 0:
            distance, j, _ = shell(i, lambda q: q < 0)
            scale = max(scale, (radius[i] + radius[j]) / distance)
    structure.scale_lattice(structure.volume * scale**3)
    return structure


def decorate(prototype: Prototype, composition: Composition, rng: np.random.Generator,
             max_atoms: int) -> Structure | None:
    """``composition`` on ``prototype`` (a supercell of it if needed), None if it does not fit.

    Cations go on the cation sites and anions on the anion sites in the composition's
    proportions. Where the prototype has two cation sites (A, B) and the composition two
    cations in their ratio, the larger cation takes A; otherwise cations are spread at
    random over all cation sites (an ordered superstructure, e.g. Li2MnO3 on rock salt).
    """
    counts = {s: int(round(a)) for s, a in composition.get_el_amt_dict().items()}
    charges = charge_states(counts)
    if charges is None:
        return None
    cations = {s: n for s, n in counts.items() if charges[s] > 0}
    anions = {s: n for s, n in counts.items() if charges[s] < 0}
    roles = prototype.roles
    n_cation_sites = roles.get("A", 0) + roles.get("B", 0)
    n_anion_sites = roles.get("X", 0)
    n_cat, n_an = sum(cations.values()), sum(anions.values())
    # the smallest number of formula units and of prototype cells that match
    for units in range(1, max_atoms // (n_cat + n_an) + 1):
        cells, rest = divmod(units * n_cat, n_cation_sites)
        if rest == 0 and cells * n_anion_sites == units * n_an:
            break
    else:
        return None
    size = _supercell(cells)
    if size is None or cells * len(prototype.structure) > max_atoms:
        return None
    cell = prototype.structure * size
    role = cell.site_properties["role"]
    ab = "B" in roles and len(cations) == 2
    if ab:
        big, small = sorted(cations, key=lambda s: -ionic_radius(s, charges[s]))
        ab = cations[big] * roles["B"] == cations[small] * roles["A"]
    species = [""] * len(cell)
    for wanted, pool in ((("X",), anions), (("A", "B"), cations)):
        sites = [i for i, r in enumerate(role) if r in wanted]
        if wanted == ("A", "B") and ab:
            for site_role, symbol in (("A", big), ("B", small)):
                for i in (i for i in sites if role[i] == site_role):
                    species[i] = symbol
            continue
        occupation = np.repeat(list(pool), [pool[s] * units for s in pool])
        rng.shuffle(occupation)
        for i, symbol in zip(sites, occupation):
            species[i] = str(symbol)
    structure = Structure(cell.lattice, species, cell.frac_coords)
    return scale_to_radii(structure, charges)


def _supercell(cells: int) -> tuple[int, int, int] | None:
    """The most compact diagonal supercell of ``cells`` cells."""
    shapes = [(a, b, cells // (a * b)) for a in range(1, cells + 1) for b in range(a, cells + 1)
              if cells % (a * b) == 0 and cells // (a * b) >= b]
    return min(shapes, key=lambda s: max(s) / min(s)) if shapes else None


def _oxidized(structure: Structure) -> dict[str, float] | None:
    """Mean oxidation state of each element of a structure (None: not charge-balanced)."""
    counts = {e.symbol: int(round(a)) for e, a in structure.composition.items()}
    return charge_states(counts)


class ChargeBalancedGenerator(Generator):
    """Charge-balanced compositions of the campaign's elements on ionic prototypes.

    Every reduced composition of 2..``max_species`` elements with at most
    ``formula_atoms`` atoms per formula unit whose ICSD oxidation states can sum to zero
    (:func:`charge_balanced_compositions`) is drawn with equal weight, and placed on a
    prototype its cation : anion ratio fits (:func:`decorate`), with at most
    ``max_atoms`` atoms in the cell.

    Parameters
    ----------
    elements : the campaign's elements (one at least must form anions, e.g. O, N, S, F)
    max_atoms : most atoms in a candidate's cell
    max_species : most distinct elements in a candidate
    formula_atoms : most atoms in a formula unit
    prototypes : names among :func:`builtin_prototypes` (default: all)
    """

    name = "charge-balanced"

    def __init__(self, elements: Sequence[str], max_atoms: int = 16, max_species: int = 3,
                 formula_atoms: int = 12, prototypes: Sequence[str] | None = None):
        known = builtin_prototypes()
        chosen = list(known) if prototypes is None else list(prototypes)
        unknown = sorted(set(chosen) - set(known))
        if unknown or not chosen:
            raise ValueError(f"prototypes: {unknown or 'none'} unknown; choose from "
                             f"{', '.join(known)}")
        self.elements = list(elements)
        self.max_atoms = int(max_atoms)
        self.prototypes = [known[p] for p in chosen]
        self.compositions = charge_balanced_compositions(
            self.elements, min(int(formula_atoms), self.max_atoms), int(max_species))
        if not self.compositions:
            raise ValueError(f"no charge-balanced composition of {', '.join(self.elements)} "
                             f"with at most {formula_atoms} atoms per formula unit")

    def propose(self, n, rng, parents=()) -> list[Candidate]:
        """Up to ``n`` candidates; ``parents`` are not used."""
        out = []
        for _ in range(n):
            for _ in range(20):  # compositions no prototype fits are drawn again
                composition = self.compositions[int(rng.integers(len(self.compositions)))]
                prototype = self.prototypes[int(rng.integers(len(self.prototypes)))]
                structure = decorate(prototype, composition, rng, self.max_atoms)
                if structure is not None:
                    out.append(Candidate(structure, f"{self.name}:{prototype.name}"))
                    break
        return out


class SubstitutionGenerator(Generator):
    """Ion substitutions in seed structures and the campaign's best results, ranked by
    pymatgen's data-mined substitution probabilities (Hautier et al., Inorg. Chem. 2011).

    One element of a source structure is replaced on all its sites by a campaign element
    of the same sign of charge, drawn with the probability pymatgen gives that
    substitution (those below ``threshold`` are never made); the result must be
    charge-balanced, and is rescaled to the new ions' radii.

    Parameters
    ----------
    elements : the campaign's elements (what may be substituted in)
    seeds : CIF or POSCAR files of seed structures (relative to the campaign file)
    threshold : least conditional substitution probability
    """

    name = "substitution"
    path_parameters = ("seeds",)

    def __init__(self, elements: Sequence[str], seeds: Sequence[str] = (),
                 threshold: float = 1e-3):
        self.elements = list(elements)
        self.seeds = [str(s) for s in seeds]
        self.threshold = float(threshold)
        self._seed_structures = []
        for path in self.seeds:
            try:
                structure = Structure.from_file(path)
            except Exception as error:  # pymatgen raises many kinds for a bad file
                raise ValueError(f"seeds: cannot read {path}: {error}") from None
            if _oxidized(structure) is None:
                raise ValueError(f"seeds: {path} ({structure.composition.reduced_formula}) is "
                                 "not charge-balanced in ICSD oxidation states")
            self._seed_structures.append(Candidate(structure, "seed"))

    @staticmethod
    @cache
    def _probabilities():
        from pymatgen.analysis.structure_prediction.substitution_probability import (
            SubstitutionProbability,
        )

        return SubstitutionProbability()

    def substitutions(self, structure: Structure) -> list[tuple[str, str, float]]:
        """``(old element, new element, probability)`` for every allowed substitution."""
        charges = _oxidized(structure)
        if charges is None:
            return []
        table = self._probabilities()
        out = []
        for old, q_old in charges.items():
            old_species = Species(old, _nearest_state(old, q_old))
            for new in self.elements:
                if new == old or new in charges:
                    continue
                best = 0.0
                for q in oxidation_states(new):
                    if q * q_old > 0:
                        try:
                            best = max(best, table.cond_prob(Species(new, q), old_species))
                        except (KeyError, ValueError):
                            continue
                if best >= self.threshold:
                    out.append((old, new, best))
        return out

    def propose(self, n, rng, parents=()) -> list[Candidate]:
        """Up to ``n`` substituted structures of the seeds and ``parents``."""
        sources = self._seed_structures + list(parents)
        out = []
        for _ in range(n if sources else 0):
            source = sources[int(rng.integers(len(sources)))]
            options = self.substitutions(source.structure)
            if not options:
                continue
            weights = np.array([p for _, _, p in options])
            old, new, _ = options[int(rng.choice(len(options), p=weights / weights.sum()))]
            structure = source.structure.copy()
            structure.replace_species({old: new})
            charges = _oxidized(structure)
            if charges is None:
                continue
            out.append(Candidate(scale_to_radii(structure, charges),
                                 f"{self.name}:{old}->{new}", parent=source.fingerprint))
        return out


def _nearest_state(symbol: str, charge: float) -> int:
    """The ICSD oxidation state of ``symbol`` of the same sign nearest to ``charge``."""
    states = [q for q in oxidation_states(symbol) if q * charge > 0] or [round(charge)]
    return min(states, key=lambda s: abs(s - charge))
