"""Replays parked events once their tenant's receiver answers again: in order, same webhook-id, no person needed.

A thread of every consumer, with its own Kafka consumer in the group `<group>-parked` on the parked
topic (keyed by tenant, so each tenant's parked events sit in one partition, in order, and one member
replays them) and its own delivery loop. Per partition it takes the oldest entry and tries it once:
- 2xx: delivered; the next one follows at once;
- a status that is not worth retrying (4xx), an unknown tenant, or an entry parked longer than
  `max_parked_s`: to the DLQ, for `dynaseal dlq replay`;
- no answer or 5xx/408/429: the receiver is still down. The partition waits `probe_s` (doubling up to
  `probe_cap_s`) and the same entry is tried again: that entry is the probe.
The position is committed after each entry, and the tenant's parked counter counts it down; at 0 its
new events go straight to delivery again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from redis.exceptions import RedisError

from callback_consumer import metrics
from callback_consumer.delivery import Deliverer, Job, RetryPolicy
from callback_consumer.dlq import DeadLetters, dlq_headers
from callback_consumer.parking import replayed
from dynaseal.backoff import Backoff
from dynaseal.ledger.redis_async import AsyncLedgerRedis
from dynaseal.pb import UsageEvent
from dynaseal.runtime.views import ConsumerView
from dynaseal.usage import kafka_io
from dynaseal.usage.callbacks import callback_body, is_retryable
from dynaseal.usage.reservation_events import webhook_id

log = logging.getLogger("callback_consumer.parked")


@dataclass
class _Wait:
    until: float
    probes: int  # failed probes in a row


class ParkedReplay:
    """The replay thread; `stop` ends it."""

    def __init__(self, registry: Callable[[], ConsumerView], bootstrap: str, group_id: str, client_id: str,
                 redis_client: AsyncLedgerRedis, dead_letters: DeadLetters, probe_s: float = 2.0,
                 probe_cap_s: float = 30.0, max_parked_s: float = 7 * 24 * 3600,
                 session_timeout_ms: int = kafka_io.SESSION_TIMEOUT_MS,
                 heartbeat_interval_ms: int = kafka_io.HEARTBEAT_INTERVAL_MS) -> None:
        self.registry = registry
        self.bootstrap = bootstrap
        self.group_id = f"{group_id}-parked"
        self.client_id = f"{client_id}-parked"
        # Used on this thread's loop only (a client belongs to the loop that first used it).
        self.redis = redis_client
        self.dead_letters = dead_letters
        self.probe_s, self.probe_cap_s, self.max_parked_s = probe_s, probe_cap_s, max_parked_s
        # One probe per wait, no jitter: each tenant's receiver is probed by one member alone.
        self.probe_backoff = Backoff(probe_s, probe_cap_s, jitter=0.0)
        self.session_timeout_ms, self.heartbeat_interval_ms = session_timeout_ms, heartbeat_interval_ms
        self.stopping = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._abandon = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="parked")
        self._deliverer = Deliverer(registry, None, dead_letters, self._executor, RetryPolicy(),
                                    1, self._abandon, max_attempts=1)
        self._waits: dict[TopicPartition, _Wait] = {}
        self._thread = threading.Thread(target=self._run, name="parked-replay", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the entry in hand."""
        self.stopping.set()
        self._loop.call_soon_threadsafe(self._abandon.set)
        self._thread.join(15)

    def _connect(self) -> KafkaConsumer | None:
        retries = kafka_io.BROKER_BACKOFF.retries()
        while not self.stopping.is_set():
            try:
                kafka_io.ensure_topics(self.bootstrap, kafka_io.PARKED_PARTITIONS)
                consumer = kafka_io.new_consumer(self.bootstrap, self.group_id, self.client_id, max_poll_records=50,
                                                 session_timeout_ms=self.session_timeout_ms,
                                                 heartbeat_interval_ms=self.heartbeat_interval_ms)
                consumer.subscribe([kafka_io.PARKED_TOPIC])
                return consumer
            except KafkaError as exc:
                log.warning("broker unreachable; retrying", extra={"error": str(exc)})
                self.stopping.wait(retries.next_delay())
        return None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        consumer = self._connect()
        try:
            if consumer is not None:
                kafka_io.poll_until_stopped(consumer, self._poll_once, self.stopping, "parked replay poll", log)
        finally:
            kafka_io.close_quietly(consumer, timeout_s=2)
            self._loop.run_until_complete(self._deliverer.aclose())
            self._loop.run_until_complete(self.redis.aclose())
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._loop.close()

    def _poll_once(self, consumer: KafkaConsumer) -> None:
        now = time.monotonic()
        for tp, wait in list(self._waits.items()):
            if now >= wait.until and tp in consumer.assignment():
                kafka_io.resume(consumer, [tp])
        records = consumer.poll(timeout_ms=200)
        for tp, batch in records.items():
            for record in batch:
                if self.stopping.is_set():
                    return
                if not self._handle(consumer, tp, record):
                    break

    def _handle(self, consumer: KafkaConsumer, tp: TopicPartition, record: ConsumerRecord) -> bool:
        """Handle one entry; False if the partition must wait (its tenant is still down)."""
        outcome = self._loop.run_until_complete(self._one(record))
        if outcome == "down":
            wait = self._waits.get(tp)
            probes = (wait.probes if wait is not None else 0) + 1
            self._waits[tp] = _Wait(time.monotonic() + self.probe_backoff.delay(probes), probes)
            consumer.seek(tp, record.offset)  # the same entry is the next probe
            consumer.pause(tp)
            return False
        if outcome == "abandoned":
            consumer.seek(tp, record.offset)
            return False
        self._waits.pop(tp, None)
        consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", -1)})
        metrics.REPLAYED.labels(outcome).inc()
        tenant = (record.key or b"").decode(errors="replace")  # parked events are keyed by tenant
        try:
            self._loop.run_until_complete(replayed(self.redis, tenant))
        except RedisError as exc:  # the counter expires; until then new events are parked and replayed
            log.warning("could not count down the parked events", extra={"tenant": tenant, "error": str(exc)})
        return True

    async def _one(self, record: ConsumerRecord) -> str:
        """delivered, dlq, down or abandoned."""
        headers = {name: (value or b"").decode(errors="replace") for name, value in record.headers}
        job = Job(TopicPartition(record.topic, record.partition), record.offset, record.key, record.value, headers)
        try:
            event = UsageEvent.FromString(record.value)
        except DecodeError:
            return await self._to_dlq(job, "undecodable", None)
        tenant = self.registry().get(event.tenant)
        if tenant is None or tenant.callback is None or tenant.callback_secret is None:
            return await self._to_dlq(job, "unknown_tenant" if tenant is None else "no_callback", None)
        parked_ms = int(headers.get("dlq_at_ms", "0") or 0)
        if parked_ms and time.time() * 1000 - parked_ms > self.max_parked_s * 1000:
            return await self._to_dlq(job, "exhausted:parked", None)
        status, _ = await self._deliverer.attempt_once(tenant, webhook_id(event),
                                                       callback_body(event, tenant.callback.include_content))
        if status is not None and 200 <= status < 300:
            return "delivered"
        if status is not None and not is_retryable(status):
            return await self._to_dlq(job, f"rejected:http_{status}", status)
        return "down"

    async def _to_dlq(self, job: Job, reason: str, status: int | None) -> str:
        headers = dlq_headers(reason, status, 1, f"{job.tp.topic}/{job.tp.partition}/{job.offset}", job.dlq)
        published = await asyncio.get_running_loop().run_in_executor(
            self._executor, self.dead_letters.publish, job.key, job.value, headers)
        if not published:
            return "abandoned"
        metrics.DLQ.labels(reason.split(":")[0]).inc()
        return "dlq"

