"""An eager rebalance (aiokafka's) takes every partition: the consumer commits what finished there first.

Without that commit, a member that gets its partitions back (or their next owner) reads again everything
finished since the last periodic commit, not only what was still in flight.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]
from consumer_support import ConsumerRig

from callback_consumer.consumer import CallbackConsumer, ConsumerOptions, _Rebalance

TOPIC = "dynaseal.usage.v1"


class _Coordinator:
    """aiokafka's group coordinator as far as the consumer looks: the member's generation."""

    def __init__(self) -> None:
        self.generation = 3
        self.member_id = "dynaseal-consumer-1"

    def forget_member(self) -> None:
        """What aiokafka does when the broker no longer knows the member (its `reset_generation`)."""
        self.generation, self.member_id = -1, ""


class _Kafka:
    """What the consumer asks of AIOKafkaConsumer at a revoke: its assignment, commit and group generation."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.commits: list[dict[TopicPartition, int]] = []
        self._coordinator = _Coordinator()

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert all(isinstance(tp, TopicPartition) for tp in offsets)
        self.commits.append(dict(offsets))


def _consumer(tmp_path: Path, redis_url: str) -> CallbackConsumer:
    rig = ConsumerRig(tmp_path / "rig", redis_url)  # its config only: nothing is started
    for receiver in rig.receivers.values():
        receiver.server.server_close()
    return CallbackConsumer(ConsumerOptions(config_path=str(rig.config_path), bootstrap="127.0.0.1:9",
                                            park_after=0))


def test_a_revoke_commits_the_finished_offsets_of_the_revoked_partitions_then_forgets_them(
        tmp_path: Path, redis_server: str) -> None:
    consumer = _consumer(tmp_path, redis_server)
    gone, kept = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    kafka = _Kafka({gone, kept})
    consumer._kafka = kafka
    try:
        for offset in range(5):
            consumer.tracker.add(gone, offset)
        for offset in (0, 1, 2):  # 0-2 finished, 3 and 4 still in flight
            consumer.tracker.done(gone, offset)
        consumer.tracker.add(kept, 0)
        consumer.tracker.done(kept, 0)
        consumer.flow.held_paused = {gone, kept}
        commits_before_forget: list[Any] = []
        real_forget = consumer.tracker.forget

        def forget(tps: Any) -> None:
            commits_before_forget.append(list(kafka.commits))
            real_forget(tps)

        consumer.tracker.forget = forget  # type: ignore[method-assign]
        asyncio.run(_Rebalance(consumer.tracker, consumer._before_revoke).on_partitions_revoked([gone]))
        assert kafka.commits == [{gone: 3}]  # the revoked partition only, up to its first unfinished offset
        assert commits_before_forget == [[{gone: 3}]]  # committed, then forgotten
        assert consumer.tracker.commit_point(gone) is None and consumer.tracker.low_water(gone) is None
        assert consumer.tracker.commit_point(kept) == 1  # untouched
        assert consumer.flow.held_paused == {kept}
    finally:
        consumer.executor.shutdown()


def test_a_revoke_with_nothing_finished_commits_nothing_and_a_failed_commit_still_forgets(
        tmp_path: Path, redis_server: str) -> None:
    consumer = _consumer(tmp_path, redis_server)
    tp = TopicPartition(TOPIC, 2)

    class _Failing(_Kafka):
        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            self.commits.append(dict(offsets))
            from aiokafka.errors import CommitFailedError  # type: ignore[import-untyped]
            raise CommitFailedError("the group rebalanced")

    kafka = _Failing({tp})
    consumer._kafka = kafka
    try:
        consumer.tracker.add(tp, 7)
        listener = _Rebalance(consumer.tracker, consumer._before_revoke)
        asyncio.run(listener.on_partitions_revoked([tp]))  # nothing finished: no commit asked
        assert kafka.commits == []
        consumer.tracker.add(tp, 8)
        consumer.tracker.done(tp, 8)
        asyncio.run(listener.on_partitions_revoked([tp]))  # the commit fails: logged, the partition forgotten
        assert kafka.commits == [{tp: 9}]
        assert consumer.tracker.in_flight() == 0 and consumer.tracker.commit_point(tp) is None
    finally:
        consumer.executor.shutdown()


def test_a_revoke_after_the_broker_forgot_the_member_commits_nothing(tmp_path: Path, redis_server: str) -> None:
    """A broker restarted with its state lost: the member's generation is reset before the revoke. A commit
    then would write the lost log's offsets into the new group, and the new log's records below them would
    never be read (seen: events written while the broker was down, never delivered)."""
    consumer = _consumer(tmp_path, redis_server)
    tp = TopicPartition(TOPIC, 4)
    kafka = _Kafka({tp})
    consumer._kafka = kafka
    try:
        for offset in range(25):
            consumer.tracker.add(tp, offset)
            consumer.tracker.done(tp, offset)
        kafka._coordinator.forget_member()
        asyncio.run(_Rebalance(consumer.tracker, consumer._before_revoke).on_partitions_revoked([tp]))
        assert kafka.commits == []
        assert consumer.tracker.commit_point(tp) is None  # forgotten all the same
        consumer.tracker.add(tp, 0)  # the new log, read from its start
        consumer.tracker.done(tp, 0)
        kafka._coordinator.generation, kafka._coordinator.member_id = 0, "dynaseal-consumer-2"
        asyncio.run(consumer._commit(kafka, force=True))
        assert kafka.commits == [{tp: 1}]
    finally:
        consumer.executor.shutdown()


class _NeverAssigned:
    """aiokafka's fetch while the group has not (re)assigned partitions: it waits, whatever timeout_ms says."""

    def __init__(self) -> None:
        self.fetches = 0

    async def getmany(self, timeout_ms: int = 0) -> dict[Any, list[Any]]:
        self.fetches += 1
        await asyncio.sleep(3600)
        return {}


def test_a_stop_during_a_rebalance_is_not_stuck_behind_the_fetch(tmp_path: Path, redis_server: str) -> None:
    """SIGTERM while the broker is away mid-rebalance: the fetch never returns, the stop must still go on to
    drain, commit and leave."""
    consumer = _consumer(tmp_path, redis_server)
    kafka = _NeverAssigned()

    async def stop_soon() -> dict[Any, list[Any]]:
        asyncio.get_running_loop().call_later(0.3, consumer.stop)
        return await asyncio.wait_for(consumer._fetch(kafka), 5)  # without the fix: TimeoutError after 5 s

    try:
        assert asyncio.run(stop_soon()) == {}
        assert kafka.fetches == 1  # one fetch, given up, not a new one every slice
    finally:
        consumer.executor.shutdown()
