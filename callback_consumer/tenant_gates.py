"""How much of one tenant is in flight: its concurrency (here and over the consumer group) and its backlog.

A base of the Deliverer (callback_consumer.delivery), which sets the state declared here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import AbstractAsyncContextManager, nullcontext

from callback_consumer import metrics
from callback_consumer.held_back import HeldBack
from callback_consumer.jobs import Job
from callback_consumer.tenant_slots import SharedSlots
from dynaseal.runtime.views import CallbackTarget


class TenantGates:
    """The tenant's local gate and group slot for each attempt, and its FIFO turns past the backlog."""

    per_tenant: int
    abandon: asyncio.Event
    tenant_backlog: int | None
    slots: SharedSlots | None
    held_back: HeldBack
    _waiting: dict[str, int]
    _turns: dict[str, deque[asyncio.Future[None]]]
    _gates: dict[str, tuple[int, asyncio.Semaphore]]

    def _limit(self, tenant: CallbackTarget) -> int:
        assert tenant.callback is not None
        return tenant.callback.concurrency or self.per_tenant

    def _group_slot(self, tenant: CallbackTarget) -> AbstractAsyncContextManager[None]:
        """One of the tenant's slots across every consumer of the group, after the local gate."""
        assert tenant.callback is not None
        if self.slots is None:
            return nullcontext()
        return self.slots.hold(tenant.id, self._limit(tenant), tenant.callback.timeout_s)

    def _gate(self, tenant: CallbackTarget) -> asyncio.Semaphore:
        """At most the tenant's concurrency in flight to it; others' callbacks never wait on this one."""
        limit = self._limit(tenant)
        cached = self._gates.get(tenant.id)
        if cached is None or cached[0] != limit:  # new tenant, or its concurrency changed on reload
            cached = self._gates[tenant.id] = (limit, asyncio.Semaphore(limit))
        return cached[1]

    async def _take_turn(self, tenant_id: str, job: Job) -> bool:
        """Count the job in its tenant's backlog, queueing (FIFO) while the backlog is full; False on shutdown."""
        backlog = self.tenant_backlog
        queue = self._turns.setdefault(tenant_id, deque())
        if backlog is None or (self._waiting.get(tenant_id, 0) < backlog and not queue):
            self._waiting[tenant_id] = self._waiting.get(tenant_id, 0) + 1
            return True
        # A future per held event, granted strictly in arrival order by `_next_turn` (which counts it
        # in the backlog as it grants it): held events leave in the order they came, per key too.
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(turn)
        self.held_back.add(tenant_id, job.tp)
        metrics.HELD_BACK.inc()
        stop = asyncio.ensure_future(self.abandon.wait())
        try:
            await asyncio.wait((turn, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            self.held_back.remove(tenant_id, job.tp)
            metrics.HELD_BACK.dec()
            if not turn.done():
                turn.cancel()
        if turn.cancelled():
            return False
        if self.abandon.is_set():  # granted, but shutdown came: give the turn back
            self._waiting[tenant_id] -= 1
            return False
        return True

    def _next_turn(self, tenant_id: str) -> None:
        """A delivery of this tenant ended: grant queued turns while its backlog has room."""
        queue = self._turns.get(tenant_id)
        backlog = self.tenant_backlog
        while queue and backlog is not None and self._waiting.get(tenant_id, 0) < backlog:
            turn = queue.popleft()
            if turn.done():  # its waiter left (shutdown)
                continue
            self._waiting[tenant_id] = self._waiting.get(tenant_id, 0) + 1
            turn.set_result(None)
