"""Settle reservations in bursts: one Redis pipeline per burst, not a round trip and a thread hop per event.

Measured on the 2-core machine: `dynaseal.ledger.quota.settle` one call at a time from the event loop
(via a thread) cost ~450 µs of CPU per event; a pipeline of EVALSHAs ~50 µs. Each call is the
same SETTLE script with the same arguments as `dynaseal.ledger.quota.settle`, so it is just as
idempotent per request_id. For a tenant with tenant-wide limits TENANT_SETTLE runs in the same
pipeline (idempotent on its own slot: a crash between the two is repaired by the redelivery).
On a Redis Cluster the pipeline is split per node by redis-py's RedisCluster.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any

from dynaseal.ledger import tenant_quota
from dynaseal.ledger.quota import MoneySettlement, Settlement, settlement_call
from dynaseal.ledger.redis_connect import Call, SyncClient, run_scripts
from dynaseal.ledger.tenant_scripts import TENANT_SETTLE

MAX_BATCH = 500
# tenant, jti, request_id, tokens, chain (root first, for a child key), money, tenant-wide limits
_Item = tuple[str, str, str, int, tuple[str, ...], MoneySettlement | None, bool]


class SettlementBatcher:
    """`await settle(...)` from any task; calls arriving together share one pipeline."""

    def __init__(self, redis_client: SyncClient, executor: Executor) -> None:
        self.redis = redis_client
        self.executor = executor
        self._queue: list[tuple[_Item, asyncio.Future[Settlement]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def settle(self, tenant: str, jti: str, request_id: str, tokens: int, chain: tuple[str, ...] = (),
                     money: MoneySettlement | None = None, tenant_wide: bool = False) -> Settlement:
        """Replace the reservation with `tokens` (and its cost; the tenant's too if `tenant_wide`): every level
        of a child key's chain; raises RedisError if Redis failed."""
        future: asyncio.Future[Settlement] = asyncio.get_running_loop().create_future()
        self._queue.append(((tenant, jti, request_id, tokens, chain, money, tenant_wide), future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                replies = await loop.run_in_executor(self.executor, self._run, [item for item, _ in batch])
            except Exception as exc:  # RedisError mostly; every waiter of this batch sees it and retries
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), reply in zip(batch, replies, strict=True):
                if not future.done():
                    future.set_result(Settlement.from_reply(reply))

    def _run(self, items: list[_Item]) -> list[Any]:
        """The key's settlement reply for every item (the tenant's, where there is one, runs beside it)."""
        calls: list[Call] = []
        key_calls: list[int] = []
        for tenant, jti, request_id, tokens, chain, money, tenant_wide in items:
            if tenant_wide:
                calls.append((TENANT_SETTLE, tenant_quota.tenant_keys(tenant),
                              tenant_quota.settle_args(request_id, tokens)))
            key_calls.append(len(calls))
            calls.append(settlement_call(tenant, jti, request_id, tokens, chain, money=money))
        replies = run_scripts(self.redis, calls)
        return [replies[i] for i in key_calls]
