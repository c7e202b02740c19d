"""Admission and settlement of a key's counters in Redis: revocation, uses, rpm, token budget.

Admission reserves `prompt estimate + n × max_tokens` atomically (quota_scripts.ADMIT), so
concurrent requests can never overspend. The usage pipeline settles each reservation with
the real usage (SETTLE), idempotently per request id. A tenant with tenant-wide limits is
reserved on its own slot next (dynaseal.ledger.tenant_quota).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.exceptions import RedisError

from dynaseal.keys.claims import VerifiedKey
from dynaseal.keys.dpop import DpopProof, DpopRefusal, replay_set_ttl_ms
from dynaseal.ledger import redis_keys, tenant_quota
from dynaseal.ledger.chain_scripts import ADMIT_CHAIN, SETTLE_CHAIN
from dynaseal.ledger.quota_scripts import ADMIT, MARK_THRESHOLDS, SETTLE
from dynaseal.ledger.redis_cluster import PipelinedCluster
from dynaseal.ledger.redis_connect import SyncClient, async_client, is_cluster, run_scripts
from dynaseal.ledger.redis_pipeline import PipelinedRedis
from dynaseal.ledger.tenant_scripts import KEY_RELEASE, TENANT_ADMIT, TENANT_RELEASE, TENANT_SETTLE
from dynaseal.money.budget_thresholds import Crossing
from dynaseal.money.pricing import format_amount, from_micros
from dynaseal.policy.errors import ErrorCode, QuotaUnavailable, Refusal
from dynaseal.policy.request_policy import CheckedRequest

RESERVATION_TTL_MS = 15 * 60 * 1000
# Counters outlive the key by a day so a late settlement still finds them.
KEY_TTL_MARGIN_S = 24 * 3600


def script_keys(tenant: str, jti: str) -> list[str]:
    """The KEYS of both scripts, all in one hash slot (`{tenant:jti}`)."""
    return [redis_keys.revoked(tenant, jti), redis_keys.counters(tenant, jti),
            redis_keys.reservations(tenant, jti), redis_keys.reservation_deadlines(tenant, jti),
            redis_keys.rate_window(tenant, jti), redis_keys.settled(tenant, jti)]


def chain_script_keys(tenant: str, chain: tuple[str, ...]) -> list[str]:
    """The KEYS of the chain scripts: 6 per level, root first, all under the root's tag `{tenant:root}`."""
    return [name for depth in range(1, len(chain) + 1) for name in redis_keys.level_keys(tenant, chain[:depth])]


def _limit(value: int | None) -> int:
    return -1 if value is None else value


@dataclass(frozen=True, slots=True)
class Settlement:
    """What settling one request did."""

    outcome: int
    spent: int
    spent_cost: int = 0
    # Budget thresholds crossed and not yet delivered (money).
    pending: tuple[Crossing, ...] = ()

    @property
    def duplicate(self) -> bool:
        """True when the request id had already been settled."""
        return self.outcome == 0

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Settlement:
        """Read the SETTLE script's reply."""
        crossings = (Crossing.parse(item) for item in reply[3:])
        return cls(int(reply[0]), int(reply[1]), int(reply[2]) if len(reply) > 2 else 0,
                   tuple(c for c in crossings if c is not None))


class RedisQuota:
    """The `Quota` of the authorizer, backed by one Redis or a Redis Cluster (`redis+cluster://`)."""

    def __init__(self, client: AsyncRedis | AsyncRedisCluster | PipelinedRedis | PipelinedCluster,
                 reservation_ttl_ms: int = RESERVATION_TTL_MS, timeout_s: float = 0.05) -> None:
        self.client = client
        self.reservation_ttl_ms = reservation_ttl_ms
        self.timeout_ms = int(timeout_s * 1000)
        # Redis's clock minus ours (ms), measured by `ping`; None until first measured. The admit
        # script's deadline is written in Redis's clock so no two clocks ever have to agree.
        self.clock_offset_ms: int | None = None
        self._registered: dict[str, Any] = {}

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """One script, one round trip, on the node of its keys' slot."""
        if isinstance(self.client, PipelinedRedis | PipelinedCluster):
            return await self.client.eval_script(script, keys, args)
        registered = self._registered.get(script)
        if registered is None:
            registered = self._registered[script] = self.client.register_script(script)
        return await registered(keys=keys, args=args)

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 0.05) -> RedisQuota:
        """A quota with bounded timeouts (a slow Redis must fail closed quickly).

        Plain `redis://` URLs get the pipelined client (one shared connection, one EVALSHA per
        admit), plain `redis+cluster://` URLs its cluster form (one connection per master); others
        (TLS, unix sockets, URL options) get redis-py with a blocking pool, or its RedisCluster.
        """
        pipelined = PipelinedRedis.from_url(url, timeout_s) or PipelinedCluster.from_url(url, timeout_s)
        if pipelined is not None:
            return cls(pipelined, timeout_s=timeout_s)
        if is_cluster(url):
            return cls(async_client(url, timeout_s, max_connections=64), timeout_s=timeout_s)
        # A blocking pool: a burst waits (bounded) for a connection instead of failing at once.
        pool = BlockingConnectionPool.from_url(url, max_connections=64, timeout=max(timeout_s, 0.1),
                                               socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return cls(AsyncRedis(connection_pool=pool), timeout_s=timeout_s)

    async def admit(self, key: VerifiedKey, request: CheckedRequest, request_id: str,
                    proof: DpopProof | None = None) -> None:
        """Reserve for one request or raise Refusal / QuotaUnavailable.

        A key with a parent is admitted against every level of its chain at once (ADMIT_CHAIN); a DPoP
        proof's id goes into its family's replay set in the same round trip.
        """
        if not request_id:
            raise QuotaUnavailable("no request id to reserve under", "no_request_id")
        now_ms = int(time.time() * 1000)
        # The root's exp bounds every level's: counters of the whole family live as long as the root's.
        key_ttl = max(int(key.root.exp - time.time()) + KEY_TTL_MARGIN_S, 60)
        # Past this instant (Redis's clock) authz has answered 503: the script must then write nothing.
        deadline = 0 if self.clock_offset_ms is None else now_ms + self.clock_offset_ms + self.timeout_ms
        replay_keys: list[str] = []
        replay_args: list[int | str] = []
        if proof is not None:
            replay_keys = [redis_keys.dpop_proofs(key.tenant.id, key.root.jti)]
            replay_args = [proof.replay_id(), proof.keep_until_ms(), replay_set_ttl_ms()]
        level = 0
        try:
            if key.parent is None:
                # DPoP's ARGV[10..12] are placeholders for an unbound key (the script reads them only
                # with KEYS[7]); the money arguments follow at ARGV[13..14].
                status, spent, reserved, retry_ms = await self._run(
                    ADMIT, script_keys(key.tenant.id, key.jti) + replay_keys,
                    [now_ms, request_id, request.reservation, _limit(key.budget), _limit(key.uses),
                     _limit(key.rpm), self.reservation_ttl_ms, key_ttl, deadline,
                     *(replay_args or ["", "", ""]), _limit(request.reservation_cost), _limit(key.budget_cost)])
            else:
                chain = key.chain
                if tenant_quota.has_tenant_limits(key.tenant.limits):
                    # The compensation of the two-slot protocol releases one key's reservation, not a chain's.
                    raise Refusal(ErrorCode.PARAM_NOT_ALLOWED,
                                  "child keys are not served for a tenant with tenant-wide limits")
                if any(k.budget_cost is not None for k in chain):
                    # The chain script keeps token counters only: never admit what it could not bound.
                    raise Refusal(ErrorCode.PARAM_NOT_ALLOWED,
                                  "money budgets are not enforced for child keys: give the child a token budget")
                status, spent, reserved, retry_ms, level = await self._run(
                    ADMIT_CHAIN, chain_script_keys(key.tenant.id, tuple(k.jti for k in chain)) + replay_keys,
                    [now_ms, request_id, request.reservation, self.reservation_ttl_ms, key_ttl, deadline,
                     len(chain), *[v for k in chain for v in (_limit(k.budget), _limit(k.uses), _limit(k.rpm))],
                     *replay_args])
        except RedisError as exc:
            raise QuotaUnavailable(str(exc), "redis_error") from exc
        # The level that refused (1 = root): its limits are the ones to quote.
        limits = key.chain[level - 1] if 0 < level <= len(key.chain) else key
        if status >= 0:
            if tenant_quota.has_tenant_limits(key.tenant.limits):
                await self._admit_tenant(key, request, request_id, now_ms, deadline)
            return
        if status == -5:
            raise QuotaUnavailable("request id already reserved", "duplicate_request_id")
        if status == -6:
            raise QuotaUnavailable("redis ran the admit after its deadline: nothing was reserved", "redis_late")
        if status == -7:
            raise DpopRefusal("DPoP proof has been used before: make a new proof (new jti) for every request")
        whose = "dynamic key" if limits is key else f"its ancestor key {limits.jti!r}"
        if status == -1:
            raise Refusal(ErrorCode.REVOKED_KEY, f"{whose} has been revoked")
        if status == -2:
            raise Refusal(ErrorCode.KEY_EXHAUSTED, f"{whose} has no uses left (uses: {limits.uses})")
        if status == -3:
            wait_s = max(1, -(-retry_ms // 1000))
            raise Refusal(ErrorCode.RATE_LIMITED, f"rate limit of {limits.rpm} requests per minute reached; "
                                                  f"retry in {wait_s} s", headers={"retry-after": str(wait_s)})
        if status == -8:
            currency = key.tenant.currency
            if request.reservation_cost is None:  # request_policy refuses this first; kept fail-closed
                raise Refusal(ErrorCode.INSUFFICIENT_QUOTA, f"this key's budget is in {currency}: unpriced model")
            left_cost = max(0, (key.budget_cost or 0) - spent - reserved)
            raise Refusal(ErrorCode.INSUFFICIENT_QUOTA,
                          f"budget exhausted: this request may cost up to "
                          f"{format_amount(from_micros(request.reservation_cost))} {currency}, "
                          f"{format_amount(from_micros(left_cost))} {currency} remain")
        left = max(0, (limits.budget or 0) - spent - reserved)
        raise Refusal(ErrorCode.INSUFFICIENT_QUOTA,
                      f"token budget exhausted: this request may use up to {request.reservation} tokens, "
                      f"{left} remain")

    async def _admit_tenant(self, key: VerifiedKey, request: CheckedRequest, request_id: str, now_ms: int,
                            deadline: int) -> None:
        """The tenant's slot, after the key's admitted: on refusal or failure the key gets its reservation back."""
        limits = key.tenant.limits
        try:
            status, spent, reserved, retry_ms = await self._run(
                TENANT_ADMIT, tenant_quota.tenant_keys(key.tenant.id),
                tenant_quota.admit_args(limits, now_ms, request_id, request.reservation, self.reservation_ttl_ms,
                                        deadline))
        except RedisError as exc:
            # It may have run (the reply was lost): release both; the tenant's release is a no-op if not.
            await self._release(key, request_id, tenant=True)
            raise QuotaUnavailable(str(exc), "redis_error") from exc
        if status >= 0:
            return
        await self._release(key, request_id, tenant=False)
        raise tenant_quota.refusal(status, spent, reserved, retry_ms, limits, request.reservation)

    async def _release(self, key: VerifiedKey, request_id: str, tenant: bool) -> None:
        """Best-effort compensation; what it cannot release expires with the reservation (billed, never overspent)."""
        releases = [self._run(KEY_RELEASE, script_keys(key.tenant.id, key.jti), [request_id])]
        if tenant:
            releases.append(self._run(TENANT_RELEASE, tenant_quota.tenant_keys(key.tenant.id), [request_id]))
        await asyncio.gather(*releases, return_exceptions=True)

    async def ping(self) -> bool:
        """Whether Redis answers (every master of a cluster); measures Redis's clock for the admit deadline."""
        try:
            sent = time.time()
            if isinstance(self.client, PipelinedCluster):
                times = await self.client.on_every_master("TIME")
            elif isinstance(self.client, PipelinedRedis):
                times = [await self.client.execute("TIME")]
            elif isinstance(self.client, AsyncRedisCluster):
                # With several target nodes redis-py answers {node: (seconds, micros)}; its stub says one pair.
                per_node: Any = await self.client.time(target_nodes=AsyncRedisCluster.PRIMARIES)
                times = list(per_node.values())
            else:
                times = [await self.client.time()]
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
                money: MoneySettlement | None = None) -> list[int | str]:
    """ARGV of the SETTLE script; without a key expiry the counters live a day past now."""
    now = time.time()
    ttl = int((key_exp or now) - now) + KEY_TTL_MARGIN_S
    m = money or MoneySettlement()
    return [int(now * 1000), request_id, int(actual_tokens), max(ttl, 60),
            _limit(m.cost_micros), _limit(m.budget_tokens), _limit(m.budget_cost), m.thresholds]


def settlement_call(tenant: str, jti: str, request_id: str, actual_tokens: int, chain: tuple[str, ...] = (),
                    key_exp: float | None = None, money: MoneySettlement | None = None,
                    ) -> tuple[str, list[str], list[int | str]]:
    """(script, KEYS, ARGV) that settle one request: SETTLE for a plain key, SETTLE_CHAIN for a child key
    (`chain`: the jtis from the root down to `jti`; tokens only, child keys have no money budgets)."""
    args = settle_args(request_id, actual_tokens, key_exp, money)
    if len(chain) > 1 and chain[-1] == jti:
        return SETTLE_CHAIN, chain_script_keys(tenant, chain), [*args[:4], len(chain)]
    return SETTLE, script_keys(tenant, jti), args


def settle(client: SyncClient, tenant: str, jti: str, request_id: str, actual_tokens: int,
           key_exp: float | None = None, chain: tuple[str, ...] = (),
           money: MoneySettlement | None = None) -> Settlement:
    """Replace a request's reservation with its real usage (and cost), on the key (every level of a chain)
    and the tenant; idempotent per request id."""
    script, keys, args = settlement_call(tenant, jti, request_id, actual_tokens, chain, key_exp, money)
    _, reply = run_scripts(client, [
        (TENANT_SETTLE, tenant_quota.tenant_keys(tenant), tenant_quota.settle_args(request_id, actual_tokens)),
        (script, keys, args)])
    return Settlement.from_reply(reply)


def mark_thresholds(client: SyncClient, tenant: str, jti: str, crossings: tuple[Crossing, ...]) -> None:
    """Record that these thresholds' callbacks were delivered (or dead-lettered): never reported again."""
    if crossings:
        client.register_script(MARK_THRESHOLDS)(keys=[redis_keys.counters(tenant, jti)],
                                                args=[c.field for c in crossings])


def tenant_counters(client: SyncClient, tenant: str, window: str) -> dict[str, int]:
    """A tenant's budget counters (reserved, spent) of one window id, for tests and tools."""
    reserved, spent = client.hmget(redis_keys.tenant_budget(tenant), [f"r:{window}", f"s:{window}"])
    return {"reserved": int(reserved or 0), "spent": int(spent or 0)}


def counters(client: SyncClient, tenant: str, jti: str) -> dict[str, int]:
    """A key's counters (uses, reserved, spent; reserved_cost, spent_cost, thr:*), for tests and tools."""
    raw = client.hgetall(redis_keys.counters(tenant, jti))
    return {k.decode(): int(v) for k, v in raw.items()}  # type: ignore[union-attr]
