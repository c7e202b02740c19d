"""Which DLQ entries were replayed from the admin API: a replay is claimed before it is sent, once per entry."""

from __future__ import annotations

import time

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from dynaseal.usage_store.schema import dlq_replays


def claim(engine: Engine, entry_id: str, request_id: str, tenant: str) -> bool:
    """Record that an entry is being replayed; False if it was already (two clicks send it once)."""
    try:
        with engine.begin() as connection:
            connection.execute(insert(dlq_replays).values(entry_id=entry_id, request_id=request_id, tenant=tenant,
                                                          replayed_ms=int(time.time() * 1000)))
    except IntegrityError:
        return False
    return True


def release(engine: Engine, entry_id: str) -> None:
    """Forget a claim whose replay could not be sent (the broker refused it), so it can be tried again."""
    with engine.begin() as connection:
        connection.execute(delete(dlq_replays).where(dlq_replays.c.entry_id == entry_id))


def replayed(engine: Engine) -> dict[str, int]:
    """entry id → when it was replayed (ms since the epoch)."""
    with engine.connect() as connection:
        return {row.entry_id: int(row.replayed_ms) for row in connection.execute(select(dlq_replays))}
