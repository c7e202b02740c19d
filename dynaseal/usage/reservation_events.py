"""The usage event of a reservation that expired unsettled: what the tenant is told when a log line was lost.

It flows through the usage topic like any event (same backpressure, retries, DLQ, replay) but is
never settled again — the ledger billed the reservation when it expired. Its callback has
`usage_source: reservation`, the reservation's tokens and cost, the request id and the key, and its
own `webhook-id` (`<request_id>.reservation`): if the request's real log line arrives later, that
callback (webhook-id = request_id) supersedes it, and a receiver keeping one row per request
replaces the reservation's row with it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from dynaseal.ledger.expiry_notices import ExpiredReservation
from dynaseal.money.pricing import format_amount, from_micros
from dynaseal.pb import UsageEvent

RESERVATION = "reservation"
WEBHOOK_SUFFIX = ".reservation"


def reservation_event(expired: ExpiredReservation, currency: str | None, now_ms: int | None = None) -> UsageEvent:
    """The event of one expired reservation (`currency`: the tenant's, for a priced reservation)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    event = UsageEvent(request_id=expired.request_id, tenant=expired.tenant, jti=expired.jti, event_id=expired.jti,
                       usage_source=RESERVATION, total_tokens=expired.tokens, reserved=expired.tokens,
                       started_at=datetime.fromtimestamp(now / 1000, UTC).isoformat().replace("+00:00", "Z"),
                       shipped_at_ms=now)
    if expired.cost_micros is not None and currency:
        event.cost = format_amount(from_micros(expired.cost_micros))
        event.currency = currency
        event.cost_micros = expired.cost_micros
        event.reserved_cost_micros = expired.cost_micros
    else:
        event.unpriced = True
    return event


def is_reservation(event: UsageEvent) -> bool:
    """Whether the event reports an expired reservation (not a log line)."""
    return event.usage_source == RESERVATION


def webhook_id(event: UsageEvent) -> str:
    """The callback's webhook-id: the request id, or `<request_id>.reservation` for a reservation's."""
    return event.request_id + WEBHOOK_SUFFIX if is_reservation(event) else event.request_id
