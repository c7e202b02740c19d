"""The shipper's loss probe against a real broker that comes back without the events it acknowledged.

The dev broker (tansu, in memory) loses every topic on a restart, and the first client that asks for the
usage topic's metadata makes it again with 4 partitions, whatever that client asked for. Events the
shipper had marked on partitions 4 and 5 then sit on partitions that no longer exist: a fetch there
never answers, and the loss has to be seen all the same, or those events are never produced again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_ports
from kafka import KafkaConsumer, KafkaProducer
from pipeline_harness import wait_until

from dynaseal.usage import kafka_io
from dynaseal_launcher.processes import ServiceSpec, Supervisor, tcp_open
from dynaseal_launcher.stack import tansu_binary
from log_shipper.checkpoint import Checkpoint, Mark, State, digest
from log_shipper.retention import Retention

pytestmark = pytest.mark.integration


class Broker:
    """A tansu broker in memory that can be killed and started again on the same port."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_ports(1)[0]
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.supervisor = Supervisor(log_dir, "127.0.0.1")

    def start(self) -> None:
        """Start (again) and wait for the port."""
        self.supervisor.start(ServiceSpec(
            "kafka", [tansu_binary(), "broker", "--listener-url", f"tcp://{self.bootstrap}",
                      "--advertised-listener-url", f"tcp://{self.bootstrap}", "--storage-engine", "memory://tansu/"],
            "", lambda: tcp_open("127.0.0.1", self.port)))

    def restart(self) -> None:
        """kill -9 and start again: every topic, record and group offset is gone."""
        running = self.supervisor.running.pop()
        running.process.kill()
        running.process.wait(10)
        self.start()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A private broker with the pipeline's topics (the usage topic with 6 partitions)."""
    running = Broker(tmp_path / "logs")
    running.start()
    kafka_io.wait_for_topics(running.bootstrap)
    try:
        yield running
    finally:
        running.supervisor.stop()


def acknowledged(bootstrap: str, partition: int, value: bytes) -> Mark:
    """Write one record to a partition of the usage topic; the shipper's mark for it."""
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        meta = producer.send(kafka_io.USAGE_TOPIC, value=value, partition=partition).get(timeout=10)
    finally:
        producer.close(timeout=5)
    return Mark(Checkpoint(1, 100), {partition: (meta.offset, digest(value))}, acked_at=time.time())


def recreated_by_a_metadata_request(bootstrap: str) -> set[int]:
    """What any consumer does after the restart: ask for the topic. The broker makes it with its default."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="someone-else", allow_auto_create_topics=False)
    try:
        consumer.subscribe([kafka_io.USAGE_TOPIC])
        for _ in range(10):
            consumer.poll(timeout_ms=200)
            partitions = consumer.partitions_for_topic(kafka_io.USAGE_TOPIC)
            if partitions:
                return set(partitions)
        return set()
    finally:
        consumer.close()


def probe_finds_the_loss(bootstrap: str, mark: Mark) -> bool:
    """Run the shipper's background probe over this one mark until it reports the loss (or gives up)."""
    retention = Retention(State(consumed=Checkpoint(1, 0), marks=[mark]), bootstrap, "grp-probe")
    retention.start()
    try:
        wait_until(lambda: retention.lost, 15, "the probe to report the records gone")
        return retention.lost
    finally:
        retention.stop()


@pytest.mark.parametrize("partition", [1, 5])
def test_a_record_lost_with_its_partition_is_noticed(broker: Broker, partition: int) -> None:
    mark = acknowledged(broker.bootstrap, partition, b"event-%d" % partition)
    broker.restart()
    partitions_now = recreated_by_a_metadata_request(broker.bootstrap)
    assert partitions_now and max(partitions_now) < 5, partitions_now  # the premise: partition 5 is gone
    assert probe_finds_the_loss(broker.bootstrap, mark)


def test_a_record_still_there_is_not_reported_lost(broker: Broker) -> None:
    mark = acknowledged(broker.bootstrap, 5, b"kept")
    retention = Retention(State(consumed=Checkpoint(1, 0), marks=[mark]), broker.bootstrap, "grp-probe")
    retention.start()
    try:
        time.sleep(3.5)  # three probe rounds
        assert not retention.lost
    finally:
        retention.stop()
