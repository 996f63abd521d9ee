"""Analysis of molecular-dynamics trajectories: diffusion, vibration, and whether a structure held.

Pure NumPy: the functions take the arrays a trajectory was recorded into and know
nothing of calculators or integrators. Positions are Cartesian, in Å, of shape
(n_frames, n_atoms, 3); a cell is an array of shape (3, 3) whose rows are the
lattice vectors, or of shape (n_frames, 3, 3) for a cell that changes (NPT).

Diffusion needs *unwrapped* positions, which follow an atom across periodic
boundaries instead of folding it back into the cell: :func:`unwrap` rebuilds them
from wrapped ones, provided no atom moves by half a cell between two frames.

Whether a structure stays intact is judged by one named criterion,
:func:`assess_integrity`: with each atom's first-shell distance ``d1`` taken from
the reference (relaxed) structure and its neighbours those within
``COORDINATION_SCALE × d1``,

- the Lindemann index of the neighbour pairs is below ``LINDEMANN_LIMIT``,
- at least ``COORDINATION_FRACTION`` of the atoms keep their neighbour count,
  counted on their mean positions over the last quarter of the trajectory, and
- no atom moves farther than ``DISPLACEMENT_LIMIT × d1`` from its reference site.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LINDEMANN_LIMIT = 0.1
"""Lindemann index above which a crystal counts as molten (Lindemann, Berry)."""
COORDINATION_SCALE = 1.2
"""Neighbours of an atom: those within this many times its first-shell distance."""
COORDINATION_FRACTION = 0.9
"""Fraction of atoms that must keep their neighbour count for the structure to be intact."""
DISPLACEMENT_LIMIT = 1.0
"""Largest displacement from the reference site, in first-shell distances, of an intact atom."""
PAIR_BLOCK = 1 << 20
"""Atom pairs examined at once when searching neighbours (bounds memory, not the result)."""


def _trajectory(positions, name: str = "positions") -> np.ndarray:
    array = np.asarray(positions, dtype=float)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must have shape (n_frames, n_atoms, 3), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds non-finite values")
    return array


def _cells(cell, n_frames: int) -> np.ndarray:
    """``cell`` as an array of shape (n_frames, 3, 3)."""
    array = np.asarray(cell, dtype=float)
    if array.shape == (3, 3):
        array = np.broadcast_to(array, (n_frames, 3, 3))
    elif array.shape != (n_frames, 3, 3):
        raise ValueError(f"cell must have shape (3, 3) or ({n_frames}, 3, 3), got {array.shape}")
    if not np.isfinite(array).all() or (np.abs(np.linalg.det(array)) < 1e-9).any():
        raise ValueError("cell must be finite and of non-zero volume")
    return array


def unwrap_fractional(scaled) -> np.ndarray:
    """Unwrapped fractional coordinates from wrapped ones.

    Parameters
    ----------
    scaled : array of shape (n_frames, n_atoms, 3), fractional coordinates

    Returns
    -------
    array of shape (n_frames, n_atoms, 3): the first frame as given, each later one
    reached by the shortest (minimum-image) step from the one before.
    """
    scaled = _trajectory(scaled, "scaled")
    steps = np.diff(scaled, axis=0)
    steps -= np.round(steps)
    return np.concatenate([scaled[:1], scaled[:1] + np.cumsum(steps, axis=0)])


def unwrap(positions, cell) -> np.ndarray:
    """Unwrapped Cartesian positions, of shape (n_frames, n_atoms, 3), from wrapped ones.

    Each frame is unwrapped in its own cell (``cell`` of shape (3, 3) or
    (n_frames, 3, 3)), so a cell that changes between frames (NPT) is followed.
    """
    positions = _trajectory(positions)
    cells = _cells(cell, len(positions))
    scaled = np.einsum("tnj,tjk->tnk", positions, np.linalg.inv(cells))
    return np.einsum("tnj,tjk->tnk", unwrap_fractional(scaled), cells)


def remove_drift(positions, masses=None) -> np.ndarray:
    """Positions less the displacement of their centre of mass since the first frame.

    Parameters
    ----------
    positions : array of shape (n_frames, n_atoms, 3), unwrapped
    masses : array of shape (n_atoms,); None weighs all atoms alike
    """
    positions = _trajectory(positions)
    weights = np.ones(positions.shape[1]) if masses is None else np.asarray(masses, float)
    if weights.shape != (positions.shape[1],) or not (weights > 0).all():
        raise ValueError(f"masses must be {positions.shape[1]} positive numbers")
    centre = np.einsum("tnk,n->tk", positions, weights / weights.sum())
    return positions - (centre - centre[0])[:, None, :]


def msd(positions, per_atom: bool = False) -> np.ndarray:
    """Mean-square displacement against lag, averaged over every time origin.

    ``MSD(m) = <|r(k + m) - r(k)|^2>`` over the ``n_frames - m`` origins ``k`` (and
    over atoms unless ``per_atom``), computed with FFTs in O(n_frames log n_frames).

    Parameters
    ----------
    positions : array of shape (n_frames, n_atoms, 3), unwrapped, Å
    per_atom : return one curve per atom

    Returns
    -------
    array of shape (n_frames,), or (n_frames, n_atoms) with ``per_atom``, in Å^2;
    entry ``m`` is the lag of ``m`` frames.
    """
    x = _trajectory(positions)
    n = len(x)
    squares = (x**2).sum(axis=2)
    cumulative = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(squares, axis=0)])
    lags = np.arange(n)
    # sum_k |r(k+m)|^2 + |r(k)|^2 over the n - m origins
    sum_squares = (cumulative[n] - cumulative[lags]) + cumulative[n - lags]
    spectrum = np.fft.rfft(x, n=2 * n, axis=0)
    products = np.fft.irfft(spectrum * spectrum.conj(), n=2 * n, axis=0)[:n].sum(axis=2)
    result = (sum_squares - 2 * products) / (n - lags)[:, None]
    result = np.maximum(result, 0.0)  # round-off below zero at lag 0
    return result if per_atom else result.mean(axis=1)


def diffusivity(times, msd, start: float = 0.1, stop: float = 0.5,
                dimensions: int = 3) -> float:
    """Diffusion coefficient from the slope of MSD(t): the Einstein relation ``D = slope / 2d``.

    The slope is a least-squares line through the lags from ``start`` to ``stop``
    (fractions of the longest lag): past the ballistic start, and short of the long
    lags that few time origins average.

    Parameters
    ----------
    times : array of shape (n_lags,), the lags, increasing from 0
    msd : array of shape (n_lags,), the mean-square displacement at each lag
    dimensions : 3 for bulk diffusion (``D = slope / 6``)

    Returns
    -------
    D in the units of ``msd`` per unit of ``times`` (Å^2/ps for Å^2 and ps).
    """
    times = np.asarray(times, dtype=float)
    values = np.asarray(msd, dtype=float)
    if times.ndim != 1 or times.shape != values.shape:
        raise ValueError(f"times and msd must be 1-d of one length, got {times.shape} and "
                         f"{values.shape}")
    if not 0 <= start < stop <= 1:
        raise ValueError(f"need 0 <= start < stop <= 1, got start={start}, stop={stop}")
    window = (times >= start * times[-1]) & (times <= stop * times[-1])
    if window.sum() < 2:
        raise ValueError(f"only {int(window.sum())} lag(s) between {start} and {stop} of the "
                         "longest: record more frames")
    slope = np.polyfit(times[window], values[window], 1)[0]
    return float(slope / (2 * dimensions))


def _image_range(cell: np.ndarray, cutoff: float) -> np.ndarray:
    """Integer cell shifts, of shape (n_images, 3), enough to reach ``cutoff`` from a
    minimum-image vector."""
    volume = abs(np.linalg.det(cell))
    widths = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    reach = [math.ceil(cutoff / w + 0.5) for w in widths]
    axes = [np.arange(-r, r + 1) for r in reach]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def neighbour_pairs(positions, cell, cutoffs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ordered pair of neighbours in a periodic structure, images included.

    Parameters
    ----------
    positions : array of shape (n_atoms, 3), Å (wrapped or not)
    cell : array of shape (3, 3); None for a structure without periodicity
    cutoffs : a distance, or an array of shape (n_atoms,): atom ``i``'s neighbours are
        those closer than ``cutoffs[i]``

    Returns
    -------
    i, j : arrays of shape (n_pairs,)
    shifts : integer array of shape (n_pairs, 3): the pair vector is
        ``positions[j] - positions[i] + shifts @ cell``
    """
    x = np.asarray(positions, dtype=float)
    n = len(x)
    limits = np.broadcast_to(np.asarray(cutoffs, dtype=float), (n,))
    if not (limits > 0).all():
        raise ValueError("cutoffs must be > 0")
    if cell is None:
        distance = np.linalg.norm(x[None, :, :] - x[:, None, :], axis=2)
        i, j = np.nonzero((distance < limits[:, None]) & ~np.eye(n, dtype=bool))
        return i, j, np.zeros((len(i), 3), dtype=int)
    cell = _cells(cell, 1)[0]
    scaled = x @ np.linalg.inv(cell)
    images = _image_range(cell, limits.max())
    found_i, found_j, found_shift = [], [], []
    block = max(1, PAIR_BLOCK // n)  # rows at a time, to bound memory for large cells
    for first in range(0, n, block):
        rows = np.arange(first, min(n, first + block))
        difference = scaled[None, :, :] - scaled[rows, None, :]
        base = -np.round(difference).astype(int)
        nearest = (difference + base) @ cell  # minimum-image vectors, shape (rows, n, 3)
        squared_limits = limits[rows, None] ** 2
        for image in images:
            squared = ((nearest + image @ cell) ** 2).sum(axis=2)
            mask = squared < squared_limits
            if not image.any():
                mask &= ~((rows[:, None] == np.arange(n)[None, :]) & (base == 0).all(axis=2))
            i, j = np.nonzero(mask)
            found_i.append(rows[i])
            found_j.append(j)
            found_shift.append(base[i, j] + image)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_shift)


def first_shell_distances(positions, cell) -> np.ndarray:
    """Each atom's distance to its nearest neighbour (periodic images included), of shape
    (n_atoms,), Å."""
    x = np.asarray(positions, dtype=float)
    if cell is None:
        distance = np.linalg.norm(x[None, :, :] - x[:, None, :], axis=2)
        np.fill_diagonal(distance, np.inf)
        return distance.min(axis=1)
    cell = _cells(cell, 1)[0]
    # start from the mean spacing and widen until every atom has a neighbour within reach;
    # its nearest one is then among those found
    reach = 1.5 * (abs(np.linalg.det(cell)) / len(x)) ** (1 / 3)
    while True:
        i, j, shifts = neighbour_pairs(x, cell, reach)
        if len(i) and np.isin(np.arange(len(x)), i).all():
            break
        reach *= 2
    distance = np.linalg.norm(x[j] - x[i] + shifts @ cell, axis=1)
    nearest = np.full(len(x), np.inf)
    np.minimum.at(nearest, i, distance)
    return nearest


def coordination_numbers(positions, cell, cutoffs) -> np.ndarray:
    """Number of neighbours of each atom within ``cutoffs`` (one or per atom), of shape
    (n_atoms,)."""
    i, _, _ = neighbour_pairs(positions, cell, cutoffs)
    return np.bincount(i, minlength=len(np.asarray(positions)))


def lindemann_index(positions, cell=None, cutoff=None, reference=None, reference_cell=None,
                    per_atom: bool = False):
    """Lindemann index: the mean over atom pairs of ``std(r_ij) / mean(r_ij)`` over time.

    Pairs are chosen on the reference structure (default: the first frame): every
    pair when ``cutoff`` is None (each by its nearest image), else the neighbour
    pairs closer than ``cutoff`` (one distance or one per atom), images included.
    A pair keeps the periodic image it had in the reference, so an atom that
    wanders off its site lengthens its pairs and raises the index: a solid stays
    well below 0.1, a liquid climbs past it.

    Parameters
    ----------
    positions : array of shape (n_frames, n_atoms, 3), unwrapped and continuous with
        ``reference``
    cell : array of shape (3, 3) or (n_frames, 3, 3); None without periodicity
    reference : array of shape (n_atoms, 3); ``reference_cell`` its cell
    per_atom : return each atom's mean over its pairs, of shape (n_atoms,)
    """
    x = _trajectory(positions)
    if len(x) < 2:
        raise ValueError("the Lindemann index needs at least 2 frames")
    cells = None if cell is None else _cells(cell, len(x))
    ref = x[0] if reference is None else np.asarray(reference, dtype=float)
    if ref.shape != x.shape[1:]:
        raise ValueError(f"reference must have shape {x.shape[1:]}, got {ref.shape}")
    ref_cell = None if cells is None else (cells[0] if reference_cell is None
                                           else _cells(reference_cell, 1)[0])
    n = x.shape[1]
    if cutoff is None:
        i, j = np.triu_indices(n, k=1)
        if ref_cell is None:
            shifts = np.zeros((len(i), 3))
        else:
            scaled = ref @ np.linalg.inv(ref_cell)
            shifts = -np.round(scaled[j] - scaled[i])
    else:
        i, j, shifts = neighbour_pairs(ref, ref_cell, cutoff)
    ratio = _lindemann(x, cells, i, j, shifts)
    if not per_atom:
        return float(ratio.mean())
    totals = np.bincount(i, ratio, minlength=n) + (np.bincount(j, ratio, minlength=n)
                                                   if cutoff is None else 0.0)
    counts = np.bincount(i, minlength=n) + (np.bincount(j, minlength=n)
                                            if cutoff is None else 0)
    return totals / np.maximum(counts, 1)


def _lindemann(x: np.ndarray, cells, i, j, shifts) -> np.ndarray:
    """``std(r) / mean(r)`` over the frames of ``x`` for each pair (i, j, shift)."""
    if len(i) == 0:
        raise ValueError("no atom pairs to follow: the cutoff holds no neighbours")
    distances = np.empty((len(x), len(i)))
    for t in range(len(x)):
        vector = x[t, j] - x[t, i]
        if cells is not None:
            vector = vector + shifts @ cells[t]
        distances[t] = np.linalg.norm(vector, axis=1)
    return distances.std(axis=0) / distances.mean(axis=0)


def coordination_preserved(reference, positions, cell, reference_cell=None,
                           scale: float = COORDINATION_SCALE) -> float:
    """Fraction of atoms whose neighbour count is that of the reference structure.

    Neighbours of atom ``i`` lie within ``scale`` times its first-shell distance in
    the reference. The counts are taken on the mean positions when ``positions`` is
    a trajectory (shape (n_frames, n_atoms, 3); its cell averaged likewise), so
    thermal vibration does not count as a change.

    Parameters
    ----------
    reference : array of shape (n_atoms, 3); ``reference_cell`` its cell (default ``cell``)
    positions : array of shape (n_atoms, 3) or (n_frames, n_atoms, 3), continuous with
        ``reference``
    cell : array of shape (3, 3) or (n_frames, 3, 3); None without periodicity
    """
    x = np.asarray(positions, dtype=float)
    if x.ndim == 3:
        x = x.mean(axis=0)
    ref = np.asarray(reference, dtype=float)
    if ref.shape != x.shape:
        raise ValueError(f"reference has shape {ref.shape}, positions {x.shape}")
    if cell is not None:
        cell = np.asarray(cell, dtype=float)
        cell = cell.mean(axis=0) if cell.ndim == 3 else cell
    ref_cell = cell if reference_cell is None else reference_cell
    cutoffs = scale * first_shell_distances(ref, ref_cell)
    before = coordination_numbers(ref, ref_cell, cutoffs)
    return _unchanged(before, x, cell, cutoffs)


def _unchanged(before: np.ndarray, positions: np.ndarray, cell, cutoffs) -> float:
    """Fraction of atoms whose count within ``cutoffs`` at ``positions`` is ``before``."""
    return float(np.mean(before == coordination_numbers(positions, cell, cutoffs)))


@dataclass(frozen=True)
class Integrity:
    """Whether a trajectory kept its structure, and the measures behind the verdict.

    Attributes
    ----------
    lindemann_index : of the reference neighbour pairs (dimensionless)
    coordination_preserved : fraction of atoms that kept their neighbour count
    max_displacement : the farthest any atom got from its reference site, in units of
        its first-shell distance
    intact : all three within their limits (module constants)
    """

    lindemann_index: float
    coordination_preserved: float
    max_displacement: float
    intact: bool


def assess_integrity(reference, positions, cell, reference_cell=None,
                     window: float = 0.25) -> Integrity:
    """Judge whether a trajectory stayed the structure it started from (module docstring).

    Parameters
    ----------
    reference : array of shape (n_atoms, 3), the relaxed structure the run started from;
        ``reference_cell`` its cell (default: the first frame's)
    positions : array of shape (n_frames, n_atoms, 3), unwrapped, continuous with
        ``reference`` and free of centre-of-mass drift (:func:`remove_drift`)
    cell : array of shape (3, 3) or (n_frames, 3, 3); None without periodicity
    window : the last fraction of frames whose mean positions the coordination is
        counted on
    """
    x = _trajectory(positions)
    cells = None if cell is None else _cells(cell, len(x))
    ref = np.asarray(reference, dtype=float)
    ref_cell = None if cells is None else (cells[0] if reference_cell is None
                                           else _cells(reference_cell, 1)[0])
    first_shell = first_shell_distances(ref, ref_cell)
    cutoffs = COORDINATION_SCALE * first_shell
    pairs = neighbour_pairs(ref, ref_cell, cutoffs)
    lindemann = float(_lindemann(x, cells, *pairs).mean()) if len(x) > 1 else 0.0
    last = x[-max(1, int(round(window * len(x)))):]
    before = np.bincount(pairs[0], minlength=len(ref))
    coordination = _unchanged(before, last.mean(axis=0),
                              None if cells is None else cells[-len(last):].mean(axis=0),
                              cutoffs)
    displacement = float((np.linalg.norm(x - ref, axis=2) / first_shell).max())
    intact = (lindemann < LINDEMANN_LIMIT and coordination >= COORDINATION_FRACTION
              and displacement < DISPLACEMENT_LIMIT)
    return Integrity(lindemann, coordination, displacement, bool(intact))
