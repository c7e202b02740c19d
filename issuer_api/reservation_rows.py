"""Callbacks of expired reservations (`usage_source: reservation`) and the real usage that supersedes them.

When a request's log line is lost the gateway still reports it, with what the reservation billed and
the webhook-id `<request_id>.reservation`. If the real line arrives later, its callback
(webhook-id = request_id) replaces that row: the issuer keeps one usage row per request, the most
exact one. A reservation callback arriving after the real one is not stored. The `CallbackWriter`
applies both rules in the row's own transaction.
"""

from __future__ import annotations

from typing import Any

from issuer_api.callback_writer import CallbackRow

RESERVATION = "reservation"
SUFFIX = ".reservation"


def is_reservation(payload: dict[str, Any]) -> bool:
    """Whether the callback reports an expired reservation rather than real usage."""
    return payload.get("usage_source") == RESERVATION


def _request_id(payload: dict[str, Any]) -> str | None:
    value = payload.get("request_id")
    return value if isinstance(value, str) and 0 < len(value) <= 120 else None


def callback_row(webhook_id: str, payload: dict[str, Any], values: dict[str, Any]) -> CallbackRow:
    """The row to write: a reservation's unless its request's real row is stored; a real one replacing it."""
    request_id = _request_id(payload)
    if request_id is None:
        return CallbackRow(values)
    if is_reservation(payload):
        return CallbackRow(values, unless_stored=request_id)
    # Only the request's own callback (webhook-id = request id) may delete its reservation row.
    return CallbackRow(values, replaces=request_id + SUFFIX if webhook_id == request_id else None)
