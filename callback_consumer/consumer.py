"""The consumer's main coroutine: fetch, hand off to deliveries, commit in order, report lag; a clean shutdown.

It runs on the delivery loop (callback_consumer.dispatcher) with aiokafka's AIOKafkaConsumer: the records a fetch
returns become delivery tasks on the same loop, and a finished delivery marks its offset done there, with no
thread between them. It fetches every 100 ms whatever the deliveries are doing, so a slow tenant can never push
it past max_poll_interval_ms; when too much is in flight it pauses its partitions instead of waiting.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError as AioKafkaError  # type: ignore[import-untyped]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]
from kafka.errors import KafkaError

from callback_consumer import metrics
from callback_consumer.delivery import Deliverer, Job, Outcome, RetryPolicy
from callback_consumer.dispatcher import Dispatcher
from callback_consumer.dlq import DeadLetters
from callback_consumer.offsets import OffsetTracker
from callback_consumer.parked_replay import ParkedReplay
from callback_consumer.parking import Parking
from callback_consumer.partitions import PartitionFlow, aio_partitions
from callback_consumer.settlement import SettlementBatcher
from callback_consumer.tenant_slots import SharedSlots
from dynaseal.config import ConfigError
from dynaseal.ledger.redis_async import connect
from dynaseal.runtime.views import ConsumerView, Runtime
from dynaseal.tenancy.source import POLL_S, TenancySource
from dynaseal.usage import kafka_io

log = logging.getLogger("callback_consumer")
POLL_MS = 100
UNKNOWN_TENANT_WAIT_S = 3 * POLL_S
COMMIT_EVERY_S = 0.2
# Settlement may wait this long on Redis (authz's admits get 50 ms: a request is waiting on them).
REDIS_TIMEOUT_S = 2.0
# aiokafka retries a commit while the broker is away: bounded, so that a shutdown is never stuck behind one.
COMMIT_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ConsumerOptions:
    """How the consumer runs (command line and defaults)."""

    config_path: str | None
    bootstrap: str
    group_id: str = kafka_io.DEFAULT_GROUP_ID
    client_id: str = "dynaseal-consumer"
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    per_tenant: int = 32
    # Events one tenant may hold before its new ones queue and their partitions pause (a quarter of max_in_flight).
    tenant_backlog: int = 5_000
    # Events held in memory before partitions are paused: a dead tenant's retries may hold many.
    max_in_flight: int = 20_000
    drain_s: float = 8.0
    # Failed attempts in a row after which a tenant is down and its events are parked (0: never park).
    park_after: int = 5
    # First wait before a parked tenant's receiver is tried again (doubles up to 30 s).
    park_probe_s: float = 2.0
    session_timeout_ms: int = kafka_io.SESSION_TIMEOUT_MS
    heartbeat_interval_ms: int = kafka_io.HEARTBEAT_INTERVAL_MS


class _Rebalance(ConsumerRebalanceListener):
    """aiokafka calls it on the delivery loop around each rebalance (eager: every partition is given up)."""

    def __init__(self, tracker: OffsetTracker,
                 before_revoke: Callable[[set[TopicPartition]], Awaitable[None]] | None = None) -> None:
        self.tracker = tracker
        self.before_revoke = before_revoke

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Commit what finished there (their next owner, often this member again, starts after it), then forget
        them: finished-but-uncommitted events there would be read again, late completions are ignored."""
        gone = set(revoked)
        if self.before_revoke is not None and gone:
            await self.before_revoke(gone)
        self.tracker.forget(gone)
        metrics.REBALANCES.labels("revoked").inc()
        metrics.ASSIGNED_PARTITIONS.set(0)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Log the new assignment."""
        partitions = sorted(tp.partition for tp in assigned)
        log.info("partitions assigned", extra={"partitions": partitions})
        metrics.REBALANCES.labels("assigned").inc()
        metrics.ASSIGNED_PARTITIONS.set(len(partitions))


def _in_generation(consumer: Any) -> bool:
    """Whether the consumer is a member of the group's current generation.

    Once the broker forgot the member (a dev broker restarted with its state lost, a session that expired),
    aiokafka resets it to generation -1 and would still commit, with that generation: a broker takes such a
    commit as a non-member's, so offsets of a log that is gone would land in the new group and its records
    below them would be skipped. aiokafka offers no public accessor for the generation.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    return coordinator is not None and coordinator.generation >= 0 and bool(coordinator.member_id)


class CallbackConsumer:
    """One member of the callback consumer group."""

    def __init__(self, options: ConsumerOptions, view: ConsumerView | None = None,
                 source: TenancySource | None = None) -> None:
        self.options = options
        # Only the consumer's view: callback targets and secrets, no tenant keys or provider key. The file
        # with the tenant store over it: a tenant added or a secret rotated is loaded within a second. Given
        # (view and the source that loaded it) by whoever already loaded the config, so it is read once.
        self.tenancy = TenancySource(options.config_path) if source is None else source
        if view is None:
            tenancy = self.tenancy.load()
            view = Runtime.from_config(tenancy.cfg).consumer()
            self.tenancy.accept(tenancy)
        self.targets: ConsumerView = view
        self.stopping = threading.Event()
        self._reload_requested = threading.Event()
        self.tracker = OffsetTracker()
        self._abandon = threading.Event()
        self.dead_letters = DeadLetters(options.bootstrap, options.client_id, self._abandon)
        # One asyncio client (pipelined for redis:// and redis+cluster://), used on the delivery loop only:
        # settlement, threshold marks, tenant slots and parking all await it there. Commands that fail take
        # REDIS_TIMEOUT_S at most and raise RedisError, so the retry paths (settlement backoff, slot pump) run.
        self.redis = connect(self.targets.redis_url, timeout_s=REDIS_TIMEOUT_S)
        # The only thread hop left: kafka-python's producer blocks on the broker's acknowledgement of a
        # DLQ or parked-topic publish (and its admin client on topic creation), so those run here, never on
        # the delivery loop. They stay on kafka-python on purpose: a rare path that wants an idempotent
        # producer, and aiokafka's cannot start on the dev broker (bench/RESULTS.md, #22).
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kafka-publish")
        # Each tenant's callback concurrency holds over the whole group, not per member.
        self.slots = SharedSlots(self.redis, f"{options.client_id}-{uuid.uuid4().hex[:8]}")
        self.dispatcher = Dispatcher(lambda abandon: self._remember(Deliverer(
            lambda: self.targets, SettlementBatcher(self.redis), self.dead_letters, self.executor,
            options.policy, options.per_tenant, abandon, tenant_backlog=options.tenant_backlog, slots=self.slots,
            parking=self._parking())), closing=self._close_redis, on_finished=self._finished)
        self.parked_replay: ParkedReplay | None = None
        if options.park_after > 0:
            self.parked_replay = ParkedReplay(
                lambda: self.targets, options.bootstrap, options.group_id, options.client_id,
                connect(self.targets.redis_url, timeout_s=REDIS_TIMEOUT_S),  # its own loop: its own client
                self.dead_letters, probe_s=options.park_probe_s, session_timeout_ms=options.session_timeout_ms,
                heartbeat_interval_ms=options.heartbeat_interval_ms)
        self._kafka: Any = None  # the AIOKafkaConsumer, created on the loop
        self.flow = PartitionFlow(self.tracker, options.max_in_flight)
        self._deliverer: Deliverer | None = None
        self._last_commit = 0.0

    async def _close_redis(self) -> None:
        """On the delivery loop, once deliveries drained: the last slot releases, then the connections."""
        await self.slots.aclose()
        await self.redis.aclose()

    def _parking(self) -> Parking | None:
        if self.options.park_after <= 0:
            return None
        return Parking(self.redis, self.options.park_after)

    def _remember(self, deliverer: Deliverer) -> Deliverer:
        # A tenant created through the admin API may be admitted by authz before this consumer loads it.
        deliverer.unknown_tenant_wait_s = UNKNOWN_TENANT_WAIT_S
        self._deliverer = deliverer
        return deliverer

    def stop(self) -> None:
        """Ask the loop to stop fetching, drain and exit (safe from a signal handler)."""
        self.stopping.set()

    def reload(self) -> None:
        """Ask for the config to be loaded again (safe from a signal handler: the config watcher does it)."""
        self._reload_requested.set()

    def _reload(self) -> None:
        """Load tenants (callback URLs, secrets) again; keep the old ones if the new config is bad."""
        self._reload_requested.clear()
        try:
            tenancy = self.tenancy.load()
            self.targets = Runtime.from_config(tenancy.cfg).consumer()
            self.tenancy.accept(tenancy)
            log.info("config reloaded", extra={"generation": tenancy.generation})
        except ConfigError as exc:
            log.error("config reload rejected; keeping the previous config", extra={"error": str(exc)})

    def _watch_tenancy(self) -> None:
        """Reload when asked (SIGHUP) or when the config file, a secret file or the tenant store changes.

        Loads run here, never on the delivery loop: reading a file or the tenant store blocks.
        """
        while not self.stopping.is_set():
            requested = self._reload_requested.wait(POLL_S)
            if self.stopping.is_set():
                return
            try:
                if requested or self.tenancy.changed():
                    self._reload()
            except Exception:  # a watcher that dies would silently freeze the config
                log.exception("config watch failed; trying again")

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early once stopping is set (a signal handler sets it from the main thread)."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, POLL_MS / 1000))

    async def _connect(self) -> Any:
        """A started AIOKafkaConsumer subscribed to the usage topic; None if stopped before the broker answered."""
        retries = kafka_io.BROKER_BACKOFF.retries()
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            consumer = None
            try:
                # kafka-python's admin client blocks: a one-off, on the Kafka publishes' pool rather than the loop.
                await loop.run_in_executor(self.executor, kafka_io.ensure_topics, self.options.bootstrap)
                consumer = kafka_io.new_aio_consumer(
                    self.options.bootstrap, self.options.group_id, self.options.client_id,
                    session_timeout_ms=self.options.session_timeout_ms,
                    heartbeat_interval_ms=self.options.heartbeat_interval_ms)
                consumer.subscribe([kafka_io.USAGE_TOPIC], listener=_Rebalance(self.tracker, self._before_revoke))
                self._kafka = consumer
                await consumer.start()
                log.info("consuming", extra={"group_id": self.options.group_id})
                return consumer
            except (KafkaError, AioKafkaError) as exc:
                self._kafka = None
                if consumer is not None:
                    await consumer.stop()
                log.warning("broker unreachable; retrying", extra={"error": str(exc)})
                await self._sleep(retries.next_delay())
        return None

    def _finished(self, job: Job, outcome: Outcome) -> None:
        """On the loop, as a delivery ends: its offset may be committed once every earlier one is."""
        if outcome.finished:
            self.tracker.done(job.tp, job.offset)

    async def _commit(self, consumer: Any, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_EVERY_S:
            return
        self._last_commit = now
        await self._commit_offsets(consumer, self.tracker.committable())

    async def _commit_offsets(self, consumer: Any, offsets: dict[Any, int]) -> None:
        owned = consumer.assignment()
        offsets = {tp: n for tp, n in offsets.items() if tp in owned}
        if not offsets or not _in_generation(consumer):
            return
        try:
            await asyncio.wait_for(consumer.commit(dict(zip(aio_partitions(offsets), offsets.values(), strict=True))),
                                   COMMIT_TIMEOUT_S)
            self.tracker.committed(offsets)
        except (AioKafkaError, TimeoutError) as exc:  # lost the partitions, or the broker is away: redelivered
            log.warning("offset commit failed; those events may be delivered again", extra={"error": repr(exc)})

    async def _before_revoke(self, revoked: set[TopicPartition]) -> None:
        """A rebalance takes these partitions: commit what finished there first, so their next owner repeats
        only what is still in flight. Their pauses end with the assignment."""
        if self._kafka is not None:
            await self._commit_offsets(self._kafka, {tp: n for tp, n in self.tracker.committable().items()
                                                     if tp in revoked})
        self.flow.revoked(revoked)

    async def _fetch_once(self, consumer: Any) -> None:
        held = self._deliverer.held_back.partitions() if self._deliverer is not None else set()
        self.flow.apply(consumer, held, self.dispatcher.in_flight)
        records = await self._fetch(consumer)
        owned = consumer.assignment()
        jobs = []
        for tp, batch in records.items():
            if tp not in owned:
                continue
            for record in batch:
                self.tracker.add(tp, record.offset)
                jobs.append(Job(tp, record.offset, record.key, record.value))
        if jobs:
            self.dispatcher.spawn(jobs)
        await self._commit(consumer)
        self.flow.update_lag(consumer)

    async def _fetch(self, consumer: Any) -> dict[Any, list[Any]]:
        """One `getmany`, given up (not cancelled) once stopping is set.

        aiokafka's fetch waits for the group's assignment without a deadline, whatever `timeout_ms` says: from
        the start until the first join, and through every rebalance. A broker away then would keep a SIGTERM
        from draining and committing until it came back. Cancelling the fetch would leave aiokafka's fetch
        count raised for good, so it is left to end with the consumer's `stop()`; what it returns then was
        never tracked nor committed, and is read again by whoever owns the partition next.
        """
        fetch = asyncio.ensure_future(consumer.getmany(timeout_ms=POLL_MS))
        while not fetch.done():
            await asyncio.wait({fetch}, timeout=POLL_MS / 1000)
            if not fetch.done() and self.stopping.is_set():
                fetch.add_done_callback(_ignore_outcome)
                return {}
        result: dict[Any, list[Any]] = fetch.result()
        return result

    async def _consume(self) -> None:
        """The main coroutine, on the delivery loop: fetch until stopped, then drain, commit and leave the group."""
        consumer = await self._connect()
        try:
            retries = kafka_io.BROKER_BACKOFF.retries()
            while consumer is not None and not self.stopping.is_set():
                try:
                    await self._fetch_once(consumer)
                    retries.reset()
                except AioKafkaError as exc:
                    log.warning("fetch failed; retrying", extra={"error": str(exc)})
                    await self._sleep(retries.next_delay())
        finally:
            await self._shutdown(consumer)

    async def _shutdown(self, consumer: Any) -> None:
        log.info("stopping: draining in-flight deliveries", extra={"in_flight": self.tracker.in_flight()})
        self._abandon.set()
        await self.dispatcher.drained(self.options.drain_s)
        if consumer is not None:
            await self._commit(consumer, force=True)
            try:  # leaves the group: its partitions go to the other members at once
                await asyncio.wait_for(consumer.stop(), CLOSE_TIMEOUT_S)
            except (AioKafkaError, TimeoutError) as exc:
                log.warning("kafka consumer did not close cleanly", extra={"error": repr(exc)})

    def run(self) -> None:
        """Consume until stopped, then drain deliveries, commit and leave the group."""
        self.dispatcher.start()
        threading.Thread(target=self._watch_tenancy, name="tenancy-watch", daemon=True).start()
        if self.parked_replay is not None:
            self.parked_replay.start()
        try:
            self.dispatcher.run(self._consume)
        finally:
            self._abandon.set()
            self.dispatcher.drain(self.options.drain_s)  # stops the loop (its deliveries drained already)
            if self.parked_replay is not None:
                self.parked_replay.stop()
            self.dead_letters.close()
            self.executor.shutdown(wait=False, cancel_futures=True)
            log.info("stopped")


def _ignore_outcome(fetch: asyncio.Future[Any]) -> None:
    """A fetch given up at shutdown: its records or its error (the consumer stopped) are not needed."""
    if not fetch.cancelled():
        fetch.exception()
