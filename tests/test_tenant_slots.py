"""Group-wide callback slots in a real Redis, on the consumer's asyncio client: two members never exceed a
tenant's limit together, a dead member's leases expire, and a Redis restart only delays the slots."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from callback_consumer import tenant_slots
from callback_consumer.tenant_slots import SharedSlots, lease_set
from dynaseal.ledger.redis_async import connect


def test_two_members_share_one_limit_and_every_holder_gets_a_turn(redis_server: str) -> None:
    client = redis.Redis.from_url(redis_server)
    tenant = f"slots-{uuid.uuid4().hex[:6]}"
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
        # Each member its own client, as two consumer processes would have.
        clients = [connect(redis_server, timeout_s=2.0) for _ in range(2)]
        members = [SharedSlots(c, f"m{i}") for i, c in enumerate(clients)]
        try:
            await asyncio.gather(*(holder(members[i % 2]) for i in range(40)))
        finally:
            for m in members:
                await m.aclose()  # the last releases go out
            for c in clients:
                await c.aclose()
    try:
        asyncio.run(run())
        assert served == 40 and peak == 3
        assert client.zcard(lease_set(tenant)) == 0  # every lease given back
    finally:
        client.close()


def test_a_dead_members_leases_expire(redis_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis.Redis.from_url(redis_server)
    tenant = f"slots-{uuid.uuid4().hex[:6]}"
    # Leases last the attempt's timeout alone (for this test only: later tests keep the real margin).
    monkeypatch.setattr(tenant_slots, "LEASE_MARGIN_S", 0.0)

    async def run() -> bool:
        redis_client = connect(redis_server, timeout_s=2.0)
        try:
            dead, alive = SharedSlots(redis_client, "dead"), SharedSlots(redis_client, "alive")
            dead._release = lambda tenant, lease: None  # type: ignore[method-assign]  # killed: it never releases
            holding = dead.hold(tenant, 1, timeout_s=0.3)
            await holding.__aenter__()  # acquired, never released
            started = asyncio.get_running_loop().time()
            async with alive.hold(tenant, 1, timeout_s=5):
                waited = asyncio.get_running_loop().time() - started
            await alive.aclose()
            return 0.2 <= waited < 3
        finally:
            await redis_client.aclose()
    try:
        assert asyncio.run(run())
    finally:
        tenant_slots.LEASE_MARGIN_S = 5.0
        client.close()
