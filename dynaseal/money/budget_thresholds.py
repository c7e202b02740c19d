"""Budget threshold callbacks: a key's spend crossed a fraction of its budget (tokens or money).

The settlement script (quota_scripts.SETTLE) finds crossings atomically and keeps each one pending
in Redis until the consumer marks it delivered, so a crossing is reported again after a crash and
never lost. Its `webhook-id` is a function of (tenant, key, budget, threshold) only, so however many
times it is sent, a receiver that stores by `webhook-id` keeps it once. Its body is built only from
what Redis recorded at the crossing and the key's claims: every repeat is byte-identical too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from dynaseal.contracts.callback_body import BudgetThresholdCallback, Money
from dynaseal.money.pricing import format_amount, from_micros
from dynaseal.pb import UsageEvent

TOKENS, COST = "tokens", "cost"
BASIS = 10_000


@dataclass(frozen=True, slots=True)
class Crossing:
    """One pending threshold: budget kind, fraction in basis points, spend at the crossing, the budget."""

    kind: str
    basis_points: int
    spent: int
    limit: int

    @property
    def field(self) -> str:
        """Its field in the key's counters hash."""
        return f"thr:{self.kind}:{self.basis_points}"

    @property
    def fraction(self) -> float:
        """The threshold as the tenant configured it (0.8)."""
        return float(Decimal(self.basis_points) / BASIS)

    @classmethod
    def parse(cls, item: bytes | str) -> Crossing | None:
        """One `kind:bp:spent:limit` item of the SETTLE reply; None if malformed."""
        text = item.decode() if isinstance(item, bytes) else str(item)
        parts = text.split(":")
        if len(parts) != 4 or parts[0] not in (TOKENS, COST) or not all(p.isdigit() for p in parts[1:]):
            return None
        return cls(parts[0], int(parts[1]), int(parts[2]), int(parts[3]))


def basis_points(thresholds: tuple[float, ...]) -> str:
    """The SETTLE argument for a tenant's thresholds: `"8000,9500,10000"` ("" = none)."""
    return ",".join(str(int(Decimal(repr(float(t))) * BASIS)) for t in thresholds)


def threshold_webhook_id(tenant: str, jti: str, kind: str, basis_points: int) -> str:
    """The deterministic `webhook-id` of one threshold of one key (printable ASCII, 44 characters)."""
    digest = hashlib.sha256(f"{tenant}\0{jti}\0{kind}\0{basis_points}".encode()).hexdigest()
    return f"thr_{digest[:40]}"


def threshold_payload(event: UsageEvent, crossing: Crossing) -> dict[str, Any]:
    """The callback object of one crossing (`type: budget_threshold`)."""
    cb: Any = {}
    if event.cb_json:
        try:
            cb = orjson.loads(event.cb_json)
        except orjson.JSONDecodeError:
            cb = {}
    spent: int | dict[str, Any]
    limit: int | dict[str, Any]
    if crossing.kind == COST:
        spent = Money.body(amount=format_amount(from_micros(crossing.spent)), currency=event.currency)
        limit = Money.body(amount=format_amount(from_micros(crossing.limit)), currency=event.currency)
    else:
        spent, limit = crossing.spent, crossing.limit
    # Built through the model the issuer parses with (dynaseal.contracts.callback_body).
    return BudgetThresholdCallback.body(
        type="budget_threshold", event_id=event.event_id, key_id=event.jti,
        sub=event.sub if event.HasField("sub") else None, budget=crossing.kind, threshold=crossing.fraction,
        spent=spent, limit=limit, cb=cb)


def threshold_body(event: UsageEvent, crossing: Crossing) -> bytes:
    """The JSON body of one crossing's callback, exactly the bytes that get signed."""
    return orjson.dumps(threshold_payload(event, crossing))
