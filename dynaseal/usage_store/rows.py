"""A usage event as the store's row: the same tokens and cost its callback carries, nothing else of the request."""

from __future__ import annotations

import time
from datetime import datetime
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

from dynaseal.pb import UsageEvent
from dynaseal.usage.blocked import BLOCKED_CODE

USAGE, REFUSAL = "usage", "refusal"
NANOS = 9


def cost_nanos(amount: str) -> int:
    """An exact decimal string in 10^-9 units, rounded up (a bill is never under the callbacks); 0 if not a number."""
    try:
        value = Decimal(amount)
    except InvalidOperation:
        return 0
    if not value.is_finite() or value < 0:
        return 0
    return int(value.scaleb(NANOS).to_integral_value(ROUND_CEILING))


def started_seconds(event: UsageEvent) -> int:
    """When the request started, seconds since the epoch: Envoy's RFC 3339 start, else when it was shipped."""
    text = event.started_at.strip()
    if text:
        try:
            return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
        except ValueError:
            pass
    if event.shipped_at_ms > 0:
        return event.shipped_at_ms // 1000
    return int(time.time())


def row_of(event: UsageEvent, now_ms: int | None = None) -> dict[str, Any] | None:
    """The row of one event; None for an event without the ids a row is keyed and filtered by."""
    if not (event.request_id and event.tenant and event.jti):
        return None
    priced = bool(event.currency) and not event.unpriced
    refusal = bool(event.content_rule)
    return {
        "request_id": event.request_id[:80], "kind": REFUSAL if refusal else USAGE,
        "tenant": event.tenant[:128], "key_id": event.jti[:128], "root_key_id": (event.root_jti or event.jti)[:128],
        "model": event.model[:128], "endpoint": (event.endpoint or "chat_completions")[:32], "status": event.status,
        "code": BLOCKED_CODE if refusal else "", "usage_source": event.usage_source[:16] or "none",
        "prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
        "total_tokens": event.total_tokens, "cached_tokens": event.cached_tokens,
        "reasoning_tokens": event.reasoning_tokens, "priced": priced and not refusal,
        "currency": event.currency[:8] if priced else "", "cost": event.cost[:48] if priced else "",
        "cost_nanos": cost_nanos(event.cost) if priced and not refusal else 0,
        "started_s": started_seconds(event),
        "recorded_ms": int(time.time() * 1000) if now_ms is None else now_ms,
    }
