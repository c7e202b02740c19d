"""Admission and settlement of a key's counters in Redis: revocation, uses, rpm, token budget.

Admission reserves `prompt estimate + n × max_tokens` atomically (quota_scripts.ADMIT), so
concurrent requests can never overspend. The usage pipeline settles each reservation with
the real usage (SETTLE), idempotently per request id.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from dynaseal import redis_keys
from dynaseal.claims import VerifiedKey
from dynaseal.config import DynasealConfig
from dynaseal.errors import ErrorCode, QuotaUnavailable, Refusal
from dynaseal.quota_scripts import ADMIT, SETTLE
from dynaseal.redis_pipeline import PipelinedRedis
from dynaseal.request_policy import CheckedRequest
from dynaseal.runtime import locations

RESERVATION_TTL_MS = 15 * 60 * 1000
# Counters outlive the key by a day so a late settlement still finds them.
KEY_TTL_MARGIN_S = 24 * 3600


def redis_url(cfg: DynasealConfig) -> str:
    """$REDIS_URL, else gateway.redis_url, else the local Redis (the one resolver: `dynaseal.runtime`)."""
    return locations.redis_url(cfg)


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
    """The `Quota` of the authorizer, backed by one Redis (or a Cluster: keys share a slot)."""

    def __init__(self, client: AsyncRedis | PipelinedRedis, reservation_ttl_ms: int = RESERVATION_TTL_MS,
                 timeout_s: float = 0.05) -> None:
        self.client = client
        self.reservation_ttl_ms = reservation_ttl_ms
        self.timeout_ms = int(timeout_s * 1000)
        # Redis's clock minus ours (ms), measured by `ping`; None until first measured. The admit
        # script's deadline is written in Redis's clock so no two clocks ever have to agree.
        self.clock_offset_ms: int | None = None
        if isinstance(client, PipelinedRedis):
            self._run_admit: Callable[[list[str], list[Any]], Awaitable[Any]] = \
                lambda keys, args: client.eval_script(ADMIT, keys, args)
        else:
            script = client.register_script(ADMIT)
            self._run_admit = lambda keys, args: script(keys=keys, args=args)

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 0.05) -> RedisQuota:
        """A quota with bounded timeouts (a slow Redis must fail closed quickly).

        Plain `redis://` URLs get the pipelined client (one shared connection, one EVALSHA per
        admit); others (TLS, unix sockets, URL options) get redis-py with a blocking pool.
        """
        pipelined = PipelinedRedis.from_url(url, timeout_s)
        if pipelined is not None:
            return cls(pipelined, timeout_s=timeout_s)
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
            status, spent, reserved, retry_ms = await self._run_admit(
                script_keys(key.tenant.id, key.jti),
                [now_ms, request_id, request.reservation, _limit(key.budget),
                 _limit(key.uses), _limit(key.rpm), self.reservation_ttl_ms, max(key_ttl, 60), deadline])
        except RedisError as exc:
            raise QuotaUnavailable(str(exc), "redis_error") from exc
        if status >= 0:
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

    async def ping(self) -> bool:
        """Whether Redis answers; also measures Redis's clock against ours for the admit deadline."""
        try:
            sent = time.time()
            seconds, micros = await (self.client.execute("TIME") if isinstance(self.client, PipelinedRedis)
                                     else self.client.time())
            received = time.time()
        except RedisError:
            return False
        redis_ms = int(seconds) * 1000 + int(micros) // 1000
        # The reply was produced somewhere between sent and received: assume the middle.
        self.clock_offset_ms = redis_ms - int((sent + received) * 500)
        return True


def settle_args(request_id: str, actual_tokens: int, key_exp: float | None = None) -> list[int | str]:
    """ARGV of the SETTLE script; without a key expiry the counters live a day past now."""
    now = time.time()
    ttl = int((key_exp or now) - now) + KEY_TTL_MARGIN_S
    return [int(now * 1000), request_id, int(actual_tokens), max(ttl, 60)]


def settle(client: Redis, tenant: str, jti: str, request_id: str, actual_tokens: int,
           key_exp: float | None = None) -> Settlement:
    """Replace a request's reservation with its real usage; idempotent per request id."""
    outcome, spent = client.register_script(SETTLE)(
        keys=script_keys(tenant, jti), args=settle_args(request_id, actual_tokens, key_exp))
    return Settlement(int(outcome), int(spent))


def counters(client: Redis, tenant: str, jti: str) -> dict[str, int]:
    """A key's counters (uses, reserved, spent), for tests and tools."""
    raw = client.hgetall(redis_keys.counters(tenant, jti))
    return {k.decode(): int(v) for k, v in raw.items()}  # type: ignore[union-attr]
