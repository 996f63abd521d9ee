"""Validity filters every proposed candidate passes before it enters a round's pool.

Each filter has a name; :func:`filter_candidates` keeps the candidates that pass
them all and counts the others by the first filter that refused them, so a
round can report what its generators made and what was thrown away.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Composition, Element, Structure

from matforge.engine.materials.structures import composition_of, n_atoms

REASONS = ("unknown element", "too many atoms", "atoms too close", "volume per atom",
           "not charge-balanced")


@dataclass(frozen=True)
class Filters:
    """What a valid candidate is.

    Parameters
    ----------
    elements : the campaign's elements; any other is refused
    max_atoms : most atoms in the cell
    min_distance : least distance between two atoms, as a fraction of the sum of their
        atomic radii (0.6: a bond at most 40 % shorter than the radii allow)
    volume_per_atom : least and most volume per atom, Å^3
    charge_balanced : refuse compositions whose ICSD oxidation states cannot sum to zero
    """

    elements: frozenset[str]
    max_atoms: int = 64
    min_distance: float = 0.6
    volume_per_atom: tuple[float, float] = (4.0, 80.0)
    charge_balanced: bool = False

    def reason(self, structure: Structure | Composition) -> str | None:
        """The first filter ``structure`` fails (one of :data:`REASONS`), or None. A
        composition (a campaign of compositions) is held to elements, atoms in its formula
        and charge balance."""
        composition = composition_of(structure)
        if not {el.symbol for el in composition} <= self.elements:
            return "unknown element"
        if n_atoms(structure) > self.max_atoms:
            return "too many atoms"
        if isinstance(structure, Structure):
            reason = self._geometry(structure)
            if reason is not None:
                return reason
        if self.charge_balanced:
            from matforge.engine.materials.chemistry import charge_states

            counts = {e.symbol: int(round(a)) for e, a in composition.items()}
            if len(counts) < 2 or charge_states(counts) is None:
                return "not charge-balanced"
        return None

    def _geometry(self, structure: Structure) -> str | None:
        radii = np.array([float(Element(site.specie.symbol).atomic_radius or 1.5)
                          for site in structure])
        distances = structure.distance_matrix  # nearest periodic images of other atoms
        np.fill_diagonal(distances, np.inf)
        if (distances < self.min_distance * (radii[:, None] + radii[None, :])).any():
            return "atoms too close"
        if min(structure.lattice.abc) < self.min_distance * 2 * radii.min():  # own images
            return "atoms too close"
        low, high = self.volume_per_atom
        if not low <= structure.volume / len(structure) <= high:
            return "volume per atom"
        return None


def filter_candidates(candidates: Sequence, filters: Filters) -> tuple[list, Counter]:
    """The candidates (anything with a ``structure``) that pass, and how many each filter
    refused."""
    kept, refused = [], Counter()
    for candidate in candidates:
        reason = filters.reason(candidate.structure)
        if reason is None:
            kept.append(candidate)
        else:
            refused[reason] += 1
    return kept, refused
