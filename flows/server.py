"""Start or reuse a local Prefect server so campaigns show up in the Prefect UI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from matforge.engine.settings import MatforgeSettings, get_settings

DEFAULT_HOST: str = MatforgeSettings.model_fields["prefect_host"].default
DEFAULT_PORT: int = MatforgeSettings.model_fields["prefect_port"].default


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers its health check at ``api_url``."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_server(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    log_path: Path | None = None,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> tuple[str, subprocess.Popen]:
    """Start ``prefect server start`` detached and wait until it answers.

    Returns the API URL and the process. The server outlives this process
    unless the caller terminates it.
    """
    api_url = f"http://{host}:{port}/api"
    log_path = log_path or Path.home() / ".matforge" / f"prefect-server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    server_env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env or {})}
    server_env.pop("PREFECT_API_URL", None)
    # the UI it serves must call this server's API, not the default port's
    server_env.update(PREFECT_SERVER_API_HOST=host, PREFECT_SERVER_API_PORT=str(port),
                      PREFECT_UI_API_URL=api_url)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start",
             "--host", host, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server_env,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api_healthy(api_url):
            return api_url, proc
        if proc.poll() is not None:
            raise RuntimeError(
                f"the Prefect server exited with code {proc.returncode}; see {log_path}"
            )
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"the Prefect server did not answer within {timeout:.0f} s; see {log_path}")


def ensure_prefect_api() -> str:
    """The Prefect API to report to: the configured one, or a local server.

    Uses ``MATFORGE_PREFECT_API_URL`` when set, then ``PREFECT_API_URL`` from
    Prefect's settings (environment, profile or temporary settings); otherwise
    reuses the local server at ``MATFORGE_PREFECT_HOST:MATFORGE_PREFECT_PORT``
    (127.0.0.1:4200) or starts one there, so campaigns show in the UI and no slow
    ephemeral server starts.
    """
    from prefect.settings import PREFECT_API_URL

    settings = get_settings()
    configured = settings.prefect_api_url or PREFECT_API_URL.value()
    if configured:
        return configured
    host, port = settings.prefect_host, settings.prefect_port
    url = f"http://{host}:{port}/api"
    if not api_healthy(url):
        url, _ = start_server(host, port)
    return url


def running_prefect_api() -> str | None:
    """The configured Prefect API, or the local server, if it answers now; None otherwise
    (nothing is started)."""
    from prefect.settings import PREFECT_API_URL

    settings = get_settings()
    url = settings.prefect_api_url or PREFECT_API_URL.value() or \
        f"http://{settings.prefect_host}:{settings.prefect_port}/api"
    return url if api_healthy(url) else None


@contextmanager
def prefect_api():
    """Run the body against :func:`ensure_prefect_api`'s server; yields its URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = ensure_prefect_api()
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url


def ui_url(api_url: str) -> str:
    """The Prefect UI address for an API URL."""
    return api_url.rstrip("/").removesuffix("/api")
