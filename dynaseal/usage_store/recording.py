"""Writing events into the store, exactly once per request id, whatever Kafka repeats.

A request's row is written by the first event that names its id; a repeat (a redelivery after a
crash, a replayed DLQ entry, a second recorder during a rebalance) changes nothing. The one
exception mirrors the callbacks: an expired reservation's notice (`usage_source: reservation`) is
replaced by the request's real line when that arrives later, as the real callback supersedes the
notice's at the tenant.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from dynaseal.pb import UsageEvent
from dynaseal.usage.reservation_events import RESERVATION
from dynaseal.usage_store.rows import row_of
from dynaseal.usage_store.schema import usage_requests

# Request ids per look-up of stored notices (under SQLite's limit of bound parameters).
CHUNK = 500


def _insert_new(connection: Connection, rows: list[dict[str, Any]]) -> int:
    """Insert rows whose request id is not stored yet (both dialects skip a conflict in the database)."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(usage_requests).on_conflict_do_nothing(index_elements=["request_id"])
    elif dialect == "sqlite":
        statement = sqlite.insert(usage_requests).on_conflict_do_nothing(index_elements=["request_id"])
    else:
        raise ValueError(f"the usage store supports SQLite and PostgreSQL, not {dialect}")
    # Counted by RETURNING, not rowcount: PostgreSQL's driver reports -1 for a skipped conflict.
    statement = statement.returning(usage_requests.c.request_id)
    # executemany: SQLAlchemy sends it as multi-row statements ("insertmanyvalues"), compiled once and cached.
    return len(connection.execute(statement, rows).all())


def _supersede(connection: Connection, rows: list[dict[str, Any]]) -> int:
    """Replace stored reservation notices by the real lines among `rows`."""
    real = {row["request_id"]: row for row in rows if row["usage_source"] != RESERVATION}
    noticed: list[str] = []
    ids = list(real)
    for i in range(0, len(ids), CHUNK):  # one look-up per chunk: notices are rare, most batches update nothing
        noticed += connection.execute(select(usage_requests.c.request_id).where(
            usage_requests.c.request_id.in_(ids[i:i + CHUNK]), usage_requests.c.usage_source == RESERVATION)).scalars()
    replaced = 0
    for request_id in noticed:
        values = {k: v for k, v in real[request_id].items() if k != "request_id"}
        result = connection.execute(update(usage_requests)
                                    .where(usage_requests.c.request_id == request_id,
                                           usage_requests.c.usage_source == RESERVATION)
                                    .values(**values).returning(usage_requests.c.request_id))
        replaced += len(result.all())
    return replaced


def record(engine: Engine, events: Iterable[UsageEvent]) -> int:
    """Store a batch of events in one transaction; how many requests were new or superseded a notice."""
    latest: dict[str, dict[str, Any]] = {}
    for event in events:
        row = row_of(event)
        if row is None:
            continue
        seen = latest.get(row["request_id"])
        # Within one batch too: a real line wins over a notice of the same request, else the first stays.
        if seen is None or (seen["usage_source"] == RESERVATION and row["usage_source"] != RESERVATION):
            latest[row["request_id"]] = row
    if not latest:
        return 0
    rows = list(latest.values())
    with engine.begin() as connection:
        replaced = _supersede(connection, rows)
        return _insert_new(connection, rows) + replaced
