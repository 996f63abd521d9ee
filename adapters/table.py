"""An evaluator that answers from a table of past measurements (retrospective campaigns).

A pool campaign (``matforge benchmark pool``) treats each row of a CSV file as a
candidate whose "experiment" is already done: asking for rows returns their
measured target. It counts every row it is asked for, so a benchmark can check
that no experiment was paid twice.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from matforge.engine.loop.pool import PoolTable, read_table


class TableEvaluator:
    """Measured target values of a table's rows.

    Parameters
    ----------
    path : CSV file; every numeric column but ``target`` is a feature
    target : the column measured by the "experiment"
    minimize : whether smaller targets are better
    """

    name = "table"

    def __init__(self, path: str | Path, target: str, minimize: bool = False):
        self.path = str(path)
        self.target = target
        self.minimize = minimize
        self.table: PoolTable = read_table(path, target, minimize)
        self.calls: Counter = Counter()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """The target of each row index in rows : (k,)."""
        rows = np.asarray(rows)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"rows must be a 1-D array of integer indices, got {rows!r}")
        bad = rows[(rows < 0) | (rows >= len(self.table))]
        if len(bad):
            raise IndexError(f"{self.path}: no row {int(bad[0])} (the table has {len(self.table)})")
        self.calls.update(rows.tolist())
        return self.table.y[rows]

    def parameters(self) -> dict:
        return {"path": self.path, "target": self.target, "minimize": self.minimize}
