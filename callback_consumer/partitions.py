"""Which of its partitions the consumer fetches, and how far behind each is.

Everything is paused while too much is in flight (resumed at half), and the partitions a slow tenant's queued
events came from stay paused until it caught up (`held_back`); lag is the fetch high-water mark minus the
oldest offset not yet done. Called on the delivery loop between fetches, with aiokafka's consumer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]

from callback_consumer import metrics
from callback_consumer.offsets import OffsetTracker

LAG_EVERY_S = 1.0


def aio_partitions(tps: Iterable[Any]) -> list[TopicPartition]:
    """aiokafka's pause/resume want its own TopicPartition type (kafka-python's compares equal, but is refused)."""
    return [tp if isinstance(tp, TopicPartition) else TopicPartition(tp.topic, tp.partition) for tp in tps]


class PartitionFlow:
    """Pauses and resumes one consumer's partitions; reports their lag."""

    def __init__(self, tracker: OffsetTracker, max_in_flight: int) -> None:
        self.tracker = tracker
        self.max_in_flight = max_in_flight
        self.paused = False  # everything, for too much in flight
        self.held_paused: set[TopicPartition] = set()  # for a slow tenant's queued events
        self._lag_at = 0.0
        self._lag_labels: set[str] = set()

    def apply(self, consumer: Any, held: set[TopicPartition], running: int = 0) -> None:
        """Before a fetch: pause or resume for what is in flight now and the partitions `held` back.

        `running`: deliveries still under way. A rebalance makes the tracker forget its offsets while their
        deliveries go on (eager: every partition, every time), and the same records are read again: counting
        only the tracker would let each rebalance add another `max_in_flight` of them.
        """
        owned = consumer.assignment()
        in_flight = max(self.tracker.in_flight(), running)
        if in_flight >= self.max_in_flight:
            consumer.pause(*aio_partitions(owned))
            self.paused = True
        elif self.paused and in_flight <= self.max_in_flight // 2:
            consumer.resume(*aio_partitions(set(consumer.paused()) - self.held_paused))
            self.paused = False
        self._hold_back(consumer, held & owned, owned)

    def _hold_back(self, consumer: Any, held: set[TopicPartition], owned: set[TopicPartition]) -> None:
        if held - self.held_paused:
            consumer.pause(*aio_partitions(held - self.held_paused))
        freed = (self.held_paused - held) & owned
        if freed and not self.paused:
            consumer.resume(*aio_partitions(freed))
        self.held_paused = held if not self.paused else held | (freed & self.held_paused)
        metrics.PAUSED_PARTITIONS.set(len(self.held_paused))

    def revoked(self, tps: set[TopicPartition]) -> None:
        """A rebalance took these partitions: their pauses end with the assignment (the next `apply` pauses
        again what still needs it)."""
        self.held_paused -= tps
        self.paused = False

    def update_lag(self, consumer: Any) -> None:
        """Every LAG_EVERY_S: each owned partition's lag and the total, as gauges."""
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
