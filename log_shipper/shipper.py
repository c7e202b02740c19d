"""The shipper's loop: read lines, produce their events keyed by jti, checkpoint once the broker acknowledged.

Failure handling is one rule: a batch the broker did not fully acknowledge is sent again from the
checkpoint, with a fresh producer (an idempotent producer never recovers from a broker restart).
Events of a batch resent after a partial success are duplicates, which the consumer absorbs: each
carries its request_id, and settlement and callbacks are idempotent on it.
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

from dynaseal import kafka_io
from dynaseal.usage_events import parse_line
from log_shipper import checkpoint, metrics
from log_shipper.checkpoint import Checkpoint
from log_shipper.lag import lag
from log_shipper.tailer import Line, LogTailer

log = logging.getLogger("log_shipper")
IDLE_POLL_S = 0.05
LAG_EVERY_S = 1.0
RETRY_MIN_S, RETRY_MAX_S = 0.5, 5.0
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


class Shipper:
    """Ships the access log to Kafka until `stop()`."""

    def __init__(self, options: ShipperOptions) -> None:
        self.options = options
        self.stopping = threading.Event()
        self.acked = checkpoint.load(options.checkpoint_path)
        self._saved, self._saved_at = self.acked, 0.0
        self.tailer = LogTailer(options.access_log, self.acked)
        self._producer: KafkaProducer | None = None
        self._retry_s = RETRY_MIN_S
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
                log.warning("broker unreachable; retrying", extra={"error": str(exc), "retry_s": self._retry_s})
                self._backoff()
        return None

    def _backoff(self) -> None:
        self.stopping.wait(self._retry_s)
        self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)

    def _produce(self, producer: KafkaProducer, lines: list[Line]) -> bool:
        """Send the events of these lines; True once the broker acknowledged all of them."""
        shipped_at = int(time.time() * 1000)
        futures = []
        for line in lines:
            if not line.data.strip():
                metrics.LINES.labels("empty").inc()
                continue
            event = parse_line(line.data, shipped_at)
            # "skipped": not an admitted request (denied, not JSON): no usage to report.
            metrics.LINES.labels("event" if event else "skipped").inc()
            if event is not None:
                futures.append(producer.send(kafka_io.USAGE_TOPIC, key=event.jti.encode(),
                                             value=event.SerializeToString()))
        give_up_at: float | None = None
        while not all(f.is_done for f in futures):
            if self.stopping.is_set():
                give_up_at = give_up_at or time.monotonic() + STOP_FLUSH_S
                if time.monotonic() > give_up_at:
                    return False
            with contextlib.suppress(KafkaError):  # not all acknowledged yet, or expired: the futures tell
                producer.flush(timeout=0.5)
            self._update_lag()  # keeps the gauge honest while the broker is away
        failed = [f.exception for f in futures if f.failed()]
        if failed:
            log.warning("broker did not acknowledge a batch; resending from the checkpoint",
                        extra={"events": len(futures), "failed": len(failed), "error": str(failed[0])})
            return False
        metrics.EVENTS_PRODUCED.inc(len(futures))
        return True

    def _commit(self, last: Line) -> None:
        self.acked = Checkpoint(last.inode, last.end)
        self._save()

    def _save(self, force: bool = False) -> None:
        """Persist the acknowledged position, at most every CHECKPOINT_EVERY_S (two fsyncs each)."""
        now = time.monotonic()
        due = force or now - self._saved_at >= CHECKPOINT_EVERY_S
        if self.acked is not None and self.acked != self._saved and due:
            checkpoint.save(self.options.checkpoint_path, self.acked)
            self._saved, self._saved_at = self.acked, now

    def _update_lag(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._lag_at >= LAG_EVERY_S:
            self._lag_at = now
            behind, lines = lag(self.options.access_log, self.acked)
            metrics.LAG_BYTES.set(behind)
            metrics.LAG_LINES.set(lines)

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
            ok = self._produce(self._producer, lines)
        except KafkaError as exc:  # send() itself: metadata unavailable, buffer full for max_block_ms
            log.warning("send failed; resending from the checkpoint", extra={"error": str(exc)})
            ok = False
        if ok:
            self._commit(lines[-1])
            self._retry_s = RETRY_MIN_S
            return True
        self.tailer.seek(self.acked)
        if self.stopping.is_set():
            return True  # cut off by shutdown: the restart sends these lines again
        metrics.PRODUCE_ERRORS.inc()
        metrics.BROKER_UP.set(0)
        kafka_io.close_quietly(self._producer, timeout_s=0)
        self._producer = None
        self._backoff()
        return True

    def run(self) -> None:
        """Ship until stopped; the saved checkpoint never names a line the broker has not acknowledged."""
        log.info("shipping", extra={"access_log": str(self.options.access_log), "from": str(self.acked)})
        self._producer = self._connect()  # at once, so the topics exist before the first request
        try:
            while not self.stopping.is_set():
                busy = self._ship_once()
                self._update_lag()
                if not busy:
                    self._save()
                    self.stopping.wait(IDLE_POLL_S)
        finally:
            self._save(force=True)
            self.tailer.close()
            if self._producer is not None:
                kafka_io.close_quietly(self._producer, timeout_s=STOP_FLUSH_S)
            log.info("stopped", extra={"checkpoint": str(self.acked)})
