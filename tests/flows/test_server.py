"""A Prefect server matforge starts serves a UI that talks to that server."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest


def test_the_ui_of_a_server_on_another_port_calls_that_servers_api(prefect_server):
    if os.environ.get("PREFECT_API_URL"):
        pytest.skip("the tests use a server they did not start")
    base = prefect_server.rstrip("/").removesuffix("/api")
    with urllib.request.urlopen(f"{base}/ui-settings", timeout=30) as reply:
        settings = json.loads(reply.read())
    # before, every server's UI called port 4200, another user's server or none
    assert settings["api_url"] == prefect_server
