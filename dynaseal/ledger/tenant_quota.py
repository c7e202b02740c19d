"""Tenant-wide limits: the tenant's slot of the two-slot admit protocol (see dynaseal.ledger.tenant_scripts).

`limits.budget` / `limits.rpm` bound each key; `limits.tenant_budget` (tokens per UTC day or
month) and `limits.tenant_rpm` bound all of a tenant's keys together. The key's slot is asked
first: a revoked, exhausted or rate-limited key is refused without touching the tenant's slot,
which every request of the tenant shares (on a cluster, one node carries it).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from dynaseal.ledger import redis_keys
from dynaseal.policy.errors import ErrorCode, QuotaUnavailable, Refusal
from dynaseal.tenant_config import Limits

# A month window plus a day of late settlements: how long an idle tenant's counters are kept.
TENANT_TTL_S = 33 * 86400

RunScript = Callable[[str, list[str], list[Any]], Awaitable[Any]]


def has_tenant_limits(limits: Limits) -> bool:
    """Whether a tenant has any tenant-wide limit (only then is its slot touched at admit)."""
    return limits.tenant_budget is not None or limits.tenant_rpm is not None


def window_id(window: str, now: float) -> str:
    """The UTC calendar window containing `now`: `d20261123` (day) or `m202611` (month)."""
    t = time.gmtime(now)
    return f"d{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}" if window == "day" else f"m{t.tm_year:04d}{t.tm_mon:02d}"


def tenant_keys(tenant: str) -> list[str]:
    """The KEYS of every tenant script, all in the tenant's slot (`{tenant}`)."""
    return [redis_keys.tenant_budget(tenant), redis_keys.tenant_reservations(tenant),
            redis_keys.tenant_reservation_deadlines(tenant), redis_keys.tenant_provisional(tenant),
            redis_keys.tenant_rate_window(tenant)]


def admit_args(limits: Limits, now_ms: int, request_id: str, reserve: int, reservation_ttl_ms: int,
               deadline_ms: int) -> list[Any]:
    """ARGV of TENANT_ADMIT."""
    budget = limits.tenant_budget
    return [now_ms, request_id, reserve, -1 if budget is None else budget.tokens,
            -1 if limits.tenant_rpm is None else limits.tenant_rpm, reservation_ttl_ms,
            window_id(budget.window if budget else "day", now_ms / 1000), TENANT_TTL_S, deadline_ms]


def settle_args(request_id: str, actual_tokens: int) -> list[Any]:
    """ARGV of TENANT_SETTLE."""
    return [int(time.time() * 1000), request_id, int(actual_tokens), TENANT_TTL_S]


def refusal(status: int, spent: int, reserved: int, retry_ms: int, limits: Limits, reserve: int) -> Exception:
    """What a refusing TENANT_ADMIT status means to the client."""
    if status == -5:
        return QuotaUnavailable("request id already reserved for the tenant", "duplicate_request_id")
    if status == -6:
        return QuotaUnavailable("redis ran the tenant admit after its deadline: nothing was reserved", "redis_late")
    if status == -3:
        wait_s = max(1, -(-retry_ms // 1000))
        return Refusal(ErrorCode.RATE_LIMITED, f"the tenant's rate limit of {limits.tenant_rpm} requests per "
                                               f"minute reached; retry in {wait_s} s",
                       headers={"retry-after": str(wait_s)})
    budget = limits.tenant_budget
    assert budget is not None
    left = max(0, budget.tokens - spent - reserved)
    return Refusal(ErrorCode.INSUFFICIENT_QUOTA,
                   f"the tenant's token budget for this {budget.window} is exhausted: this request may use "
                   f"up to {reserve} tokens, {left} remain")
