"""Shared fixtures: a real local Prefect server for flow tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """A function returning a TCP port on 127.0.0.1 that nothing listens on (yet)."""
    return _free_port


def _stop_process_group(proc: subprocess.Popen) -> None:
    """Terminate a process started with its own session, and everything it started; kill
    it where it does not end within 30 s (a Prefect worker sometimes hangs in its shutdown
    after its server has gone quiet: seen in CI, not what any test here is about)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def stop_process_group():
    """A function that stops a process started with ``start_new_session=True`` and its
    children: SIGTERM, then SIGKILL after 30 s."""
    return _stop_process_group


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """The API URL of a real Prefect server, started once per test session.

    Uses ``PREFECT_API_URL`` when it is set; otherwise starts ``prefect server
    start`` on a free port with its own PREFECT_HOME and stops it afterwards.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from matforge.flows.server import api_healthy, start_server

    url = os.environ.get("PREFECT_API_URL")
    proc = None
    if not (url and api_healthy(url)):
        home = tmp_path_factory.mktemp("prefect-home")
        url, proc = start_server(
            port=_free_port(), log_path=home / "server.log", env={"PREFECT_HOME": str(home)}
        )
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url
        # send buffered flow logs while the server still listens, not at interpreter exit
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
    if proc is not None:
        _stop_process_group(proc)


TESTING_ADAPTERS = Path(__file__).parent / "data" / "testing_adapters"


@pytest.fixture(scope="session")
def testing_adapters(tmp_path_factory):
    """The fault-injecting test adapters (``emt-flaky``, ``emt-ledger``), installed by pip.

    They are a package of their own, so the production entry points never list them;
    the site they are installed in goes on ``sys.path`` (this process, and the
    evaluation processes it forks) and on ``PYTHONPATH`` (the ``matforge`` processes
    tests start). Returns the site directory.
    """
    site = tmp_path_factory.mktemp("testing-adapters")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(site), str(TESTING_ADAPTERS)],
        check=True, capture_output=True,
    )
    sys.path.insert(0, str(site))
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), previous) if p)
    yield site
    sys.path.remove(str(site))
    if previous is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = previous


POSTGRES = os.environ.get(
    "MATFORGE_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
"""The PostgreSQL server the store tests use (this machine's, trust auth, database test)."""


def _postgres_answers() -> bool:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(POSTGRES, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture
def pg_url():
    """A URL to a fresh PostgreSQL schema of its own, dropped afterwards.

    Skips the test only when no server answers at :data:`POSTGRES`.
    """
    from sqlalchemy import create_engine, text

    if not _postgres_answers():
        pytest.skip(f"no PostgreSQL server answers at {POSTGRES}")
    schema = f"mf_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def prefect_database():
    """A PostgreSQL database of its own for a Prefect server (asyncpg URL), dropped after."""
    from sqlalchemy import create_engine, make_url, text

    if not _postgres_answers():
        pytest.skip(f"no PostgreSQL server answers at {POSTGRES}")
    name = f"mf_prefect_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        url = make_url(POSTGRES).set(drivername="postgresql+asyncpg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


SLURM_SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "local-slurm.sh"


def _free_port_pair() -> int:
    """A port p with nothing listening on p and p + 1 (slurmctld, slurmd) on 127.0.0.1."""
    for _ in range(50):
        port = _free_port()
        if port >= 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two free consecutive ports")


@pytest.fixture(scope="session")
def free_port_pair():
    """A function returning a port p with nothing listening on p and p + 1 (a Slurm
    cluster's slurmctld and slurmd)."""
    return _free_port_pair


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory):
    """A real single-node Slurm (deploy/local-slurm.sh) for this test session; its
    SLURM_CONF is set in os.environ, so sbatch/squeue here and in the processes tests start
    talk to it. A cluster already running at SLURM_CONF (``.ci/run`` starts one around the
    tests) is used as it is. Skips where Slurm or root is missing."""
    import shutil

    if os.environ.get("SLURM_CONF") and subprocess.run(
            ["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0:
        yield Path(os.environ["SLURM_CONF"]).parent
        return

    sbin = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    if shutil.which("slurmctld", path=sbin) is None or shutil.which("munged", path=sbin) is None:
        pytest.skip("Slurm is not installed (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("slurmd runs only as root")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, MATFORGE_SLURM_DIR=str(state),
               MATFORGE_SLURM_PORT=str(_free_port_pair()))
    started = subprocess.run([str(SLURM_SCRIPT), "start"], env=env, capture_output=True,
                             text=True, timeout=180)
    if started.returncode != 0:
        subprocess.run([str(SLURM_SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        pytest.fail(f"local-slurm.sh start failed:\n{started.stderr}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    yield state
    subprocess.run([str(SLURM_SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
