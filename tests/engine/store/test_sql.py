"""The campaign store on SQLite and on the PostgreSQL server: idempotent claims, durability,
migrations from older schemas, secrets, concurrent writers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    text,
)

from matforge.engine.store.records import RoundResult
from matforge.engine.store.sql import (
    SCHEMA_VERSION,
    CampaignStore,
    Pick,
    SchemaError,
    evaluation_key,
    utcnow,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty database URL: a SQLite file, or a schema of its own on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url):
    s = CampaignStore(store_url)
    yield s
    s.close()


def _cu(a: float = 3.6) -> Structure:
    return Structure(
        Lattice.cubic(a), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    )


def test_claims_are_idempotent_per_candidate_adapter_and_parameters(store):
    cid = store.campaign_id("c", {"name": "c"})
    first = store.claim(cid, 0, _cu(), "fp-a", "test", "emt", {"fmax": 0.1})
    assert first.status == "running" and first.new
    again = store.claim(cid, 1, _cu(), "fp-a", "test", "emt", {"fmax": 0.1})
    assert again == (first.id, "running", False)
    # another adapter setting is another calculation of the same candidate
    other = store.claim(cid, 1, _cu(), "fp-a", "test", "emt", {"fmax": 0.01})
    assert other.new and other.id != first.id
    assert store.complete(first.id, "accepted", objective=-0.1, result={"energy": -1.0})
    assert store.claim(cid, 2, _cu(), "fp-a", "test", "emt", {"fmax": 0.1}) == (
        first.id, "accepted", False,
    )
    evaluations = store.evaluations(cid)
    assert [e.id for e in evaluations] == sorted(e.id for e in evaluations)
    assert evaluations[0].key == evaluation_key("c", "fp-a", "emt", {"fmax": 0.1})
    assert len({e.key for e in evaluations}) == 2
    assert store.fingerprints(cid) == {"fp-a"}
    assert store.fingerprints(cid, before_round=0) == set()
    assert store.count(cid, ("running", "accepted")) == 2
    assert store.count(cid, ("running", "accepted"), before_round=0) == 0


def test_a_batch_of_claims_is_each_pick_claimed_in_order(store):
    cid = store.campaign_id("c", {"name": "c"})
    done = store.claim(cid, 0, _cu(), "fp-c", "test", "emt", {})
    store.complete(done.id, "accepted", objective=-0.1, result={"energy": -1.0})
    picks = [Pick(_cu(), "fp-a", "test", predicted_mean=-0.2), Pick(_cu(3.7), "fp-b", "test"),
             Pick(_cu(), "fp-a", "test"), Pick(_cu(), "fp-c", "test")]
    a, b, a_again, c = store.claim_all(cid, 1, picks, "emt", {})
    assert a.new and b.new and b.id > a.id and (a.status, b.status) == ("running", "running")
    assert a_again == (a.id, "running", False)  # one evaluation per key, even within a batch
    assert c == (done.id, "accepted", False)  # already paid for
    assert store.claim_all(cid, 2, picks[:2], "emt", {}) == [a._replace(new=False),
                                                               b._replace(new=False)]
    # the same candidates under other adapter settings: new evaluations, the same candidates
    other = store.claim_all(cid, 2, picks[:2], "emt", {"fmax": 0.01})
    assert all(claim.new for claim in other)
    assert store.statuses(cid) == {done.id: "accepted", a.id: "running", b.id: "running",
                                   other[0].id: "running", other[1].id: "running"}
    assert [e.fingerprint for e in store.evaluations(cid, ids=[other[1].id, a.id])] == [
        "fp-a", "fp-b"]
    assert store.evaluations(cid, ids=[a.id])[0].predicted_mean == -0.2
    assert store.fingerprints(cid) == {"fp-a", "fp-b", "fp-c"}
    assert store.claim_all(cid, 3, [], "emt", {}) == []


def test_a_finished_result_is_never_overwritten(store):
    cid = store.campaign_id("c", {})
    claim = store.claim(cid, 0, _cu(), "fp", "test", "emt", {})
    assert store.complete(claim.id, "accepted", objective=-0.2, result={"energy": -2.0})
    assert not store.complete(claim.id, "failed", error="late duplicate")
    (e,) = store.evaluations(cid)
    assert (e.status, e.objective, e.error) == ("accepted", -0.2, None)
    with pytest.raises(ValueError, match="not one of"):
        store.complete(claim.id, "running")


def test_non_finite_numbers_in_a_failed_result_are_stored_as_text(store):
    cid = store.campaign_id("c", {})
    claim = store.claim(cid, 0, _cu(), "fp", "test", "emt", {})
    store.complete(claim.id, "failed", result={"energy": float("nan"), "forces": [[float("inf")]]},
                   error="invalid result: energy is nan")
    (e,) = store.evaluations(cid)
    assert e.result == {"energy": "nan", "forces": [["inf"]]}


def test_secret_looking_parameters_are_redacted_and_do_not_change_the_key(store):
    config = {"name": "c", "evaluator": {"parameters": {"api_token": "tok-123", "fmax": 0.1}}}
    cid = store.campaign_id("c", config)
    assert store.campaign_config("c")["evaluator"]["parameters"] == {
        "api_token": "***",
        "fmax": 0.1,
    }
    params = {"password": "hunter2", "API_KEY": "k", "client_secret": "s", "fmax": 0.1}
    claim = store.claim(cid, 0, _cu(), "fp", "test", "vasp", params)
    # a rotated secret is the same calculation
    rotated = store.claim(cid, 0, _cu(), "fp", "test", "vasp", {**params, "password": "new"})
    assert rotated.id == claim.id and not rotated.new
    with store.engine.connect() as conn:
        dump = json.dumps(
            [list(r) for r in conn.execute(text("SELECT * FROM evaluations"))], default=str
        )
        dump += json.dumps(
            [list(r) for r in conn.execute(text("SELECT * FROM campaigns"))], default=str
        )
    for secret in ("hunter2", "tok-123", '"k"', '"s"'):
        assert secret not in dump


def test_where_a_secret_is_kept_is_not_itself_redacted():
    """``token_env`` names a variable: redacted, the adapter would look in the wrong one."""
    from matforge.engine.store.sql import redact

    assert redact({"token_env": "LAB_TOKEN", "token_block": "lab", "token": "t0k",
                   "client_secret": "s"}) == {"token_env": "LAB_TOKEN", "token_block": "lab",
                                              "token": "***", "client_secret": "***"}


def test_state_survives_reopening(store_url):
    store = CampaignStore(store_url)
    cid = store.campaign_id("c", {})
    claim = store.claim(cid, 0, _cu(), "fp", "test", "emt", {})
    store.start_round(cid, 0, 10, None)
    store.complete(claim.id, "accepted", objective=-0.3, result={"energy": -3.0})
    store.finish_round(cid, RoundResult(round=0, best=-0.3))
    store.close()
    reopened = CampaignStore(store_url)
    (e,) = reopened.evaluations(reopened.campaign_id("c"))
    assert (e.status, e.objective, e.result) == ("accepted", -0.3, {"energy": -3.0})
    (record,) = reopened.rounds(cid)
    assert record.finished and record.result.best == -0.3
    reopened.close()


# the schema of matforge before versioning (commit 9852fcb), frozen here
V1 = MetaData()
Table("campaigns", V1, Column("id", Integer, primary_key=True),
      Column("name", String(100), unique=True),
      Column("config", JSON), Column("created_at", DateTime(timezone=True)))
Table("candidates", V1, Column("id", Integer, primary_key=True),
      Column("campaign_id", ForeignKey("campaigns.id"), index=True),
      Column("fingerprint", String(64)),
      Column("formula", String(200)), Column("n_atoms", Integer), Column("structure", JSON),
      Column("generator", String(100)), Column("parent", String(64), nullable=True),
      Column("round", Integer), UniqueConstraint("campaign_id", "fingerprint"))
Table("evaluations", V1, Column("id", Integer, primary_key=True),
      Column("campaign_id", ForeignKey("campaigns.id"), index=True),
      Column("candidate_id", ForeignKey("candidates.id")), Column("round", Integer, index=True),
      Column("status", String(20), index=True), Column("adapter", String(100)),
      Column("adapter_parameters", JSON), Column("model_version", String(100)),
      Column("predicted_mean", Float), Column("predicted_std", Float),
      Column("acquisition_value", Float), Column("objective", Float), Column("result", JSON),
      Column("error", Text), Column("review_note", Text),
      Column("claimed_at", DateTime(timezone=True)),
      Column("finished_at", DateTime(timezone=True)), Column("wall_time", Float),
      UniqueConstraint("campaign_id", "candidate_id", "adapter"))
Table("rounds", V1, Column("id", Integer, primary_key=True),
      Column("campaign_id", ForeignKey("campaigns.id"), index=True), Column("round", Integer),
      Column("model_version", String(100)), Column("n_pool", Integer), Column("info", JSON),
      Column("started_at", DateTime(timezone=True)), Column("finished_at", DateTime(timezone=True)),
      UniqueConstraint("campaign_id", "round"))


def _write_v1(url: str) -> None:
    engine = create_engine(url)
    V1.create_all(engine)
    t = V1.tables
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            t["campaigns"].insert(),
            [{"id": 1, "name": "old", "config": {"name": "old"}, "created_at": now}],
        )
        conn.execute(t["candidates"].insert(), [
            {"id": i, "campaign_id": 1, "fingerprint": f"fp{i}", "formula": "Cu4", "n_atoms": 4,
             "structure": _cu().as_dict(), "generator": "decoration:fcc", "parent": None,
             "round": 0}
            for i in (1, 2, 3)
        ])
        blank = {c.name: None for c in t["evaluations"].columns}
        conn.execute(t["evaluations"].insert(), [{**blank, **row} for row in [
            {"id": 1, "campaign_id": 1, "candidate_id": 1, "round": 0, "status": "accepted",
             "adapter": "emt", "adapter_parameters": {"fmax": 0.1, "password": "hunter2"},
             "objective": -0.05, "result": {"energy": -14.0}, "claimed_at": now, "finished_at": now,
             "wall_time": 1.5},
            {"id": 2, "campaign_id": 1, "candidate_id": 2, "round": 0, "status": "needs_review",
             "adapter": "emt", "adapter_parameters": {"fmax": 0.1}, "objective": -0.5,
             "result": {"energy": -16.0}, "review_note": "flagged", "claimed_at": now},
            {"id": 3, "campaign_id": 1, "candidate_id": 3, "round": 0, "status": "running",
             "adapter": "emt", "adapter_parameters": {"fmax": 0.1}, "claimed_at": now},
        ]])
        conn.execute(t["rounds"].insert(), [{"id": 1, "campaign_id": 1, "round": 0,
                                             "model_version": None, "n_pool": 30, "info": {},
                                             "started_at": now}])
        if conn.dialect.name == "postgresql":  # as if the ids had come from the sequences
            for table in V1.tables:
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT MAX(id) FROM {table}))"))
    engine.dispose()


def test_a_version_1_store_opens_with_its_data_intact(store_url):
    _write_v1(store_url)
    store = CampaignStore(store_url)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM schema_version")).scalar() == SCHEMA_VERSION
    cid = store.campaign_id("old")
    e1, e2, e3 = store.evaluations(cid)
    assert (e1.id, e1.status, e1.objective, e1.result) == (1, "accepted", -0.05, {"energy": -14.0})
    assert (e2.id, e2.status, e2.objective) == (2, "needs_review", -0.5)
    assert (e3.id, e3.status) == (3, "running")
    assert e1.key == evaluation_key("old", "fp1", "emt", {"fmax": 0.1, "password": "x"})
    assert store.rounds(cid)[0].n_pool == 30
    # the migrated keys make old work idempotent: the unfinished claim is resumed, not repeated
    assert store.claim(cid, 1, _cu(), "fp3", "g", "emt", {"fmax": 0.1}) == (3, "running", False)
    assert store.claim(cid, 1, _cu(), "fp1", "g", "emt", {"fmax": 0.1, "password": "p"}) == (
        1, "accepted", False,
    )
    assert store.claim(cid, 1, _cu(), "fp4", "g", "emt", {"fmax": 0.1}).new
    # deduplication's keys: old candidates' formulas filled in, space groups left to compute
    assert store.formulas(cid) == {"Cu"}
    assert store.claim(cid, 1, _cu(), "fp5", "g", "emt", {}, space_group=225).new
    assert store.claim(cid, 1, _cu(), "fp6", "g", "emt", {}, space_group=229).new
    like = store.structures_like(cid, "Cu", 225)
    assert sorted((fp, g) for fp, _, g in like) == [
        ("fp1", None), ("fp2", None), ("fp3", None), ("fp4", None), ("fp5", 225)]
    assert like[0][1] == _cu()
    assert [fp for fp, _, _ in store.structures_like(cid, "Cu", 229, before_round=1)] == [
        "fp1", "fp2", "fp3"]
    with store.engine.connect() as conn:
        assert "hunter2" not in str(
            list(conn.execute(text("SELECT adapter_parameters FROM evaluations")))
        )
    store.close()
    # opening again does not migrate again
    again = CampaignStore(store_url)
    assert len(again.evaluations(again.campaign_id("old"))) == 6
    again.close()


def test_a_store_from_a_newer_matforge_is_refused(store_url):
    CampaignStore(store_url).close()
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE schema_version SET version = :v"), {"v": SCHEMA_VERSION + 1})
    engine.dispose()
    with pytest.raises(SchemaError, match="newer matforge"):
        CampaignStore(store_url)


WRITER = """
import json, pathlib, sys, time, random
from pymatgen.core import Lattice, Structure
from matforge.engine.store.sql import CampaignStore, Pick
url, worker, n, gate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), pathlib.Path(sys.argv[4])
workers = int(sys.argv[5])
store = CampaignStore(url)
cid = store.campaign_id("shared")
# each worker claims a candidate of its own first, then waits until every worker has: all
# of them write, however the machine schedules them; the rest they race for, three at a
# time as a round claims its batch
fps = [f"fp{i:03d}" for i in range(workers, n)]
random.Random(worker).shuffle(fps)
structure = Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])
(gate / f"ready{worker}").touch()
while not (gate / "go").exists():
    time.sleep(0.005)
won = []
def complete(fp, claim):
    if claim.new:
        won.append(fp)
        store.complete(claim.id, "accepted", objective=int(fp[2:]) / 1000, result={"by": worker})
own = f"fp{worker:03d}"
complete(own, store.claim(cid, 0, structure, own, "test", "emt", {"fmax": 0.1}))
(gate / f"first{worker}").touch()
while len(list(gate.glob("first*"))) < workers:
    time.sleep(0.005)
for i in range(0, len(fps), 3):
    batch = fps[i:i + 3]
    claims = store.claim_all(cid, 0, [Pick(structure, fp, "test") for fp in batch], "emt",
                             {"fmax": 0.1})
    for fp, claim in zip(batch, claims):
        complete(fp, claim)
    time.sleep(0.01)  # a dispatch between claims
print(json.dumps(won))
"""


def run_concurrent_writers(url: str, gate: Path, n_workers: int = 4,
                           n_candidates: int = 60) -> list[list[str]]:
    """Start ``n_workers`` processes that claim and complete the same candidates at once.

    Each worker imports, connects and then waits at a gate (files in ``gate``) that opens
    only when all are ready, so a slow start under load cannot serialize them.
    """
    CampaignStore(url).campaign_id("shared", {"name": "shared"})
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, url, str(w), str(n_candidates), str(gate),
                          str(n_workers)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in range(n_workers)
    ]
    deadline = time.time() + 180
    while len(list(gate.glob("ready*"))) < n_workers:
        assert time.time() < deadline, "the writer processes never became ready"
        assert all(p.poll() is None for p in procs), (
            "a writer process exited before the gate opened"
        )
        time.sleep(0.01)
    (gate / "go").touch()
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    return outputs


def check_concurrent_writes(url: str, won: list[list[str]], n_candidates: int = 60) -> None:
    every = [fp for w in won for fp in w]
    assert sorted(every) == [f"fp{i:03d}" for i in range(n_candidates)]  # each won exactly once
    store = CampaignStore(url)
    cid = store.campaign_id("shared")
    evaluations = store.evaluations(cid)
    assert len(evaluations) == n_candidates
    assert len({e.fingerprint for e in evaluations}) == n_candidates
    assert all(e.status == "accepted" for e in evaluations)
    assert all(e.objective == int(e.fingerprint[2:]) / 1000 for e in evaluations)
    winner = {fp: w for w, fps in enumerate(won) for fp in fps}
    assert all(e.result == {"by": winner[e.fingerprint]} for e in evaluations)
    store.close()


@pytest.mark.slow
def test_four_processes_writing_one_campaign_lose_and_duplicate_nothing(store_url, tmp_path):
    won = run_concurrent_writers(store_url, tmp_path)
    check_concurrent_writes(store_url, won)
    assert all(won)  # they really did write at the same time, whatever the load
