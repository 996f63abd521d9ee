"""Store URLs that cannot be opened are refused with one line naming the URL (password hidden)."""

from __future__ import annotations

import os

import pytest

from matforge.engine.store.sql import (
    STORE_PASSWORD_VARIABLE,
    CampaignStore,
    StoreError,
    redact_url,
    runtime_url,
)

PASSWORD = "S3cretPw"


def _with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("sqlite:///{tmp}", "is a directory"),
        ("sqlite:///{tmp}/missing/dir/c.db", "directory {tmp}/missing/dir does not exist"),
        ("sqlite:///{tmp}/afile/c.db", "{tmp}/afile is not a directory"),
        ("not a url at all", "not a database URL"),
        ("://user:pw@host/db", "not a database URL"),
        ("mysql://user:pw@127.0.0.1/db", "driver for 'mysql' is not installed"),
        ("nosuchdb+drv://user:pw@127.0.0.1/db", "unknown database driver 'nosuchdb+drv'"),
        ("postgresql+asyncpg://user:pw@127.0.0.1/db", "asyncio driver"),
        ("postgresql+psycopg2://postgres:pw@127.0.0.1:{port}/test", "Connection refused"),
    ],
)
def test_bad_store_urls_are_refused_with_one_line(tmp_path, url, reason, free_port):
    (tmp_path / "afile").write_text("not a directory")
    port = free_port()
    url = url.format(tmp=tmp_path, port=port)
    before = _files(tmp_path)
    with pytest.raises(StoreError) as info:
        CampaignStore(url)
    message = str(info.value)
    assert message.startswith("store ") and "\n" not in message
    assert reason.format(tmp=tmp_path) in message
    assert ":pw@" not in message
    assert _files(tmp_path) == before


def test_a_missing_store_is_not_created_when_only_reading(tmp_path):
    path = tmp_path / "never.db"
    with pytest.raises(StoreError, match=f"no store at {path}"):
        CampaignStore(f"sqlite:///{path}", create=False)
    assert not path.exists()
    CampaignStore(f"sqlite:///{path}").close()  # creating is the default
    CampaignStore(f"sqlite:///{path}", create=False).close()  # and now it opens


def test_a_file_that_is_not_a_database_is_named(tmp_path):
    path = tmp_path / "campaign.yaml"
    path.write_text("name: x\n")
    with pytest.raises(StoreError, match="file is not a database"):
        CampaignStore(f"sqlite:///{path}")
    assert path.read_text() == "name: x\n"


def test_a_directory_nobody_can_write_is_named():
    # /proc refuses new files even to root, so this runs wherever the tests run
    with pytest.raises(StoreError, match="cannot create a database in /proc .not writable"):
        CampaignStore("sqlite:////proc/c.db")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_unwritable_directory_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="not writable"):
            CampaignStore(f"sqlite:///{locked}/c.db")
    finally:
        locked.chmod(0o700)


def test_postgres_refusals_hide_the_password(pg_url):
    missing_db = _with_password(pg_url).replace("/test?", "/mf_no_such_database?")
    with pytest.raises(StoreError) as info:
        CampaignStore(missing_db)
    assert 'database "mf_no_such_database" does not exist' in str(info.value)
    assert PASSWORD not in str(info.value) and "postgres:***@" in str(info.value)

    with pytest.raises(StoreError, match="no matforge store in this database"):
        CampaignStore(_with_password(pg_url), create=False)

    store = CampaignStore(_with_password(pg_url))
    try:
        with pytest.raises(KeyError) as info:
            store.campaign_config("nobody")
        assert "no campaign named 'nobody'" in str(info.value)
        assert PASSWORD not in str(info.value)
    finally:
        store.close()


def test_redact_url_hides_passwords_only():
    assert redact_url("postgresql+psycopg2://u:S3cret@h:5432/db") == (
        "postgresql+psycopg2://u:***@h:5432/db"
    )
    assert redact_url("sqlite:////tmp/x y.db") == "sqlite:////tmp/x y.db"
    assert "S3cret" not in redact_url("postgresql://u@h/db?password=S3cret")
    assert "S3cret" not in redact_url("://u:S3cret@h/db")  # unparseable, still hidden
    assert "\n" not in redact_url("sqlite:///a\nb.db")


def test_runtime_url_takes_a_redacted_password_from_the_environment(monkeypatch):
    shown = redact_url("postgresql+psycopg2://u:S3cret@h:5432/db")
    monkeypatch.delenv(STORE_PASSWORD_VARIABLE, raising=False)
    # no variable: no password, so libpq's PGPASSWORD or ~/.pgpass apply
    assert runtime_url(shown) == "postgresql+psycopg2://u@h:5432/db"
    monkeypatch.setenv(STORE_PASSWORD_VARIABLE, "p@ss/word")
    assert runtime_url(shown) == "postgresql+psycopg2://u:p%40ss%2Fword@h:5432/db"
    real = "postgresql+psycopg2://u:S3cret@h:5432/db"
    assert runtime_url(real) == real and runtime_url("sqlite:///x.db") == "sqlite:///x.db"
