"""The ledger of key chains in Redis: admission and settlement of uses, rpm, token and money budgets.

One script admits a request against every level of its key's chain (a plain key is a chain of one):
`prompt bound + n × max_tokens` tokens and their dearest cost are reserved atomically at every level,
so concurrent requests can never overspend any of them (quota_scripts.ADMIT). A tenant with tenant-wide
limits is reserved on its own slot next (dynaseal.ledger.tenant_quota); if that refuses or fails, one
release gives every level back exactly what admission took (quota_scripts.RELEASE). The usage pipeline
settles each reservation with the real usage (quota_scripts.SETTLE), idempotently per request id.

The ledger answers typed outcomes (dynaseal.ledger.outcomes); what they mean to a client is the
policy layer's (dynaseal.policy.quota_refusals).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from dynaseal.ledger import redis_keys, tenant_quota
from dynaseal.ledger.admission import Admission
from dynaseal.ledger.outcomes import Admitted, LedgerUnavailable, Outcome, SettleOutcome, outcome_of
from dynaseal.ledger.quota_scripts import ADMIT, RELEASE, REVOKED_LEVEL, SETTLE
from dynaseal.ledger.redis_async import AsyncLedgerRedis, connect
from dynaseal.ledger.tenant_scripts import TENANT_ADMIT, TENANT_RELEASE
from dynaseal.money.budget_thresholds import Crossing

RESERVATION_TTL_MS = 15 * 60 * 1000
# Counters outlive the key by a day so a late settlement still finds them.
KEY_TTL_MARGIN_S = 24 * 3600


def key_path(jti: str, chain: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The jtis from the root down to `jti`: `chain` when it ends at `jti` (a child key), else `jti` alone."""
    return chain if len(chain) > 1 and chain[-1] == jti else (jti,)


def chain_keys(tenant: str, path: tuple[str, ...]) -> list[str]:
    """The KEYS of the chain scripts: 6 per level, root first, all under the root's tag `{tenant:root}`."""
    return [name for depth in range(1, len(path) + 1) for name in redis_keys.level_keys(tenant, path[:depth])]


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def admit_args(admission: Admission, now_ms: int, reservation_ttl_ms: int, key_ttl_s: int,
               deadline_ms: int) -> list[int | str]:
    """ARGV of ADMIT."""
    args: list[int | str] = [now_ms, admission.request_id, admission.reserve, _limit(admission.reserve_cost),
                             reservation_ttl_ms, key_ttl_s, deadline_ms, len(admission.levels)]
    for level in admission.levels:
        args += [_limit(level.budget), _limit(level.uses), _limit(level.rpm), _limit(level.budget_cost)]
    if admission.proof is not None:
        args += [admission.proof.replay_id, admission.proof.keep_until_ms, admission.proof.set_ttl_ms]
    return args


def admit_keys(admission: Admission) -> list[str]:
    """KEYS of ADMIT: every level's, then the family's proof set when a proof is spent."""
    keys = chain_keys(admission.tenant, admission.path)
    if admission.proof is not None:
        keys.append(redis_keys.dpop_proofs(admission.tenant, admission.path[0]))
    return keys


@dataclass(frozen=True, slots=True)
class Settlement:
    """What settling one request did (at the key that made it)."""

    outcome: SettleOutcome
    spent: int
    spent_cost: int = 0
    # Budget thresholds crossed and not yet delivered (money).
    pending: tuple[Crossing, ...] = ()

    @property
    def duplicate(self) -> bool:
        """True when the request id had already been settled."""
        return self.outcome == SettleOutcome.ALREADY_SETTLED

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Settlement:
        """Read the SETTLE script's reply."""
        crossings = (Crossing.parse(item) for item in reply[3:])
        return cls(SettleOutcome(int(reply[0])), int(reply[1]), int(reply[2]) if len(reply) > 2 else 0,
                   tuple(c for c in crossings if c is not None))


class RedisQuota:
    """The ledger, backed by one Redis or a Redis Cluster (`redis+cluster://`), through the core's asyncio
    client (`redis_async.connect`)."""

    def __init__(self, client: AsyncLedgerRedis, reservation_ttl_ms: int = RESERVATION_TTL_MS,
                 timeout_s: float = 0.05) -> None:
        self.client = client
        self.reservation_ttl_ms = reservation_ttl_ms
        self.timeout_ms = int(timeout_s * 1000)
        # Redis's clock minus ours (ms), measured by `ping`; None until first measured. The admit
        # script's deadline is written in Redis's clock so no two clocks ever have to agree.
        self.clock_offset_ms: int | None = None

    async def run_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """One ledger script, one round trip, on the node of its keys' slot (the give-back's release too)."""
        return await self.client.eval_script(script, keys, args)

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 0.05) -> RedisQuota:
        """A quota with bounded timeouts (a slow Redis must fail closed quickly).

        The client is the core's one asyncio entry point (`redis_async.connect`): plain `redis://` URLs
        get the pipelined client (one shared connection, one EVALSHA per admit), plain `redis+cluster://`
        URLs its cluster form (one connection per master); others (TLS, unix sockets, URL options)
        redis-py with a blocking pool, or its RedisCluster.
        """
        return cls(connect(url, timeout_s, max_connections=64), timeout_s=timeout_s)

    async def admit(self, admission: Admission, now_ms: int | None = None) -> Outcome:
        """Reserve for one request at every level of its chain (then on its tenant's slot, if it has one).

        Raises LedgerUnavailable when Redis fails; what was reserved before the failure is released.
        """
        if not admission.request_id:
            raise LedgerUnavailable("no request id to reserve under", "no_request_id")
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        key_ttl = max(int(admission.expires_at - now_ms / 1000) + KEY_TTL_MARGIN_S, 60)
        # Past this instant (Redis's clock) authz has answered 503: the script must then write nothing.
        deadline = 0 if self.clock_offset_ms is None else now_ms + self.clock_offset_ms + self.timeout_ms
        try:
            reply = await self.run_script(ADMIT, admit_keys(admission),
                                    admit_args(admission, now_ms, self.reservation_ttl_ms, key_ttl, deadline))
        except RedisError as exc:
            raise LedgerUnavailable(str(exc), "redis_error") from exc
        outcome = outcome_of(reply)
        if isinstance(outcome, Admitted) and admission.tenant_tier is not None:
            return await self._admit_tenant(admission, now_ms, deadline)
        return outcome

    async def _admit_tenant(self, admission: Admission, now_ms: int, deadline: int) -> Outcome:
        """The tenant's slot, after the chain's admitted: on refusal or failure the chain gets it all back."""
        assert admission.tenant_tier is not None
        try:
            reply = await self.run_script(
                TENANT_ADMIT, tenant_quota.tenant_keys(admission.tenant),
                tenant_quota.admit_args(admission.tenant_tier, now_ms, admission.request_id, admission.reserve,
                                        self.reservation_ttl_ms, deadline))
        except RedisError as exc:
            # It may have run (the reply was lost): release both; the tenant's release is a no-op if not.
            await self.release(admission, tenant=True, now_ms=now_ms)
            raise LedgerUnavailable(str(exc), "redis_error") from exc
        outcome = outcome_of(reply, tenant=True)
        if not isinstance(outcome, Admitted):
            await self.release(admission, tenant=False, now_ms=now_ms)
        return outcome

    async def release(self, admission: Admission, tenant: bool, now_ms: int | None = None) -> None:
        """Give back what admitting `admission` took (every level; the tenant's too if `tenant`).

        Best effort: what it cannot release expires with the reservation (billed in full, never overspent).
        """
        releases = [self.run_script(RELEASE, chain_keys(admission.tenant, admission.path),
                              [admission.request_id, len(admission.levels)])]
        if tenant:
            releases.append(self.run_script(TENANT_RELEASE, tenant_quota.tenant_keys(admission.tenant),
                                      tenant_quota.release_args(admission.request_id, now_ms)))
        await asyncio.gather(*releases, return_exceptions=True)

    async def revoked_level(self, tenant: str, path: tuple[str, ...]) -> int:
        """The first revoked level of a chain (1 = root), 0 if none: one read-only round trip.

        Raises LedgerUnavailable when Redis fails.
        """
        markers = [redis_keys.level_keys(tenant, path[:depth])[0] for depth in range(1, len(path) + 1)]
        try:
            return int(await self.run_script(REVOKED_LEVEL, markers, []))
        except RedisError as exc:
            raise LedgerUnavailable(str(exc), "redis_error") from exc

    async def ping(self) -> bool:
        """Whether Redis answers (every master of a cluster); measures Redis's clock for the admit deadline."""
        try:
            sent = time.time()
            times = await self.client.on_every_master("TIME")  # [seconds, micros] each, as bytes or ints
            received = time.time()
        except RedisError:
            return False
        # A reply was produced somewhere between sent and received: assume the middle. On a cluster
        # each master has its own clock; the smallest offset makes the earliest deadline, so a
        # script never runs on any node after authz gave up on it.
        middle_ms = int((sent + received) * 500)
        self.clock_offset_ms = min(int(seconds) * 1000 + int(micros) // 1000 - middle_ms
                                   for seconds, micros in times)
        return True


@dataclass(frozen=True, slots=True)
class MoneySettlement:
    """The money side of one settlement: the cost (None = unknown), the key's budgets, the thresholds."""

    cost_micros: int | None = None
    budget_tokens: int | None = None
    budget_cost: int | None = None
    thresholds: str = ""  # basis points, comma-separated (budget_thresholds.basis_points)


def settle_args(request_id: str, actual_tokens: int, key_exp: float | None = None,
                money: MoneySettlement | None = None, levels: int = 1, now_ms: int | None = None) -> list[int | str]:
    """ARGV of the SETTLE script; without a key expiry the counters live a day past now."""
    now = time.time() if now_ms is None else now_ms / 1000
    ttl = int((key_exp or now) - now) + KEY_TTL_MARGIN_S
    m = money or MoneySettlement()
    return [int(now * 1000), request_id, int(actual_tokens), max(ttl, 60),
            _limit(m.cost_micros), _limit(m.budget_tokens), _limit(m.budget_cost), m.thresholds, levels]


def settlement_call(tenant: str, jti: str, request_id: str, actual_tokens: int, chain: tuple[str, ...] = (),
                    key_exp: float | None = None, money: MoneySettlement | None = None,
                    now_ms: int | None = None) -> tuple[str, list[str], list[int | str]]:
    """(script, KEYS, ARGV) that settle one request at every level of its key's chain (`chain`: the jtis from
    the root down to `jti`, for a child key; a plain key is a chain of one)."""
    path = key_path(jti, chain)
    return SETTLE, chain_keys(tenant, path), settle_args(request_id, actual_tokens, key_exp, money, len(path), now_ms)
