"""Tenant-wide limits: the tenant's slot of the two-slot admit protocol (see dynaseal.ledger.tenant_scripts).

`limits.budget` / `limits.rpm` bound each key; `limits.tenant_budget` (tokens per UTC day or
month) and `limits.tenant_rpm` bound all of a tenant's keys together. The key's slot is asked
first: a revoked, exhausted or rate-limited key is refused without touching the tenant's slot,
which every request of the tenant shares (on a cluster, one node carries it).
"""

from __future__ import annotations

import time
from typing import Any

from dynaseal.ledger import redis_keys
from dynaseal.ledger.admission import TenantTier
from dynaseal.tenant_config import Limits

# A month window plus a day of late settlements: how long an idle tenant's counters are kept.
TENANT_TTL_S = 33 * 86400


def has_tenant_limits(limits: Limits) -> bool:
    """Whether a tenant has any tenant-wide limit (only then is its slot touched at admit)."""
    return limits.tenant_budget is not None or limits.tenant_rpm is not None


def tier_of(limits: Limits) -> TenantTier | None:
    """The tenant tier of an admission (None when the tenant has no tenant-wide limit)."""
    if not has_tenant_limits(limits):
        return None
    budget = limits.tenant_budget
    if budget is None:
        return TenantTier(rpm=limits.tenant_rpm)
    return TenantTier(budget=budget.tokens, window=budget.window, rpm=limits.tenant_rpm)


def window_id(window: str, now: float) -> str:
    """The UTC calendar window containing `now`: `d20261123` (day) or `m202611` (month)."""
    t = time.gmtime(now)
    return f"d{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}" if window == "day" else f"m{t.tm_year:04d}{t.tm_mon:02d}"


def tenant_keys(tenant: str) -> list[str]:
    """The KEYS of every tenant script, all in the tenant's slot (`{tenant}`)."""
    return [redis_keys.tenant_budget(tenant), redis_keys.tenant_reservations(tenant),
            redis_keys.tenant_reservation_deadlines(tenant), redis_keys.tenant_provisional(tenant),
            redis_keys.tenant_rate_window(tenant)]


def admit_args(tier: TenantTier, now_ms: int, request_id: str, reserve: int, reservation_ttl_ms: int,
               deadline_ms: int) -> list[Any]:
    """ARGV of TENANT_ADMIT."""
    return [now_ms, request_id, reserve, -1 if tier.budget is None else tier.budget,
            -1 if tier.rpm is None else tier.rpm, reservation_ttl_ms, window_id(tier.window, now_ms / 1000),
            TENANT_TTL_S, deadline_ms]


def settle_args(request_id: str, actual_tokens: int, now_ms: int | None = None) -> list[Any]:
    """ARGV of TENANT_SETTLE."""
    return [int(time.time() * 1000) if now_ms is None else now_ms, request_id, int(actual_tokens), TENANT_TTL_S]


def release_args(request_id: str, now_ms: int | None = None) -> list[Any]:
    """ARGV of TENANT_RELEASE."""
    return [request_id, int(time.time() * 1000) if now_ms is None else now_ms, TENANT_TTL_S]
