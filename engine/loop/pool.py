"""Pool-based campaigns: replay a campaign against a table of measured candidates.

Before spending DFT time, a team can ask how fast a strategy would have found
the best rows of its historical data: every numeric column but the target is a
feature, the table answers each "evaluation" with the measured target, and the
same selection code as a live campaign picks the rows (protocol of Liang et al.,
npj Comput. Mater. 7, 188 (2021): a few random starting rows, then batches
chosen by the strategy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class TableError(ValueError):
    """A table that cannot be replayed; the message names the file, column or row and why."""


@dataclass(frozen=True)
class PoolTable:
    """A table of candidates with measured targets.

    ``X`` has shape (n_rows, n_features), ``y`` shape (n_rows,), in file order.
    """

    X: np.ndarray
    y: np.ndarray
    features: tuple[str, ...]
    target: str
    maximize: bool
    source: str

    def __len__(self) -> int:
        return len(self.y)


MIN_ROWS = 3


def read_table(path: str | Path, target: str, minimize: bool = False) -> PoolTable:
    """Read a CSV file whose numeric columns other than ``target`` are features.

    Raises :class:`TableError` for a missing file or target column, a
    non-numeric feature or target, a missing or non-finite value, fewer than
    ``MIN_ROWS`` rows, a target with one value in every row (nothing to find) or
    features with one value each in every row (no row tells apart from another);
    the message names the offending column and row.
    """
    import pandas as pd

    path = Path(path)
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark
        frame = pd.read_csv(path, encoding="utf-8-sig")
    except FileNotFoundError:
        raise TableError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise TableError(f"{path}: cannot read as CSV: {error}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if target not in frame.columns:
        raise TableError(
            f"{path}: target column {target!r} not found; columns are "
            + ", ".join(repr(c) for c in frame.columns)
        )
    if len(frame) < MIN_ROWS:
        raise TableError(f"{path}: {len(frame)} row(s); a pool needs at least {MIN_ROWS}")
    features = [c for c in frame.columns if c != target]
    if not features:
        raise TableError(f"{path}: no feature columns besides the target {target!r}")
    for column in [target, *features]:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise TableError(
                f"{path}: column {column!r} is not numeric (row {row + 2} of the file holds "
                f"{frame[column].iloc[row]!r})"
            )
        missing = ~np.isfinite(values.to_numpy(dtype=float))
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise TableError(
                f"{path}: column {column!r} has a missing or non-finite value "
                f"(row {row + 2} of the file, {int(missing.sum())} such row(s))"
            )
        frame[column] = values
    X = frame[features].to_numpy(dtype=float)
    y = frame[target].to_numpy(dtype=float)
    if np.all(y == y[0]):
        raise TableError(
            f"{path}: target column {target!r} holds {y[0]:g} in every row: there is no best "
            "row to find"
        )
    if np.all(X == X[0]):
        raise TableError(
            f"{path}: every feature column ({', '.join(repr(c) for c in features)}) holds one "
            "value in every row: no row can be told apart from another"
        )
    return PoolTable(
        X=X,
        y=y,
        features=tuple(features),
        target=target,
        maximize=not minimize,
        source=str(path),
    )


def top_rows(y: np.ndarray, maximize: bool, fraction: float = 0.05) -> np.ndarray:
    """Indices of the best ``ceil(fraction * n)`` rows of y : (n,), best first (ties by row)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    y = np.asarray(y, dtype=float)
    order = np.argsort(-y if maximize else y, kind="stable")
    return order[: math.ceil(fraction * len(y))]


def experiments_to_find(picks: Sequence[int], top: Sequence[int], share: float) -> int | None:
    """How many picks it took to hold ``ceil(share * len(top))`` of the ``top`` rows.

    None if the picks never got there.
    """
    needed = math.ceil(share * len(top))
    targets = set(int(i) for i in top)
    found = 0
    for k, row in enumerate(picks, start=1):
        found += int(row) in targets
        if found >= needed:
            return k
    return None


Oracle = Callable[[np.ndarray], np.ndarray]
"""Answers the target for an array of row indices (a table adapter, or a lab)."""

Chooser = Callable[..., np.ndarray]
"""``choose(X_train, y_train, X_pool, n, maximize=..., seed=...) -> indices into X_pool``."""


def run_pool_campaign(
    X: np.ndarray,
    oracle: Oracle,
    choose: Chooser,
    budget: int,
    maximize: bool = True,
    n_init: int = 2,
    batch_size: int = 1,
    seed: int = 0,
    stop: Callable[[list[int]], bool] | None = None,
) -> list[int]:
    """Run a campaign over the rows of X : (n_rows, n_features); return the rows picked in order.

    The first ``n_init`` rows are uniform at random; then each batch of
    ``batch_size`` rows is chosen by ``choose`` from the rows not yet picked,
    with the targets of the picked rows as training data, until ``budget`` rows
    are picked, the pool is empty or ``stop(picks)`` is true.
    """
    X = np.asarray(X, dtype=float)
    n = len(X)
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    budget = min(int(budget), n)
    if budget < n_init:
        raise ValueError(f"budget {budget} is smaller than n_init {n_init}")
    rng = np.random.default_rng(seed)
    picks = [int(i) for i in rng.choice(n, size=n_init, replace=False)]
    y = {i: float(v) for i, v in zip(picks, oracle(np.asarray(picks)))}
    step = 0
    while len(picks) < budget and not (stop and stop(picks)):
        remaining = np.setdiff1d(np.arange(n), picks)
        k = min(batch_size, budget - len(picks), len(remaining))
        chosen = np.asarray(
            choose(
                X[picks], np.array([y[i] for i in picks]), X[remaining], k,
                maximize=maximize, seed=int(rng.integers(2**31)) + step,
            ),
            dtype=int,
        )
        if len(chosen) != k or len(set(chosen.tolist())) != k:
            raise RuntimeError(f"strategy returned {chosen.tolist()} for a batch of {k}")
        rows = remaining[chosen]
        for i, v in zip(rows.tolist(), oracle(rows)):
            y[i] = float(v)
        picks.extend(rows.tolist())
        step += 1
    return picks
