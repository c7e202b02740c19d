"""The consumer's poll loop: fetch, hand off to deliveries, commit in order, report lag; and a clean shutdown.

Only this thread touches the KafkaConsumer (it is not thread-safe). It polls every 100 ms whatever
the deliveries are doing, so a slow tenant can never push it past max_poll_interval_ms; when too
much is in flight it pauses its partitions instead of blocking.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from callback_consumer import metrics
from callback_consumer.delivery import Deliverer, Job, RetryPolicy
from callback_consumer.dispatcher import Dispatcher
from callback_consumer.dlq import DeadLetters
from callback_consumer.offsets import OffsetTracker
from callback_consumer.parked_replay import ParkedReplay
from callback_consumer.parking import Parking
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
LAG_EVERY_S = 1.0
# Settlement may wait this long on Redis (authz's admits get 50 ms: a request is waiting on them).
REDIS_TIMEOUT_S = 2.0


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
    """Runs on kafka's IO thread, where blocking calls (commit) are not allowed: it only forgets."""

    def __init__(self, tracker: OffsetTracker) -> None:
        self.tracker = tracker

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Forget revoked partitions: finished-but-uncommitted events there will be read again."""
        self.tracker.forget(revoked)
        metrics.REBALANCES.labels("revoked").inc()
        metrics.ASSIGNED_PARTITIONS.set(0)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Log the new assignment."""
        partitions = sorted(tp.partition for tp in assigned)
        log.info("partitions assigned", extra={"partitions": partitions})
        metrics.REBALANCES.labels("assigned").inc()
        metrics.ASSIGNED_PARTITIONS.set(len(partitions))


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
        # DLQ or parked-topic publish, so those run here, never on the delivery loop.
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kafka-publish")
        # Each tenant's callback concurrency holds over the whole group, not per member.
        self.slots = SharedSlots(self.redis, f"{options.client_id}-{uuid.uuid4().hex[:8]}")
        self.dispatcher = Dispatcher(lambda abandon: self._remember(Deliverer(
            lambda: self.targets, SettlementBatcher(self.redis), self.dead_letters, self.executor,
            options.policy, options.per_tenant, abandon, tenant_backlog=options.tenant_backlog, slots=self.slots,
            parking=self._parking())), closing=self._close_redis)
        self.parked_replay: ParkedReplay | None = None
        if options.park_after > 0:
            self.parked_replay = ParkedReplay(
                lambda: self.targets, options.bootstrap, options.group_id, options.client_id,
                connect(self.targets.redis_url, timeout_s=REDIS_TIMEOUT_S),  # its own loop: its own client
                self.dead_letters, probe_s=options.park_probe_s, session_timeout_ms=options.session_timeout_ms,
                heartbeat_interval_ms=options.heartbeat_interval_ms)
        self._paused = False
        self._held_paused: set[TopicPartition] = set()
        self._deliverer: Deliverer | None = None
        self._last_commit = 0.0
        self._lag_at = 0.0
        self._lag_labels: set[str] = set()

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
        """Ask the loop to stop polling, drain and exit."""
        self.stopping.set()

    def reload(self) -> None:
        """Ask for the config to be loaded again (safe from a signal handler: the loop does it)."""
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
        """Ask for a reload when the config file, a secret file or the tenant store changes."""
        while not self.stopping.wait(POLL_S):
            try:
                if self.tenancy.changed():
                    self._reload_requested.set()
            except Exception:  # a watcher that dies would silently freeze the config
                log.exception("config watch failed; trying again")

    def _connect(self) -> KafkaConsumer | None:
        retries = kafka_io.BROKER_BACKOFF.retries()
        while not self.stopping.is_set():
            try:
                kafka_io.ensure_topics(self.options.bootstrap)
                consumer = kafka_io.new_consumer(
                    self.options.bootstrap, self.options.group_id, self.options.client_id,
                    session_timeout_ms=self.options.session_timeout_ms,
                    heartbeat_interval_ms=self.options.heartbeat_interval_ms)
                consumer.subscribe([kafka_io.USAGE_TOPIC], listener=_Rebalance(self.tracker))
                log.info("consuming", extra={"group_id": self.options.group_id})
                return consumer
            except KafkaError as exc:
                log.warning("broker unreachable; retrying", extra={"error": str(exc)})
                self.stopping.wait(retries.next_delay())
        return None

    def _collect(self) -> None:
        while True:
            try:
                job, outcome = self.dispatcher.finished.get_nowait()
            except queue.Empty:
                return
            if outcome.finished:
                self.tracker.done(job.tp, job.offset)

    def _commit(self, consumer: KafkaConsumer, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_EVERY_S:
            return
        self._last_commit = now
        offsets = self.tracker.committable()
        if not offsets:
            return
        try:
            consumer.commit({tp: OffsetAndMetadata(n, "", -1) for tp, n in offsets.items()})
            self.tracker.committed(offsets)
        except KafkaError as exc:  # lost the partitions in a rebalance: their new owner redelivers
            log.warning("offset commit failed; those events may be delivered again", extra={"error": str(exc)})

    def _flow_control(self, consumer: KafkaConsumer) -> None:
        in_flight = self.tracker.in_flight()
        if in_flight >= self.options.max_in_flight:
            consumer.pause(*consumer.assignment())
            self._paused = True
        elif self._paused and in_flight <= self.options.max_in_flight // 2:
            kafka_io.resume(consumer, set(consumer.paused()) - self._held_paused)
            self._paused = False
        self._hold_back(consumer)

    def _hold_back(self, consumer: KafkaConsumer) -> None:
        """Pause the partitions a slow tenant's queued events came from; resume them once it caught up."""
        if self._deliverer is None:
            return
        owned = consumer.assignment()
        held = self._deliverer.held_back.partitions() & owned
        if held - self._held_paused:
            consumer.pause(*(held - self._held_paused))
        freed = (self._held_paused - held) & owned
        if freed and not self._paused:
            kafka_io.resume(consumer, freed)
        self._held_paused = held if not self._paused else held | (freed & self._held_paused)
        metrics.PAUSED_PARTITIONS.set(len(self._held_paused))

    def _update_lag(self, consumer: KafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        total, labels = 0, set()
        for tp in consumer.assignment():
            # The fetch high-water mark, not end_offsets(): the dev broker answers ListOffsets wrongly.
            high = consumer.highwater(tp)
            low = self.tracker.low_water(tp)
            if high is None or low is None:
                continue
            lag = max(0, high - low)
            metrics.LAG.labels(str(tp.partition)).set(lag)
            labels.add(str(tp.partition))
            total += lag
        for stale in self._lag_labels - labels:
            metrics.LAG.remove(stale)
        self._lag_labels = labels
        metrics.LAG_TOTAL.set(total)

    def _poll_once(self, consumer: KafkaConsumer) -> None:
        if self._reload_requested.is_set():
            self._reload()
        self._flow_control(consumer)
        records = consumer.poll(timeout_ms=POLL_MS)
        owned = consumer.assignment()
        jobs = []
        for tp, batch in records.items():
            if tp not in owned:
                continue
            for record in batch:
                self.tracker.add(tp, record.offset)
                jobs.append(Job(tp, record.offset, record.key, record.value))
        if jobs:
            self.dispatcher.submit(jobs)
        self._collect()
        self._commit(consumer)
        self._update_lag(consumer)

    def run(self) -> None:
        """Consume until stopped, then drain deliveries, commit and leave the group."""
        self.dispatcher.start()
        threading.Thread(target=self._watch_tenancy, name="tenancy-watch", daemon=True).start()
        if self.parked_replay is not None:
            self.parked_replay.start()
        consumer = self._connect()
        try:
            if consumer is not None:
                kafka_io.poll_until_stopped(consumer, self._poll_once, self.stopping, "poll", log)
        finally:
            self._shutdown(consumer)

    def _shutdown(self, consumer: KafkaConsumer | None) -> None:
        log.info("stopping: draining in-flight deliveries", extra={"in_flight": self.tracker.in_flight()})
        self._abandon.set()
        self.dispatcher.drain(self.options.drain_s)
        if consumer is not None:
            self._collect()
            self._commit(consumer, force=True)
            kafka_io.close_quietly(consumer, timeout_s=5)
        if self.parked_replay is not None:
            self.parked_replay.stop()
        self.dead_letters.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")
