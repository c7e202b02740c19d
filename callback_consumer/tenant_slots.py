"""A tenant's callback concurrency, shared by every member of the consumer group: leases in Redis.

`callback.concurrency` bounds the callbacks in flight to a tenant. With N consumers each holding
its own semaphore the tenant would get N times that, so an attempt also holds a lease in the
tenant's lease set (a sorted set of lease id -> expiry, Redis's clock). A lease lasts the
attempt's timeout plus a margin: a consumer killed mid-attempt frees its slots when they expire,
the same moment a live one would have given up on the attempt.

Per tenant one pump task asks Redis for as many leases as it has waiters (one script call for the
lot) and hands them out in arrival order; when none is free it waits for a local release or
POLL_S (another member's release). Releases of one loop turn go out as one ZREM. Both are awaited on
the delivery loop, on the core's asyncio Redis client (no thread hop).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from dynaseal.backoff import Backoff
from dynaseal.ledger import redis_keys
from dynaseal.ledger.redis_async import AsyncLedgerRedis

log = logging.getLogger("callback_consumer.tenant_slots")
LEASE_MARGIN_S = 5.0
POLL_S = 0.05
# Redis away: the pump asks again after 0.1 s, doubling up to 0.5 s, full jitter; an answer starts over.
RETRY_BACKOFF = Backoff(0.1, 0.5)

# KEYS[1]: the tenant's lease set. ARGV: limit, lease_ms, lease ids wanted (in order).
# Returns the ids granted (a prefix of those asked for).
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local free = tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[1])
local granted = {}
for i = 3, #ARGV do
  if free <= 0 then break end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i])
  granted[#granted + 1] = ARGV[i]
  free = free - 1
end
if #granted > 0 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2])) end
return granted
"""


def lease_set(tenant: str) -> str:
    """The Redis key of a tenant's callback leases (its own slot: not the tenant's admit slot)."""
    return f"{redis_keys.PREFIX}:{{cb:{redis_keys.tenant_tag(tenant)[1:-1]}}}:callback_leases"


@dataclass
class _Tenant:
    limit: int
    lease_ms: int
    waiters: deque[tuple[str, asyncio.Future[str]]] = field(default_factory=deque)
    freed: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None
    releasing: list[str] = field(default_factory=list)


class SharedSlots:
    """`async with slots.hold(tenant, limit, timeout_s):` around one callback attempt."""

    def __init__(self, redis_client: AsyncLedgerRedis, member: str) -> None:
        self.redis = redis_client
        self.member = member
        self._ids = itertools.count()
        self._tenants: dict[str, _Tenant] = {}
        self._flushing: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def hold(self, tenant: str, limit: int, timeout_s: float) -> AsyncIterator[None]:
        """Wait for one of the tenant's `limit` group-wide slots; hold it for the block."""
        lease = await self._acquire(tenant, limit, int((timeout_s + LEASE_MARGIN_S) * 1000))
        try:
            yield
        finally:
            self._release(tenant, lease)

    async def _acquire(self, tenant: str, limit: int, lease_ms: int) -> str:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant(limit, lease_ms)
        state.limit, state.lease_ms = limit, lease_ms  # a reload may change them
        lease = f"{self.member}:{next(self._ids)}"
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        state.waiters.append((lease, future))
        if state.pump is None or state.pump.done():
            state.pump = asyncio.get_running_loop().create_task(self._pump(tenant, state))
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(tenant, future.result())  # granted just as we gave up
            state.waiters = deque(w for w in state.waiters if w[0] != lease)
            raise

    async def _pump(self, tenant: str, state: _Tenant) -> None:
        retries = RETRY_BACKOFF.retries()
        while state.waiters:
            state.freed.clear()
            wanted = [lease for lease, future in list(state.waiters)[:state.limit] if not future.done()]
            try:
                granted = await self.redis.eval_script(ACQUIRE, [lease_set(tenant)],
                                                       [state.limit, state.lease_ms, *wanted])
            except RedisError as exc:
                log.warning("callback slots unavailable; retrying", extra={"tenant": tenant, "error": str(exc)})
                await asyncio.sleep(retries.next_delay())
                continue
            retries.reset()
            given = {g.decode() if isinstance(g, bytes) else str(g) for g in granted}
            waiting: deque[tuple[str, asyncio.Future[str]]] = deque()
            for lease, future in state.waiters:
                if lease not in given:
                    waiting.append((lease, future))
                elif not future.done():
                    future.set_result(lease)
                    given.discard(lease)
            # What is left was granted to waiters that left while the script ran (a cancelled delivery already
            # dropped itself from the queue): give it back now, not when the lease expires.
            for lease in given:
                self._release(tenant, lease)
            state.waiters = waiting
            if state.waiters and not given:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.freed.wait(), POLL_S)

    def _release(self, tenant: str, lease: str) -> None:
        state = self._tenants[tenant]
        if not state.releasing:
            # The task's first step runs in the next loop turn: releases of this turn share its ZREM.
            flush = asyncio.get_running_loop().create_task(self._flush(tenant, state))
            self._flushing.add(flush)
            flush.add_done_callback(self._flushing.discard)
        state.releasing.append(lease)

    async def _flush(self, tenant: str, state: _Tenant) -> None:
        leases, state.releasing = state.releasing, []
        if not leases:
            return
        try:
            await self.redis.execute_on(lease_set(tenant), "ZREM", lease_set(tenant), *leases)
        except RedisError as exc:  # they expire with their lease
            log.warning("could not release callback slots", extra={"tenant": tenant, "error": str(exc)})
        state.freed.set()

    async def aclose(self) -> None:
        """Send the releases still pending and stop the pumps (before the Redis client closes, so no late
        release reconnects it)."""
        for state in self._tenants.values():
            if state.pump is not None:
                state.pump.cancel()
        while self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)
