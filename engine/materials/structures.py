"""Structure helpers shared by generators, featurizers and the store.

The canonical fingerprint identifies a decorated crystal up to translation,
rotation, permutation of like atoms and choice of supercell, so the same
candidate proposed twice (or as a symmetry-equivalent decoration) is recognised
without a pairwise ``StructureMatcher`` search over the whole store.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from functools import lru_cache
from math import gcd
from typing import Any

import numpy as np
from ase.data import atomic_numbers, reference_states
from pymatgen.core import Composition, DummySpecies, Element, Species, Structure

FINGERPRINT_CUTOFF = 2.0
MAX_CELL_LENGTH = 1000.0
"""Longest cell vector accepted (Å): far beyond any slab's vacuum, short of the
lengths where the cell reduction behind periodic distances overflows."""
"""Neighbour shells kept in the fingerprint, in units of the mean atomic spacing (V/N)^(1/3)."""


class StructureError(ValueError):
    """A structure that cannot be a candidate; the message says why."""


AVOGADRO = 6.02214076e23


@lru_cache(maxsize=None)
def atomic_volume(symbol: str) -> float:
    """Volume per atom (Å^3) of an element's own solid.

    From ASE's reference states (experimental lattice constants of the elemental ground
    states) where they give a cubic, diamond or hexagonal close-packed lattice; else
    pymatgen's molar volume of the solid (room temperature), which covers the complex
    ground states (α-Mn, Ga, In, β-Sn, Sb, Bi, ...); else a close-packed solid of
    pymatgen's atomic radius. Raises ValueError naming the element when none applies.
    """
    if symbol not in atomic_numbers or symbol == "X":
        raise ValueError(f"elements: {symbol!r} is not a chemical element")
    state = reference_states[atomic_numbers[symbol]] or {}
    kind, a = state.get("symmetry"), state.get("a")
    atoms_per_cube = {"sc": 1, "bcc": 2, "fcc": 4, "diamond": 8}
    if kind in atoms_per_cube:
        return a**3 / atoms_per_cube[kind]
    if kind == "hcp":
        return np.sqrt(3) / 4 * a**3 * state.get("c/a", 1.633)
    with warnings.catch_warnings():  # pymatgen warns "No data available" before returning None
        warnings.simplefilter("ignore")
        element = Element(symbol)
        molar, radius = element.molar_volume, element.atomic_radius  # cm^3/mol, Å
    if molar is not None:
        return float(molar) * 1e24 / AVOGADRO
    if radius is not None:
        return (2 * np.sqrt(2) * float(radius)) ** 3 / 4
    raise ValueError(f"elements: no atomic volume for {symbol} (neither ASE's reference "
                     "state nor pymatgen's molar volume or atomic radius gives one)")


def vegard_volume(structure: Structure) -> float:
    """Cell volume expected from the elemental atomic volumes of its sites (Vegard's law)."""
    return float(sum(atomic_volume(site.specie.symbol) for site in structure))


def check_structure(structure: Structure, max_atoms: int = 500, min_distance: float = 0.5) -> None:
    """Raise :class:`StructureError` if ``structure`` cannot be evaluated.

    Checks: a pymatgen ``Structure``, at least one site, at most ``max_atoms``,
    ordered sites of known chemical elements, finite cell vectors no longer
    than ``MAX_CELL_LENGTH`` and finite coordinates, a cell with positive
    volume, no two atoms closer than ``min_distance`` Å.
    """
    if not isinstance(structure, Structure):
        raise StructureError(f"expected a pymatgen Structure, got {type(structure).__name__}")
    n = len(structure)
    if n == 0:
        raise StructureError("structure has no atoms")
    if n > max_atoms:
        raise StructureError(f"structure has {n} atoms, more than the limit of {max_atoms}")
    if not structure.is_ordered:
        raise StructureError("structure has partially occupied sites")
    for site in structure:
        specie = site.specie
        if isinstance(specie, DummySpecies) or not isinstance(specie, (Element, Species)):
            raise StructureError(f"{site.species_string!r} is not a chemical element")
    matrix = structure.lattice.matrix
    if not np.isfinite(matrix).all():
        raise StructureError("cell vectors are not finite")
    longest = float(np.linalg.norm(matrix, axis=1).max())
    if longest > MAX_CELL_LENGTH:
        raise StructureError(
            f"a cell vector is {longest:.3g} Å long, longer than the limit of {MAX_CELL_LENGTH:g} Å"
        )
    volume = float(np.linalg.det(matrix))
    if not volume > 1e-6:
        raise StructureError(f"cell volume is {volume:.3g} Å^3, not positive")
    if not np.isfinite(structure.frac_coords).all():
        raise StructureError("atomic coordinates contain NaN or infinity")
    if min(structure.lattice.abc) < min_distance:
        raise StructureError(
            f"a cell vector is {min(structure.lattice.abc):.3f} Å long: atoms overlap their "
            f"periodic images (< {min_distance} Å)"
        )
    if n > 1:
        dmin = min_interatomic_distance(structure)
        if dmin < min_distance:
            raise StructureError(
                f"atoms overlap: closest pair is {dmin:.3f} Å apart (< {min_distance} Å)"
            )


def structure_from_dict(data: Any, max_atoms: int = 500, min_distance: float = 0.5) -> Structure:
    """Build a structure from outside data (a pymatgen dict) and check it.

    Raises :class:`StructureError` naming the problem for anything that is not
    a valid, evaluable structure; never unpickles or evaluates code.
    """
    if not isinstance(data, dict):
        raise StructureError(f"expected a structure as a mapping, got {type(data).__name__}")
    sites = data.get("sites")
    if isinstance(sites, list) and len(sites) > max_atoms:
        raise StructureError(
            f"structure has {len(sites)} atoms, more than the limit of {max_atoms}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_dict(data)
    except Exception as error:  # pymatgen raises many types for malformed dicts
        reason = str(error) or type(error).__name__
        raise StructureError(f"not a valid structure: {reason}") from None
    check_structure(structure, max_atoms=max_atoms, min_distance=min_distance)
    return structure


def min_interatomic_distance(structure: Structure) -> float:
    """Shortest distance between two atoms, periodic images included (Å)."""
    dist = structure.distance_matrix
    if len(structure) > 1:
        np.fill_diagonal(dist, np.inf)
        dmin = float(dist.min())
    else:
        dmin = np.inf
    # an atom's own images are one lattice vector away
    return min(dmin, float(min(structure.lattice.abc)))


def reduced_neighbors(structure: Structure, cutoff: float):
    """Neighbour pairs within ``cutoff`` mean atomic spacings.

    Returns
    -------
    centers, neighbors : int arrays of shape (n_pairs,)
    distances : float array of shape (n_pairs,), in units of (V/N)^(1/3)
    """
    spacing = (structure.volume / len(structure)) ** (1 / 3)
    centers, neighbors, _, distances = structure.get_neighbor_list(cutoff * spacing)
    return centers, neighbors, distances / spacing


Material = Structure | Composition
"""A candidate: a crystal structure, or in a campaign of compositions (``candidates:
composition``) a composition only."""


def composition_of(material: Material) -> Composition:
    return material if isinstance(material, Composition) else material.composition


def n_atoms(material: Material) -> int:
    """Sites of a structure; atoms in a composition's formula as written."""
    return int(round(material.num_atoms)) if isinstance(material, Composition) else len(material)


def material_as_dict(material: Material) -> dict:
    """The JSON form a store or a job file keeps (:func:`material_from_dict` reads it)."""
    if isinstance(material, Composition):
        return {"composition": {str(el): float(n) for el, n in material.items()}}
    return material.as_dict()


def material_from_dict(data: dict) -> Material:
    if set(data) == {"composition"}:
        return Composition(data["composition"])
    return Structure.from_dict(data)


def check_material(material: Material, max_atoms: int = 500) -> None:
    """:func:`check_structure` for a structure; a composition needs known elements and
    positive amounts."""
    if not isinstance(material, Composition):
        check_structure(material, max_atoms)
        return
    if not material or any(n <= 0 for n in material.values()):
        raise StructureError(f"composition {material.formula!r}: needs positive amounts")
    unknown = [str(el) for el in material if not isinstance(el, Element)]
    if unknown:
        raise StructureError(f"composition: {', '.join(unknown)} are not chemical elements")


def fingerprint(structure: Material, decimals: int = 2) -> str:
    """Canonical hash of a structure, invariant to translation, rotation, atom order and supercell.

    A composition's is the hash of its reduced formula (Li4Mn2O6 is Li2MnO3), and never
    equals a structure's.

    Each site is described by its species and the sorted list of (neighbour
    species, distance in mean atomic spacings) within
    :data:`FINGERPRINT_CUTOFF`; the structure is the multiset of site
    descriptions with counts divided by their greatest common divisor.
    """
    if isinstance(structure, Composition):
        fractions = sorted((el.symbol, round(x, 6)) for el, x in
                           structure.fractional_composition.items())
        return hashlib.sha1(json.dumps(["composition", fractions]).encode()).hexdigest()
    centers, neighbors, distances = reduced_neighbors(structure, FINGERPRINT_CUTOFF)
    species = [site.specie.symbol for site in structure]
    shells: list[list[tuple[str, float]]] = [[] for _ in species]
    for i, j, d in zip(centers, neighbors, np.round(distances, decimals)):
        shells[i].append((species[j], float(d)))
    envs = Counter(json.dumps([species[i], sorted(shell)]) for i, shell in enumerate(shells))
    divisor = 0
    for count in envs.values():
        divisor = gcd(divisor, count)
    canonical = sorted((env, count // divisor) for env, count in envs.items())
    return hashlib.sha1(json.dumps(canonical).encode()).hexdigest()
