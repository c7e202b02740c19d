"""Settling reservations from the delivery loop itself, on the core's asyncio Redis client.

Each settlement is the SETTLE script with the same arguments as `dynaseal.ledger.quota.settlement_call`, so it
is just as idempotent per request_id; for a tenant with tenant-wide limits TENANT_SETTLE runs beside it
(idempotent on its own slot: a failure between the two is repaired by the retry or the redelivery).
On the pipelined client (`redis://`, `redis+cluster://`) the settlements issued in one loop turn go
out in one write on one connection per node: the batching the former executor batcher built by hand
with a redis-py pipeline on a thread, without the thread. NOSCRIPT (a restarted or just promoted
Redis) is answered by EVAL in the client, as for authz's admits.
"""

from __future__ import annotations

import asyncio

from dynaseal.ledger import redis_keys, tenant_quota
from dynaseal.ledger.quota import MoneySettlement, Settlement, key_path, settlement_call
from dynaseal.ledger.quota_scripts import MARK_THRESHOLDS
from dynaseal.ledger.redis_async import AsyncLedgerRedis
from dynaseal.ledger.tenant_scripts import TENANT_SETTLE
from dynaseal.money.budget_thresholds import Crossing


class SettlementBatcher:
    """`await settle(...)` from any task of one event loop; settlements issued together share a write."""

    def __init__(self, redis_client: AsyncLedgerRedis) -> None:
        self.redis = redis_client

    async def settle(self, tenant: str, jti: str, request_id: str, tokens: int, chain: tuple[str, ...] = (),
                     money: MoneySettlement | None = None, tenant_wide: bool = False) -> Settlement:
        """Replace the reservation with `tokens` (and its cost; the tenant's too if `tenant_wide`): every level
        of a child key's chain; raises RedisError if Redis failed."""
        script, keys, args = settlement_call(tenant, jti, request_id, tokens, chain, money=money)
        if not tenant_wide:
            return Settlement.from_reply(await self.redis.eval_script(script, keys, args))
        _tenant_reply, reply = await asyncio.gather(
            self.redis.eval_script(TENANT_SETTLE, tenant_quota.tenant_keys(tenant),
                                   tenant_quota.settle_args(request_id, tokens)),
            self.redis.eval_script(script, keys, args))
        return Settlement.from_reply(reply)

    async def mark_thresholds(self, tenant: str, jti: str, crossings: tuple[Crossing, ...],
                              chain: tuple[str, ...] = ()) -> None:
        """Record that these thresholds' callbacks were delivered (or dead-lettered): never reported again."""
        if crossings:  # the MARK_THRESHOLDS script on the key's counters (dynaseal.ledger.quota_scripts)
            counters_key = redis_keys.level_keys(tenant, key_path(jti, chain))[1]
            await self.redis.eval_script(MARK_THRESHOLDS, [counters_key], [c.field for c in crossings])

    async def settled_mark(self, tenant: str, jti: str, request_id: str) -> bytes | None:
        """What the ledger recorded as the request's settlement (`p:` while only provisional), None if nothing."""
        key = redis_keys.settled(tenant, jti)
        mark = await self.redis.execute_on(key, "HGET", key, request_id)
        return mark if isinstance(mark, bytes) else None
