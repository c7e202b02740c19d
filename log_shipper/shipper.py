"""The shipper's loop: read lines, produce their events keyed by jti, checkpoint once the broker acknowledged.

Failure handling is one rule: what may not have reached the consumer is sent again. A batch the
broker did not fully acknowledge is sent again from the acknowledged checkpoint, with a fresh
producer (an idempotent producer never recovers from a broker restart); a broker that lost
acknowledged records (`retention`) has everything after the consumed position sent again.
Repeats are duplicates, which the consumer absorbs: each event carries its request_id, and
settlement and callbacks are idempotent on it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaProducer
from kafka.errors import KafkaError

from dynaseal.backoff import Backoff
from dynaseal.usage import kafka_io
from dynaseal.usage.events import parse_line
from log_shipper import checkpoint, metrics
from log_shipper.checkpoint import Checkpoint, State, digest
from log_shipper.lag import lag
from log_shipper.retention import Record, Retention
from log_shipper.rotation import Rotator
from log_shipper.tailer import Line, LogTailer

log = logging.getLogger("log_shipper")
IDLE_POLL_S = 0.05
LAG_EVERY_S = 1.0
# A broker away: reconnects and resends from 0.5 s, doubling up to 5 s, full jitter; a success starts over.
RETRY_BACKOFF = Backoff(0.5, 5.0)
# On SIGTERM, how long the last batch may wait for its acknowledgement before it is left for a restart.
STOP_FLUSH_S = 5.0
# A saved checkpoint may trail the acknowledged one by this much: a crash resends at most that (duplicates,
# absorbed by request_id), while saving after every small batch cost more CPU than producing it.
CHECKPOINT_EVERY_S = 0.2


@dataclass(frozen=True)
class ShipperOptions:
    """Where to read, where to write, where to remember."""

    access_log: Path
    checkpoint_path: Path
    bootstrap: str
    client_id: str = "dynaseal-shipper"
    # The consumer group whose commits say an event may be forgotten.
    group_id: str = kafka_io.DEFAULT_GROUP_ID
    # Rotate the access log past this size (0: never); needs Envoy's admin API at `envoy_admin`.
    max_log_bytes: int = 0
    envoy_admin: str = ""


class Shipper:
    """Ships the access log to Kafka until `stop()`."""

    def __init__(self, options: ShipperOptions) -> None:
        self.options = options
        self.stopping = threading.Event()
        state = checkpoint.load(options.checkpoint_path)
        self.acked, self.acked_at = state.acked, state.acked_at
        self.retention = Retention(state, options.bootstrap, options.group_id)
        self._dirty, self._saved_at = False, 0.0
        self.tailer = LogTailer(options.access_log, self.acked, written_after=state.acked_at)
        self.rotator = Rotator(options.access_log, options.max_log_bytes, options.envoy_admin) \
            if options.max_log_bytes > 0 and options.envoy_admin else None
        self._restarts_seen: dict[str, int] = {}
        self._producer: KafkaProducer | None = None
        self._retries = RETRY_BACKOFF.retries()
        self._lag_at = 0.0

    def stop(self) -> None:
        """Ask the loop to finish its batch and return."""
        self.stopping.set()

    def _connect(self) -> KafkaProducer | None:
        """A producer on a reachable broker with the topics in place; None if stopped first."""
        while not self.stopping.is_set():
            try:
                kafka_io.ensure_topics(self.options.bootstrap)
                producer = kafka_io.new_producer(self.options.bootstrap, self.options.client_id)
                metrics.BROKER_UP.set(1)
                return producer
            except KafkaError as exc:
                metrics.BROKER_UP.set(0)
                retry_s = self._retries.next_delay()
                log.warning("broker unreachable; retrying", extra={"error": str(exc), "retry_s": round(retry_s, 3)})
                self.stopping.wait(retry_s)
        return None

    def _produce(self, producer: KafkaProducer, lines: list[Line]) -> list[Record] | None:
        """Send the events of these lines; once the broker acknowledged all of them, where they are."""
        shipped_at = int(time.time() * 1000)
        futures, digests = [], []
        for line in lines:
            if not line.data.strip():
                metrics.LINES.labels("empty").inc()
                continue
            event = parse_line(line.data, shipped_at)
            # "skipped": not an admitted request (denied, not JSON): no usage to report.
            metrics.LINES.labels("event" if event else "skipped").inc()
            if event is not None:
                value = event.SerializeToString()
                futures.append(producer.send(kafka_io.USAGE_TOPIC, key=event.jti.encode(), value=value))
                digests.append(digest(value))
        give_up_at: float | None = None
        while not all(f.is_done for f in futures):
            if self.stopping.is_set():
                give_up_at = give_up_at or time.monotonic() + STOP_FLUSH_S
                if time.monotonic() > give_up_at:
                    return None
            with contextlib.suppress(KafkaError):  # not all acknowledged yet, or expired: the futures tell
                producer.flush(timeout=0.5)
            self._update_lag()  # keeps the gauge honest while the broker is away
        failed = [f.exception for f in futures if f.failed()]
        if failed:
            log.warning("broker did not acknowledge a batch; resending from the checkpoint",
                        extra={"events": len(futures), "failed": len(failed), "error": str(failed[0])})
            return None
        metrics.EVENTS_PRODUCED.inc(len(futures))
        return [(f.value.partition, f.value.offset, d) for f, d in zip(futures, digests, strict=True)]

    def _commit(self, lines: list[Line], records: list[Record]) -> None:
        at = self.tailer.checkpoint_at(lines[-1])
        # Nothing consumed yet: the group has to see everything from the first line read.
        self.retention.start_at(Checkpoint(lines[0].inode, 0))
        if not self.retention.acked(at, records):
            self._broker_lost()
            return
        self.acked, self.acked_at, self._dirty = at, time.time(), True
        self._save()

    def _broker_lost(self) -> None:
        """The broker lost acknowledged records: produce everything the group had not committed again."""
        metrics.BROKER_RESETS.inc()
        consumed, consumed_at = self.retention.reset()
        log.warning("broker lost acknowledged records; producing again from the consumed position",
                    extra={"from": str(consumed), "acked": str(self.acked)})
        self.acked, self.acked_at, self._dirty = consumed, consumed_at, True
        self.tailer.seek(consumed, consumed_at)
        # An idempotent producer never recovers from a broker restart.
        kafka_io.close_quietly(self._producer, timeout_s=0)
        self._producer = None
        self._save(force=True)

    def _housekeeping(self) -> None:
        """Follow the group's commits, react to a broker that lost records, rotate and prune the log."""
        if self.retention.lost:
            self._broker_lost()
        if self.retention.advance():
            self._dirty = True
        if self.rotator is not None:
            self.rotator.check(self.retention.consumed, self.tailer.inode)
        for reason, count in self.tailer.restarts.items():
            seen = self._restarts_seen.get(reason, 0)
            if count > seen:
                metrics.LOG_RESTARTS.labels(reason).inc(count - seen)
                self._restarts_seen[reason] = count

    def _save(self, force: bool = False) -> None:
        """Persist the positions, at most every CHECKPOINT_EVERY_S (two fsyncs each)."""
        now = time.monotonic()
        due = force or now - self._saved_at >= CHECKPOINT_EVERY_S
        if self._dirty and due:
            retention = self.retention
            checkpoint.save(self.options.checkpoint_path,
                            State(self.acked, retention.consumed, list(retention.marks), self.acked_at,
                                  retention.consumed_at))
            self._dirty, self._saved_at = False, now

    def _update_lag(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._lag_at >= LAG_EVERY_S:
            self._lag_at = now
            behind = lag(self.options.access_log, self.acked)
            metrics.LAG_BYTES.set(behind.bytes)
            metrics.LAG_LINES.set(behind.lines)
            metrics.LAG_SECONDS.set(behind.age_s)
            metrics.UNCONSUMED_SECONDS.set(self.retention.oldest_unconsumed_s())

    def _ship_once(self) -> bool:
        """One batch; False when there was nothing to read."""
        lines = self.tailer.read_lines()
        if not lines:
            return False
        if self._producer is None:
            self._producer = self._connect()
            if self._producer is None:
                return True
        try:
            records = self._produce(self._producer, lines)
        except KafkaError as exc:  # send() itself: metadata unavailable, buffer full for max_block_ms
            log.warning("send failed; resending from the checkpoint", extra={"error": str(exc)})
            records = None
        if records is not None:
            self._commit(lines, records)
            self._retries.reset()
            return True
        self.tailer.seek(self.acked, self.acked_at)
        if self.stopping.is_set():
            return True  # cut off by shutdown: the restart sends these lines again
        metrics.PRODUCE_ERRORS.inc()
        metrics.BROKER_UP.set(0)
        kafka_io.close_quietly(self._producer, timeout_s=0)
        self._producer = None
        self.stopping.wait(self._retries.next_delay())
        return True

    def run(self) -> None:
        """Ship until stopped; the saved checkpoint never names a line the broker has not acknowledged."""
        log.info("shipping", extra={"access_log": str(self.options.access_log), "from": str(self.acked)})
        self._producer = self._connect()  # at once, so the topics exist before the first request
        self.retention.start()
        try:
            while not self.stopping.is_set():
                busy = self._ship_once()
                self._housekeeping()
                self._update_lag()
                if not busy:
                    self._save()
                    self.stopping.wait(IDLE_POLL_S)
        finally:
            self._save(force=True)
            self.retention.stop()
            self.tailer.close()
            if self._producer is not None:
                kafka_io.close_quietly(self._producer, timeout_s=STOP_FLUSH_S)
            log.info("stopped", extra={"checkpoint": str(self.acked)})
