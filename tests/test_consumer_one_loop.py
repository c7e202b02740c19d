"""The consumer is one asyncio program: its Kafka reads and every Redis call are awaited on its delivery loop.

- in process: while it delivers, no executor thread carries Redis work (no `blocking` pool, no default
  executor), no blocking redis-py client is called at all, and every command of the pipelined client
  is sent from the delivery loop's thread (or the parked replay's own small loop, idle here); there is
  no Kafka poll thread: every fetch and commit of the usage topic runs on the delivery loop's thread, and
  kafka-python's consumer is used by the parked replay alone;
- as its own process, with its Redis shut down and started again mid-run: settlement fails with a
  RedisError, is retried, resumes on a new connection, and every event is settled exactly once.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from conftest import free_ports
from consumer_support import FAST, ConsumerRig
from kafka import KafkaConsumer
from ledger_sync import counters
from pipeline_harness import wait_until
from redis.client import Pipeline

from callback_consumer.consumer import CallbackConsumer, ConsumerOptions
from dynaseal.ledger import redis_keys
from dynaseal.ledger.redis_pipeline import PipelinedRedis
from dynaseal_launcher.probes import redis_ping
from dynaseal_launcher.stack import redis_server_binary

# Threads a running consumer may have: the caller of run() (the test's thread here, waiting), the delivery
# loop, the config watcher, the parked replay (its own poll loop), the Kafka publishes' pool, and kafka-python's
# own (the parked replay's consumer, the DLQ producer).
ALLOWED = ("deliveries", "tenancy-watch", "parked-replay", "kafka-publish", "consumer-under-test")
EVENTS = 30


def _theirs(name: str) -> bool:
    """Threads of kafka-python and of the receivers' HTTP servers, not the consumer's design."""
    lowered = name.lower()
    return any(part in lowered for part in ("kafka", "heartbeat", "network-thread", "process_request"))


def test_the_consumer_awaits_every_redis_call_on_its_delivery_loop(
        tmp_path: Path, redis_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    blocking_calls: list[str] = []  # thread names of any blocking redis-py command
    pipelined_calls: set[str] = set()  # thread names the pipelined client was used from

    def record_blocking(real: Any) -> Any:
        def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
            blocking_calls.append(threading.current_thread().name)
            return real(self, *args, **kwargs)
        return spy

    real_execute = PipelinedRedis.execute

    async def spy_pipelined(self: PipelinedRedis, *args: Any) -> Any:
        pipelined_calls.add(threading.current_thread().name)
        return await real_execute(self, *args)

    monkeypatch.setattr(PipelinedRedis, "execute", spy_pipelined)
    fetches: list[str] = []  # thread names of AIOKafkaConsumer fetches
    commits: list[str] = []  # and commits
    kafka_python_polls: set[str] = set()  # thread names of kafka-python KafkaConsumer polls

    def record_on(real: Any, into: list[str]) -> Any:
        async def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
            into.append(threading.current_thread().name)
            return await real(self, *args, **kwargs)
        return spy

    monkeypatch.setattr(AIOKafkaConsumer, "getmany", record_on(AIOKafkaConsumer.getmany, fetches))
    monkeypatch.setattr(AIOKafkaConsumer, "commit", record_on(AIOKafkaConsumer.commit, commits))
    real_poll = KafkaConsumer.poll

    def spy_poll(self: Any, *args: Any, **kwargs: Any) -> Any:
        kafka_python_polls.add(threading.current_thread().name)
        return real_poll(self, *args, **kwargs)

    monkeypatch.setattr(KafkaConsumer, "poll", spy_poll)

    rig = ConsumerRig(tmp_path / "rig", redis_server)
    start_service = rig.supervisor.start
    # The rig's receivers and broker, not its consumer process: the consumer runs in this test's process.
    monkeypatch.setattr(rig.supervisor, "start",
                        lambda spec: None if spec.name == "consumer" else start_service(spec))
    rig.start()  # clears what earlier rigs left in Redis with a blocking client: the spies start after it
    monkeypatch.setattr(redis.Redis, "execute_command", record_blocking(redis.Redis.execute_command))
    monkeypatch.setattr(Pipeline, "execute", record_blocking(Pipeline.execute))
    before = {t.ident for t in threading.enumerate()}
    consumer = CallbackConsumer(ConsumerOptions(config_path=str(rig.config_path), bootstrap=rig.bootstrap,
                                                group_id=rig.group_id, session_timeout_ms=3000,
                                                heartbeat_interval_ms=300))
    runner = threading.Thread(target=consumer.run, name="consumer-under-test", daemon=True)
    try:
        runner.start()
        jti = f"loop-{uuid.uuid4().hex[:8]}"
        ids = set(rig.produce(FAST, jti, EVENTS))
        receiver = rig.receivers[FAST]
        wait_until(lambda: ids <= {d.webhook_id for d in receiver.deliveries}, 60, "every callback")
        running = [t.name for t in threading.enumerate() if t.ident not in before and not _theirs(t.name)]
    finally:
        consumer.stop()
        runner.join(30)
        rig.stop()
    assert not runner.is_alive()
    assert "deliveries" in running
    assert [name for name in running if not name.startswith(ALLOWED)] == [], "a thread beside the loop"
    assert blocking_calls == [], "a blocking redis-py client was used"
    assert pipelined_calls and pipelined_calls <= {"deliveries", "parked-replay"}
    # No Kafka poll thread: the usage topic is fetched and committed on the delivery loop, nowhere else.
    assert fetches and set(fetches) == {"deliveries"}, set(fetches)
    assert commits and set(commits) == {"deliveries"}, set(commits)
    assert kafka_python_polls <= {"parked-replay"}, kafka_python_polls
    client = redis.Redis.from_url(redis_server)
    try:
        assert counters(client, FAST, jti)["spent"] == 12 * EVENTS  # settled, once each
    finally:
        client.close()


class RestartableRedis:
    """A redis-server on a fixed port that can be shut down (saving its data) and started again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_ports(1)[0]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (loading the last save) and wait until it answers."""
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if redis_ping("127.0.0.1", self.port):
                return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def shutdown(self) -> None:
        """SHUTDOWN SAVE: every settlement so far is kept for the restart."""
        assert self.process is not None
        client = redis.Redis(port=self.port)
        try:
            client.shutdown(save=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits
        finally:
            client.close()
        self.process.wait(30)

    def stop(self) -> None:
        """Kill it if it still runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_restarted_mid_run_settlement_resumes_and_every_event_settles_once(
        tmp_path: Path, restartable_redis: RestartableRedis) -> None:
    rig = ConsumerRig(tmp_path / "rig", restartable_redis.url)
    jti = f"restart-{uuid.uuid4().hex[:8]}"
    client = redis.Redis(port=restartable_redis.port)
    try:
        rig.start()
        receiver = rig.receivers[FAST]
        first = set(rig.produce(FAST, jti, 10))
        wait_until(lambda: first <= {d.webhook_id for d in receiver.deliveries}, 60, "the first callbacks")
        restartable_redis.shutdown()
        second = set(rig.produce(FAST, jti, 10))
        # Settlement comes before the callback: with Redis away none of these is delivered, and the
        # consumer counts its failed attempts (a RedisError reached the retry path).
        wait_until(lambda: rig.metric("dynaseal_consumer_settle_errors_total") >= 1, 30, "a failed settlement")
        assert not second & {d.webhook_id for d in receiver.deliveries}
        restartable_redis.start()
        wait_until(lambda: second <= {d.webhook_id for d in receiver.deliveries}, 60, "the callbacks after the restart")
        settled = redis_keys.settled(FAST, jti)
        assert {rid.decode() if isinstance(rid, bytes) else rid for rid in client.hkeys(settled)} == first | second
        assert counters(client, FAST, jti)["spent"] == 12 * 20, "an event settled twice, or not at all"
    finally:
        client.close()
        rig.stop()
