"""A consumer group that scales: members on a 6-partition topic share the work, one joins, one is killed -9.

Real processes: tansu, three `python -m callback_consumer` members of one group, settlement on a
3-master Redis Cluster, a verifying receiver. Every callback must arrive; a repeat is allowed only
as the same webhook-id (the receiver dedups by it), and the tenant's callback concurrency must hold
over the whole group, not per member.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster_support import LocalCluster, start_cluster
from conftest import free_ports
from consumer_support import SLOW, ConsumerRig
from ledger_sync import counters, sync_client
from pipeline_harness import REPO, wait_until
from prometheus_client.parser import text_string_to_metric_families

from dynaseal.usage import kafka_io
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import RunningService, ServiceSpec, tcp_open
from dynaseal_launcher.stack import tansu_binary

CONCURRENCY = 4  # the tenant's callback.concurrency: over the whole group
HANDLER_S = 0.02
KEYS = 36


class GroupRig(ConsumerRig):
    """ConsumerRig's broker, config and receivers, with several consumer members."""

    def __init__(self, directory: Path, redis_url: str) -> None:
        super().__init__(directory, redis_url, callback={"concurrency": CONCURRENCY, "timeout_s": 5})
        self.members: dict[str, tuple[RunningService, int]] = {}

    def start_broker(self) -> None:
        """Receivers and the broker; the usage topic with 6 partitions."""
        for receiver in self.receivers.values():
            receiver.__enter__()
        port = int(self.bootstrap.rsplit(":", 1)[1])
        self.supervisor.start(ServiceSpec(
            "kafka", [tansu_binary(), "broker", "--listener-url", f"tcp://{self.bootstrap}",
                      "--advertised-listener-url", f"tcp://{self.bootstrap}", "--storage-engine", "memory://tansu/"],
            "", lambda: tcp_open("127.0.0.1", port)))
        assert kafka_io.topic_partitions()[kafka_io.USAGE_TOPIC] == 6
        kafka_io.wait_for_topics(self.bootstrap)

    def start_member(self, name: str) -> None:
        """One more member of the group, with its own metrics port (another if that one was taken meanwhile).

        A free port can be taken by another process of the machine between the pick and the member's
        bind; the probe would then pass against that process, and the member, unable to serve its
        metrics, exits. So the member must still be running once its port answers, or it starts again
        on another port.
        """
        for _ in range(3):
            port = free_ports(1)[0]
            running = self.supervisor.start(ServiceSpec(
                name, [sys.executable, "-m", "callback_consumer", "--config", str(self.config_path),
                       "--group-id", self.group_id, "--metrics-port", str(port), "--retry-base-s", "0.2",
                       "--retry-cap-s", "1", "--session-timeout-ms", "3000", "--heartbeat-interval-ms", "300"],
                "", functools.partial(http_ok, f"http://127.0.0.1:{port}/metrics"), env={"PYTHONPATH": str(REPO)},
                ready_timeout_s=30))
            try:
                running.process.wait(1.0)  # exits at once (code 2) if its metrics port was taken
            except subprocess.TimeoutExpired:
                self.members[name] = (running, port)
                return
            self.supervisor.running.remove(running)
        raise AssertionError(f"{name} could not serve its metrics on three free ports in a row")

    def kill(self, name: str) -> None:
        """SIGKILL a member: no drain, no commit, no leaving the group."""
        process = self.members[name][0].process
        process.kill()
        process.wait(10)

    def delivered_by(self, name: str) -> float:
        """Callbacks a member delivered."""
        text = httpx.get(f"http://127.0.0.1:{self.members[name][1]}/metrics", timeout=2).text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "dynaseal_consumer_deliveries_total" and s.labels.get("outcome") == "delivered")


class InFlight:
    """Receiver behaviour: work HANDLER_S, counting how many callbacks are being handled at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __call__(self, payload: dict[str, Any], attempt: int) -> int:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(HANDLER_S)
        with self.lock:
            self.now -= 1
        return 200


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Settlement and callback slots on a Redis Cluster."""
    local = start_cluster(tmp_path_factory.mktemp("group-cluster"), masters=3)
    try:
        yield local
    finally:
        local.stop()


@pytest.mark.integration
def test_three_members_share_six_partitions_and_one_killed_loses_nothing(cluster: LocalCluster,
                                                                         tmp_path: Path) -> None:
    rig = GroupRig(tmp_path / "group", cluster.url)
    receiver = rig.receivers[SLOW]
    in_flight = InFlight()
    jtis = [f"grp-{i}-{uuid.uuid4().hex[:6]}" for i in range(KEYS)]
    for jti in jtis:
        receiver.behaviours[jti] = in_flight
    sent: list[str] = []

    def produce(rounds: int) -> None:
        for _ in range(rounds):
            for jti in jtis:
                sent.extend(rig.produce(SLOW, jti))

    def delivered() -> set[str]:
        return {d.webhook_id for d in receiver.deliveries if 200 <= d.status < 300}

    def until(count: int, what: str) -> Callable[[], None]:
        return lambda: wait_until(lambda: len(delivered()) >= count, 60, what)

    try:
        rig.start_broker()
        rig.start_member("member-a")
        rig.start_member("member-b")
        produce(3)
        until(len(sent) // 3, "the first callbacks")()
        rig.start_member("member-c")  # a member joins mid-stream: the group rebalances
        produce(3)
        wait_until(lambda: rig.delivered_by("member-c") > 0, 60, "the new member to take a share")
        until(len(sent) * 2 // 3, "callbacks after the join")()
        shares = {name: rig.delivered_by(name) for name in rig.members}
        rig.kill("member-a")  # kill -9 mid-stream: its partitions go to the others after the session timeout
        produce(3)
        wait_until(lambda: delivered() >= set(sent), 90, "every callback after the kill")
    finally:
        rig.stop()

    assert all(count > 0 for count in shares.values()), shares  # all three did part of the work
    deliveries = [d for d in receiver.deliveries if 200 <= d.status < 300]
    assert {d.webhook_id for d in deliveries} == set(sent)  # none lost
    repeats = Counter(d.webhook_id for d in deliveries)
    for d in deliveries:  # a repeat is the same callback: same id, same body, the receiver dedups it
        assert d.webhook_id == d.payload["request_id"]
    print(f"group: {len(sent)} events, {sum(repeats.values()) - len(repeats)} repeated deliveries, "
          f"peak in flight {in_flight.peak}, shares before the kill {shares}")
    assert receiver.bad_signatures == 0
    assert 1 <= in_flight.peak <= CONCURRENCY, in_flight.peak  # over three members, not per member
    # Settlement is idempotent per request id: each key billed once per event, repeats or not.
    client = sync_client(cluster.url)
    try:
        for jti in jtis[:6]:
            assert counters(client, SLOW, jti)["spent"] == 12 * 9
    finally:
        client.close()
