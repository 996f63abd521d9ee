"""Featurizers: composition statistics from element data, and structure descriptors.

Structure descriptors use only interatomic distances (in units of the mean
atomic spacing) and species, so they are invariant to translation, rotation
and permutation of atoms by construction. Every featurizer subclasses
:class:`Featurizer`; plug-ins register theirs under the entry-point group
``matforge.featurizers``, as the built-ins (``material``, ``composition``) do.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from functools import lru_cache
from itertools import combinations_with_replacement

import numpy as np
from pymatgen.core import Composition, Element, Structure

from matforge.engine.materials.structures import composition_of, reduced_neighbors

ELEMENT_PROPERTIES = ("X", "atomic_radius", "melting_point", "group", "row")


@lru_cache(maxsize=None)
def element_property(symbol: str, name: str) -> float:
    """One elemental property as a float (units stripped); NaN where pymatgen has none."""
    value = getattr(Element(symbol), name, None)
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


class Featurizer(abc.ABC):
    """Turns structures into one feature row each.

    The constructor's first argument is the campaign's ``elements``; further
    settings come from the campaign file's ``featurizer.parameters``. ``inputs`` says
    what it can describe: structures, and compositions (a campaign of compositions,
    ``candidates: composition``) where it needs no geometry.
    """

    inputs: tuple[str, ...] = ("structure",)

    @abc.abstractmethod
    def transform(self, structures: Sequence[Structure]) -> np.ndarray:
        """Raw features, array of shape (n_structures, n_features)."""


class _RowFeaturizer(Featurizer):
    """A featurizer that describes one structure at a time."""

    feature_names: list[str]

    @abc.abstractmethod
    def featurize(self, structure: Structure) -> np.ndarray:
        """Features of one structure, shape (n_features,)."""

    def transform(self, structures: Sequence[Structure]) -> np.ndarray:
        rows = [self.featurize(s) for s in structures]
        return np.vstack(rows) if rows else np.zeros((0, len(self.feature_names)))


class CompositionFeaturizer(_RowFeaturizer):
    """Element fractions and composition-weighted mean / std / min / max of element properties.

    Parameters
    ----------
    elements : the campaign's elements; one fraction column each
    properties : pymatgen ``Element`` attributes to aggregate
    """

    def __init__(self, elements: Sequence[str], properties: Sequence[str] = ELEMENT_PROPERTIES):
        self.elements = list(elements)
        self.properties = list(properties)

    @property
    def feature_names(self) -> list[str]:
        stats = [f"{s}_{p}" for p in self.properties for s in ("mean", "std", "min", "max")]
        return [f"frac_{e}" for e in self.elements] + stats

    inputs = ("structure", "composition")

    def featurize(self, structure: Structure | Composition) -> np.ndarray:
        """Features of one structure or composition, array of shape (n_features,)."""
        comp = composition_of(structure).fractional_composition
        symbols = [el.symbol for el in comp]
        weights = np.array([comp[s] for s in symbols])
        fractions = [comp[e] if e in comp else 0.0 for e in self.elements]
        stats = []
        for name in self.properties:
            values = np.array([element_property(s, name) for s in symbols])
            mean = float(weights @ values)
            std = float(np.sqrt(weights @ (values - mean) ** 2))
            stats += [mean, std, float(values.min()), float(values.max())]
        return np.array(fractions + stats, dtype=float)


class StructureFeaturizer(_RowFeaturizer):
    """Radial distribution and nearest-neighbour bond statistics.

    Features: a Gaussian-smeared radial distribution function over distances in
    units of (V/N)^(1/3), the first-shell coordination number, and for each pair
    of the campaign's elements the share of first-shell bonds between them.

    Parameters
    ----------
    elements : the campaign's elements
    r_min, r_max, n_bins, width : RDF grid and smearing, in mean atomic spacings
    shell_width : relative width of the soft first neighbour shell
    """

    def __init__(
        self,
        elements: Sequence[str],
        r_min: float = 0.8,
        r_max: float = 2.0,
        n_bins: int = 8,
        width: float = 0.08,
        shell_width: float = 0.1,
    ):
        self.elements = list(elements)
        self.r_min = r_min
        self.r_max = r_max
        self.n_bins = n_bins
        self.width = width
        self.shell_width = shell_width

    @property
    def _pairs(self) -> list[tuple[str, str]]:
        return list(combinations_with_replacement(self.elements, 2))

    @property
    def feature_names(self) -> list[str]:
        centers = np.linspace(self.r_min, self.r_max, self.n_bins)
        return (
            [f"rdf_{c:.2f}" for c in centers]
            + ["coordination"]
            + [f"bonds_{a}-{b}" for a, b in self._pairs]
        )

    def featurize(self, structure: Structure) -> np.ndarray:
        """Features of one structure, array of shape (n_features,)."""
        n = len(structure)
        centers_idx, neighbor_idx, d = reduced_neighbors(structure, self.r_max + 3 * self.width)
        grid = np.linspace(self.r_min, self.r_max, self.n_bins)
        if len(d) == 0:
            return np.zeros(self.n_bins + 1 + len(self._pairs))
        rdf = np.exp(-0.5 * ((d[:, None] - grid[None, :]) / self.width) ** 2).sum(axis=0) / n
        d_nn = d.min()
        shell = np.exp(-(((d / d_nn) - 1.0) / self.shell_width) ** 2)
        coordination = shell.sum() / n
        species = np.array([site.specie.symbol for site in structure])
        a, b = species[centers_idx], species[neighbor_idx]
        index = {pair: k for k, pair in enumerate(self._pairs)}
        bonds = np.zeros(len(self._pairs))
        for s1, s2, w in zip(a, b, shell):
            key = (s1, s2) if (s1, s2) in index else (s2, s1)
            if key in index:
                bonds[index[key]] += w
        bonds /= max(shell.sum(), 1e-12)
        return np.concatenate([rdf, [coordination], bonds])


class MaterialFeaturizer(_RowFeaturizer):
    """Composition and structure features side by side.

    Parameters
    ----------
    elements : the campaign's elements
    """

    def __init__(self, elements: Sequence[str]):
        self.elements = list(elements)
        self.parts = [CompositionFeaturizer(elements), StructureFeaturizer(elements)]

    @property
    def feature_names(self) -> list[str]:
        return [name for part in self.parts for name in part.feature_names]

    def featurize(self, structure: Structure) -> np.ndarray:
        return np.concatenate([p.featurize(structure) for p in self.parts])


def standardize(*blocks: np.ndarray) -> list[np.ndarray]:
    """Scale feature blocks jointly to zero mean and unit variance per column.

    Constant columns are set to zero rather than divided by zero.
    Each block is an array of shape (n_i, n_features); returns them in order.
    """
    stacked = np.vstack(blocks)
    mean = stacked.mean(axis=0)
    std = stacked.std(axis=0)
    std[std < 1e-12] = 1.0
    return [(b - mean) / std for b in blocks]
