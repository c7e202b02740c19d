"""One event's journey: settle its reservation, then deliver its signed callback, retrying or dead-lettering.

Outcomes: `delivered` (2xx), `dlq` (a non-retryable status, exhausted retries, an undecodable event,
a tenant no longer configured), `parked` (its tenant's receiver is failing: kept for automatic replay,
callback_consumer.parking),
`no_callback` (the tenant has no callback: settled only) — all three let the offset be committed —
and `abandoned` (shutdown came first), which leaves the offset uncommitted so the event is read again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor

from google.protobuf.message import DecodeError
from redis.exceptions import RedisError

from callback_consumer import metrics
from callback_consumer.batches import Batcher
from callback_consumer.callback_post import CallbackPoster
from callback_consumer.dlq import DeadLetters, dlq_headers
from callback_consumer.held_back import HeldBack
from callback_consumer.http_client import CallbackClient
from callback_consumer.jobs import Job, Outcome
from callback_consumer.money import ThresholdSender, money_settlement, record_money
from callback_consumer.parking import Parking
from callback_consumer.retry_policy import RetryPolicy
from callback_consumer.settlement import SettlementBatcher
from callback_consumer.tenant_slots import SharedSlots
from dynaseal.backoff import Backoff
from dynaseal.ledger.quota import Settlement
from dynaseal.ledger.tenant_quota import has_tenant_limits
from dynaseal.pb import UsageEvent
from dynaseal.runtime.views import CallbackTarget, ConsumerView
from dynaseal.usage import kafka_io
from dynaseal.usage.callbacks import CallbackSigner, callback_body, is_retryable
from dynaseal.usage.reservation_events import is_reservation, webhook_id

# Job, Outcome and RetryPolicy live in their own modules; importers of this one keep working.
__all__ = ["Deliverer", "Job", "Outcome", "RetryPolicy"]

log = logging.getLogger("callback_consumer.delivery")
# Redis away: settlement is retried from 0.2 s, doubling up to 5 s, full jitter (consumers do not retry in step).
SETTLE_BACKOFF = Backoff(0.2, 5.0)


class Deliverer(CallbackPoster):
    """Handles jobs on one event loop; per-tenant HTTP clients bound how much any one tenant can hold."""

    def __init__(self, registry: Callable[[], ConsumerView], settlements: SettlementBatcher | None,
                 dead_letters: DeadLetters,
                 executor: Executor, policy: RetryPolicy, per_tenant: int, abandon: asyncio.Event,
                 max_attempts: int | None = None, tenant_backlog: int | None = None,
                 slots: SharedSlots | None = None, parking: Parking | None = None) -> None:
        self.registry = registry
        self.settlements = settlements
        self.dead_letters = dead_letters
        self.executor = executor
        self.policy = policy
        self.per_tenant = per_tenant
        self.abandon = abandon
        # Overrides every tenant's callback.max_attempts (a DLQ replay tries a few times, not eight).
        self.max_attempts = max_attempts
        # Events one tenant may hold waiting (for a slot, a reply or a retry). Past this its new
        # events queue in arrival order (a slow receiver is not a failed one: nothing goes to the
        # DLQ for being slow) and the partitions they came from are paused (`held_back`), so the
        # rest of that tenant's events wait in Kafka, uncommitted, until it catches up.
        self.tenant_backlog = tenant_backlog
        self._waiting: dict[str, int] = {}
        self._turns: dict[str, deque[asyncio.Future[None]]] = {}
        self.held_back = HeldBack()
        # The tenant's concurrency over the whole consumer group (None: this process's alone).
        self.slots = slots
        self._clients: dict[str, CallbackClient] = {}
        self._signers: dict[str, tuple[tuple[str, tuple[str, ...]], CallbackSigner]] = {}
        self._gates: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self.thresholds = ThresholdSender(self)
        # Usage callbacks of a failing tenant are parked for automatic replay (None: retried, then the DLQ).
        self.parking = parking
        self.batcher = Batcher(self)
        # How long an event of a tenant this consumer does not know waits for a config load that may have it
        # (the consumer sets it: tenants as data reach every service within about a second); 0 = no wait.
        self.unknown_tenant_wait_s = 0.0

    async def _pause(self, seconds: float) -> bool:
        """Sleep, unless shutdown comes first; True if the full pause passed."""
        try:
            await asyncio.wait_for(self.abandon.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def blocking(self, fn: Callable[..., object], *args: object) -> object:
        """Run a blocking call on the executor: kafka-python's DLQ and parked-topic publishes only (its producer
        blocks until the broker acknowledges); every Redis call is awaited on this loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _settle(self, event: UsageEvent) -> Settlement | None:
        """Settle the reservation with the event's tokens and cost (idempotent per request_id); None if abandoned."""
        assert self.settlements is not None
        retries = SETTLE_BACKOFF.retries()
        tenant = self.registry().get(event.tenant)
        money = money_settlement(event, tenant)
        # Only a tenant with tenant-wide limits reserved on its own slot; one whose limits were
        # added or removed since is safe either way (no reservation: a no-op; an orphan: expires).
        tenant_wide = tenant is not None and has_tenant_limits(tenant.limits)
        while True:
            try:
                return await self.settlements.settle(event.tenant, event.jti, event.request_id, event.total_tokens,
                                                     tuple(event.chain), money, tenant_wide)
            except RedisError as exc:
                metrics.SETTLE_ERRORS.inc()
                log.warning("settlement failed; retrying", extra={"request_id": event.request_id,
                                                                   "jti": event.jti, "error": str(exc)})
            # Shutdown stops retries only: a job handed out before it still gets its first attempt.
            if not await self._pause(retries.next_delay()):
                return None

    async def _dead_letter(self, job: Job, request_id: str, reason: str, status: int | None, attempts: int,
                           extra: Mapping[str, str] | None = None) -> Outcome:
        headers = dlq_headers(reason, status, attempts, f"{job.tp.topic}/{job.tp.partition}/{job.offset}", job.dlq)
        if extra:  # a threshold callback: what replay needs to rebuild it (money)
            headers.update(extra)
        if not await self.blocking(self.dead_letters.publish, job.key, job.value, headers):
            return Outcome.ABANDONED
        metrics.DLQ.labels(reason.split(":")[0]).inc()
        log.warning("event sent to the DLQ", extra={"request_id": request_id, "reason": reason, "status": status,
                                                    "attempts": attempts})
        return Outcome.DLQ

    async def _deliver(self, job: Job, tenant: CallbackTarget, event: UsageEvent, seq: int | None) -> Outcome:
        assert tenant.callback is not None
        # A batching tenant (not while it is down: parked events go one by one): alone only if the batch
        # did not acknowledge it.
        batching = tenant.callback.batch is not None and not (self.parking is not None
                                                              and await self.parking.is_down(tenant.id))
        if batching and await self.batcher.offer(tenant, webhook_id(event), event):
            metrics.EVENT_AGE_SECONDS.observe(max(0.0, time.time() - event.shipped_at_ms / 1000))
            return Outcome.DELIVERED
        outcome = await self.send(job, tenant, webhook_id(event), callback_body(event, tenant.callback.include_content),
                                  park_seq=seq)
        if outcome is Outcome.DELIVERED:
            metrics.EVENT_AGE_SECONDS.observe(max(0.0, time.time() - event.shipped_at_ms / 1000))
        return outcome

    async def send(self, job: Job, tenant: CallbackTarget, webhook_id: str, body: bytes,
                   dlq_extra: Mapping[str, str] | None = None, park_seq: int | None = None) -> Outcome:
        """POST one signed body with retries; delivered, dead-lettered (the job's record), parked, or abandoned.

        `park_seq` (a usage callback's place in its tenant's order) lets a failing tenant's event be parked.
        """
        assert tenant.callback is not None
        parking = self.parking if park_seq is not None else None
        if parking is not None and await parking.is_down(tenant.id):
            return await self._park(job, tenant.id, park_seq, "tenant_down", None, 0)
        max_attempts = self.max_attempts or tenant.callback.max_attempts
        for attempt in range(1, max_attempts + 1):
            # Held for the attempt only, never across a backoff: a failing tenant frees its slots.
            async with self._gate(tenant), self._group_slot(tenant):
                status, retry_after = await self._attempt(tenant, webhook_id, body)
            if status is not None and 200 <= status < 300:
                if parking is not None:
                    parking.succeeded(tenant.id)
                return Outcome.DELIVERED
            reason = "timeout_or_connection" if status is None else f"http_{status}"
            if status is not None and not is_retryable(status):
                return await self._dead_letter(job, webhook_id, f"rejected:{reason}", status, attempt, dlq_extra)
            if parking is not None and parking.failed(tenant.id):
                return await self._park(job, tenant.id, park_seq, reason, status, attempt)
            if attempt == max_attempts:
                return await self._dead_letter(job, webhook_id, f"exhausted:{reason}", status, attempt, dlq_extra)
            metrics.RETRIES.labels(reason if status is None else f"{status // 100}xx").inc()
            stopped = await self._back_off(job, tenant.id, park_seq, self.policy.delay(attempt, retry_after),
                                           reason, status, attempt)
            if stopped is not None:
                return stopped
        return Outcome.ABANDONED  # unreachable: the loop returns on its last attempt

    async def _back_off(self, job: Job, tenant_id: str, park_seq: int | None, delay: float, reason: str,
                        status: int | None, attempt: int) -> Outcome | None:
        """Wait `delay` before the next attempt; None to go on, or how the event ended meanwhile
        (shutdown came first, or its tenant went down and it was parked)."""
        parking = self.parking if park_seq is not None else None
        if parking is not None:
            woke = await self._pause_unless(delay, parking.down_event(tenant_id))
            if woke == "down":  # the tenant went down meanwhile: park rather than retry
                return await self._park(job, tenant_id, park_seq, reason, status, attempt)
            if woke == "abandon":
                return Outcome.ABANDONED
            return None
        return None if await self._pause(delay) else Outcome.ABANDONED

    async def _pause_unless(self, seconds: float, down: asyncio.Event) -> str:
        """Sleep `seconds`; "slept", or "down"/"abandon" if that came first."""
        waits = {asyncio.ensure_future(down.wait()): "down", asyncio.ensure_future(self.abandon.wait()): "abandon"}
        try:
            done, _ = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        if self.abandon.is_set():
            return "abandon"
        return waits[next(iter(done))] if done else "slept"

    async def _park(self, job: Job, tenant_id: str, seq: int | None, reason: str, status: int | None,
                    attempts: int) -> Outcome:
        """Write the event to the parked topic after every earlier event of its tenant left delivery."""
        assert self.parking is not None and seq is not None
        if not await self.parking.wait_turn(tenant_id, seq, self.abandon):
            return Outcome.ABANDONED
        headers = dlq_headers(f"parked:{reason}", status, attempts, f"{job.tp.topic}/{job.tp.partition}/{job.offset}",
                              job.dlq)
        # Counted before it is written: the replay may deliver it (and count it down) before an ack returns.
        try:
            await self.parking.count_parked(tenant_id)
        except RedisError as exc:  # parked all the same; a new event may then be tried before it
            log.warning("could not count a parked event", extra={"tenant": tenant_id, "error": str(exc)})
        # Keyed by tenant: one partition holds a tenant's parked events, in the order they were parked.
        if not await self.blocking(self.dead_letters.publish, tenant_id.encode(), job.value, headers,
                                   kafka_io.PARKED_TOPIC):
            # Shutdown: read again later. The count stays one too high until it expires: at worst an
            # event parks that need not.
            return Outcome.ABANDONED
        metrics.PARKED.inc()
        return Outcome.PARKED

    async def _newer_config_has(self, tenant_id: str) -> CallbackTarget | None:
        """A tenant just created may reach authz a moment before this consumer: wait for the next config
        load (`unknown_tenant_wait_s` at most) before calling the tenant unknown."""
        deadline = time.monotonic() + self.unknown_tenant_wait_s
        while time.monotonic() < deadline:
            if not await self._pause(0.1):
                return None
            if (tenant := self.registry().get(tenant_id)) is not None:
                return tenant
        return None

    async def handle(self, job: Job) -> Outcome:
        """Settle and deliver one event; how it ended."""
        try:
            event = UsageEvent.FromString(job.value)
        except DecodeError:
            return await self._dead_letter(job, "-", "undecodable", None, 0)
        if event.content_rule:  # a content refusal: nothing reserved or spent, only the callback
            return await self.deliver(job, event)
        if is_reservation(event):  # billed by the ledger when it expired: only the callback, unless
            if await self._settled_since(event):  # the real line settled it meanwhile (its callback tells)
                return Outcome.NO_CALLBACK
            return await self.deliver(job, event)
        settlement = await self._settle(event)
        if settlement is None:
            return Outcome.ABANDONED
        # Thresholds first: the event's offset is committed only once they are delivered or dead-lettered.
        if settlement.pending and not await self.thresholds.send_all(job, event, settlement.pending):
            return Outcome.ABANDONED
        outcome = await self.deliver(job, event)
        if outcome.finished:
            # Counted per finished event, not per first settlement: the counts of a consumer that died
            # before committing died with it, so the one that reads the event again counts it.
            record_money(event)
        return outcome

    async def _settled_since(self, event: UsageEvent) -> bool:
        """Whether a real settlement replaced the expired reservation's provisional bill (Redis errors: no)."""
        if self.settlements is None:
            return False
        try:
            billed = await self.settlements.settled_mark(event.tenant, event.jti, event.request_id)
        except RedisError:
            return False  # tell the tenant rather than stay silent: a later real callback supersedes it
        return isinstance(billed, bytes) and not billed.startswith(b"p:")

    async def deliver(self, job: Job, event: UsageEvent) -> Outcome:
        """Deliver a settled event to its tenant's callback as configured now (a DLQ replay starts here)."""
        tenant = self.registry().get(event.tenant)
        if tenant is None and self.unknown_tenant_wait_s > 0:
            tenant = await self._newer_config_has(event.tenant)
        if tenant is None:  # removed from the config since: keep the event for a person to look at
            return await self._dead_letter(job, event.request_id, "unknown_tenant", None, 0)
        if tenant.callback is None or tenant.callback_secret is None:
            return Outcome.NO_CALLBACK
        seq = self.parking.enter(tenant.id) if self.parking is not None else None
        try:
            if not await self._take_turn(tenant.id, job):
                return Outcome.ABANDONED
            try:
                return await self._deliver(job, tenant, event, seq)
            finally:
                self._waiting[tenant.id] -= 1
                self._next_turn(tenant.id)
        finally:
            if self.parking is not None and seq is not None:
                self.parking.leave(tenant.id, seq)

    async def dead_letter_on_error(self, job: Job) -> Outcome:
        """DLQ an event whose handling raised unexpectedly (abandoned if even that fails)."""
        try:
            return await self._dead_letter(job, "-", "internal_error", None, 0)
        except Exception:
            log.exception("could not dead-letter an event after an error", extra={"offset": job.offset})
            return Outcome.ABANDONED

