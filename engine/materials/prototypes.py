"""Intermetallic prototypes (Heusler, half-Heusler, B2, L1_2, L1_0) decorated with a
campaign's elements, for alloy campaigns.

Each prototype is the primitive cell of an ordered structure type with every site
marked by the Wyckoff site class it belongs to (``"X"``, ``"Y"``, ``"Z"`` for the
Heusler families, ``"A"``, ``"B"`` for the binaries); a decoration puts one distinct
element on each class. Site classes and Wyckoff positions follow the usual settings:

==================  ============  ===========  ==============================================
name                type          group        sites (conventional cell)
==================  ============  ===========  ==============================================
``heusler``         L2_1 Cu2MnAl  Fm-3m (225)  X 8c (1/4,1/4,1/4), Y 4a (0,0,0), Z 4b (1/2,...)
``inverse-heusler`` XA Hg2CuTi    F-43m (216)  X 4a and 4c, Y 4b, Z 4d (3/4,3/4,3/4)
``half-heusler``    C1b MgAgAs    F-43m (216)  X 4a, Y 4b, Z 4c; 4d empty
``B2``              CsCl          Pm-3m (221)  A 1a (0,0,0), B 1b (1/2,1/2,1/2)
``L1_2``            Cu3Au         Pm-3m (221)  A 3c (0,1/2,1/2), B 1a (0,0,0)
``L1_0``            CuAu          P4/mmm (123) A 1a (0,0,0), B 1d (1/2,1/2,1/2); a = c/sqrt(2)
==================  ============  ===========  ==============================================

The L1_0 cell is the fcc-derived tetragonal one at the ideal ratio (c/a = 1 in the
face-centred setting); a relaxation finds the real one.

A decorated cell is scaled to Zen's law (Vegard's law for volumes): its volume per
atom is the composition-weighted mean of the elements' own volumes per atom
(:func:`atomic_volume`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cache

import numpy as np
from pymatgen.core import Lattice, Structure

from matforge.engine.materials.chemistry import Prototype, prototype_cell
from matforge.engine.materials.generate import Candidate, Generator
from matforge.engine.materials.structures import atomic_volume

_PLACEHOLDERS = {"X": "Li", "Y": "Be", "Z": "B", "A": "Na", "B": "Mg"}
"""A distinct stand-in element per site class, so that the primitive-cell search keeps
the classes apart."""


def _intermetallic(name: str, lattice: Lattice, group: str,
                   sites: list[tuple[str, list[float]]]) -> Prototype:
    return prototype_cell(name, lattice, group, sites, _PLACEHOLDERS)


@cache
def intermetallic_prototypes() -> dict[str, Prototype]:
    """The intermetallic prototypes by name, primitive cells whose sites carry their
    site class in ``site_properties["role"]``."""
    cubic = Lattice.cubic(1.0)
    quarter, half, three = [0.25] * 3, [0.5] * 3, [0.75] * 3
    return {p.name: p for p in (
        _intermetallic("heusler", cubic, "Fm-3m",
                       [("X", quarter), ("Y", [0, 0, 0]), ("Z", half)]),
        _intermetallic("inverse-heusler", cubic, "F-43m",
                       [("X", [0, 0, 0]), ("X", quarter), ("Y", half), ("Z", three)]),
        _intermetallic("half-heusler", cubic, "F-43m",
                       [("X", [0, 0, 0]), ("Y", half), ("Z", quarter)]),
        _intermetallic("B2", cubic, "Pm-3m", [("A", [0, 0, 0]), ("B", half)]),
        _intermetallic("L1_2", cubic, "Pm-3m", [("A", [0, 0.5, 0.5]), ("B", [0, 0, 0])]),
        _intermetallic("L1_0", Lattice.tetragonal(1 / math.sqrt(2), 1.0), "P4/mmm",
                       [("A", [0, 0, 0]), ("B", half)]),
    )}


def site_classes(prototype: Prototype) -> list[str]:
    """A prototype's site classes, sorted (``["A", "B"]``, ``["X", "Y", "Z"]``)."""
    return sorted(prototype.roles)


def decorate_prototype(prototype: Prototype, occupants: Mapping[str, str]) -> Structure:
    """``prototype`` with the element ``occupants[role]`` on every site of each class,
    scaled to the mean of the elements' volumes per atom (:func:`atomic_volume`).

    Parameters
    ----------
    prototype : one of :func:`intermetallic_prototypes`
    occupants : element symbol by site class, e.g. ``{"X": "Cu", "Y": "Mn", "Z": "Al"}``
    """
    missing = sorted(set(prototype.roles) - set(occupants))
    if missing:
        raise ValueError(f"occupants: no element for site class {missing} of {prototype.name}")
    cell = prototype.structure
    species = [occupants[role] for role in cell.site_properties["role"]]
    # no "role" on the candidate: a mutation that replaces a site would leave it half set
    structure = Structure(cell.lattice, species, cell.frac_coords)
    structure.scale_lattice(sum(atomic_volume(s) for s in species))
    return structure


class PrototypeGenerator(Generator):
    """The campaign's elements on intermetallic prototypes (:func:`intermetallic_prototypes`).

    Each candidate is a prototype drawn with equal weight among those that fit, with
    distinct elements drawn for its site classes (Heusler X2YZ: three, B2 AB: two),
    scaled to the mean of its elements' volumes (:func:`decorate_prototype`). A prototype
    fits when its site classes are no more than the elements (and ``max_species``) and its
    primitive cell holds at most ``max_atoms`` atoms. Assignments related by the
    prototype's symmetry (Y and Z of a Heusler) give the same crystal; the caller drops
    the repeats.

    Parameters
    ----------
    elements : the campaign's elements (two at least)
    max_atoms : most atoms in a candidate's cell
    prototypes : names among :func:`intermetallic_prototypes` (default: all)
    max_species : most distinct elements in a candidate
    """

    name = "prototype"

    def __init__(self, elements: Sequence[str], max_atoms: int = 16,
                 prototypes: Sequence[str] | None = None, max_species: int = 3):
        known = intermetallic_prototypes()
        chosen = list(known) if prototypes is None else list(prototypes)
        unknown = [p for p in chosen if p not in known]
        if unknown or not chosen:
            raise ValueError(f"prototypes: {unknown or 'none'} unknown; choose from "
                             f"{', '.join(known)}")
        self.elements = list(dict.fromkeys(str(e) for e in elements))
        for symbol in self.elements:
            atomic_volume(symbol)  # a ValueError naming the element
        self.max_atoms = int(max_atoms)
        self.max_species = int(max_species)
        species = min(len(self.elements), self.max_species)
        self.prototypes = [known[p] for p in chosen
                           if len(known[p].roles) <= species
                           and len(known[p].structure) <= self.max_atoms]
        if not self.prototypes:
            needs = ", ".join(f"{p} ({len(known[p].roles)} elements, "
                              f"{len(known[p].structure)} atoms)" for p in chosen)
            raise ValueError(
                f"no prototype fits {len(self.elements)} distinct element(s) "
                f"({', '.join(self.elements) or 'none'}), max_species={self.max_species} and "
                f"max_atoms={self.max_atoms}; they need: {needs}")

    def sample(self, rng: np.random.Generator) -> Candidate:
        """One decorated prototype."""
        prototype = self.prototypes[int(rng.integers(len(self.prototypes)))]
        roles = site_classes(prototype)
        chosen = rng.choice(len(self.elements), size=len(roles), replace=False)
        occupants = {role: self.elements[int(i)] for role, i in zip(roles, chosen)}
        return Candidate(decorate_prototype(prototype, occupants),
                         f"{self.name}:{prototype.name}")

    def propose(self, n, rng, parents=()) -> list[Candidate]:
        """``n`` decorated prototypes; ``parents`` are not used."""
        return [self.sample(rng) for _ in range(n)]
