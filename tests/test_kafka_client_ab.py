"""`bench.kafka_client_ab`: both clients really read and commit every record, and the table compares (b) with (a)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from kafka import TopicPartition

from bench.kafka_client_ab import (
    TOPIC,
    ConsumeRun,
    Outcome,
    PublishRun,
    broker,
    consume_aio,
    consume_threaded,
    produce,
    publish_aio,
    publish_threaded,
    table,
    usage_records,
)
from dynaseal.pb import UsageEvent
from dynaseal.usage import kafka_io


def test_the_records_are_usage_events_keyed_by_their_jti() -> None:
    records = usage_records(50)
    assert len(records) == 50
    assert [k for k, _ in records] == [k for k, _ in usage_records(50)]  # the same keys in every run
    for key, value in records:
        event = UsageEvent.FromString(value)
        assert key == event.jti.encode() and event.tenant == "bench" and event.request_id
        assert 150 < len(value) < 2000  # the size of a real event, not a stand-in
    assert len({key for key, _ in records}) > 40


def test_the_table_gives_medians_and_b_over_a() -> None:
    outcome = Outcome(
        consumes=[ConsumeRun("kafka-python thread", 1000, 3.0, 0.1, 0.010, 0.002),
                  ConsumeRun("aiokafka loop", 1000, 3.0, 0.05, 0.005, 0.001),
                  ConsumeRun("aiokafka loop", 1000, 3.0, 0.05, 0.004, 0.001),
                  ConsumeRun("kafka-python thread", 1000, 3.0, 0.2, 0.020, 0.002)],
        publishes=[PublishRun("kafka-python pool", 100, 0.1, 0.05), PublishRun("aiokafka loop", 100, 0.05, 0.02)])
    lines = table(outcome)
    assert "| ratio | (b)/(a) | | | 2.67 | 0.30 | 0.50 |" in lines  # 20,000/7,500 events/s; 4.5/15 µs; 1/2 µs
    assert "| ratio | (b)/(a) | | 0.50 | 0.40 |" in lines
    assert "| 2 | kafka-python thread | 1,000 | 3.0 | 5,000 | 20.0 | 2.0 |" in lines


@pytest.mark.integration
def test_both_clients_read_every_record_once_and_commit_it(tmp_path: Path) -> None:
    events = 900
    with broker(tmp_path) as running:
        produce(running.bootstrap, usage_records(events))

        async def both() -> tuple[ConsumeRun, ConsumeRun, PublishRun, PublishRun]:
            threaded = await consume_threaded(running.bootstrap, events, running.pid, group="t-a")
            on_loop = await consume_aio(running.bootstrap, events, running.pid, group="t-b")
            records = usage_records(20)
            return threaded, on_loop, await publish_threaded(running.bootstrap, records), \
                await publish_aio(running.bootstrap, records)

        threaded, on_loop, published_a, published_b = asyncio.run(both())
        for run in (threaded, on_loop):
            assert run.events == events and run.wall_s > 0 and run.cpu_s > 0 and run.join_s > 0
        assert (published_a.count, published_b.count) == (20, 20)
        # Each group's commits reached the broker: together they cover every record, once.
        for group in ("t-a", "t-b"):
            reader = kafka_io.new_consumer(running.bootstrap, group, "t-check")
            try:
                committed = [reader.committed(TopicPartition(TOPIC, p)) or 0 for p in range(6)]
            finally:
                kafka_io.close_quietly(reader)
            assert sum(committed) == events, (group, committed)
