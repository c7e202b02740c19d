"""Batched delivery for tenants with `callback.batch`: several usage callbacks in one signed request.

Body: `{"type": "batch", "events": [{"id": <webhook-id the event has alone>, "event": <its callback
object>}, ...]}`, signed like a single callback with its own `webhook-id` (`batch_` + a digest of the
ids). The receiver answers 2xx with `{"results": {"<id>": "<status>"}}`, one per event: `stored` and
`duplicate` acknowledge an event; any other status (or an id missing from the results) leaves it
unacknowledged, and it is then sent alone in the single-event format, with that path's retries,
parking and DLQ. A batch that fails as a whole (no answer, non-2xx, a body without results) sends
every event alone the same way. A batch collects events of one tenant for at most `max_wait_ms`
after its first, or until `max_events`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from callback_consumer import metrics
from callback_consumer.jobs import BatchPoster
from dynaseal.contracts.callback_body import BatchCallback, BatchEntry, BatchReply, body_bytes
from dynaseal.runtime.views import CallbackTarget
from dynaseal.usage.callbacks import callback_payload

if TYPE_CHECKING:
    from dynaseal.pb import UsageEvent

log = logging.getLogger("callback_consumer.batches")
ACKNOWLEDGED = frozenset({"stored", "duplicate"})


@dataclass
class _Pending:
    tenant: CallbackTarget
    items: list[tuple[str, dict[str, Any], asyncio.Future[bool]]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


def batch_body(items: list[tuple[str, dict[str, Any]]]) -> tuple[str, bytes]:
    """(webhook-id, body) of one batch request."""
    digest = hashlib.sha256("\n".join(i for i, _ in items).encode()).hexdigest()[:32]
    body = BatchCallback.body(type="batch", events=[BatchEntry.body(id=i, event=e) for i, e in items])
    return f"batch_{digest}", body_bytes(body)


def acknowledged(reply_body: bytes, ids: list[str]) -> set[str]:
    """The ids a batch reply acknowledged (none if the body is not the expected shape)."""
    try:
        results = BatchReply.model_validate_json(reply_body).results
    except ValidationError:  # not JSON, not an object, no results: nothing is acknowledged, each goes alone
        return set()
    return {i for i in ids if results.get(i) in ACKNOWLEDGED}


class Batcher:
    """Collects a tenant's usage callbacks and sends them together; `offer` answers whether one was acknowledged."""

    def __init__(self, deliverer: BatchPoster) -> None:
        self.deliverer = deliverer
        self._pending: dict[str, _Pending] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def offer(self, tenant: CallbackTarget, webhook_id: str, event: UsageEvent) -> bool:
        """Add the event to its tenant's batch; True once the receiver acknowledged it in a batch."""
        assert tenant.callback is not None and tenant.callback.batch is not None
        batch = tenant.callback.batch
        pending = self._pending.get(tenant.id)
        if pending is None:
            pending = self._pending[tenant.id] = _Pending(tenant)
            loop = asyncio.get_running_loop()
            pending.timer = loop.call_later(batch.max_wait_ms / 1000, self._flush_soon, tenant.id, pending)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        pending.items.append((webhook_id, callback_payload(event, tenant.callback.include_content), future))
        if len(pending.items) >= batch.max_events:
            self._flush_soon(tenant.id, pending)
        return await future

    def _flush_soon(self, tenant_id: str, pending: _Pending) -> None:
        if self._pending.get(tenant_id) is pending:
            del self._pending[tenant_id]
        if pending.timer is not None:
            pending.timer.cancel()
        if pending.items:
            task = asyncio.ensure_future(self._send(pending))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, pending: _Pending) -> None:
        items, pending.items = pending.items, []
        ids = [i for i, _, _ in items]
        webhook_id, body = batch_body([(i, e) for i, e, _ in items])
        ok: set[str] = set()
        try:
            status, reply = await self.deliverer.attempt_batch(pending.tenant, webhook_id, body)
            if status is not None and 200 <= status < 300:
                ok = acknowledged(reply, ids)
        except Exception:  # the events go alone: nothing is lost by a batch that broke
            log.exception("batch delivery failed", extra={"tenant": pending.tenant.id})
        metrics.BATCHES.labels("complete" if len(ok) == len(ids) else "partial" if ok else "failed").inc()
        for i, _, future in items:
            if not future.done():
                future.set_result(i in ok)
