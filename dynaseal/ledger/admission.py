"""What one admission asks of the ledger, in plain values: no key, request or proof object crosses into it.

A plain key is a chain of one level; a child key is its chain from the root (the tenant-signed key)
down to itself. Every level has its own limits, and a request is charged to every level at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LevelLimits:
    """One level's limits (None = no limit): tokens, uses, requests per minute, money in micro-units."""

    jti: str
    budget: int | None = None
    uses: int | None = None
    rpm: int | None = None
    budget_cost: int | None = None


@dataclass(frozen=True, slots=True)
class TenantTier:
    """A tenant's tenant-wide limits: tokens per UTC `window` ("day" or "month"), requests per minute."""

    budget: int | None = None
    window: str = "day"
    rpm: int | None = None


@dataclass(frozen=True, slots=True)
class ProofReplay:
    """A DPoP proof to spend in the same round trip: its id in the family's replay set, until when, the set's TTL."""

    replay_id: str
    keep_until_ms: int
    set_ttl_ms: int


@dataclass(frozen=True, slots=True)
class Admission:
    """One request to reserve: who (tenant, levels root first), what (tokens, micro-units; None = unpriced)."""

    tenant: str
    levels: tuple[LevelLimits, ...]
    request_id: str
    reserve: int
    reserve_cost: int | None
    # The root's exp: counters of the whole family live as long as it (plus a margin).
    expires_at: float
    tenant_tier: TenantTier | None = None
    proof: ProofReplay | None = None

    @property
    def path(self) -> tuple[str, ...]:
        """The jtis from the root down to the key that made the request."""
        return tuple(level.jti for level in self.levels)
