"""A tenant's group-wide callback slot is never kept by a waiter that left: a holder cancelled (shutdown cuts a
delivery off) while Redis is granting its lease gives the lease back at once, instead of blocking every member
of the group from that tenant until the lease expires (the attempt's timeout plus LEASE_MARGIN_S)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis

from callback_consumer.tenant_slots import ACQUIRE, SharedSlots, lease_set
from dynaseal.ledger.redis_async import AsyncLedgerRedis, connect


class _HeldReplies:
    """The consumer's Redis client, with ACQUIRE's reply held back until the test lets it through: the script
    has run in Redis (the lease is granted there) but the pump has not seen the answer yet."""

    def __init__(self, inner: AsyncLedgerRedis) -> None:
        self.inner = inner
        self.granted_in_redis = asyncio.Event()
        self.let_through = asyncio.Event()

    async def eval_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        reply = await self.inner.eval_script(script, keys, args)
        if script == ACQUIRE and reply:
            self.granted_in_redis.set()
            await self.let_through.wait()
        return reply

    async def execute_on(self, key: str, *args: Any) -> Any:
        return await self.inner.execute_on(key, *args)

    def scan_iter(self, pattern: str) -> Any:
        return self.inner.scan_iter(pattern)

    async def on_every_master(self, *args: Any) -> list[Any]:
        return await self.inner.on_every_master(*args)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_holder_cancelled_while_its_lease_is_granted_gives_it_back(redis_server: str) -> None:
    tenant = f"leak-{uuid.uuid4().hex[:6]}"
    entered = False

    async def holder(slots: SharedSlots) -> None:
        nonlocal entered
        async with slots.hold(tenant, 1, timeout_s=30):
            entered = True
            await asyncio.Event().wait()

    async def run() -> None:
        inner = connect(redis_server, timeout_s=2.0)
        held = _HeldReplies(inner)
        slots = SharedSlots(held, "member")
        try:
            task = asyncio.create_task(holder(slots))
            await held.granted_in_redis.wait()  # Redis granted the lease; its reply is on its way
            task.cancel()  # the delivery is cut off meanwhile
            await asyncio.gather(task, return_exceptions=True)
            held.let_through.set()
            pump = slots._tenants[tenant].pump
            assert pump is not None
            await asyncio.wait_for(pump, 5)  # the pump handles the reply and stops (no waiter left)
        finally:
            await slots.aclose()  # the releases still pending go out
            await inner.aclose()

    client = redis.Redis.from_url(redis_server)
    try:
        asyncio.run(run())
        assert not entered
        # The lease would otherwise stay 35 s (timeout_s + LEASE_MARGIN_S): the tenant's one slot, group-wide.
        assert client.zcard(lease_set(tenant)) == 0
    finally:
        client.close()


def test_a_holder_cancelled_inside_its_block_gives_its_lease_back(redis_server: str) -> None:
    tenant = f"leak-{uuid.uuid4().hex[:6]}"
    async def run() -> int:
        redis_client = connect(redis_server, timeout_s=2.0)
        slots = SharedSlots(redis_client, "member")
        entered = asyncio.Event()

        async def holder() -> None:
            async with slots.hold(tenant, 1, timeout_s=30):
                entered.set()
                await asyncio.Event().wait()
        try:
            task = asyncio.create_task(holder())
            await entered.wait()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            await slots.aclose()
        count = int(await redis_client.execute_on(lease_set(tenant), "ZCARD", lease_set(tenant)))
        await redis_client.aclose()
        return count

    assert asyncio.run(run()) == 0
