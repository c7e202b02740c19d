"""Admission and settlement of a key's counters in Redis: revocation, uses, rpm, token budget.

Admission reserves `prompt estimate + n × max_tokens` atomically (quota_scripts.ADMIT), so
concurrent requests can never overspend. The usage pipeline settles each reservation with
the real usage (SETTLE), idempotently per request id. A tenant with tenant-wide limits is
reserved on its own slot next (dynaseal.tenant_quota).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.exceptions import RedisError

from dynaseal import redis_keys, tenant_quota
from dynaseal.claims import VerifiedKey
from dynaseal.config import DynasealConfig
from dynaseal.errors import ErrorCode, QuotaUnavailable, Refusal
from dynaseal.quota_scripts import ADMIT, SETTLE
from dynaseal.redis_cluster import PipelinedCluster
from dynaseal.redis_connect import SyncClient, async_client, is_cluster, run_scripts
from dynaseal.redis_pipeline import PipelinedRedis
from dynaseal.request_policy import CheckedRequest
from dynaseal.tenant_scripts import KEY_RELEASE, TENANT_ADMIT, TENANT_RELEASE, TENANT_SETTLE

RESERVATION_TTL_MS = 15 * 60 * 1000
# Counters outlive the key by a day so a late settlement still finds them.
KEY_TTL_MARGIN_S = 24 * 3600


def redis_url(cfg: DynasealConfig) -> str:
    """$REDIS_URL, else gateway.redis_url, else the local Redis that `dynaseal up` starts."""
    return os.environ.get("REDIS_URL") or cfg.gateway.redis_url or \
        f"redis://{cfg.gateway.host}:{cfg.gateway.ports.redis}/0"


def script_keys(tenant: str, jti: str) -> list[str]:
    """The KEYS of both scripts, all in one hash slot (`{tenant:jti}`)."""
    return [redis_keys.revoked(tenant, jti), redis_keys.counters(tenant, jti),
            redis_keys.reservations(tenant, jti), redis_keys.reservation_deadlines(tenant, jti),
            redis_keys.rate_window(tenant, jti), redis_keys.settled(tenant, jti)]


def _limit(value: int | None) -> int:
    return -1 if value is None else value


@dataclass(frozen=True, slots=True)
class Settlement:
    """What settling one request did."""

    outcome: int
    spent: int

    @property
    def duplicate(self) -> bool:
        """True when the request id had already been settled."""
        return self.outcome == 0


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

    async def admit(self, key: VerifiedKey, request: CheckedRequest, request_id: str) -> None:
        """Reserve for one request or raise Refusal / QuotaUnavailable."""
        if not request_id:
            raise QuotaUnavailable("no request id to reserve under", "no_request_id")
        now_ms = int(time.time() * 1000)
        key_ttl = int(key.exp - time.time()) + KEY_TTL_MARGIN_S
        # Past this instant (Redis's clock) authz has answered 503: the script must then write nothing.
        deadline = 0 if self.clock_offset_ms is None else now_ms + self.clock_offset_ms + self.timeout_ms
        try:
            status, spent, reserved, retry_ms = await self._run(
                ADMIT, script_keys(key.tenant.id, key.jti),
                [now_ms, request_id, request.reservation, _limit(key.budget),
                 _limit(key.uses), _limit(key.rpm), self.reservation_ttl_ms, max(key_ttl, 60), deadline])
        except RedisError as exc:
            raise QuotaUnavailable(str(exc), "redis_error") from exc
        if status >= 0:
            if tenant_quota.has_tenant_limits(key.tenant.limits):
                await self._admit_tenant(key, request, request_id, now_ms, deadline)
            return
        if status == -5:
            raise QuotaUnavailable("request id already reserved", "duplicate_request_id")
        if status == -6:
            raise QuotaUnavailable("redis ran the admit after its deadline: nothing was reserved", "redis_late")
        if status == -1:
            raise Refusal(ErrorCode.REVOKED_KEY, "dynamic key has been revoked")
        if status == -2:
            raise Refusal(ErrorCode.KEY_EXHAUSTED, f"dynamic key has no uses left (uses: {key.uses})")
        if status == -3:
            raise Refusal(ErrorCode.RATE_LIMITED, f"rate limit of {key.rpm} requests per minute reached; "
                                                  f"retry in {max(1, -(-retry_ms // 1000))} s")
        left = max(0, (key.budget or 0) - spent - reserved)
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
                times = list((await self.client.time(target_nodes=AsyncRedisCluster.PRIMARIES)).values())
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


def settle_args(request_id: str, actual_tokens: int, key_exp: float | None = None) -> list[int | str]:
    """ARGV of the SETTLE script; without a key expiry the counters live a day past now."""
    now = time.time()
    ttl = int((key_exp or now) - now) + KEY_TTL_MARGIN_S
    return [int(now * 1000), request_id, int(actual_tokens), max(ttl, 60)]


def settle(client: SyncClient, tenant: str, jti: str, request_id: str, actual_tokens: int,
           key_exp: float | None = None) -> Settlement:
    """Replace a request's reservation with its real usage, on the key and the tenant; idempotent per request id."""
    _, (outcome, spent) = run_scripts(client, [
        (TENANT_SETTLE, tenant_quota.tenant_keys(tenant), tenant_quota.settle_args(request_id, actual_tokens)),
        (SETTLE, script_keys(tenant, jti), settle_args(request_id, actual_tokens, key_exp))])
    return Settlement(int(outcome), int(spent))


def tenant_counters(client: SyncClient, tenant: str, window: str) -> dict[str, int]:
    """A tenant's budget counters (reserved, spent) of one window id, for tests and tools."""
    reserved, spent = client.hmget(redis_keys.tenant_budget(tenant), [f"r:{window}", f"s:{window}"])  # type: ignore[misc]
    return {"reserved": int(reserved or 0), "spent": int(spent or 0)}


def counters(client: SyncClient, tenant: str, jti: str) -> dict[str, int]:
    """A key's counters (uses, reserved, spent), for tests and tools."""
    raw = client.hgetall(redis_keys.counters(tenant, jti))
    return {k.decode(): int(v) for k, v in raw.items()}  # type: ignore[union-attr]
