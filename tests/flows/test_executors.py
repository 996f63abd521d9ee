"""Evaluations dispatched to a real local Slurm, to Dask workers, and held by slots.

Everything here runs for real: Slurm is deploy/local-slurm.sh's single-node cluster
(slurmctld, slurmd, munge), Dask a ``LocalCluster`` or a ``dask_jobqueue.SLURMCluster``
on that Slurm, and the slots are global concurrency limits of the tests' Prefect server.
The ``emt-ledger`` adapter counts paid calls and says where each ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

from matforge.engine.config import parse_config
from matforge.engine.store.sql import CampaignStore

pytestmark = pytest.mark.slow


def _config(root: Path, name: str, executor: dict, budget: int = 4, batch_size: int = 2,
            evaluator: dict | None = None) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    return {
        "name": name,
        "elements": ["Cu", "Au"],
        "generator": {"pool_size": 30, "max_atoms": 4},
        "batch_size": batch_size,
        "budget": budget,
        "evaluator": evaluator or {
            "adapter": "emt-ledger",
            "parameters": {"ledger": str(root / "ledger.txt"), "fmax": 0.1, "max_steps": 60},
        },
        "executor": executor,
        "store": f"sqlite:///{root / 'store.db'}",
        "workdir": str(root / "runs"),
        "anomaly": {"enabled": False},
        "seed": 1,
    }


def _ledger(root: Path) -> list[list[str]]:
    path = root / "ledger.txt"
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _evaluations(root: Path, name: str):
    store = CampaignStore(f"sqlite:///{root / 'store.db'}")
    try:
        return store.evaluations(store.campaign_id(name))
    finally:
        store.close()


def _run(config: dict):
    from matforge.flows.campaign import campaign_flow

    return campaign_flow(parse_config(config))


def test_a_campaign_whose_evaluations_are_slurm_jobs_completes_its_budget(
    prefect_server, testing_adapters, local_slurm, tmp_path
):
    config = _config(tmp_path, "slurm-emt", {"kind": "slurm", "slurm": {"poll_interval": 0.5}})
    summary = _run(config)
    assert summary["by_status"] == {"accepted": 4}
    lines = _ledger(tmp_path)
    assert len(lines) == 4 and len({line[0] for line in lines}) == 4  # none paid twice
    evaluations = _evaluations(tmp_path, "slurm-emt")
    jobs = {e.job["id"] for e in evaluations}
    assert len(jobs) == 4 and {line[4] for line in lines} == jobs  # each ran in its own job
    for e in evaluations:
        assert e.job["kind"] == "slurm" and Path(e.job["log"]).is_file()
        script = Path(e.job["log"]).parent / "matforge-job.sh"
        assert "#SBATCH --cpus-per-task=1" in script.read_text()
