"""Down is not slow: a tenant whose receiver fails has its events parked in Kafka, in order, for automatic replay.

A tenant is down once `park_after` callback attempts in a row failed (no answer, 5xx, 408, 429), or
while it has parked events (a counter in Redis, shared by the group). Its events then stop taking
retries and memory: each is written to `dynaseal.usage.v1.parked`, keyed by tenant (one partition per
tenant: their order is kept), and its usage offset is committed. `parked_replay` delivers them,
with the same webhook-id and signature scheme, once the receiver answers again; new events of the
tenant keep being parked behind them until none is left, so a key's events arrive in order.

Order: events park in the order they reached delivery (a per-tenant sequence number). One that is
about to park waits until every earlier event of its tenant left delivery (delivered, parked or
dead-lettered); earlier ones waiting out a retry backoff are woken to park at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from redis.exceptions import RedisError

from dynaseal.ledger import redis_keys
from dynaseal.ledger.redis_async import AsyncLedgerRedis

COUNT_CACHE_S = 0.25
# A counter kept after its last park: a consumer that died between parking and counting leaves it high,
# which only parks (and replays) events that need not be; it resets itself after this long.
COUNTER_TTL_S = 7 * 24 * 3600


def parked_counter(tenant: str) -> str:
    """The Redis key counting a tenant's parked, not yet replayed, events."""
    return f"{redis_keys.PREFIX}:{{cb:{redis_keys.tenant_tag(tenant)[1:-1]}}}:parked"


class _Tenant:
    def __init__(self) -> None:
        self.failures = 0
        self.in_delivery: dict[int, asyncio.Event] = {}
        self.down = asyncio.Event()
        self.count_at = 0.0
        self.count = 0
        self.refresh: asyncio.Future[None] | None = None


class Parking:
    """Per-tenant failure streaks, parked counts and park ordering (on the delivery loop)."""

    def __init__(self, redis_client: AsyncLedgerRedis, park_after: int) -> None:
        self.redis = redis_client
        self.park_after = park_after
        self._seq = itertools.count()
        self._tenants: dict[str, _Tenant] = {}

    def _state(self, tenant: str) -> _Tenant:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant()
        return state

    def enter(self, tenant: str) -> int:
        """An event of the tenant starts delivery: its place in the tenant's order."""
        seq = next(self._seq)
        self._state(tenant).in_delivery[seq] = asyncio.Event()
        return seq

    def leave(self, tenant: str, seq: int) -> None:
        """The event left delivery (any outcome)."""
        done = self._state(tenant).in_delivery.pop(seq, None)
        if done is not None:
            done.set()

    def succeeded(self, tenant: str) -> None:
        """An attempt got a 2xx: the failure streak ends."""
        self._state(tenant).failures = 0

    def failed(self, tenant: str) -> bool:
        """An attempt failed retryably; True if the tenant is now down (park)."""
        state = self._state(tenant)
        state.failures += 1
        if state.failures >= self.park_after:
            self._mark_down(state)
        return state.down.is_set()

    def _mark_down(self, state: _Tenant) -> None:
        state.down.set()
        state.count = max(state.count, 1)
        state.count_at = time.monotonic()

    def down_event(self, tenant: str) -> asyncio.Event:
        """Set while the tenant is known down: a retry backoff waits on it too."""
        return self._state(tenant).down

    async def is_down(self, tenant: str) -> bool:
        """Whether the tenant has parked events (Redis, cached briefly) or just failed `park_after` times."""
        state = self._state(tenant)
        if time.monotonic() - state.count_at >= COUNT_CACHE_S and state.refresh is None:
            # One read for every event asking meanwhile: they all wait for it, none answers from stale state.
            state.refresh = asyncio.ensure_future(self._refresh(tenant, state))
        if state.refresh is not None:
            await asyncio.shield(state.refresh)
        return state.count > 0 or state.down.is_set()

    async def _refresh(self, tenant: str, state: _Tenant) -> None:
        try:
            name = parked_counter(tenant)
            raw = await self.redis.execute_on(name, "GET", name)
            state.count = int(raw) if isinstance(raw, bytes | str | int) else 0
        except (RedisError, ValueError):
            pass  # keep the last known count
        finally:
            state.count_at = time.monotonic()
            state.refresh = None
        if state.count > 0:
            state.down.set()
        elif state.failures < self.park_after:
            state.down.clear()

    async def wait_turn(self, tenant: str, seq: int, abandon: asyncio.Event) -> bool:
        """Wait until every earlier event of the tenant left delivery; False on shutdown."""
        state = self._state(tenant)
        for earlier in sorted(s for s in state.in_delivery if s < seq):
            done = state.in_delivery.get(earlier)
            if done is None:
                continue
            stop = asyncio.ensure_future(abandon.wait())
            try:
                await asyncio.wait((asyncio.ensure_future(done.wait()), stop), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if abandon.is_set():
                return False
        return True

    async def count_parked(self, tenant: str) -> None:
        """One more parked event of the tenant (called before it is written: never below the truth)."""
        await self.redis.eval_script(_PARKED, [parked_counter(tenant)], [COUNTER_TTL_S])
        state = self._state(tenant)
        state.count += 1
        state.failures = 0


_PARKED = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return n
"""

_REPLAYED = """
local n = redis.call('DECR', KEYS[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n
"""


async def replayed(redis_client: AsyncLedgerRedis, tenant: str) -> int:
    """A parked event left the parked topic (delivered or dead-lettered); how many of the tenant's remain."""
    return int(await redis_client.eval_script(_REPLAYED, [parked_counter(tenant)], []))
