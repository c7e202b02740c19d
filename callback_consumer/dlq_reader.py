"""Reading the DLQ for a replay: from the replay group's committed offset up to where the DLQ ended at start.

The end is taken once, from the fetch high-water mark (the dev broker answers ListOffsets
wrongly), so entries a replay puts back, or the consumer adds meanwhile, wait for the next run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata

from dynaseal.usage import kafka_io

REPLAY_GROUP_ID = "dynaseal-dlq-replay"
HIGHWATER_WAIT_S = 15.0


class DlqReader:
    """One pass over the DLQ; `commit` records how far a replay got, so the next run starts there."""

    def __init__(self, bootstrap: str, group_id: str = REPLAY_GROUP_ID, commit: bool = True) -> None:
        kafka_io.ensure_topics(bootstrap)
        # Assigned, not subscribed: no group join to wait for, and commits still go to the group.
        self.consumer: KafkaConsumer = kafka_io.new_consumer(bootstrap, group_id, f"{group_id}-{time.time_ns()}")
        self.do_commit = commit
        partitions = self.consumer.partitions_for_topic(kafka_io.DLQ_TOPIC) or {0}
        self.partitions = [TopicPartition(kafka_io.DLQ_TOPIC, p) for p in sorted(partitions)]
        self.consumer.assign(self.partitions)
        self.start = {tp: self.consumer.position(tp) for tp in self.partitions}
        self._buffer: list[ConsumerRecord] = []
        self.stop = self._ends()

    def _ends(self) -> dict[TopicPartition, int]:
        deadline = time.monotonic() + HIGHWATER_WAIT_S
        while True:
            for batch in self.consumer.poll(timeout_ms=200).values():
                self._buffer.extend(batch)
            ends = {tp: self.consumer.highwater(tp) for tp in self.partitions}
            if all(end is not None for end in ends.values()):
                return {tp: int(end) for tp, end in ends.items() if end is not None}
            if time.monotonic() > deadline:
                raise TimeoutError("the broker did not report where the DLQ ends")

    @property
    def total(self) -> int:
        """Entries between the start and the end of this pass."""
        return sum(max(0, self.stop[tp] - self.start[tp]) for tp in self.partitions)

    def records(self) -> Iterator[ConsumerRecord]:
        """Every record of this pass, in offset order per partition."""
        done: set[TopicPartition] = {tp for tp in self.partitions if self.start[tp] >= self.stop[tp]}
        idle_polls = 0
        while len(done) < len(self.partitions):
            batch, self._buffer = self._buffer, []
            if not batch:
                for records in self.consumer.poll(timeout_ms=500).values():
                    batch.extend(records)
            idle_polls = 0 if batch else idle_polls + 1
            if idle_polls > 40:  # ~20 s without a record below the end: the log shrank (dev broker restart)
                return
            for record in batch:
                tp = TopicPartition(record.topic, record.partition)
                if tp in done or record.offset >= self.stop[tp]:
                    done.add(tp)
                    continue
                yield record
                if record.offset + 1 >= self.stop[tp]:
                    done.add(tp)

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Store tp → next offset to read for the next replay (nothing in a dry run)."""
        if self.do_commit and offsets:
            self.consumer.commit({tp: OffsetAndMetadata(n, "", -1) for tp, n in offsets.items()})

    def close(self) -> None:
        """Leave without committing anything more."""
        kafka_io.close_quietly(self.consumer, timeout_s=2)
