"""deploy/local-slurm.sh: a real single-node Slurm (Debian's slurm-wlm, munge) on localhost.

Each cluster gets its own state directory under tmp and its own ports, so these tests neither
meet nor disturb a cluster started from the default /tmp/matforge-slurm.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local-slurm.sh"
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])

needs_slurm = pytest.mark.skipif(
    shutil.which("slurmctld", path=SBIN) is None or shutil.which("munged", path=SBIN) is None,
    reason="Slurm is not installed (apt-get install slurm-wlm munge)",
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="slurmd runs only as root")


def _script(action: str, state_dir: Path, port: int, timeout: float = 120):
    env = dict(os.environ, MATFORGE_SLURM_DIR=str(state_dir), MATFORGE_SLURM_PORT=str(port))
    return subprocess.run([str(SCRIPT), action], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _start(state_dir: Path, port: int) -> dict:
    """Starts a cluster; returns os.environ with its SLURM_CONF."""
    res = _script("start", state_dir, port)
    if res.returncode != 0:
        _script("stop", state_dir, port)
        pytest.fail(f"local-slurm.sh start failed ({res.returncode}):\n{res.stderr}")
    match = re.fullmatch(r"export SLURM_CONF=(\S+)\n", res.stdout)
    assert match, res.stdout
    assert match.group(1) == str(state_dir / "slurm.conf")
    return dict(os.environ, SLURM_CONF=match.group(1))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory, free_port_pair):
    """The environment (with SLURM_CONF) of a cluster running for this module's tests."""
    state_dir = tmp_path_factory.mktemp("local-slurm")
    port = free_port_pair()
    env = _start(state_dir, port)
    try:
        yield env
    finally:
        res = _script("stop", state_dir, port)
        assert res.returncode == 0, res.stderr


def _sbatch(env: dict, *args: str) -> str:
    res = subprocess.run(["sbatch", "--parsable", *args], env=env, capture_output=True,
                         text=True, timeout=30, check=True)
    return res.stdout.strip().split(";")[0]


def _job_state(env: dict, job_id: str) -> str:
    res = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env,
                         capture_output=True, text=True, timeout=30, check=True)
    match = re.search(r"\bJobState=(\S+)", res.stdout)
    assert match, res.stdout
    return match.group(1)


def _wait_state(env: dict, job_id: str, wanted: str, timeout: float = 60) -> float:
    """Seconds until the job reaches ``wanted``; fails on another final state or timeout."""
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
             "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
    t0 = time.monotonic()
    state = None
    while time.monotonic() - t0 < timeout:
        state = _job_state(env, job_id)
        if state == wanted:
            return time.monotonic() - t0
        if state in final:
            pytest.fail(f"job {job_id} ended {state}, not {wanted}")
        time.sleep(0.2)
    pytest.fail(f"job {job_id} not {wanted} after {timeout} s (state {state})")


def _processes_of(state_dir: Path) -> list[str]:
    """Processes of that cluster: daemons whose command line names a file in ``state_dir``
    and job steps (slurmstepd, job processes) whose environment names its slurm.conf."""
    conf = f"SLURM_CONF={state_dir / 'slurm.conf'}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(state_dir).encode() in cmdline or conf in environ.split(b"\0"):
            args = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{proc.name}: {args}")
    return found


def test_missing_packages_exit_2_naming_them(tmp_path):
    """Without the Slurm clients on PATH the script names the apt packages and exits 2."""
    res = subprocess.run(["/bin/bash", str(SCRIPT), "start"], capture_output=True, text=True,
                         env={"PATH": str(tmp_path), "MATFORGE_SLURM_DIR": str(tmp_path / "s")},
                         timeout=30)
    assert res.returncode == 2, res.stderr
    assert "apt-get install slurm-wlm munge" in res.stderr
    assert not (tmp_path / "s").exists()


@needs_root
@needs_slurm
def test_sbatch_job_completes_and_writes_its_file(slurm, tmp_path):
    job_id = _sbatch(slurm, f"--chdir={tmp_path}", "--wrap", "echo hi > out.txt")
    _wait_state(slurm, job_id, "COMPLETED", timeout=60)
    assert (tmp_path / "out.txt").read_text() == "hi\n"


@needs_root
@needs_slurm
def test_scancel_cancels_a_running_job(slurm, tmp_path):
    job_id = _sbatch(slurm, f"--chdir={tmp_path}", "--wrap", "sleep 60")
    _wait_state(slurm, job_id, "RUNNING", timeout=60)
    subprocess.run(["scancel", job_id], env=slurm, check=True, timeout=30)
    _wait_state(slurm, job_id, "CANCELLED", timeout=30)


@needs_root
@needs_slurm
def test_start_is_idempotent_and_stop_leaves_nothing_running(tmp_path, free_port_pair):
    state_dir = tmp_path / "slurm"
    port = free_port_pair()
    try:
        env = _start(state_dir, port)
        again = _script("start", state_dir, port)
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stderr
        assert again.stdout == f"export SLURM_CONF={state_dir / 'slurm.conf'}\n"
        assert _script("status", state_dir, port).returncode == 0

        # a running job: stop must cancel it, not leave its slurmstepd and sleep behind
        job_id = _sbatch(env, f"--chdir={tmp_path}", "--wrap", "sleep 300")
        _wait_state(env, job_id, "RUNNING", timeout=60)
        assert _processes_of(state_dir)
    finally:
        res = _script("stop", state_dir, port)
    assert res.returncode == 0, res.stderr
    assert _processes_of(state_dir) == []
    assert _script("status", state_dir, port).returncode == 3
    assert _script("stop", state_dir, port).returncode == 0  # stopping twice is fine
