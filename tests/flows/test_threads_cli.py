"""Every ``matforge`` command runs with torch and BLAS limited to its share of the cores.

On a shared machine a campaign's model fits run beside ``workers`` concurrent evaluations;
torch's default of one thread per core then oversubscribed the CPUs and a pool benchmark
ran many times slower.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from matforge.flows.cli import main

# argv after ``-c CODE`` reaches the script as sys.argv[1:]
CODE = """
import sys
import torch
from matforge.flows.cli import main
code = main(sys.argv[1:])
print(f"exit {code} threads {torch.get_num_threads()}")
"""

# thread variables a caller may have exported, which would hide torch's own default
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.random((20, 2))
    y = np.sin(3 * X[:, 0]) + X[:, 1]
    path = tmp_path / "pool.csv"
    lines = ["x1,x2,y"] + [f"{a:.4f},{b:.4f},{c:.5f}" for (a, b), c in zip(X, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_benchmark(table, settings: dict[str, str]) -> str:
    env = {
        k: v for k, v in os.environ.items()
        if not k.upper().startswith("MATFORGE_") and k not in THREAD_VARIABLES
    }
    args = ["benchmark", "pool", str(table), "--target", "y", "--budget", "5",
            "--strategy", "random"]
    out = subprocess.run(
        [sys.executable, "-c", CODE, *args], env={**env, **settings},
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "settings, threads",
    [
        ({"MATFORGE_WORKERS": "2", "MATFORGE_CORES": "2"}, 1),
        ({"MATFORGE_WORKERS": "1", "MATFORGE_CORES": "2", "MATFORGE_THREADS": "1"}, 1),
        ({"MATFORGE_WORKERS": "2", "MATFORGE_CORES": "6"}, 3),
    ],
    ids=["two-workers-two-cores", "threads-overrides", "six-cores-split"],
)
def test_benchmark_runs_with_the_process_share_of_threads(table, settings, threads):
    assert run_benchmark(table, settings) == f"exit 0 threads {threads}"


def test_bad_setting_is_one_clear_error_and_exit_2(table, monkeypatch, capsys):
    monkeypatch.setenv("MATFORGE_WORKERS", "0")
    code = main(["benchmark", "pool", str(table), "--target", "y", "--budget", "5"])
    assert code == 2
    err = capsys.readouterr().err
    assert err == "matforge: error: environment variable MATFORGE_WORKERS: must be >= 1, got '0'\n"
