"""The campaign store: the source of truth for every campaign.

SQLAlchemy 2; a SQLite file by default, any SQLAlchemy URL (PostgreSQL) by
configuration. Each evaluation is claimed (a row with status ``running``)
before it is dispatched and completed when it returns, so a campaign that
stops for any reason continues where it stopped and never evaluates a
candidate twice.

Runs and owners: the ``owners`` table records each run of a campaign (host,
pid, heartbeat, lease expiry, its settings) and at most one is live at a time
(:meth:`CampaignStore.acquire`); every claim names the run that owns it, and an
outcome is stored only by its owner (:meth:`CampaignStore.complete`).

Evaluation statuses: ``running`` (claimed, not finished), ``accepted`` (training
data), ``needs_review`` (flagged as anomalous; out of training until a person
decides), ``rejected`` (a person said no), ``failed`` (no usable result).

Idempotency: an evaluation is identified by its ``key``, a hash of (campaign,
canonical candidate fingerprint, adapter name, adapter parameters); the store
holds at most one evaluation per key, so a repeated claim returns the existing
one instead of paying again.

Secrets: adapter parameters and campaign configurations are stored with every
value whose name looks secret (token, password, secret, key, credential) replaced
by ``"***"``. Adapters must read secrets from environment variables, never from
the campaign file.

Schema versions: the ``schema_version`` table holds the version a database was
written with; opening an older database runs the ordered functions in
:data:`MIGRATIONS` once, inside one transaction. A database from a newer
matforge is refused rather than guessed at.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

from pymatgen.core import Composition
from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from matforge.engine.materials.structures import (
    Material,
    composition_of,
    material_as_dict,
    material_from_dict,
    n_atoms,
)
from matforge.engine.store.records import RoundRecord, RoundResult

STATUSES = ("running", "accepted", "needs_review", "rejected", "failed")
FINISHED = ("accepted", "needs_review", "rejected", "failed")
SCHEMA_VERSION = 6
"""Version of the tables below; bump it and append to :data:`MIGRATIONS` on every change."""

REDACTED = "***"
SECRET_NAME = re.compile(r"token|passw|secret|key|credential|auth", re.IGNORECASE)
"""Parameter names whose values are never stored."""

SECRET_PLACE = re.compile(r"_(env|block)$", re.IGNORECASE)
"""Names that say where a secret is kept (``token_env``: the variable's name), not the secret."""


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not SECRET_PLACE.search(name)


class SchemaError(RuntimeError):
    """A database this matforge cannot open; the message says why."""


class StoreError(ValueError):
    """A store URL that cannot be opened: one line ``store <redacted url>: <reason>``."""


STORE_PASSWORD_VARIABLE = "MATFORGE_STORE_PASSWORD"
"""Where a flow finds the store's password when its URL arrived redacted (from the Prefect API)."""


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def redact_url(url: str) -> str:
    """``url`` as it may be shown or stored: password and secret-looking query values as ``***``."""
    try:
        parsed = make_url(url)
    except (ArgumentError, TypeError, ValueError):
        text = str(url)
        if "@" in text:
            # unparseable, yet it may hold credentials: keep only what follows the last '@'
            scheme, sep, rest = text.partition("://")
            host = (rest if sep else text).rpartition("@")[2]
            text = f"{scheme}://{REDACTED}@{host}" if sep else f"{REDACTED}@{host}"
        return _one_line(text)
    secret = [k for k in parsed.query if is_secret_name(k)]
    if parsed.password is None and not secret:
        return _one_line(str(url))  # nothing to hide: shown as written
    query = {k: REDACTED if k in secret else v for k, v in parsed.query.items()}
    return _one_line(parsed.set(query=query).render_as_string(hide_password=True))


def runtime_url(url: str) -> str:
    """The URL to connect with, given one that may have been stored or sent redacted.

    A password shown as ``***`` (a flow run whose parameters came back from the
    Prefect API) is replaced by the environment variable ``MATFORGE_STORE_PASSWORD``,
    or dropped when that is unset so that libpq's ``PGPASSWORD`` and ``~/.pgpass``
    apply. Any other URL is returned unchanged.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, TypeError, ValueError):
        return url
    redacted_query = [k for k, v in parsed.query.items() if v == REDACTED]
    if parsed.password != REDACTED and not redacted_query:
        return url
    if parsed.password == REDACTED:
        # URL.set treats None as "unchanged": build the URL anew to drop the password
        parsed = URL.create(
            parsed.drivername, parsed.username, os.environ.get(STORE_PASSWORD_VARIABLE) or None,
            parsed.host, parsed.port, parsed.database, parsed.query,
        )
    if redacted_query:
        parsed = parsed.difference_update_query(redacted_query)
    return parsed.render_as_string(hide_password=False)


def _driver_reason(error: BaseException, url: str) -> str:
    """The first line of a driver's error, with the URL's password (if any) hidden."""
    orig = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    reason = " ".join(lines[0].split()) if lines else type(orig).__name__
    try:
        password = make_url(url).password
    except (ArgumentError, TypeError, ValueError):
        password = None
    if password and password != REDACTED:
        reason = reason.replace(str(password), REDACTED)
    return _one_line(reason)


def redact(value: Any) -> Any:
    """``value`` made JSON-safe with every secret-looking mapping entry replaced by ``"***"``."""
    if isinstance(value, dict):
        return {
            str(k): REDACTED if is_secret_name(str(k)) else redact(v) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return json.loads(json.dumps(value, default=str))


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities written as strings, which every database's JSON accepts."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _canonical(value: Any) -> str:
    return json.dumps(redact(value), sort_keys=True, separators=(",", ":"))


def evaluation_key(
    campaign: str, fingerprint: str, adapter: str, parameters: dict[str, Any], repeat: int = 0
) -> str:
    """The idempotency key of one evaluation: sha256 of campaign, candidate, adapter, parameters
    (and ``repeat``, the how-manieth evaluation of the candidate a review asked for again).

    Parameters are hashed after redaction, so rotating a secret does not make
    finished work look new.
    """
    params = hashlib.sha256(_canonical(parameters).encode()).hexdigest()
    parts = [campaign, fingerprint, adapter, params] + ([repeat] if repeat else [])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class Claim(NamedTuple):
    """What :meth:`CampaignStore.claim` found or made; ``new`` is True for the one claimer."""

    id: int
    status: str
    new: bool


class Pick(NamedTuple):
    """One candidate to claim (:meth:`CampaignStore.claim_all`): the material, its
    fingerprint, the generator and parent it came from, and what the model predicted."""

    structure: Material
    fingerprint: str
    generator: str
    parent: str | None = None
    model_version: str | None = None
    predicted_mean: float | None = None
    predicted_std: float | None = None
    acquisition_value: float | None = None
    space_group: int | None = None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _aware(t: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every time stored here is UTC
    return t if t is None or t.tzinfo else t.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Owner:
    """One run of a campaign, as the ``owners`` table records it."""

    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    ended: str | None
    config: dict

    def alive(self, now: datetime | None = None) -> bool:
        """Whether this run still holds its lease: not ended, heartbeating in time, and, when
        it ran on this host, its process still there (a killed run is dead at once, not
        when its lease runs out)."""
        if self.ended_at is not None or self.expires_at <= (now or utcnow()):
            return False
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass  # another user's process: it exists
        return True

    def describe(self, now: datetime | None = None) -> str:
        """``owner 1a2b3c4d (pid 123 on host, heartbeat 2 s ago)``."""
        ago = ((now or utcnow()) - self.heartbeat_at).total_seconds()
        return f"owner {self.id[:8]} (pid {self.pid} on {self.host}, heartbeat {ago:.0f} s ago)"


class Base(DeclarativeBase):
    pass


class CampaignRow(Base):
    __tablename__ = "campaigns"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    config: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CandidateRow(Base):
    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("campaign_id", "fingerprint"),
                      Index("ix_candidates_campaign_formula", "campaign_id", "reduced_formula"))
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    formula: Mapped[str] = mapped_column(String(200))
    # deduplication's keys (engine.materials.dedup): reduced formula and space group
    reduced_formula: Mapped[str | None] = mapped_column(String(200), nullable=True)
    space_group: Mapped[int | None] = mapped_column(Integer, nullable=True)
    n_atoms: Mapped[int] = mapped_column(Integer)
    structure: Mapped[dict] = mapped_column(JSON)
    generator: Mapped[str] = mapped_column(String(100))
    parent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    round: Mapped[int] = mapped_column(Integer)


class SchemaVersionRow(Base):
    __tablename__ = "schema_version"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class EvaluationRow(Base):
    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("campaign_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    round: Mapped[int] = mapped_column(Integer, index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    adapter: Mapped[str] = mapped_column(String(100))
    adapter_parameters: Mapped[dict] = mapped_column(JSON)
    model_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    predicted_mean: Mapped[float | None] = mapped_column(Float, nullable=True)
    predicted_std: Mapped[float | None] = mapped_column(Float, nullable=True)
    acquisition_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    objective: Mapped[float | None] = mapped_column(Float, nullable=True)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    review_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    wall_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(32), nullable=True)
    job: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class OwnerRow(Base):
    """One run of a campaign: who holds (or held) the campaign's lease, and with what settings."""

    __tablename__ = "owners"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended: Mapped[str | None] = mapped_column(String(200), nullable=True)
    config: Mapped[dict] = mapped_column(JSON, default=dict)


class RoundRow(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("campaign_id", "round"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    n_pool: Mapped[int] = mapped_column(Integer, default=0)
    info: Mapped[dict] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class Evaluation:
    """A read-only view of one evaluation with its candidate."""

    id: int
    round: int
    status: str
    fingerprint: str
    formula: str
    generator: str
    structure: dict
    objective: float | None
    predicted_mean: float | None
    predicted_std: float | None
    acquisition_value: float | None
    model_version: str | None
    adapter: str
    result: dict | None
    error: str | None
    key: str | None = None
    owner: str | None = None
    job: dict | None = None
    """Where the evaluation runs, once dispatched to a scheduler (``{"kind": "slurm", "id":
    ..., "log": ...}``): stored before the job may start, so a resumed run re-attaches."""
    review_note: str | None = None
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None

    def input_structure(self) -> Material:
        """The candidate as proposed: a structure, or in a campaign of compositions a
        composition."""
        return material_from_dict(self.structure)


def _sqlite_pragmas(dbapi_connection, _record):
    # the driver's own transaction handling is off: every transaction starts with
    # BEGIN IMMEDIATE (below), so DDL in a migration is transactional and two
    # writers never both read "not claimed yet"
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection):
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _check_sqlite_file(database: str | None, create: bool, shown: str) -> None:
    """Refuse a SQLite path that is a directory, or whose directory is missing or read-only."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database).expanduser().absolute()
    if path.is_dir():
        raise StoreError(f"store {shown}: {path} is a directory, not a database file")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(f"store {shown}: {path} is not readable and writable")
        return
    if not create:
        raise StoreError(f"store {shown}: no store at {path}")
    parent = path.parent
    if not parent.exists():
        raise StoreError(f"store {shown}: directory {parent} does not exist")
    if not parent.is_dir():
        raise StoreError(f"store {shown}: {parent} is not a directory")
    try:  # a real write: permissions, read-only file systems and /proc (even for root)
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as error:
        raise StoreError(f"store {shown}: cannot create a database in {parent} "
                         f"(not writable: {error.strerror})") from None


def make_engine(url: str, create: bool = True) -> Engine:
    """A SQLAlchemy engine for ``url``; SQLite files run in WAL mode with immediate transactions.

    Raises :class:`StoreError` for a URL that cannot be parsed, a driver that is
    not installed or is asynchronous, and a SQLite path that cannot hold a
    database (or, with ``create=False``, does not exist). Nothing is created.
    """
    shown = redact_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, TypeError, ValueError):
        raise StoreError(
            f"store {shown}: not a database URL (e.g. sqlite:///campaigns.db or "
            "postgresql+psycopg2://user@host/db)"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    sqlite = backend == "sqlite"
    if sqlite:
        _check_sqlite_file(parsed.database, create, shown)
        options: dict[str, Any] = {"connect_args": {"timeout": 30, "check_same_thread": False}}
    else:
        options = {"pool_pre_ping": True}
        libpq = backend in ("postgresql", "postgres") and driver in ("", "psycopg2", "psycopg")
        if libpq and "connect_timeout" not in parsed.query:
            # a host that drops packets fails in seconds, not after the OS's minutes
            options["connect_args"] = {"connect_timeout": 5}
    try:
        engine = create_engine(parsed, **options)
    except NoSuchModuleError:
        raise StoreError(f"store {shown}: unknown database driver {parsed.drivername!r}") from None
    except ImportError as error:
        raise StoreError(
            f"store {shown}: the driver for {parsed.drivername!r} is not installed "
            f"(no module {error.name or str(error)!r})"
        ) from None
    except (ArgumentError, TypeError, ValueError) as error:
        raise StoreError(f"store {shown}: {_driver_reason(error, url)}") from None
    if engine.dialect.is_async:
        engine.dispose()
        raise StoreError(
            f"store {shown}: {parsed.drivername!r} is an asyncio driver; the store needs a "
            "synchronous one (e.g. postgresql+psycopg2)"
        )
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _migrate_1_to_2(conn: Connection) -> None:
    """Version 1 keyed evaluations by (campaign, candidate, adapter): add the idempotency key.

    Rows are read, the table is rebuilt with the ``key`` column and its unique
    constraint, and every row is written back with its key and redacted parameters.
    Version 2 added ``key`` and version 3 ``owner``: the other columns are version 1's.
    """
    evaluations = EvaluationRow.__table__
    candidates = CandidateRow.__table__
    campaigns = CampaignRow.__table__
    # later versions' columns are not in a version-1 table (the rebuilt table has them)
    v1_columns = [c for c in evaluations.columns
                  if c.name not in ("key", "owner", "job", "reviewed_by", "reviewed_at")]
    old = conn.execute(
        select(
            *v1_columns,
            candidates.c.fingerprint.label("_fp"),
            campaigns.c.name.label("_campaign"),
        )
        .select_from(
            evaluations.join(candidates, candidates.c.id == evaluations.c.candidate_id).join(
                campaigns, campaigns.c.id == evaluations.c.campaign_id
            )
        )
        .order_by(evaluations.c.id)
    ).mappings().all()
    evaluations.drop(conn)
    evaluations.create(conn)
    rows = []
    for r in old:
        row = {c.name: r[c.name] for c in v1_columns}
        params = r["adapter_parameters"] or {}
        row["adapter_parameters"] = redact(params)
        row["key"] = evaluation_key(r["_campaign"], r["_fp"], r["adapter"], params)
        rows.append(row)
    if rows:
        conn.execute(evaluations.insert(), rows)
        if conn.dialect.name == "postgresql":
            # rows came back with their ids: move the id sequence past them
            conn.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('evaluations', 'id'), "
                    "(SELECT MAX(id) FROM evaluations))"
                )
            )
    for cid, config in conn.execute(select(campaigns.c.id, campaigns.c.config)).all():
        conn.execute(campaigns.update().where(campaigns.c.id == cid).values(config=redact(config)))


def _migrate_2_to_3(conn: Connection) -> None:
    """Version 3 gives each claim an owner (the run holding the campaign's lease); the
    ``owners`` table is new and made by ``create_all``. Claims made before have none."""
    columns = {c["name"] for c in inspect(conn).get_columns("evaluations")}
    if "owner" not in columns:
        conn.execute(text("ALTER TABLE evaluations ADD COLUMN owner VARCHAR(32)"))


def _migrate_3_to_4(conn: Connection) -> None:
    """Version 4 records where a claimed evaluation runs (``job``: a Slurm job id and log),
    so a resumed run re-attaches to it instead of submitting it again."""
    columns = {c["name"] for c in inspect(conn).get_columns("evaluations")}
    if "job" not in columns:
        kind = "JSON" if conn.dialect.name == "postgresql" else "TEXT"
        conn.execute(text(f"ALTER TABLE evaluations ADD COLUMN job {kind}"))


def _migrate_4_to_5(conn: Connection) -> None:
    """Version 5 keeps each candidate's reduced formula and space group, the keys by which
    a new candidate is compared with the campaign's history. Formulas are filled in here;
    space groups of earlier candidates are computed when a candidate of the same formula
    needs them."""
    columns = {c["name"] for c in inspect(conn).get_columns("candidates")}
    for name, kind in (("reduced_formula", "VARCHAR(200)"), ("space_group", "INTEGER")):
        if name not in columns:
            conn.execute(text(f"ALTER TABLE candidates ADD COLUMN {name} {kind}"))
    candidates = CandidateRow.__table__
    for cid, formula in conn.execute(select(candidates.c.id, candidates.c.formula)).all():
        conn.execute(candidates.update().where(candidates.c.id == cid).values(
            reduced_formula=Composition(formula).reduced_formula))
    next(i for i in candidates.indexes if i.name == "ix_candidates_campaign_formula").create(
        conn, checkfirst=True)


def _migrate_5_to_6(conn: Connection) -> None:
    """Version 6 keeps who decided a review and when (``review_note`` says why)."""
    columns = {c["name"] for c in inspect(conn).get_columns("evaluations")}
    kind = "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
    for name, sql in (("reviewed_by", "VARCHAR(100)"), ("reviewed_at", kind)):
        if name not in columns:
            conn.execute(text(f"ALTER TABLE evaluations ADD COLUMN {name} {sql}"))


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4, 4: _migrate_4_to_5,
    5: _migrate_5_to_6}
"""``MIGRATIONS[v]`` turns a version-``v`` database into version ``v + 1``."""


def _stored_version(conn: Connection) -> int | None:
    tables = set(inspect(conn).get_table_names())
    if "schema_version" in tables:
        version = conn.execute(select(func.max(SchemaVersionRow.version))).scalar()
        if version is not None:
            return int(version)
    # matforge before versioning wrote these tables and no version
    return 1 if "evaluations" in tables else None


def prepare_schema(engine: Engine) -> int | None:
    """Create or upgrade the tables in one transaction; returns the version found (None: new)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # one process migrates, the others wait and then find it done
            conn.execute(text("SELECT pg_advisory_xact_lock(4015573)"))
        found = _stored_version(conn)
        if found is not None and found > SCHEMA_VERSION:
            raise SchemaError(
                f"the store was written by a newer matforge (schema version {found}; this "
                f"matforge reads up to {SCHEMA_VERSION}): upgrade matforge to open it"
            )
        if found is not None:
            for version in range(found, SCHEMA_VERSION):
                MIGRATIONS[version](conn)
        Base.metadata.create_all(conn)
        if found != SCHEMA_VERSION:
            conn.execute(SchemaVersionRow.__table__.delete())
            conn.execute(SchemaVersionRow.__table__.insert().values(id=1, version=SCHEMA_VERSION))
        return found


def _owner(row: OwnerRow) -> Owner:
    return Owner(
        id=row.id, host=row.host, pid=row.pid, started_at=_aware(row.started_at),
        heartbeat_at=_aware(row.heartbeat_at), expires_at=_aware(row.expires_at),
        ended_at=_aware(row.ended_at), ended=row.ended, config=dict(row.config or {}),
    )


def _claim_of(session, evaluation_id: int, owner: str | None) -> EvaluationRow | None:
    """The evaluation's row while it is running and ``owner`` (when given) may change it:
    it owns the claim, or nobody does; None otherwise. KeyError for an unknown id."""
    row = session.get(EvaluationRow, evaluation_id)
    if row is None:
        raise KeyError(f"no evaluation {evaluation_id}")
    if row.status != "running" or owner is not None and row.owner not in (None, owner):
        return None
    return row


class CampaignStore:
    """All campaigns in one database.

    Parameters
    ----------
    url : SQLAlchemy URL, e.g. ``sqlite:///campaigns.db`` or
        ``postgresql+psycopg2://user@host/db``
    create : whether a missing SQLite file or empty database becomes a new store;
        False raises :class:`StoreError` instead, creating nothing

    A store that cannot be opened raises :class:`StoreError` naming the URL,
    its password hidden (:func:`redact_url`), and the reason.
    """

    def __init__(self, url: str, create: bool = True):
        self.url = url
        self.engine = make_engine(url, create=create)
        shown = redact_url(url)
        try:
            if not create:
                with self.engine.connect() as conn:
                    if _stored_version(conn) is None:
                        raise StoreError(f"store {shown}: no matforge store in this database")
            prepare_schema(self.engine)
        except DBAPIError as error:
            self.engine.dispose()
            raise StoreError(f"store {shown}: {_driver_reason(error, url)}") from None
        except SchemaError as error:
            self.engine.dispose()
            raise SchemaError(f"store {shown}: {error}") from None
        except BaseException:
            self.engine.dispose()
            raise
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # campaigns -------------------------------------------------------------

    def campaign_id(self, name: str, config: dict[str, Any] | None = None) -> int:
        """The id of campaign ``name``, created with ``config`` when it is new.

        An existing campaign keeps its id and gets ``config`` as its latest
        configuration (so a larger budget continues it). Secret-looking values
        are redacted before they are stored.
        """
        if config is not None:
            config = redact(config)
        try:
            return self._campaign_id(name, config)
        except IntegrityError:
            # another process created it between our read and our insert: read theirs
            return self._campaign_id(name, config)

    def _campaign_id(self, name: str, config: dict[str, Any] | None) -> int:
        with self._session.begin() as s:
            row = s.scalar(select(CampaignRow).where(CampaignRow.name == name))
            if row is None:
                if config is None:
                    raise KeyError(f"no campaign named {name!r} in {redact_url(self.url)}")
                row = CampaignRow(name=name, config=config)
                s.add(row)
                s.flush()
            elif config is not None:
                row.config = config
            return row.id

    def campaign_names(self) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(CampaignRow.name).order_by(CampaignRow.id)))

    def campaign_config(self, name: str) -> dict:
        with self._session() as s:
            row = s.scalar(select(CampaignRow).where(CampaignRow.name == name))
            if row is None:
                raise KeyError(f"no campaign named {name!r} in {redact_url(self.url)}")
            return dict(row.config)

    # runs and their leases -------------------------------------------------

    def acquire(
        self, campaign_id: int, owner: str, host: str, pid: int, seconds: float,
        config: dict[str, Any] | None = None,
    ) -> Owner | None:
        """Make run ``owner`` the campaign's one live run, unless another live run holds it.

        Returns None when ``owner`` now holds the campaign's lease (for ``seconds``), or
        the live run that holds it. Runs whose leases have expired are ended, and the
        claims still running pass to ``owner``: a dead run's work is taken over only
        after its lease expires, and a live run's work never. Concurrent callers are
        serialized by a lock on the campaign's row.
        """
        now = utcnow()
        with self._session.begin() as s:
            s.scalar(select(CampaignRow.id).where(CampaignRow.id == campaign_id).with_for_update())
            holders = s.scalars(
                select(OwnerRow).where(
                    OwnerRow.campaign_id == campaign_id, OwnerRow.ended_at.is_(None),
                    OwnerRow.id != owner,
                )
            ).all()
            live = [r for r in holders if _aware(r.expires_at) > now]
            if live:
                return _owner(live[0])
            for row in holders:
                row.ended_at = now
                row.ended = f"lease expired; taken over by {owner[:8]}"
            expires = now + timedelta(seconds=seconds)
            mine = s.get(OwnerRow, owner)
            if mine is None:
                s.add(OwnerRow(id=owner, campaign_id=campaign_id, host=host[:255], pid=pid,
                               started_at=now, heartbeat_at=now, expires_at=expires,
                               config=redact(config or {})))
            else:
                mine.heartbeat_at, mine.expires_at = now, expires
            s.execute(
                update(EvaluationRow)
                .where(EvaluationRow.campaign_id == campaign_id,
                       EvaluationRow.status == "running")
                .values(owner=owner)
            )
        return None

    def renew(self, owner: str, seconds: float) -> bool:
        """Extend run ``owner``'s lease by ``seconds`` from now; False if it has lost it."""
        now = utcnow()
        with self._session.begin() as s:
            done = s.execute(
                update(OwnerRow)
                .where(OwnerRow.id == owner, OwnerRow.ended_at.is_(None))
                .values(heartbeat_at=now, expires_at=now + timedelta(seconds=seconds))
            )
            return done.rowcount == 1

    def release(self, owner: str, how: str = "finished") -> None:
        """End run ``owner``: its lease is free for the next run at once."""
        with self._session.begin() as s:
            s.execute(
                update(OwnerRow)
                .where(OwnerRow.id == owner, OwnerRow.ended_at.is_(None))
                .values(ended_at=utcnow(), ended=how[:200])
            )

    def owners(self, campaign_id: int) -> list[Owner]:
        """The campaign's runs, oldest first."""
        with self._session() as s:
            rows = s.scalars(
                select(OwnerRow).where(OwnerRow.campaign_id == campaign_id)
                .order_by(OwnerRow.started_at)
            )
            return [_owner(r) for r in rows]

    # candidates and evaluations ------------------------------------------

    def fingerprints(self, campaign_id: int, before_round: int | None = None) -> set[str]:
        """Fingerprints of the candidates dispatched (in rounds before ``before_round``)."""
        with self._session() as s:
            q = select(CandidateRow.fingerprint).where(CandidateRow.campaign_id == campaign_id)
            if before_round is not None:
                q = q.where(CandidateRow.round < before_round)
            return set(s.scalars(q))

    def formulas(self, campaign_id: int, before_round: int | None = None) -> set[str]:
        """Reduced formulas of the candidates dispatched (in rounds before ``before_round``)."""
        with self._session() as s:
            q = select(CandidateRow.reduced_formula).distinct().where(
                CandidateRow.campaign_id == campaign_id)
            if before_round is not None:
                q = q.where(CandidateRow.round < before_round)
            return set(s.scalars(q))

    def structures_like(
        self, campaign_id: int, formula: str, space_group: int, before_round: int | None = None
    ) -> list[tuple[str, Material, int | None]]:
        """(fingerprint, structure, space group) of the candidates dispatched (before
        ``before_round``) with this reduced formula whose space group is ``space_group`` or
        was not recorded (None): what a new candidate is compared with by the matcher."""
        with self._session() as s:
            q = select(CandidateRow.fingerprint, CandidateRow.structure,
                       CandidateRow.space_group).where(
                CandidateRow.campaign_id == campaign_id,
                CandidateRow.reduced_formula == formula,
                (CandidateRow.space_group == space_group) | CandidateRow.space_group.is_(None))
            if before_round is not None:
                q = q.where(CandidateRow.round < before_round)
            return [(fp, material_from_dict(d), g) for fp, d, g in s.execute(q)]

    def claim(
        self,
        campaign_id: int,
        round: int,
        structure: Material,
        fingerprint: str,
        generator: str,
        adapter: str,
        adapter_parameters: dict[str, Any],
        parent: str | None = None,
        model_version: str | None = None,
        predicted_mean: float | None = None,
        predicted_std: float | None = None,
        acquisition_value: float | None = None,
        owner: str | None = None,
        space_group: int | None = None,
    ) -> Claim:
        """Record a candidate and claim its evaluation before dispatch.

        ``space_group`` (:func:`~matforge.engine.materials.dedup.space_group`) is kept with
        the candidate for later deduplication; left out, it is computed when needed.
        Returns the evaluation's id, status and whether this call made the claim.
        An evaluation with the same idempotency key (:func:`evaluation_key`) is
        returned as it is, so a repeated round never pays for it twice; of
        concurrent callers exactly one gets ``new=True``.
        """
        pick = Pick(structure, fingerprint, generator, parent, model_version, predicted_mean,
                    predicted_std, acquisition_value, space_group)
        return self.claim_all(campaign_id, round, [pick], adapter, adapter_parameters, owner)[0]

    def claim_all(
        self,
        campaign_id: int,
        round: int,
        picks: Sequence[Pick],
        adapter: str,
        adapter_parameters: dict[str, Any],
        owner: str | None = None,
    ) -> list[Claim]:
        """:meth:`claim` for each of ``picks`` in one transaction (a round's batch: one
        commit, a handful of statements); the claims in the order of ``picks``. A pick whose
        key an earlier pick of the list has is returned as that one's claim, ``new=False``."""
        for attempt in range(5):
            try:
                return self._claim_all(campaign_id, round, picks, adapter, adapter_parameters,
                                       owner)
            except IntegrityError:
                # another process inserted the same candidate or key first: read theirs
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _claim_all(self, campaign_id, round, picks, adapter, adapter_parameters,
                   owner) -> list[Claim]:
        if not picks:
            return []
        with self._session.begin() as s:
            campaign = s.get(CampaignRow, campaign_id)
            if campaign is None:
                raise KeyError(f"no campaign with id {campaign_id} in {redact_url(self.url)}")
            keys = [evaluation_key(campaign.name, p.fingerprint, adapter, adapter_parameters)
                    for p in picks]
            taken = {row.key: row for row in s.scalars(select(EvaluationRow).where(
                EvaluationRow.campaign_id == campaign_id, EvaluationRow.key.in_(set(keys))))}
            candidates = {row.fingerprint: row for row in s.scalars(select(CandidateRow).where(
                CandidateRow.campaign_id == campaign_id,
                CandidateRow.fingerprint.in_({p.fingerprint for p in picks})))}
            fresh = [(p, k) for p, k in zip(picks, keys) if k not in taken]
            for pick, _ in fresh:
                if pick.fingerprint not in candidates:
                    composition = composition_of(pick.structure)
                    candidates[pick.fingerprint] = CandidateRow(
                        campaign_id=campaign_id,
                        fingerprint=pick.fingerprint,
                        formula=composition.formula.replace(" ", ""),
                        reduced_formula=composition.reduced_formula,
                        space_group=pick.space_group,
                        n_atoms=n_atoms(pick.structure),
                        structure=material_as_dict(pick.structure),
                        generator=pick.generator,
                        parent=pick.parent,
                        round=round,
                    )
                    s.add(candidates[pick.fingerprint])
            s.flush()  # the new candidates' ids
            created: set[str] = set()  # keys of the evaluations this call made
            for pick, key in fresh:
                if key in taken:
                    continue  # an earlier pick of the list had this key
                created.add(key)
                row = taken[key] = EvaluationRow(
                    campaign_id=campaign_id,
                    candidate_id=candidates[pick.fingerprint].id,
                    key=key,
                    round=round,
                    status="running",
                    adapter=adapter,
                    adapter_parameters=redact(adapter_parameters),
                    model_version=pick.model_version,
                    predicted_mean=pick.predicted_mean,
                    predicted_std=pick.predicted_std,
                    acquisition_value=pick.acquisition_value,
                    owner=owner,
                )
                s.add(row)
            s.flush()
            claims = []
            for key in keys:  # new only where this call made it, at the key's first pick
                claims.append(Claim(taken[key].id, taken[key].status, key in created))
                created.discard(key)
            return claims

    def complete(
        self,
        evaluation_id: int,
        status: str,
        objective: float | None = None,
        result: dict | None = None,
        error: str | None = None,
        wall_time: float | None = None,
        owner: str | None = None,
    ) -> bool:
        """Store the outcome of a claimed evaluation; NaN and infinities in ``result`` become text.

        Returns False, and changes nothing, when the evaluation has already
        finished (the first stored outcome is never overwritten), or when ``owner``
        is given and another run has taken the claim over.
        """
        if status not in FINISHED:
            raise ValueError(f"status {status!r} is not one of {FINISHED}")
        with self._session.begin() as s:
            row = _claim_of(s, evaluation_id, owner)
            if row is None:
                return False
            row.status = status
            row.objective = objective
            row.result = None if result is None else json_safe(result)
            row.error = error
            row.wall_time = wall_time
            row.finished_at = utcnow()
            return True

    def set_job(self, evaluation_id: int, job: dict | None, owner: str | None = None) -> bool:
        """Record where a running evaluation's job runs (None: it has none any more, e.g.
        before a retry submits a new one). Returns False, changing nothing, when the
        evaluation has finished or another run owns its claim."""
        with self._session.begin() as s:
            row = _claim_of(s, evaluation_id, owner)
            if row is None:
                return False
            row.job = None if job is None else json_safe(job)
            return True

    def job(self, evaluation_id: int) -> dict | None:
        """The job recorded for one evaluation (None: none)."""
        with self._session() as s:
            return s.scalar(select(EvaluationRow.job).where(EvaluationRow.id == evaluation_id))

    def status(self, evaluation_id: int) -> str:
        """The current status of one evaluation."""
        with self._session() as s:
            status = s.scalar(select(EvaluationRow.status).where(EvaluationRow.id == evaluation_id))
        if status is None:
            raise KeyError(f"no evaluation {evaluation_id}")
        return status

    def set_status(self, evaluation_ids: list[int], status: str, note: str | None = None) -> int:
        """Change finished evaluations' status (flagging and review); returns how many changed."""
        if status not in FINISHED:
            raise ValueError(f"status {status!r} is not one of {FINISHED}")
        with self._session.begin() as s:
            rows = s.scalars(select(EvaluationRow).where(EvaluationRow.id.in_(evaluation_ids)))
            n = 0
            for row in rows:
                if row.status == "running":
                    raise ValueError(f"evaluation {row.id} has not finished")
                row.status = status
                if note is not None:
                    row.review_note = note
                n += 1
            return n

    def decide(self, evaluation_ids: list[int], status: str, by: str,
               note: str | None = None) -> int:
        """A person's review of results waiting for it: ``accepted`` (into training) or
        ``rejected`` (kept, out of training), with who, when and why; returns how many
        changed. Only ``needs_review`` results are decided (others are left as they are)."""
        if status not in ("accepted", "rejected"):
            raise ValueError(f"a review accepts or rejects, not {status!r}")
        with self._session.begin() as s:
            rows = s.scalars(select(EvaluationRow).where(
                EvaluationRow.id.in_(evaluation_ids), EvaluationRow.status == "needs_review"))
            n = 0
            for row in rows:
                row.status, row.reviewed_by, row.reviewed_at = status, by, utcnow()
                if note is not None:
                    row.review_note = note
                n += 1
            return n

    def requeue(self, evaluation_id: int, round: int, by: str, note: str | None = None) -> int:
        """A result waiting for review evaluated again: it is rejected (kept, out of training)
        with who, when and why, and a new evaluation of the same candidate is claimed in
        ``round``, unowned, so the next round dispatches it; returns the new one's id."""
        with self._session.begin() as s:
            old = s.get(EvaluationRow, evaluation_id)
            if old is None or old.status != "needs_review":
                raise ValueError(f"evaluation {evaluation_id} is not awaiting review")
            campaign = s.get(CampaignRow, old.campaign_id)
            candidate = s.get(CandidateRow, old.candidate_id)
            repeat = s.scalar(select(func.count()).select_from(EvaluationRow).where(
                EvaluationRow.candidate_id == old.candidate_id))
            new = EvaluationRow(
                key=evaluation_key(campaign.name, candidate.fingerprint, old.adapter,
                                   old.adapter_parameters, repeat),
                campaign_id=old.campaign_id, candidate_id=old.candidate_id, round=round,
                status="running", adapter=old.adapter,
                adapter_parameters=old.adapter_parameters, model_version=old.model_version,
                predicted_mean=old.predicted_mean, predicted_std=old.predicted_std,
                acquisition_value=old.acquisition_value)
            s.add(new)
            s.flush()
            old.status, old.reviewed_by, old.reviewed_at = "rejected", by, utcnow()
            old.review_note = f"evaluated again as #{new.id}" + (f": {note}" if note else "")
            return new.id

    def evaluations(
        self, campaign_id: int, statuses: tuple[str, ...] | None = None, round: int | None = None,
        ids: Sequence[int] | None = None,
    ) -> list[Evaluation]:
        """Evaluations of a campaign in the order they were claimed (those of ``statuses``,
        of ``round``, or with one of ``ids``)."""
        e, c = EvaluationRow, CandidateRow
        q = (
            select(e.id, e.round, e.status, c.fingerprint, c.formula, c.generator, c.structure,
                   e.objective, e.predicted_mean, e.predicted_std, e.acquisition_value,
                   e.model_version, e.adapter, e.result, e.error, e.key, e.owner, e.job,
                   e.review_note, e.reviewed_by, e.reviewed_at)
            .join(c, e.candidate_id == c.id)
            .where(e.campaign_id == campaign_id)
            .order_by(e.id)
        )
        if statuses is not None:
            q = q.where(e.status.in_(statuses))
        if round is not None:
            q = q.where(e.round == round)
        if ids is not None:
            q = q.where(e.id.in_(list(ids)))
        with self._session() as s:
            return [Evaluation(**{**row._asdict(), "reviewed_at": _aware(row.reviewed_at)})
                    for row in s.execute(q)]

    def statuses(self, campaign_id: int) -> dict[int, str]:
        """Each evaluation's status by id, in the order they were claimed: a cheap read that
        tells which evaluations changed since an earlier :meth:`evaluations`."""
        with self._session() as s:
            return dict(s.execute(select(EvaluationRow.id, EvaluationRow.status).where(
                EvaluationRow.campaign_id == campaign_id).order_by(EvaluationRow.id)).all())

    def count(
        self,
        campaign_id: int,
        statuses: tuple[str, ...] = FINISHED,
        before_round: int | None = None,
        round: int | None = None,
    ) -> int:
        """How many evaluations have one of ``statuses`` (in rounds before ``before_round``,
        or in ``round``)."""
        with self._session() as s:
            q = select(func.count(EvaluationRow.id)).where(
                EvaluationRow.campaign_id == campaign_id, EvaluationRow.status.in_(statuses)
            )
            if before_round is not None:
                q = q.where(EvaluationRow.round < before_round)
            if round is not None:
                q = q.where(EvaluationRow.round == round)
            return int(s.scalar(q))

    # rounds -----------------------------------------------------------------

    def start_round(
        self, campaign_id: int, round: int, n_pool: int, model_version: str | None
    ) -> None:
        with self._session.begin() as s:
            row = s.scalar(
                select(RoundRow).where(RoundRow.campaign_id == campaign_id, RoundRow.round == round)
            )
            if row is None:
                s.add(RoundRow(campaign_id=campaign_id, round=round, n_pool=n_pool,
                               model_version=model_version, info={}))

    def finish_round(self, campaign_id: int, result: RoundResult) -> None:
        """Store what round ``result.round`` did; the round counts as finished from now on."""
        with self._session.begin() as s:
            row = s.scalar(
                select(RoundRow).where(
                    RoundRow.campaign_id == campaign_id, RoundRow.round == result.round
                )
            )
            if row is None:
                raise KeyError(f"round {result.round} was never started")
            row.info = json_safe(result.model_dump(mode="json"))
            row.model_version = result.model_version
            row.finished_at = utcnow()

    def last_round(self, campaign_id: int) -> int:
        """The highest round number with a claimed evaluation or a started round; -1 if none."""
        with self._session() as s:
            a = s.scalar(
                select(func.max(EvaluationRow.round)).where(
                    EvaluationRow.campaign_id == campaign_id
                )
            )
            b = s.scalar(
                select(func.max(RoundRow.round)).where(RoundRow.campaign_id == campaign_id)
            )
        values = [v for v in (a, b) if v is not None]
        return max(values) if values else -1

    def rounds(self, campaign_id: int) -> list[RoundRecord]:
        """The campaign's rounds in order."""
        with self._session() as s:
            q = select(RoundRow).where(RoundRow.campaign_id == campaign_id).order_by(RoundRow.round)
            return [
                RoundRecord(
                    round=r.round,
                    n_pool=r.n_pool,
                    model_version=r.model_version,
                    result=(
                        None if r.finished_at is None
                        else RoundResult.model_validate({**(r.info or {}), "round": r.round})
                    ),
                )
                for r in s.scalars(q)
            ]
