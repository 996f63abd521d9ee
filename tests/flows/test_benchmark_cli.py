"""``matforge benchmark pool``: a retrospective campaign against a table, and its bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from matforge.flows.cli import main


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.random((40, 2))
    y = ((X - 0.7) ** 2).sum(axis=1)
    path = tmp_path / "pool.csv"
    lines = ["x1,x2,loss"] + [f"{a:.4f},{b:.4f},{c:.5f}" for (a, b), c in zip(X, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_replays_campaigns_and_writes_the_picks(table, tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["benchmark", "pool", str(table), "--target", "loss", "--minimize", "--budget", "8",
                 "--repeats", "2", "--seed", "3", "--init", "2", "--batch", "2",
                 "--strategy", "default", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["strategy"] == "default" and result["acquisition"] == "ptop"
    assert result["direction"] == "minimize"
    assert len(result["picks"]) == 2
    for picks in result["picks"]:
        assert len(picks) == 8 == len(set(picks)) and all(0 <= i < 40 for i in picks)
    assert result["picks"][0] != result["picks"][1]  # different seeds, different starts
    assert "repeat 1: 8 picks" in capsys.readouterr().out


def test_other_strategies_by_name(table, tmp_path):
    out = tmp_path / "r.json"
    for strategy in ("random", "forest:ucb"):
        assert main(["benchmark", "pool", str(table), "--target", "loss", "--budget", "5",
                     "--strategy", strategy, "--out", str(out)]) == 0
        assert len(json.loads(out.read_text())["picks"][0]) == 5


@pytest.mark.parametrize(
    "content, args, needle",
    [
        (None, ["--target", "nope"], "target column 'nope' not found"),
        ("a,b,loss\n1,x,2\n2,3,4\n5,6,7\n", ["--target", "loss"], "column 'b' is not numeric"),
        ("a,loss\n1,2\n2,3\n", ["--target", "loss"], "a pool needs at least 3"),
        ("a,loss\n1,2\n2,nan\n3,4\n", ["--target", "loss"], "column 'loss' has a missing"),
        (None, ["--target", "loss", "--budget", "0"], "--budget must be >= 1"),
        (None, ["--target", "loss", "--strategy", "magic"], "--strategy 'magic'"),
        ("a,b,loss\n1,2,3\n1,2,3\n1,2,3\n1,2,3\n", ["--target", "loss"], "holds 3 in every row"),
        ("a,b,loss\n1,2,3\n1,2,4\n1,2,5\n1,2,6\n", ["--target", "loss"],
         "every feature column ('a', 'b') holds one value in every row"),
        ("a,b,loss\n1,2,3\n2,2,3\n3,2,3\n4,2,3\n", ["--target", "loss"], "holds 3 in every row"),
    ],
)
def test_bad_input_gives_one_clear_error_and_exit_2(table, tmp_path, capsys, content, args, needle):
    path = table
    if content is not None:
        path = tmp_path / "bad.csv"
        path.write_text(content)
    out = tmp_path / "never.json"
    assert main(["benchmark", "pool", str(path), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("out", "needle"),
    [
        ("{tmp}", "is a directory"),
        ("{tmp}/missing/r.json", "directory {tmp}/missing does not exist"),
        ("{tmp}/pool.csv/r.json", "{tmp}/pool.csv is not a directory"),
    ],
)
def test_an_unusable_out_is_refused_before_the_replay(table, tmp_path, capsys, out, needle):
    out = out.format(tmp=tmp_path)
    code = main(["benchmark", "pool", str(table), "--target", "loss", "--budget", "5",
                 "--out", out])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""  # no repeat ran
    assert needle.format(tmp=tmp_path) in captured.err and captured.err.count("\n") == 1
