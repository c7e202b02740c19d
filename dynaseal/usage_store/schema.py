"""The usage store's one table and its engine: SQLite by default, PostgreSQL (any SQLAlchemy URL) the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Engine, Index, Integer, MetaData, String, Table, create_engine
from sqlalchemy import event as sa_event
from sqlalchemy.exc import DBAPIError

from dynaseal.config import DynasealConfig, admin_database_url

metadata = MetaData()

# One row per request id: the recorder's upsert is what makes a repeated Kafka record count once.
usage_requests = Table(
    "usage_requests", metadata,
    Column("request_id", String(80), primary_key=True),
    # "usage" (an admitted request) or "refusal" (a request a content rule refused: no usage, counted by code).
    Column("kind", String(16), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("key_id", String(128), nullable=False),
    Column("root_key_id", String(128), nullable=False, default=""),
    Column("model", String(128), nullable=False, default=""),
    Column("endpoint", String(32), nullable=False, default=""),
    Column("status", Integer, nullable=False, default=0),
    Column("code", String(64), nullable=False, default=""),
    # upstream | reserved | none | reservation (an expired reservation's notice, replaced by the real line).
    Column("usage_source", String(16), nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False, default=0),
    Column("completion_tokens", BigInteger, nullable=False, default=0),
    Column("total_tokens", BigInteger, nullable=False, default=0),
    Column("cached_tokens", BigInteger, nullable=False, default=0),
    Column("reasoning_tokens", BigInteger, nullable=False, default=0),
    Column("priced", Boolean, nullable=False, default=False),
    Column("currency", String(8), nullable=False, default=""),
    # The callback's exact decimal string, and the same amount in 10^-9 units (rounded up) for SQL sums.
    Column("cost", String(48), nullable=False, default=""),
    Column("cost_nanos", BigInteger, nullable=False, default=0),
    # When the request started (Envoy's start time), seconds since the epoch, UTC: what buckets are cut from.
    Column("started_s", BigInteger, nullable=False),
    Column("recorded_ms", BigInteger, nullable=False),
)
Index("ix_usage_tenant_time", usage_requests.c.tenant, usage_requests.c.started_s)
Index("ix_usage_key", usage_requests.c.key_id)
Index("ix_usage_time", usage_requests.c.started_s)

# DLQ entries the operator replayed from the console (the DLQ itself is a Kafka topic: append-only).
dlq_replays = Table(
    "dlq_replays", metadata,
    Column("entry_id", String(48), primary_key=True),
    Column("request_id", String(80), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("replayed_ms", BigInteger, nullable=False),
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: the admin API reads while the recorder writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for the URL, its table created if missing; SQLite gets WAL and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 15})
        sa_event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    try:
        metadata.create_all(engine)
    except DBAPIError:
        # The recorder and the admin API start together: the other may have created a table between this
        # one's check and its CREATE. A second pass finds it; a real problem raises again.
        metadata.create_all(engine)
    return engine


def database_url(cfg: DynasealConfig) -> str:
    """`admin.database_url` (tables of their own beside the admin store's), else SQLite in {data_dir}/admin."""
    if url := admin_database_url(cfg):  # admin.database_url or admin.database_url_env
        return url
    path = Path(cfg.gateway.data_dir).resolve() / "admin" / "usage.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"
