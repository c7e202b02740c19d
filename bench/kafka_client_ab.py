"""`python -m bench.kafka_client_ab`: kafka-python polled on a thread vs aiokafka on the asyncio loop, against tansu.

The callback consumer awaits its Redis work on one asyncio loop, but reads Kafka with kafka-python on a poll
thread (its consumer blocks and is not thread-safe) and publishes DLQ / parked records on a thread pool (its
producer blocks until acknowledged). This measures whether aiokafka, asyncio-native, would do the same work at
equal or lower cost, on the broker the project runs (tansu, memory storage, a private one on a free port):

- consume: N usage events (real `UsageEvent` bytes from `bench.pipeline_bench`'s access-log mix, keyed by jti)
  on the 6-partition usage topic, read by one group member with manual commits every 0.2 s, a fresh group per
  run: (a) kafka-python's `KafkaConsumer` (`kafka_io.new_consumer`'s settings) polled on a thread, each poll's
  records handed to the loop with `call_soon_threadsafe`, the loop's finished offsets handed back through a
  queue for the poll thread to commit (the consumer's shape today); (b) aiokafka's `AIOKafkaConsumer` on the
  loop (`getmany`, `await commit`). Events/s and this process's CPU µs per event (client + loop; the broker's
  separately), counted from the first record the loop sees to the last (the group join is reported apart);
- publish: M records one at a time, each waiting for its acknowledgement (acks=all, idempotent, linger 0, as
  the DLQ publishes): kafka-python `send().get()` on a one-thread pool awaited from the loop vs aiokafka
  `send_and_wait` on the loop. µs of wall time and of CPU per publish.

(a) and (b) alternate `--rounds` times; medians and the ratio (b)/(a). `--checks` runs the functional checks
adoption needs instead (group join and all partitions, commit, a broker kill -9 and restart, a second member's
rebalance) and prints what each showed, error text included.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import random
import signal
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.abc import ConsumerRebalanceListener as AioRebalanceListener  # type: ignore[import-untyped]
from aiokafka.coordinator.assignors.sticky.sticky_assignor import (  # type: ignore[import-untyped]
    StickyPartitionAssignor,
)
from aiokafka.structs import TopicPartition as AioTopicPartition  # type: ignore[import-untyped]
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from bench import results
from bench.harness import cpu_seconds, free_ports
from bench.pipeline_bench import access_line
from dynaseal.usage import kafka_io
from dynaseal.usage.events import parse_line
from dynaseal_launcher.processes import ServiceSpec, Supervisor, tcp_open
from dynaseal_launcher.stack import tansu_binary

HOST = "127.0.0.1"
TOPIC = kafka_io.USAGE_TOPIC
PUBLISH_TOPIC = kafka_io.DLQ_TOPIC
COMMIT_EVERY_S = 0.2  # callback_consumer.consumer.COMMIT_EVERY_S
POLL_MS = 100  # callback_consumer.consumer.POLL_MS
MAX_POLL_RECORDS = 500
SEND_TIMEOUT_S = 10.0
# A run that has not seen every record by then failed (a lost record, a stuck group): bounded, never a hang.
RUN_TIMEOUT_S = 120.0

Records = list[tuple[bytes, bytes]]
Offsets = dict[tuple[str, int], int]


# --- the broker ----------------------------------------------------------------------------------

class Broker:
    """A private tansu (memory storage) on a free port, under a Supervisor; kill -9 and restart on the same port."""

    def __init__(self, work: Path) -> None:
        self.port = free_ports(1)[0]
        self.bootstrap = f"{HOST}:{self.port}"
        self.supervisor = Supervisor(work / "logs", HOST)
        self.spec = ServiceSpec(
            "kafka", [tansu_binary(), "broker", "--listener-url", f"tcp://{self.bootstrap}",
                      "--advertised-listener-url", f"tcp://{self.bootstrap}", "--storage-engine", "memory://tansu/"],
            "", lambda: tcp_open(HOST, self.port))

    def start(self) -> None:
        """Start tansu and create the pipeline's topics (usage: 6 partitions)."""
        self.supervisor.start(self.spec)
        kafka_io.ensure_topics(self.bootstrap, {TOPIC: 6, PUBLISH_TOPIC: 1})

    @property
    def pid(self) -> int:
        """The broker's process id (its process group leader)."""
        return self.supervisor.running[0].process.pid

    def kill_and_restart(self) -> None:
        """kill -9 the broker and start it again on the same port: memory storage, so topics are recreated."""
        self.supervisor.stop_service("kafka", signal.SIGKILL)
        self.start()

    def stop(self) -> None:
        """Stop the broker."""
        self.supervisor.stop()


@contextmanager
def broker(work: Path) -> Iterator[Broker]:
    """A started Broker, stopped at the end."""
    running = Broker(work)
    try:
        running.start()
        yield running
    finally:
        running.stop()


# --- the records ---------------------------------------------------------------------------------

def usage_records(count: int, seed: int = 7) -> Records:
    """`count` (key, value) pairs: jti keys and serialized UsageEvents from the pipeline bench's access-log mix."""
    rng = random.Random(seed)
    out: Records = []
    while len(out) < count:
        jti = f"bench-key-{rng.randrange(200)}-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
        event = parse_line(access_line(jti, rng)[1])
        if event is not None:  # denials make no event
            out.append((event.jti.encode(), event.SerializeToString()))
    return out


def produce(bootstrap: str, records: Records) -> None:
    """Every record onto the usage topic, acknowledged (the shipper's producer settings)."""
    producer = kafka_io.new_producer(bootstrap, "bench-producer")
    try:
        futures = [producer.send(TOPIC, key=key, value=value) for key, value in records]
        producer.flush(timeout=60)
        for future in futures:
            future.get(timeout=SEND_TIMEOUT_S)
    finally:
        kafka_io.close_quietly(producer)


# --- what the loop does with each record ---------------------------------------------------------

@dataclass
class Tally:
    """Records seen on the loop: counts, the next offset to commit per partition, first and last moments."""

    expected: int
    seen: int = 0
    done: Offsets = field(default_factory=dict)
    started_cpu: float = 0.0
    started_wall: float = 0.0
    started_broker: float = 0.0
    ended_cpu: float = 0.0
    ended_wall: float = 0.0
    ended_broker: float = 0.0
    broker_pid: int = 0
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def assigned(self) -> None:
        """The group gave this member its partitions: the measured window starts (the join is over)."""
        if not self.started_wall:
            self.started_wall, self.started_cpu = time.perf_counter(), time.process_time()
            self.started_broker = cpu_seconds(self.broker_pid) if self.broker_pid else 0.0

    def take(self, batch: list[tuple[str, int, int, bytes]]) -> Offsets:
        """Count a batch of (topic, partition, offset, value); the highest next offset per partition in it."""
        self.assigned()  # not before the first record, whatever the client's callbacks did
        finished: Offsets = {}
        for topic, partition, offset, value in batch:
            # Touch the bytes as a handler would: the length is enough not to measure the consumer's own parsing.
            self.seen += 1 if value else 0
            finished[(topic, partition)] = offset + 1
        self.done.update(finished)
        if self.seen >= self.expected and not self.complete.is_set():
            self.ended_wall, self.ended_cpu = time.perf_counter(), time.process_time()
            self.ended_broker = cpu_seconds(self.broker_pid) if self.broker_pid else 0.0
            self.complete.set()
        return finished


@dataclass
class ConsumeRun:
    """One consume run's numbers."""

    client: str
    events: int
    join_s: float
    wall_s: float
    cpu_s: float
    broker_cpu_s: float

    @property
    def rate(self) -> float:
        """Events per second, from the assignment to the last record."""
        return self.events / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        """This process's CPU µs per event."""
        return self.cpu_s / self.events * 1e6

    @property
    def broker_us(self) -> float:
        """The broker's CPU µs per event."""
        return self.broker_cpu_s / self.events * 1e6


def _run_of(client: str, tally: Tally, began: float) -> ConsumeRun:
    return ConsumeRun(client, tally.seen, tally.started_wall - began, tally.ended_wall - tally.started_wall,
                      tally.ended_cpu - tally.started_cpu, tally.ended_broker - tally.started_broker)


class _KafkaListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python's rebalance callbacks (on the poll thread): the assignment starts the measured window."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def on_partitions_revoked(self, revoked: object) -> None:
        """Nothing to do: one member, one assignment."""

    def on_partitions_assigned(self, assigned: object) -> None:
        """Start the window."""
        self.tally.assigned()


class _AioListener(AioRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance callbacks (on the loop): the assignment starts the measured window."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def on_partitions_revoked(self, revoked: object) -> None:
        """Nothing to do: one member, one assignment."""

    def on_partitions_assigned(self, assigned: object) -> None:
        """Start the window."""
        self.tally.assigned()


# --- (a) kafka-python on a thread ----------------------------------------------------------------

def _poll_thread(consumer: KafkaConsumer, hand: Callable[[list[tuple[str, int, int, bytes]]], None],
                 finished: queue.SimpleQueue[Offsets], stopping: threading.Event) -> None:
    """Poll, hand each batch to the loop, commit the loop's finished offsets every COMMIT_EVERY_S."""
    last_commit, pending = time.monotonic(), dict[tuple[str, int], int]()
    while not stopping.is_set():
        records = consumer.poll(timeout_ms=POLL_MS, max_records=MAX_POLL_RECORDS)
        batch = [(tp.topic, tp.partition, r.offset, r.value) for tp, rs in records.items() for r in rs]
        if batch:
            hand(batch)
        _collect(finished, pending)
        if pending and time.monotonic() - last_commit >= COMMIT_EVERY_S:
            _commit(consumer, pending)
            last_commit, pending = time.monotonic(), {}
    # The loop finished the last batch before it set `stopping`: its offsets are on the queue by now.
    _collect(finished, pending)
    if pending:
        _commit(consumer, pending)


def _collect(finished: queue.SimpleQueue[Offsets], into: Offsets) -> None:
    """Everything the loop has finished so far, merged into `into`."""
    while True:
        try:
            into.update(finished.get_nowait())
        except queue.Empty:
            return


def _commit(consumer: KafkaConsumer, offsets: Offsets) -> None:
    consumer.commit({TopicPartition(t, p): OffsetAndMetadata(n, "", -1) for (t, p), n in offsets.items()})


async def consume_threaded(bootstrap: str, expected: int, broker_pid: int = 0, group: str = "") -> ConsumeRun:
    """(a): kafka-python's consumer polled on a thread, records handed to this loop."""
    loop = asyncio.get_running_loop()
    tally = Tally(expected, broker_pid=broker_pid)
    finished: queue.SimpleQueue[Offsets] = queue.SimpleQueue()
    stopping = threading.Event()

    def on_loop(batch: list[tuple[str, int, int, bytes]]) -> None:
        finished.put(tally.take(batch))

    began = time.perf_counter()
    consumer = kafka_io.new_consumer(bootstrap, group or f"ab-a-{uuid.uuid4().hex[:8]}", "bench-a")
    consumer.subscribe([TOPIC], listener=_KafkaListener(tally))
    thread = threading.Thread(target=_poll_thread, name="kafka-poll", daemon=True,
                              args=(consumer, lambda b: loop.call_soon_threadsafe(on_loop, b), finished, stopping))
    thread.start()
    try:
        await asyncio.wait_for(tally.complete.wait(), RUN_TIMEOUT_S)
    finally:
        stopping.set()
        await asyncio.to_thread(thread.join, 10)
        kafka_io.close_quietly(consumer)
    return _run_of("kafka-python thread", tally, began)


# --- (b) aiokafka on the loop --------------------------------------------------------------------

def aio_consumer(bootstrap: str, group_id: str, client_id: str, **overrides: Any) -> Any:
    """An AIOKafkaConsumer with kafka_io.new_consumer's settings where aiokafka has them.

    aiokafka has no cooperative-sticky assignor (no KIP-429 incremental rebalancing): the sticky one is the
    closest (eager: every member gives up its partitions at a rebalance, then mostly gets them back).
    """
    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap, "group_id": group_id, "client_id": client_id,
        "enable_auto_commit": False, "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka_io.SESSION_TIMEOUT_MS, "heartbeat_interval_ms": kafka_io.HEARTBEAT_INTERVAL_MS,
        "max_poll_records": MAX_POLL_RECORDS, "fetch_max_wait_ms": POLL_MS, "max_poll_interval_ms": 60_000,
        "request_timeout_ms": 10_000, "partition_assignment_strategy": (StickyPartitionAssignor,),
    }
    settings.update(overrides)
    return AIOKafkaConsumer(**settings)


def _aio_offsets(done: Offsets) -> dict[Any, int]:
    return {AioTopicPartition(t, p): n for (t, p), n in done.items()}


async def consume_aio(bootstrap: str, expected: int, broker_pid: int = 0, group: str = "") -> ConsumeRun:
    """(b): aiokafka's consumer on this loop: getmany, take, commit every COMMIT_EVERY_S."""
    tally = Tally(expected, broker_pid=broker_pid)
    began = time.perf_counter()
    consumer = aio_consumer(bootstrap, group or f"ab-b-{uuid.uuid4().hex[:8]}", "bench-b")
    consumer.subscribe([TOPIC], listener=_AioListener(tally))
    await consumer.start()
    try:
        deadline, last_commit, pending = time.monotonic() + RUN_TIMEOUT_S, time.monotonic(), {}
        while not tally.complete.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError(f"aiokafka saw {tally.seen} of {expected} records in {RUN_TIMEOUT_S:.0f} s")
            records = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_POLL_RECORDS)
            batch = [(tp.topic, tp.partition, r.offset, r.value) for tp, rs in records.items() for r in rs]
            if batch:
                pending.update(tally.take(batch))
            if pending and time.monotonic() - last_commit >= COMMIT_EVERY_S:
                await consumer.commit(_aio_offsets(pending))
                last_commit, pending = time.monotonic(), {}
        if pending:
            await consumer.commit(_aio_offsets(pending))
    finally:
        await consumer.stop()
    return _run_of("aiokafka loop", tally, began)


# --- (c) one publish at a time -------------------------------------------------------------------

@dataclass
class PublishRun:
    """One publish run's numbers."""

    client: str
    count: int
    wall_s: float
    cpu_s: float

    @property
    def wall_us(self) -> float:
        """Wall µs per acknowledged publish."""
        return self.wall_s / self.count * 1e6

    @property
    def cpu_us(self) -> float:
        """This process's CPU µs per acknowledged publish."""
        return self.cpu_s / self.count * 1e6


async def publish_threaded(bootstrap: str, records: Records) -> PublishRun:
    """kafka-python: `send().get()` on a one-thread pool, awaited from the loop, one at a time (the DLQ's way).

    Not idempotent, as (b) must be on tansu (`aio_producer`): the same settings on both sides.
    """
    loop = asyncio.get_running_loop()
    producer = kafka_io.new_producer(bootstrap, "bench-publish-a", linger_ms=0, enable_idempotence=False)
    pool = ThreadPoolExecutor(1, thread_name_prefix="kafka-publish")
    try:
        def send(key: bytes, value: bytes) -> None:
            producer.send(PUBLISH_TOPIC, key=key, value=value).get(SEND_TIMEOUT_S)

        await loop.run_in_executor(pool, send, *records[0])
        wall, cpu = time.perf_counter(), time.process_time()
        for key, value in records:
            await loop.run_in_executor(pool, send, key, value)
        return PublishRun("kafka-python pool", len(records), time.perf_counter() - wall, time.process_time() - cpu)
    finally:
        pool.shutdown()
        kafka_io.close_quietly(producer)


def aio_producer(bootstrap: str, client_id: str, idempotent: bool = False) -> Any:
    """An AIOKafkaProducer with the DLQ producer's settings (acks=all, linger 0), not idempotent by default.

    aiokafka 0.14 sends InitProducerId v0 only, and tansu 0.6.0 answers it UNKNOWN_SERVER_ERROR (its log:
    `tansu_storage::dynostore: producer=None epoch=None`): an idempotent aiokafka producer cannot start there.
    """
    return AIOKafkaProducer(bootstrap_servers=bootstrap, client_id=client_id, acks="all",
                            enable_idempotence=idempotent, linger_ms=0, request_timeout_ms=5000, max_batch_size=65536)


async def started(producer: Any) -> Any:
    """`await producer.start()`, closing it when the start fails (else aiokafka warns of an unclosed producer)."""
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


async def publish_aio(bootstrap: str, records: Records) -> PublishRun:
    """aiokafka: `send_and_wait` on the loop, one at a time."""
    producer = await started(aio_producer(bootstrap, "bench-publish-b"))
    try:
        key, value = records[0]
        await producer.send_and_wait(PUBLISH_TOPIC, value, key=key)
        wall, cpu = time.perf_counter(), time.process_time()
        for key, value in records:
            await asyncio.wait_for(producer.send_and_wait(PUBLISH_TOPIC, value, key=key), SEND_TIMEOUT_S)
        return PublishRun("aiokafka loop", len(records), time.perf_counter() - wall, time.process_time() - cpu)
    finally:
        await producer.stop()


# --- the A/B -------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """Every run of an A/B, in order."""

    consumes: list[ConsumeRun] = field(default_factory=list)
    publishes: list[PublishRun] = field(default_factory=list)


async def run_ab(bootstrap: str, events: int, publishes: int, rounds: int, broker_pid: int = 0,
                 progress: Callable[[str], None] = lambda _: None) -> Outcome:
    """Alternate (a) and (b) consumes and publishes `rounds` times (who goes first alternates too)."""
    records = usage_records(max(publishes, 1))
    outcome = Outcome()
    for n in range(rounds):
        consumers = (consume_threaded, consume_aio) if n % 2 == 0 else (consume_aio, consume_threaded)
        for consume in consumers:
            run = await consume(bootstrap, events, broker_pid)
            progress(f"round {n + 1}: {run.client}: {run.rate:,.0f} events/s, {run.cpu_us:.1f} µs CPU/event")
            outcome.consumes.append(run)
        publishers = (publish_threaded, publish_aio) if n % 2 == 0 else (publish_aio, publish_threaded)
        for publish in publishers:
            sent = await publish(bootstrap, records[:publishes])
            progress(f"round {n + 1}: {sent.client}: {sent.wall_us:,.0f} µs/publish, {sent.cpu_us:.0f} µs CPU")
            outcome.publishes.append(sent)
    return outcome


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def table(outcome: Outcome) -> list[str]:
    """The Markdown tables: every run, then medians and (b)/(a)."""
    lines = ["| round | client | events | join s | events/s (assigned → last) | CPU µs/event (client) "
             "| CPU µs/event (broker) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for n, run in enumerate(outcome.consumes):
        lines.append(f"| {n // 2 + 1} | {run.client} | {run.events:,} | {run.join_s:.1f} | {run.rate:,.0f} | "
                     f"{run.cpu_us:.1f} | {run.broker_us:.1f} |")
    a = [r for r in outcome.consumes if r.client.startswith("kafka-python")]
    b = [r for r in outcome.consumes if r.client.startswith("aiokafka")]
    ma = (_median([r.rate for r in a]), _median([r.cpu_us for r in a]), _median([r.broker_us for r in a]))
    mb = (_median([r.rate for r in b]), _median([r.cpu_us for r in b]), _median([r.broker_us for r in b]))
    lines += [f"| median | (a) kafka-python thread | | | {ma[0]:,.0f} | {ma[1]:.1f} | {ma[2]:.1f} |",
              f"| median | (b) aiokafka loop | | | {mb[0]:,.0f} | {mb[1]:.1f} | {mb[2]:.1f} |",
              f"| ratio | (b)/(a) | | | {_ratio(mb[0], ma[0])} | {_ratio(mb[1], ma[1])} | {_ratio(mb[2], ma[2])} |", ""]
    lines += ["| round | publisher | publishes | µs/publish (wall) | CPU µs/publish |", "|---|---|---:|---:|---:|"]
    for n, sent in enumerate(outcome.publishes):
        lines.append(f"| {n // 2 + 1} | {sent.client} | {sent.count:,} | {sent.wall_us:,.0f} | {sent.cpu_us:.0f} |")
    pa = [p for p in outcome.publishes if p.client.startswith("kafka-python")]
    pb = [p for p in outcome.publishes if p.client.startswith("aiokafka")]
    wa, ca = _median([p.wall_us for p in pa]), _median([p.cpu_us for p in pa])
    wb, cb = _median([p.wall_us for p in pb]), _median([p.cpu_us for p in pb])
    lines += [f"| median | (a) kafka-python pool | | {wa:,.0f} | {ca:.0f} |",
              f"| median | (b) aiokafka loop | | {wb:,.0f} | {cb:.0f} |",
              f"| ratio | (b)/(a) | | {_ratio(wb, wa)} | {_ratio(cb, ca)} |"]
    return lines


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.2f}" if before else "–"


# --- the functional checks -----------------------------------------------------------------------

async def _drain(consumer: Any, want: int, timeout_s: float) -> tuple[int, set[int]]:
    """getmany until `want` records arrived or `timeout_s` passed: (records, partitions they came from)."""
    got, parts, deadline = 0, set(), time.monotonic() + timeout_s
    while got < want and time.monotonic() < deadline:
        for tp, rs in (await consumer.getmany(timeout_ms=POLL_MS)).items():
            got += len(rs)
            parts.add(tp.partition)
    return got, parts


def _partitions(consumer: Any) -> list[int]:
    return sorted(tp.partition for tp in consumer.assignment())


async def _until_split(first: Any, second: Any, began: float) -> float:
    """Poll both aiokafka members until each owns partitions and together all 6; seconds since `began`."""
    deadline = began + 30
    while time.monotonic() < deadline:
        one, two = _partitions(first), _partitions(second)
        if one and two and len(one) + len(two) == 6:
            return time.monotonic() - began
        await asyncio.gather(first.getmany(timeout_ms=POLL_MS), second.getmany(timeout_ms=POLL_MS))
    raise AssertionError(f"assignments after 30 s: {_partitions(first)} / {_partitions(second)}")


async def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Whether `condition` held within `timeout_s` (checked every 50 ms)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


class Checks:
    """aiokafka against tansu, step by step on one group; each step's outcome is one line of `findings`."""

    def __init__(self, running: Broker, count: int = 300) -> None:
        self.running = running
        self.count = count
        self.records = usage_records(count)
        self.group = f"check-{uuid.uuid4().hex[:8]}"
        self.first: Any = None  # made in run(): aiokafka's clients need the running loop
        self.findings: list[str] = []

    async def run(self) -> list[str]:
        """Every step in order (the first must pass for the others to mean anything); the findings."""
        produce(self.running.bootstrap, self.records)
        self.first = aio_consumer(self.running.bootstrap, self.group, "check-1")
        self.first.subscribe([TOPIC])
        try:
            if await self._try("join the group, get all 6 partitions, read every record", self.join):
                await self._try("commit offsets and read them back", self.commit)
                await self._try("a second member joins: the partitions are split between both", self.rebalance)
                await self._try("the same with kafka-python (cooperative-sticky), for comparison",
                                self.rebalance_kafka_python)
                await self._try("broker kill -9 + restart (memory storage, topics recreated): consuming resumes",
                                self.restart)
                await self._try("commit after the restart", self.commit)
                await self._try("pause with records fetched, resume: nothing while paused, then every record once",
                                self.pause)
                await self._try("lag: highwater() against the position (end_offsets() beside it)", self.lag)
                await self._try("acks=all producer, not idempotent: send_and_wait", self.publish_plain)
                await self._try("acks=all idempotent producer: start and send_and_wait", self.publish_idempotent)
        finally:
            await self.first.stop()
        return self.findings

    async def _try(self, label: str, step: Callable[[], Any]) -> bool:
        """Await one step; record its outcome (the exception's type and text when it fails)."""
        began = time.monotonic()
        try:
            said = await step()
        except Exception as exc:  # a finding, not a crash: the report lists every incompatibility
            self.findings.append(f"- {label}: FAILED after {time.monotonic() - began:.1f} s: "
                                 f"{type(exc).__name__}: {exc}")
            return False
        self.findings.append(f"- {label}: ok in {time.monotonic() - began:.1f} s: {said}")
        return True

    async def join(self) -> str:
        """Start the first member; it must own all 6 partitions and read every record."""
        await self.first.start()
        got, _ = await _drain(self.first, self.count, 30)
        owned = _partitions(self.first)
        if got != self.count or len(owned) != 6:
            raise AssertionError(f"read {got} of {self.count}; assigned partitions {owned}")
        return f"all {self.count} records, assigned partitions {owned}"

    async def commit(self) -> str:
        """Commit the positions and read them back from the broker."""
        positions = {tp: await self.first.position(tp) for tp in self.first.assignment()}
        await self.first.commit(positions)
        stored = {tp.partition: await self.first.committed(tp) for tp in positions}
        if stored != {tp.partition: n for tp, n in positions.items()}:
            raise AssertionError(f"committed {stored}, positions {positions}")
        return f"committed offsets read back ({sum(stored.values())} in all)"

    async def rebalance(self) -> str:
        """A second member joins; both keep polling until the partitions are split; new records read once."""
        second = aio_consumer(self.running.bootstrap, self.group, "check-2")
        second.subscribe([TOPIC])
        began = time.monotonic()
        await second.start()
        try:
            split_s = await _until_split(self.first, second, began)
            produce(self.running.bootstrap, self.records[:60])
            got, deadline = 0, time.monotonic() + 10
            while time.monotonic() < deadline:  # the whole 10 s: a record read twice would show
                for batches in await asyncio.gather(self.first.getmany(timeout_ms=POLL_MS),
                                                    second.getmany(timeout_ms=POLL_MS)):
                    got += sum(len(rs) for rs in batches.values())
                if got >= 60 and time.monotonic() > deadline - 9:
                    break
            if got != 60:
                raise AssertionError(f"the 60 records produced after the split were read {got} times")
            return (f"split {_partitions(self.first)} / {_partitions(second)} {split_s:.1f} s after the second "
                    f"member was created; the 60 records produced then were read once each")
        finally:
            await second.stop()

    async def rebalance_kafka_python(self) -> str:
        """The same scenario with kafka-python's consumers (cooperative-sticky), each polled on its own thread."""
        group = f"check-kp-{uuid.uuid4().hex[:8]}"
        members = [kafka_io.new_consumer(self.running.bootstrap, group, f"check-kp-{n}") for n in (1, 2)]
        stopping = threading.Event()

        def pump(consumer: KafkaConsumer) -> None:
            while not stopping.is_set():
                consumer.poll(timeout_ms=POLL_MS)

        def owned(consumer: KafkaConsumer) -> list[int]:
            return sorted(tp.partition for tp in consumer.assignment())

        members[0].subscribe([TOPIC])
        threads = [threading.Thread(target=pump, args=(members[0],), daemon=True)]
        threads[0].start()
        try:
            if not await _wait(lambda: len(owned(members[0])) == 6, 30):
                raise AssertionError(f"one member: {owned(members[0])} after 30 s")
            began = time.monotonic()
            members[1].subscribe([TOPIC])
            threads.append(threading.Thread(target=pump, args=(members[1],), daemon=True))
            threads[1].start()
            if not await _wait(lambda: bool(owned(members[1])) and len(owned(members[0]) + owned(members[1])) == 6,
                               30):
                raise AssertionError(f"assignments after 30 s: {owned(members[0])} / {owned(members[1])}")
            return f"split {owned(members[0])} / {owned(members[1])} {time.monotonic() - began:.1f} s after subscribe"
        finally:
            stopping.set()
            for thread in threads:
                await asyncio.to_thread(thread.join, 5)
            for consumer in members:
                kafka_io.close_quietly(consumer)

    async def restart(self) -> str:
        """kill -9 tansu, start it again (empty), produce; the first member must read the new records.

        First the member takes back every partition (the second left) and reads again what was not committed.
        """
        before, _ = await _drain(self.first, 10**9, 3)
        await self.commit()
        self.running.kill_and_restart()
        produce(self.running.bootstrap, self.records)
        got, parts = await _drain(self.first, self.count, 60)
        if got == 0:
            raise AssertionError(f"no record in 60 s after the restart (assignment {_partitions(self.first)})")
        return (f"(before: {before} uncommitted records read again) read {got} of the {self.count} records "
                f"produced after the restart "
                f"(from partitions {sorted(parts)}, assignment {_partitions(self.first)})")

    async def pause(self) -> str:
        """Flow control: paused with records fetched but not yet returned, a member reads nothing; resumed, it
        reads every remaining record once (kafka-python lost such records until `kafka_io.resume`'s workaround)."""
        produce(self.running.bootstrap, self.records)
        first: dict[Any, list[Any]] = {}
        deadline = time.monotonic() + 10
        while not first and time.monotonic() < deadline:
            first = await self.first.getmany(timeout_ms=POLL_MS, max_records=10)
        owned = list(self.first.assignment())
        self.first.pause(*owned)
        while_paused, _ = await _drain(self.first, 10**9, 1.5)
        self.first.resume(*owned)
        got = sum(len(rs) for rs in first.values())
        after, _ = await _drain(self.first, self.count - got, 10)
        extra, _ = await _drain(self.first, 10**9, 1)
        if while_paused or got + after + extra != self.count:
            raise AssertionError(f"{got} before the pause, {while_paused} while paused, {after + extra} after resume "
                                 f"(of {self.count})")
        return f"{got} before the pause, 0 while paused, the other {after + extra} after resume, once each"

    async def lag(self) -> str:
        """Every record read: highwater() must equal the position on each partition (no lag)."""
        owned = sorted(self.first.assignment(), key=lambda tp: tp.partition)
        positions = [await self.first.position(tp) for tp in owned]
        high = [self.first.highwater(tp) for tp in owned]
        ends = await self.first.end_offsets(owned)
        if high != positions:
            raise AssertionError(f"highwater {high} vs positions {positions}")
        return f"highwater = position on every partition {high}; end_offsets() {[ends[tp] for tp in owned]}"

    async def publish_plain(self) -> str:
        """A non-idempotent acks=all producer publishes and is acknowledged."""
        return await self._publish(False)

    async def publish_idempotent(self) -> str:
        """An idempotent acks=all producer publishes and is acknowledged."""
        return await self._publish(True)

    async def _publish(self, idempotent: bool) -> str:
        producer = await started(aio_producer(self.running.bootstrap, "check-publish", idempotent))
        try:
            meta = await producer.send_and_wait(PUBLISH_TOPIC, b"v", key=b"k")
            return f"partition {meta.partition}, offset {meta.offset}"
        finally:
            await producer.stop()


# --- the command ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Run the A/B (or the checks), print the section and, with --record, append it to RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.kafka_client_ab", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="records consumed per run (default 20,000)")
    parser.add_argument("--publishes", type=int, default=2_000, help="one-at-a-time publishes per run (default 2,000)")
    parser.add_argument("--rounds", type=int, default=3, help="(a)/(b) alternations (default 3)")
    parser.add_argument("--checks", action="store_true", help="the functional checks instead of the A/B")
    parser.add_argument("--record", action="store_true", help="append the section to bench/RESULTS.md")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dynaseal-kafka-ab-"))
    with broker(work) as running:
        if args.checks:
            lines = ["### aiokafka against tansu: functional checks", "", *asyncio.run(Checks(running).run())]
            return results.publish(lines, args.record)
        produce(running.bootstrap, usage_records(args.events))
        size = statistics.mean(len(v) for _, v in usage_records(200))
        outcome = asyncio.run(run_ab(running.bootstrap, args.events, args.publishes, args.rounds, running.pid,
                                     lambda line: print(line, flush=True)))
    lines = [f"### kafka-python on a thread vs aiokafka on the loop ({args.events:,} events of ~{size:.0f} B, "
             f"6 partitions, {args.rounds} rounds, {args.publishes:,} one-at-a-time publishes)", "",
             f"Machine: {results.machine()}; load before the run {_loadavg()}.", "", *table(outcome), ""]
    return results.publish(lines, args.record)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
