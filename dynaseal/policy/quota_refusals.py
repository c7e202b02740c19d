"""The ledger step of a decision: a verified key and a checked request become an admission, and what the
ledger answers becomes a Refusal a client can read (or a fail-closed QuotaUnavailable).

The ledger (dynaseal.ledger) speaks in codes and counters; only here do they become messages, with the
limits of the level that refused and amounts in the tenant's currency.
"""

from __future__ import annotations

from typing import Protocol

from dynaseal.errors import ErrorCode, QuotaUnavailable, Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.keys.dpop import DpopProof, DpopRefusal, replay_set_ttl_ms
from dynaseal.ledger.admission import Admission, LevelLimits, ProofReplay
from dynaseal.ledger.outcomes import AdmitCode, Admitted, LedgerUnavailable, Outcome, Refused
from dynaseal.ledger.tenant_quota import tier_of
from dynaseal.money.pricing import format_amount, from_micros
from dynaseal.policy.request_policy import CheckedRequest


class Quota(Protocol):
    """The ledger as the authorizer uses it (dynaseal.ledger.quota.RedisQuota)."""

    async def admit(self, admission: Admission, now_ms: int | None = None) -> Outcome:
        """Reserve at every level of the chain (and the tenant); raise LedgerUnavailable if the store fails."""

    async def revoked_level(self, tenant: str, path: tuple[str, ...]) -> int:
        """The first revoked level of a chain (1 = root), 0 if none."""


def admission_of(key: VerifiedKey, request: CheckedRequest, request_id: str,
                 proof: DpopProof | None = None) -> Admission:
    """What the ledger must reserve for this request: every level of the key's chain, the tenant's tier."""
    levels = tuple(LevelLimits(k.jti, k.budget, k.uses, k.rpm, k.budget_cost) for k in key.chain)
    replay = None if proof is None else ProofReplay(proof.replay_id(), proof.keep_until_ms(), replay_set_ttl_ms())
    return Admission(tenant=key.tenant.id, levels=levels, request_id=request_id, reserve=request.reservation,
                     reserve_cost=request.reservation_cost, expires_at=key.root.exp,
                     tenant_tier=tier_of(key.tenant.limits), proof=replay)


def _retry_s(retry_ms: int) -> int:
    return max(1, -(-retry_ms // 1000))


def _retry_after(retry_ms: int) -> dict[str, str]:
    """The real wait, in the header SDKs read before retrying (whole seconds, rounded up)."""
    return {"retry-after": str(_retry_s(retry_ms))}


def _tenant_refusal(refused: Refused, key: VerifiedKey, request: CheckedRequest) -> Refusal:
    limits = key.tenant.limits
    if refused.code == AdmitCode.TENANT_RATE_LIMITED:
        return Refusal(ErrorCode.RATE_LIMITED, f"the tenant's rate limit of {limits.tenant_rpm} requests per "
                                               f"minute reached; retry in {_retry_s(refused.retry_ms)} s",
                       headers=_retry_after(refused.retry_ms))
    budget = limits.tenant_budget
    window, tokens = ("day", 0) if budget is None else (budget.window, budget.tokens)
    left = max(0, tokens - refused.spent - refused.reserved)
    return Refusal(ErrorCode.INSUFFICIENT_QUOTA,
                   f"the tenant's token budget for this {window} is exhausted: this request may use "
                   f"up to {request.reservation} tokens, {left} remain")


def _level(key: VerifiedKey, level: int) -> tuple[VerifiedKey, str]:
    """The key at `level` of the chain (1 = root; its limits are the ones to quote) and how to name it."""
    chain = key.chain
    limits = chain[level - 1] if 0 < level <= len(chain) else key
    return limits, "dynamic key" if limits is key else f"its ancestor key {limits.jti!r}"


def _revoked(key: VerifiedKey, level: int) -> Refusal:
    return Refusal(ErrorCode.REVOKED_KEY, f"{_level(key, level)[1]} has been revoked")


def refusal_of(refused: Refused, key: VerifiedKey, request: CheckedRequest) -> Exception:
    """What a refusal of the ledger means to the client (a Refusal), or to the operator (QuotaUnavailable)."""
    code = refused.code
    if code == AdmitCode.DUPLICATE_REQUEST:
        return QuotaUnavailable("request id already reserved", "duplicate_request_id")
    if code == AdmitCode.PAST_DEADLINE:
        return QuotaUnavailable("redis ran the admit after its deadline: nothing was reserved", "redis_late")
    if code == AdmitCode.PROOF_REPLAYED:
        return DpopRefusal("DPoP proof has been used before: make a new proof (new jti) for every request")
    if code in (AdmitCode.TENANT_RATE_LIMITED, AdmitCode.TENANT_BUDGET_SPENT):
        return _tenant_refusal(refused, key, request)
    limits, whose = _level(key, refused.level)
    if code == AdmitCode.REVOKED:
        return _revoked(key, refused.level)
    if code == AdmitCode.USES_SPENT:
        return Refusal(ErrorCode.KEY_EXHAUSTED, f"{whose} has no uses left (uses: {limits.uses})")
    if code == AdmitCode.RATE_LIMITED:
        return Refusal(ErrorCode.RATE_LIMITED, f"rate limit of {limits.rpm} requests per minute reached; "
                                               f"retry in {_retry_s(refused.retry_ms)} s",
                       headers=_retry_after(refused.retry_ms))
    if code == AdmitCode.MONEY_SPENT:
        currency = key.tenant.currency
        if request.reservation_cost is None:  # request_policy refuses this first; kept fail-closed
            return Refusal(ErrorCode.INSUFFICIENT_QUOTA, f"this key's budget is in {currency}: unpriced model")
        left_cost = max(0, (limits.budget_cost or 0) - refused.spent - refused.reserved)
        return Refusal(ErrorCode.INSUFFICIENT_QUOTA,
                       f"budget exhausted: this request may cost up to "
                       f"{format_amount(from_micros(request.reservation_cost))} {currency}, "
                       f"{format_amount(from_micros(left_cost))} {currency} remain")
    left = max(0, (limits.budget or 0) - refused.spent - refused.reserved)
    return Refusal(ErrorCode.INSUFFICIENT_QUOTA,
                   f"token budget exhausted: this request may use up to {request.reservation} tokens, {left} remain")


async def admit_request(quota: Quota, key: VerifiedKey, request: CheckedRequest, request_id: str,
                        proof: DpopProof | None = None) -> None:
    """Reserve for one request (spending the DPoP proof's id) or raise Refusal / QuotaUnavailable."""
    try:
        outcome = await quota.admit(admission_of(key, request, request_id, proof))
    except LedgerUnavailable as exc:
        raise QuotaUnavailable(str(exc), exc.reason) from exc
    if not isinstance(outcome, Admitted):
        raise refusal_of(outcome, key, request)


async def check_not_revoked(quota: Quota, key: VerifiedKey) -> None:
    """Refuse a key if it or any key above it is revoked (for answers that reserve nothing)."""
    try:
        level = await quota.revoked_level(key.tenant.id, tuple(k.jti for k in key.chain))
    except LedgerUnavailable as exc:
        raise QuotaUnavailable(str(exc), exc.reason) from exc
    if level:
        raise _revoked(key, level)
