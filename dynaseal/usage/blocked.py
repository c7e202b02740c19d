"""Requests a tenant's content rule refused: their access-log line as an event (its callback body is
built with the others, in dynaseal.usage.callbacks).

A content refusal reserved nothing and sent nothing, so it is no usage; but the tenant asked to be
told, so its line (deny_code `content_blocked`, the rule's name in `content_rule`) becomes an event
with `content_rule` set, which the consumer delivers without settling anything, as a callback of
`type: "content_blocked"`. Neither carries any of the request's text.
"""

from __future__ import annotations

from typing import Any

from dynaseal.contracts.usage_record import copied_fields, log_count
from dynaseal.pb import UsageEvent

BLOCKED_CODE = "content_blocked"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def blocked_event(record: dict[str, Any], request_id: str, shipped_at_ms: int) -> UsageEvent | None:
    """The event of a content refusal's log line; None for any other line."""
    if record.get("deny_code") != BLOCKED_CODE:
        return None
    tenant, jti, rule = _text(record.get("tenant")), _text(record.get("jti")), _text(record.get("content_rule"))
    if not (tenant and jti and rule):
        return None
    event = UsageEvent(request_id=request_id, tenant=tenant, jti=jti,
                       event_id=_text(record.get("event_id")) or jti, status=log_count(record.get("code")) or 400,
                       usage_source="none", content_rule=rule, shipped_at_ms=shipped_at_ms)
    for name, value in copied_fields(record).items():
        setattr(event, name, value)
    event.reserved, event.total_tokens, event.content_truncated = 0, 0, False  # nothing was reserved or sent
    event.ClearField("content")
    if record.get("sub") is not None:
        event.sub = _text(record["sub"])
    cb = record.get("cb")
    if isinstance(cb, str) and cb:
        event.cb_json = cb
    return event
