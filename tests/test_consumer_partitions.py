"""Flow control with aiokafka's consumer: everything paused at max_in_flight and resumed at half, except the
partitions a slow tenant's queued events came from, which stay paused until it caught up."""

from __future__ import annotations

from typing import Any

from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]
from kafka import TopicPartition as KafkaTopicPartition

from callback_consumer.offsets import OffsetTracker
from callback_consumer.partitions import PartitionFlow

TOPIC = "dynaseal.usage.v1"
P0, P1, P2 = (TopicPartition(TOPIC, n) for n in range(3))


class _Kafka:
    """AIOKafkaConsumer's assignment and pause state, refusing other TopicPartition types as it does."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.paused_now: set[TopicPartition] = set()
        self.high: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_now)

    def pause(self, *tps: Any) -> None:
        if not all(isinstance(tp, TopicPartition) for tp in tps):
            raise TypeError("partitions must be TopicPartition namedtuples")
        self.paused_now |= set(tps)

    def resume(self, *tps: Any) -> None:
        if not all(isinstance(tp, TopicPartition) for tp in tps):
            raise TypeError("partitions must be TopicPartition namedtuples")
        self.paused_now -= set(tps)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high.get(tp)


def test_everything_pauses_at_max_in_flight_and_resumes_at_half_but_held_partitions_stay_paused() -> None:
    tracker = OffsetTracker()
    flow = PartitionFlow(tracker, max_in_flight=10)
    kafka = _Kafka({P0, P1, P2})
    for offset in range(10):
        tracker.add(P0, offset)
    # Held partitions come from delivery's jobs: kafka-python's type there must be accepted too.
    flow.apply(kafka, {KafkaTopicPartition(TOPIC, 2)})
    assert kafka.paused_now == {P0, P1, P2} and flow.paused
    for offset in range(4):  # 6 in flight: above half, still paused
        tracker.done(P0, offset)
    flow.apply(kafka, {P2})
    assert kafka.paused_now == {P0, P1, P2}
    tracker.done(P0, 4)  # 5 in flight: half, resumed, except the held partition
    flow.apply(kafka, {P2})
    assert kafka.paused_now == {P2} and not flow.paused
    flow.apply(kafka, set())  # the slow tenant caught up
    assert kafka.paused_now == set() and flow.held_paused == set()


def test_a_revoke_ends_the_pauses_and_the_next_apply_pauses_again_what_still_needs_it() -> None:
    tracker = OffsetTracker()
    flow = PartitionFlow(tracker, max_in_flight=100)
    kafka = _Kafka({P0, P1})
    flow.apply(kafka, {P1})
    assert kafka.paused_now == {P1}
    flow.revoked({P0, P1})
    kafka.paused_now = set()  # a new assignment starts unpaused
    flow.apply(kafka, {P1})
    assert kafka.paused_now == {P1}, "the held partition was not paused again after the rebalance"


def test_lag_is_the_high_water_mark_minus_the_oldest_offset_not_done() -> None:
    from callback_consumer import metrics

    tracker = OffsetTracker()
    flow = PartitionFlow(tracker, max_in_flight=100)
    kafka = _Kafka({P0, P1})
    kafka.high = {P0: 50, P1: 7}
    for offset in (40, 41, 42):
        tracker.add(P0, offset)
    tracker.done(P0, 41)  # 40 not done: a restart reads from 40
    flow.update_lag(kafka)
    assert metrics.LAG.labels("0")._value.get() == 10
    assert metrics.LAG_TOTAL._value.get() == 10  # P1: nothing read yet, no low-water mark


def test_deliveries_a_rebalance_forgot_still_count_toward_the_pause() -> None:
    # An eager rebalance makes the tracker forget every offset while their deliveries go on; the same records
    # are then read again. Counting only the tracker, each rebalance would let another max_in_flight in.
    tracker = OffsetTracker()
    flow = PartitionFlow(tracker, max_in_flight=10)
    kafka = _Kafka({P0, P1})
    for offset in range(10):
        tracker.add(P0, offset)
    flow.apply(kafka, set(), running=10)
    assert flow.paused
    tracker.forget([P0])  # the rebalance: the tracker is empty, the ten deliveries still run
    flow.revoked({P0, P1})
    flow.apply(kafka, set(), running=10)
    assert flow.paused and kafka.paused_now == {P0, P1}
    flow.apply(kafka, set(), running=5)  # half of them finished
    assert not flow.paused and not kafka.paused_now
