"""Group-wide callback slots in a real Redis: two members never exceed a tenant's limit together."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

import redis

from callback_consumer import tenant_slots
from callback_consumer.tenant_slots import SharedSlots, lease_set


def test_two_members_share_one_limit_and_every_holder_gets_a_turn(redis_server: str) -> None:
    client = redis.Redis.from_url(redis_server)
    executor = ThreadPoolExecutor(4)
    tenant = f"slots-{uuid.uuid4().hex[:6]}"
    members = [SharedSlots(client, executor, f"m{i}") for i in range(2)]
    now, peak, served = 0, 0, 0

    async def holder(slots: SharedSlots) -> None:
        nonlocal now, peak, served
        async with slots.hold(tenant, 3, timeout_s=5):
            now += 1
            peak = max(peak, now)
            await asyncio.sleep(0.01)
            now -= 1
            served += 1

    async def run() -> None:
        await asyncio.gather(*(holder(members[i % 2]) for i in range(40)))
        await asyncio.sleep(0.05)  # the last releases go out
    try:
        asyncio.run(run())
        assert served == 40 and peak == 3
        assert client.zcard(lease_set(tenant)) == 0  # every lease given back
    finally:
        executor.shutdown()
        client.close()


def test_a_dead_members_leases_expire(redis_server: str) -> None:
    client = redis.Redis.from_url(redis_server)
    executor = ThreadPoolExecutor(2)
    tenant = f"slots-{uuid.uuid4().hex[:6]}"
    tenant_slots.LEASE_MARGIN_S = 0.0  # leases last the attempt's timeout alone

    async def run() -> bool:
        dead, alive = SharedSlots(client, executor, "dead"), SharedSlots(client, executor, "alive")
        holding = dead.hold(tenant, 1, timeout_s=0.3)
        await holding.__aenter__()  # acquired, never released: the member was killed
        started = asyncio.get_running_loop().time()
        async with alive.hold(tenant, 1, timeout_s=5):
            waited = asyncio.get_running_loop().time() - started
        return 0.2 <= waited < 3
    try:
        assert asyncio.run(run())
    finally:
        tenant_slots.LEASE_MARGIN_S = 5.0
        executor.shutdown()
        client.close()
