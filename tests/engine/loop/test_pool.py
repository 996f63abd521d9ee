"""Pool campaigns replayed against a table: reading, bookkeeping and the default strategy."""

from __future__ import annotations

import numpy as np
import pytest

from matforge.adapters.table import TableEvaluator
from matforge.engine.acquisition.strategy import Strategy
from matforge.engine.loop.pool import (
    TableError,
    experiments_to_find,
    read_table,
    run_pool_campaign,
    top_rows,
)


def _write(tmp_path, text, name="pool.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def test_reads_numeric_columns_as_features_and_strips_a_byte_order_mark(tmp_path):
    path = _write(tmp_path, "a,b,y\n1,2,3\n4,5,6\n7,8,9\n", encoding="utf-8-sig")
    table = read_table(path, "y", minimize=True)
    assert table.features == ("a", "b")
    assert table.X.shape == (3, 2) and table.y.tolist() == [3, 6, 9]
    assert table.maximize is False


@pytest.mark.parametrize(
    "text, target, needle",
    [
        ("a,b\n1,2\n3,4\n5,6\n", "y", "target column 'y' not found"),
        ("a,y\nx,1\n2,2\n3,3\n", "y", "column 'a' is not numeric (row 2"),
        ("a,y\n1,1\n2,2\n", "y", "2 row(s); a pool needs at least 3"),
        ("a,y\n1,1\n2,\n3,3\n", "y", "column 'y' has a missing or non-finite value (row 3"),
        ("a,y\n1,1\nnan,2\n3,3\n", "y", "column 'a' has a missing or non-finite value"),
        ("y\n1\n2\n3\n", "y", "no feature columns"),
    ],
)
def test_bad_tables_are_rejected_with_the_column_and_reason(tmp_path, text, target, needle):
    with pytest.raises(TableError) as info:
        read_table(_write(tmp_path, text), target)
    assert needle in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(TableError, match="no such file"):
        read_table(tmp_path / "absent.csv", "y")


def test_top_rows_and_experiments_to_find():
    y = np.arange(40.0)
    assert top_rows(y, maximize=True).tolist() == [39, 38]
    assert top_rows(y, maximize=False).tolist() == [0, 1]
    assert experiments_to_find([5, 39, 7, 38], [39, 38], 0.5) == 2
    assert experiments_to_find([5, 39, 7, 38], [39, 38], 0.8) == 4
    assert experiments_to_find([5, 7], [39, 38], 0.5) is None


def test_table_evaluator_counts_rows_and_rejects_unknown_ones(tmp_path):
    table = TableEvaluator(_write(tmp_path, "a,y\n1,10\n2,20\n3,30\n"), "y")
    assert table(np.array([2, 0])).tolist() == [30, 10]
    assert table.calls == {2: 1, 0: 1}
    with pytest.raises(IndexError, match="no row 3"):
        table(np.array([3]))


def _bowl(n=150, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, 2))
    y = -((X - 0.3) ** 2).sum(axis=1) + 0.01 * rng.normal(size=n)
    return X, y


def test_pool_campaign_never_picks_a_row_twice_and_respects_budget_and_batches():
    X, y = _bowl(60)
    calls = []

    def oracle(rows):
        calls.extend(rows.tolist())
        return y[rows]

    picks = run_pool_campaign(X, oracle, Strategy().chooser(), budget=14, n_init=2,
                              batch_size=4, seed=1)
    assert len(picks) == 14 == len(set(picks))
    assert sorted(calls) == sorted(picks)
    again = run_pool_campaign(X, lambda r: y[r], Strategy().chooser(), budget=14, n_init=2,
                              batch_size=4, seed=1)
    assert again == picks  # seeded: the same campaign twice


def test_default_strategy_finds_the_best_rows_far_sooner_than_random():
    X, y = _bowl()
    top = top_rows(y, maximize=True, fraction=0.05)
    ours, chance = [], []
    for seed in range(3):
        for strategy, out in ((Strategy(), ours), (Strategy(acquisition="random"), chance)):
            picks = run_pool_campaign(
                X, lambda r: y[r], strategy.chooser(), budget=len(y), n_init=2, seed=seed,
                stop=lambda p: experiments_to_find(p, top, 1.0) is not None,
            )
            out.append(experiments_to_find(picks, top, 1.0))
    # random needs ~ 8/9 of 150 rows to hold all 8 top rows; the GP needs a few dozen
    assert np.mean(ours) < 0.4 * np.mean(chance), (ours, chance)
