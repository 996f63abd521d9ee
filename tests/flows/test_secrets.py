"""A store password is used to connect and nowhere else: not stored, not sent, not printed.

A real campaign runs against PostgreSQL with a password in its store URL (the
local server trusts any password); then every row of the store, every flow and
task run the Prefect API holds, and everything the command line printed are
searched for it.
"""

from __future__ import annotations

import json

import yaml
from prefect.client.orchestration import get_client
from sqlalchemy import create_engine, inspect, select, table, text

from matforge.engine.config import load_config, parse_config
from matforge.engine.store.sql import STORE_PASSWORD_VARIABLE, CampaignStore
from matforge.flows.campaign import campaign_flow
from matforge.flows.cli import main

PASSWORD = "S3cretPw"


def _store_dump(url: str) -> str:
    """Every row of every table of the store, as text."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = []
            for name in inspect(conn).get_table_names():
                query = select(text("*")).select_from(table(name))
                rows += [f"{name}: {tuple(row)}" for row in conn.execute(query)]
        return "\n".join(rows)
    finally:
        engine.dispose()


def _campaign(path, store: str, name: str = "Secret-Run", budget: int = 4):
    path.write_text(yaml.safe_dump({
        "name": name, "elements": ["Cu", "Au"],
        "generator": {"pool_size": 10, "max_atoms": 4},
        "batch_size": 2, "budget": budget,
        "evaluator": {"adapter": "emt", "parameters": {"fmax": 0.1, "max_steps": 50}},
        "store": store,
    }))
    return path


def test_the_store_password_is_never_stored_sent_or_shown(
    prefect_server, pg_url, tmp_path, capsys, monkeypatch
):
    secret_url = pg_url.replace("postgres@", f"postgres:{PASSWORD}@", 1)
    assert PASSWORD in secret_url
    path = _campaign(tmp_path / "secret.yaml", secret_url)

    assert main(["run", str(path)]) == 0
    # a deployment's run gets its parameters back from the API, password redacted: the
    # flow takes the password from the environment and continues the same campaign
    sent = json.loads(json.dumps(load_config(path).model_dump(mode="json")))
    assert PASSWORD not in json.dumps(sent) and "postgres:***@" in sent["store"]
    monkeypatch.setenv(STORE_PASSWORD_VARIABLE, PASSWORD)
    summary = campaign_flow(parse_config({**sent, "budget": 6}))
    assert summary["evaluations"] == 6
    # a store that cannot be opened, and a campaign that is not there, name the store
    missing_db = _campaign(tmp_path / "missing.yaml",
                           secret_url.replace("/test?", "/mf_no_such_database?"))
    assert main(["run", str(missing_db)]) == 2
    assert main(["status", "Nobody", "--store", secret_url]) == 2
    printed = capsys.readouterr()
    assert "evaluations in" in printed.out
    errors = printed.err.splitlines()
    assert errors[-2].startswith("matforge: error: store postgresql+psycopg2://postgres:***@")
    assert "no campaign named 'Nobody' in postgresql+psycopg2://postgres:***@" in errors[-1]
    assert PASSWORD not in printed.out + printed.err

    dump = _store_dump(pg_url)
    assert "Secret-Run" in dump and "postgres:***@" in dump
    assert PASSWORD not in dump
    store = CampaignStore(pg_url)
    stored = store.campaign_config("Secret-Run")["store"]
    assert stored.startswith("postgresql+psycopg2://postgres:***@")
    store.close()

    with get_client(sync_client=True) as client:
        flow_runs = [r for r in client.read_flow_runs()
                     if r.parameters.get("campaign") == "Secret-Run"]
        task_runs = client.read_task_runs()
    assert len(flow_runs) == 2
    for run in flow_runs:
        assert run.parameters["store"].startswith("postgresql+psycopg2://postgres:***@")
    sent_to_api = "".join(r.model_dump_json() for r in [*flow_runs, *task_runs])
    assert PASSWORD not in sent_to_api


def test_an_adapters_token_comes_from_a_prefect_secret_block_into_its_environment(
    prefect_server, monkeypatch
):
    """Adapters never import Prefect: the flow fills the variable they read from the block."""
    import os

    import pytest
    from prefect.blocks.system import Secret

    from matforge.engine.config import ConfigError
    from matforge.flows.campaign import export_secrets

    Secret(value="tok-from-block").save("matforge-test-lab-token", overwrite=True)
    config = parse_config({"name": "s", "elements": ["Cu"], "evaluator": {"env_from_blocks": [
        {"variable": "MATFORGE_TEST_LAB_TOKEN", "block": "matforge-test-lab-token"}]}})
    blocks = config.evaluator.env_from_blocks
    monkeypatch.delenv("MATFORGE_TEST_LAB_TOKEN", raising=False)
    export_secrets(blocks)
    assert os.environ["MATFORGE_TEST_LAB_TOKEN"] == "tok-from-block"
    monkeypatch.setenv("MATFORGE_TEST_LAB_TOKEN", "set-by-hand")  # the environment comes first
    export_secrets(blocks)
    assert os.environ["MATFORGE_TEST_LAB_TOKEN"] == "set-by-hand"
    monkeypatch.delenv("MATFORGE_TEST_LAB_TOKEN")
    missing = parse_config({"name": "s", "elements": ["Cu"], "evaluator": {"env_from_blocks": [
        {"variable": "MATFORGE_TEST_LAB_TOKEN", "block": "no-such-block"}]}})
    with pytest.raises(ValueError, match="evaluator.env_from_blocks: MATFORGE_TEST_LAB_TOKEN: "
                                         "cannot read the Prefect Secret block 'no-such-block'"):
        export_secrets(missing.evaluator.env_from_blocks)
    with pytest.raises(ConfigError, match="env_from_blocks"):
        parse_config({"name": "s", "elements": ["Cu"], "evaluator": {"env_from_blocks": [
            {"variable": "BAD-NAME", "block": "lab-token"}]}})
    # stored and read back as it was written: neither field looks secret, nothing is redacted
    from matforge.engine.store.sql import redact

    assert parse_config(redact(config.model_dump(mode="json"))) == config
