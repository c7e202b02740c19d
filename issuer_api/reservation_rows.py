"""Callbacks of expired reservations (`usage_source: reservation`) and the real usage that supersedes them.

When a request's log line is lost the gateway still reports it, with what the reservation billed and
the webhook-id `<request_id>.reservation`. If the real line arrives later, its callback
(webhook-id = request_id) replaces that row: the issuer keeps one usage row per request, the most
exact one. A reservation callback arriving after the real one is not stored.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Engine, delete, exists, select

from issuer_api.store import Callback

RESERVATION = "reservation"
SUFFIX = ".reservation"


def is_reservation(payload: dict[str, Any]) -> bool:
    """Whether the callback reports an expired reservation rather than real usage."""
    return payload.get("usage_source") == RESERVATION


def _request_id(payload: dict[str, Any]) -> str | None:
    value = payload.get("request_id")
    return value if isinstance(value, str) and 0 < len(value) <= 120 else None


async def real_row_exists(engine: Engine, payload: dict[str, Any]) -> bool:
    """Whether the request's real usage is already stored (a late reservation callback is then dropped)."""
    request_id = _request_id(payload)
    if request_id is None:
        return False

    def query() -> bool:
        with engine.connect() as conn:
            return bool(conn.execute(select(exists().where(Callback.webhook_id == request_id))).scalar())
    return await asyncio.to_thread(query)


async def drop_reservation_row(engine: Engine, payload: dict[str, Any]) -> int:
    """Delete the reservation's row of the request whose real usage was just stored; rows deleted."""
    request_id = _request_id(payload)
    if request_id is None:
        return 0

    def run() -> int:
        with engine.begin() as conn:
            return int(conn.execute(delete(Callback).where(Callback.webhook_id == request_id + SUFFIX)).rowcount)
    return await asyncio.to_thread(run)
