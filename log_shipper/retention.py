"""Hold what the broker acknowledged until the consumer group committed past it; notice a broker that lost it.

The dev broker keeps records in memory: a restart loses every record the consumer had not committed,
and with it the group's offsets. So the shipper keeps two positions: `acked` (where reading goes on)
and `consumed` (every event before it was committed by the group). Between them lie marks: "the
lines up to here became records at or below these offsets". A mark is consumed once the group's
committed offset is past each of them.

A broker that lost records is noticed two ways: an acknowledged offset at or below one already seen
for the partition (offsets restarted), or, checked in the background while marks are held, the
record at the newest mark's offset is gone or is another record (digest differs). Either way the
shipper reads again from `consumed`: every event the group had not committed is produced again
(duplicates, absorbed downstream by request_id).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from dynaseal.usage import kafka_io
from log_shipper.checkpoint import Checkpoint, Mark, State, digest

log = logging.getLogger("log_shipper")
CHECK_EVERY_S = 1.0
PROBE_TIMEOUT_S = 3.0
# Marks closer together than this are merged (the later one stands for both); the list is thinned
# past MAX_MARKS: fewer marks only make `consumed` advance in coarser steps.
MARK_EVERY_S = 0.5
MAX_MARKS = 64
Record = tuple[int, int, str]  # partition, offset, digest of the value


class Retention:
    """The consumed position and the marks after it; a background probe of the group and the broker."""

    def __init__(self, state: State, bootstrap: str, group_id: str, topic: str = kafka_io.USAGE_TOPIC) -> None:
        self.bootstrap, self.group_id, self.topic = bootstrap, group_id, topic
        self.consumed, self.consumed_at = state.consumed, state.consumed_at
        self.marks: list[Mark] = list(state.marks)
        self._high: dict[int, tuple[int, str]] = dict(self.marks[-1].offsets) if self.marks else {}
        self._marked_at = 0.0
        self._lock = threading.Lock()
        self._committed: dict[int, int] = {}
        self._epoch = 0
        self._lost = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start_at(self, position: Checkpoint) -> None:
        """Where consumption starts when nothing was ever consumed (the first line read)."""
        if self.consumed is None:
            self.consumed, self.consumed_at = position, time.time()

    def acked(self, at: Checkpoint, records: list[Record]) -> bool:
        """Remember a batch the broker acknowledged; False if its offsets went backwards (broker lost state)."""
        for partition, offset, value_digest in records:
            seen = self._high.get(partition)
            if seen is not None and offset <= seen[0]:
                return False
            self._high[partition] = (offset, value_digest)
        now = time.monotonic()
        mark = Mark(at, dict(self._high), time.time())
        with self._lock:
            if self.marks and now - self._marked_at < MARK_EVERY_S:
                self.marks[-1] = mark
            else:
                self.marks.append(mark)
                self._marked_at = now
                if len(self.marks) > MAX_MARKS:
                    self.marks = [*self.marks[:-1:2], self.marks[-1]]
        return True

    def advance(self) -> bool:
        """Drop the marks the group committed past; True if `consumed` moved."""
        with self._lock:
            committed = self._committed
            moved = False
            while self.marks and all(committed.get(p, -1) > off for p, (off, _) in self.marks[0].offsets.items()):
                mark = self.marks.pop(0)
                self.consumed, self.consumed_at, moved = mark.at, mark.acked_at, True
            return moved

    @property
    def lost(self) -> bool:
        """Whether the probe found the newest mark's records gone from the broker."""
        return self._lost.is_set()

    def oldest_unconsumed_s(self) -> float:
        """Seconds since the broker acknowledged the oldest event the group has not committed."""
        with self._lock:
            return max(time.time() - self.marks[0].acked_at, 0.0) if self.marks else 0.0

    def reset(self) -> tuple[Checkpoint | None, float]:
        """Forget the marks after the broker lost records; (position, time) to read again from."""
        with self._lock:
            self.marks.clear()
            self._high.clear()
            self._committed = {}
            self._epoch += 1
            self._lost.clear()
            return self.consumed, self.consumed_at

    # --- the background probe ----------------------------------------------------------------

    def start(self) -> None:
        """Start probing the group's commits and the broker's records."""
        self._thread = threading.Thread(target=self._probe_loop, name="retention-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the probe."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(PROBE_TIMEOUT_S * 3)

    def _client(self) -> KafkaConsumer:
        # Manual assignment, no commits: it reads the group's offsets, it never joins the group.
        return KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group_id,
                             client_id="dynaseal-shipper-probe",
                             enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=100,
                             request_timeout_ms=5000, bootstrap_timeout_ms=kafka_io.BOOTSTRAP_TIMEOUT_MS,
                             reconnect_backoff_max_ms=1000, max_poll_records=50, allow_auto_create_topics=False)

    def _probe_loop(self) -> None:
        client: KafkaConsumer | None = None
        while not self._stopping.wait(CHECK_EVERY_S):
            with self._lock:
                newest = self.marks[-1] if self.marks else None
                epoch = self._epoch
            if newest is None or not newest.offsets:
                continue
            try:
                client = client or self._client()
                committed = self._committed_offsets(client, newest)
                gone = self._records_gone(client, newest)
            except Exception as exc:  # broker away or restarting: try again with a fresh client
                log.debug("retention probe failed", extra={"error": str(exc)})
                kafka_io.close_quietly(client, timeout_s=0)
                client = None
                continue
            with self._lock:
                if epoch != self._epoch:
                    continue  # answers about marks that a reset already dropped
                self._committed = committed
                if gone:
                    log.warning("broker lost acknowledged records; producing again from the consumed position",
                                extra={"group_id": self.group_id})
                    self._lost.set()
        kafka_io.close_quietly(client, timeout_s=0)

    def _committed_offsets(self, client: KafkaConsumer, mark: Mark) -> dict[int, int]:
        found = {}
        for partition in mark.offsets:
            offset = client.committed(TopicPartition(self.topic, partition), timeout_ms=int(PROBE_TIMEOUT_S * 1000))
            if offset is not None:
                found[partition] = offset
        return found

    def _records_gone(self, client: KafkaConsumer, mark: Mark) -> bool:
        """Fetch each partition's newest marked offset: gone if missing or another record; raise if no answer."""
        partitions = {TopicPartition(self.topic, p): v for p, v in mark.offsets.items()}
        if self._partitions_gone(client, mark):
            return True
        client.unsubscribe()  # a fresh assignment, so no high-water mark from an earlier probe is reused
        client.assign(list(partitions))
        for tp, (offset, _) in partitions.items():
            client.seek(tp, offset)
        pending = dict(partitions)
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while pending and time.monotonic() < deadline:
            for tp, records in client.poll(timeout_ms=200).items():
                if tp in pending and records:
                    offset, value_digest = pending.pop(tp)
                    first = records[0]
                    if first.offset != offset or record_digest(first.value) != value_digest:
                        return True
                    with contextlib.suppress(KafkaError):
                        client.pause(tp)
            for tp in list(pending):
                high = client.highwater(tp)
                if high is not None and high <= pending[tp][0]:
                    return True
        if pending:
            raise KafkaError("no answer for the marked offsets")
        return False


    def _partitions_gone(self, client: KafkaConsumer, mark: Mark) -> bool:
        """A marked partition the topic no longer has: its records are gone.

        A broker that lost the topic may have it again with fewer partitions (the dev broker creates a
        missing topic with 4 on any client's metadata request, whatever the client asked; a topic deleted
        and created again has the count it was given). A fetch from a partition that does not exist
        never answers, so without this check the loss would go unnoticed and those events never be
        produced again.
        """
        existing = client.partitions_for_topic(self.topic)
        return bool(existing) and any(partition not in existing for partition in mark.offsets)


def record_digest(value: bytes | None) -> str:
    """The digest a mark keeps of a record's value."""
    return digest(value or b"")
