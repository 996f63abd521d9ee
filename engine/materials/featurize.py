"""Featurizers: composition statistics from element data, and structure descriptors.

Structure descriptors use only interatomic distances (in units of the mean
atomic spacing) and species, so they are invariant to translation, rotation
and permutation of atoms by construction. Every featurizer subclasses
:class:`Featurizer`; plug-ins register theirs under the entry-point group
``matforge.featurizers``, as the built-ins (``material``, ``composition``) do.

The built-ins describe many candidates at once: ``transform`` computes the features of a
whole pool as array operations, in chunks so that memory stays bounded, and gives the
same numbers as ``featurize`` does row by row. A pool of compositions too large to hold
as pymatgen objects (a million candidates) goes to
:meth:`CompositionFeaturizer.transform_amounts` as one array of atoms per element.
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

COMPOSITION_CHUNK = 16_384
"""Compositions featurized per array operation: 128 kB of temporaries per element column
(of 8k-128k rows, the fastest on the 2-core machine of benchmarks/featurize.py)."""

STRUCTURE_CHUNK = 256
"""Structures whose neighbour pairs are reduced together: about 10 MB at 32 atoms each."""


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


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


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

    def transform(self, structures: Sequence[Structure | Composition]) -> np.ndarray:
        """Features of structures or compositions, array of shape (n_materials, n_features).

        Builds the amount matrix of :meth:`transform_amounts` from the compositions. A
        composition with ions (``Fe2+``) or dummy species is described by :meth:`featurize`.
        """
        structures = list(structures)
        symbols = list(self.elements)
        column = {Element(e): k for k, e in enumerate(symbols)}
        counts, cols, amounts = [], [], []
        by_row = np.zeros(len(structures), dtype=bool)
        for i, material in enumerate(structures):
            comp = composition_of(material)
            if not all(type(el) is Element for el in comp):
                by_row[i] = True
                continue
            for el, amount in comp.items():
                if el not in column:
                    column[el] = len(symbols)
                    symbols.append(el.symbol)
                cols.append(column[el])
                amounts.append(amount)
            counts.append(len(comp))
        matrix = np.zeros((len(counts), len(symbols)))
        matrix[np.repeat(np.arange(len(counts)), counts), cols] = amounts
        X = np.zeros((len(structures), len(self.feature_names)))
        X[~by_row] = self.transform_amounts(matrix, symbols)
        for i in np.flatnonzero(by_row):
            X[i] = self.featurize(structures[i])
        return X

    def transform_amounts(self, amounts: np.ndarray, symbols: Sequence[str] | None = None,
                          chunk_size: int = COMPOSITION_CHUNK) -> np.ndarray:
        """Features of many compositions given as atoms per element, without pymatgen objects.

        Parameters
        ----------
        amounts : array of shape (n_compositions, n_symbols), the amount of each element
            of ``symbols`` in each composition (atoms per formula unit, or fractions; any
            scale, any real dtype), zero where absent
        symbols : the element of each column; the featurizer's ``elements`` by default.
            May include elements outside ``elements`` (they count in the statistics,
            and have no fraction column).
        chunk_size : compositions computed at once; memory grows with it

        Returns
        -------
        array of shape (n_compositions, n_features), as :meth:`featurize` gives row by row
        """
        symbols = list(self.elements if symbols is None else symbols)
        amounts = np.asarray(amounts)
        if amounts.ndim != 2 or amounts.shape[1] != len(symbols):
            raise ValueError(f"amounts: expected shape (n_compositions, {len(symbols)}) "
                             f"for symbols {symbols}, got {amounts.shape}")
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"symbols: an element is listed twice in {symbols}")
        table = np.array([[element_property(s, p) for p in self.properties] for s in symbols],
                         dtype=float).reshape(len(symbols), len(self.properties))
        missing = np.isnan(table).astype(float)
        table = np.nan_to_num(table)
        position = {s: k for k, s in enumerate(symbols)}
        fraction_of = [(j, position[e]) for j, e in enumerate(self.elements) if e in position]
        n_el = len(self.elements)
        out = np.zeros((len(amounts), len(self.feature_names)))
        # each property's columns in ascending order: the first present one is the minimum
        ascending = [np.argsort(table[:, p], kind="stable") for p in range(table.shape[1])]
        ones = np.ones(len(symbols))
        for start, stop in _chunks(len(amounts), chunk_size):
            chunk = amounts[start:stop].astype(float)
            total = chunk @ ones
            if len(chunk) and not (chunk.min() >= 0 and np.all(total > 0)
                                   and np.isfinite(total).all()):
                bad = ~(np.isfinite(chunk).all(axis=1) & (chunk >= 0).all(axis=1) & (total > 0))
                row = start + int(np.argmax(bad))
                raise ValueError(f"amounts: row {row} is not a composition (amounts must be "
                                 f"finite, non-negative and not all zero): {amounts[row]}")
            present = chunk > 0
            weights = chunk / total[:, None]
            block = out[start:stop]
            for j, k in fraction_of:
                block[:, j] = weights[:, k]
            mean = weights @ table
            unknown = (present @ missing) > 0 if missing.any() else None
            for p, order in enumerate(ascending):
                values = table[:, p]
                deviation = values[None, :] - mean[:, p, None]
                deviation *= deviation
                stats = block[:, n_el + 4 * p: n_el + 4 * p + 4]
                stats[:, 0] = mean[:, p]
                stats[:, 1] = np.sqrt(np.einsum("ij,ij->i", weights, deviation))
                stats[:, 2] = values[order][present[:, order].argmax(axis=1)]
                stats[:, 3] = values[order[::-1]][present[:, order[::-1]].argmax(axis=1)]
                if unknown is not None:
                    stats[unknown[:, p]] = np.nan
        return out


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

    def transform(self, structures: Sequence[Structure], chunk_size: int = STRUCTURE_CHUNK
                  ) -> np.ndarray:
        """Features of many structures, array of shape (n_structures, n_features).

        Finds each structure's neighbour pairs (pymatgen's compiled neighbour search),
        then computes every feature for a chunk of ``chunk_size`` structures at once over
        all their pairs, as :meth:`featurize` gives row by row.
        """
        n_el = len(self.elements)
        # unordered element pair -> bond column; -1 where an element is not the campaign's
        pair_column = -np.ones((n_el + 1, n_el + 1), dtype=np.int64)
        for k, (a, b) in enumerate(self._pairs):
            i, j = self.elements.index(a), self.elements.index(b)
            pair_column[i, j] = pair_column[j, i] = k
        code_of: dict = {}
        cutoff = self.r_max + 3 * self.width
        structures = list(structures)
        out = np.zeros((len(structures), len(self.feature_names)))
        for start, stop in _chunks(len(structures), chunk_size):
            owners, centers, neighbors, distances, codes, sizes = [], [], [], [], [], []
            offset = 0
            for i, structure in enumerate(structures[start:stop]):
                c, nb, d = _neighbor_pairs(structure, cutoff)
                owners.append(np.full(len(d), i))
                centers.append(c + offset)
                neighbors.append(nb + offset)
                distances.append(d)
                species = [site.specie for site in structure]
                for sp in species:
                    if sp not in code_of:
                        symbol = sp.symbol
                        code_of[sp] = self.elements.index(symbol) if symbol in self.elements \
                            else n_el
                codes.append(np.array([code_of[sp] for sp in species], dtype=np.int64))
                sizes.append(len(structure))
                offset += len(structure)
            out[start:stop] = self._pair_features(
                np.concatenate(owners), np.concatenate(centers), np.concatenate(neighbors),
                np.concatenate(distances), np.concatenate(codes), np.array(sizes), pair_column)
        return out

    def _pair_features(self, owner, center, neighbor, d, code, size, pair_column):
        """Features of a chunk of structures from all their neighbour pairs.

        owner, center, neighbor, d : arrays of shape (n_pairs,): the structure (in the
            chunk), both sites (numbered over the chunk) and the distance of each pair
        code : int array of shape (n_sites,), each site's element in ``self.elements``
            (``len(self.elements)`` for others)
        size : int array of shape (n_structures,), sites per structure
        """
        n = len(size)
        n_pairs = len(self._pairs)
        grid = np.linspace(self.r_min, self.r_max, self.n_bins)
        features = np.zeros((n, self.n_bins + 1 + n_pairs))
        if len(d) == 0:
            return features
        # pairs come grouped by structure: reduce each non-empty group
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        groups = owner[starts]
        gauss = np.subtract.outer(d, grid)
        gauss /= self.width
        gauss *= gauss
        gauss *= -0.5
        np.exp(gauss, out=gauss)
        features[groups, : self.n_bins] = np.add.reduceat(gauss, starts, axis=0)
        features[:, : self.n_bins] /= size[:, None]
        d_nn = np.zeros(n)
        d_nn[groups] = np.minimum.reduceat(d, starts)
        shell = np.exp(-(((d / d_nn[owner]) - 1.0) / self.shell_width) ** 2)
        shell_sum = np.zeros(n)
        shell_sum[groups] = np.add.reduceat(shell, starts)
        features[:, self.n_bins] = shell_sum / size
        column = pair_column[code[center], code[neighbor]]
        known = column >= 0
        bonds = np.bincount(owner[known] * n_pairs + column[known], weights=shell[known],
                            minlength=n * n_pairs).reshape(n, n_pairs)
        features[:, self.n_bins + 1:] = bonds / np.maximum(shell_sum, 1e-12)[:, None]
        return features


def _neighbor_pairs(structure: Structure, cutoff: float):
    """:func:`~matforge.engine.materials.structures.reduced_neighbors` without its
    per-call overhead: pymatgen's compiled search on the coordinates it would use.

    Returns centers, neighbors (int arrays of shape (n_pairs,)) and distances (float
    array of shape (n_pairs,), in units of (V/N)^(1/3)).
    """
    try:
        from pymatgen.optimization.neighbors import find_points_in_spheres
    except ImportError:  # pymatgen without its compiled extension
        centers, neighbors, d = reduced_neighbors(structure, cutoff)
        return centers, neighbors, d
    n = len(structure)
    spacing = (structure.volume / n) ** (1 / 3)
    coords = np.ascontiguousarray(structure.cart_coords, dtype=float)
    pbc = np.ascontiguousarray(structure.pbc, dtype=np.int64)
    lattice = np.ascontiguousarray(structure.lattice.matrix, dtype=float)
    centers, neighbors, _, distances = find_points_in_spheres(
        coords, coords, r=cutoff * spacing, pbc=pbc, lattice=lattice, tol=1e-8)
    keep = ~((centers == neighbors) & (distances <= 1e-8))
    return centers[keep], neighbors[keep], distances[keep] / spacing


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

    def transform(self, structures: Sequence[Structure]) -> np.ndarray:
        """Features of many structures, array of shape (n_structures, n_features)."""
        structures = list(structures)
        return np.hstack([p.transform(structures) for p in self.parts])


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
