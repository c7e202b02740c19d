"""Faults in the usage pipeline: every event is delivered or dead-lettered, none lost, repeats keep their id.

The integration tests run their own broker + shipper + consumer set (own ports, own checkpoint and
consumer group) beside the session stack: the shipper tails the session's Envoy access log and the
consumer delivers to a receiver in this process, so killing or stopping any of them touches no
other test. The first tests are unit tests of the pieces those guarantees rest on.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import failed, free_ports
from kafka import KafkaConsumer, TopicPartition
from pipeline_harness import (
    Delivery,
    Receiver,
    Services,
    complete,
    new_key,
    pipeline_config,
    settled,
    wait_until,
)
from redis import Redis

from callback_consumer.offsets import OffsetTracker
from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey
from dynaseal.pb import UsageEvent
from dynaseal.usage.kafka_io import DLQ_TOPIC
from log_shipper import checkpoint
from log_shipper.checkpoint import Checkpoint
from log_shipper.tailer import Line, LogTailer

# --- unit: the access-log tailer and the commit tracker ----------------------------------------


def _next_lines(tailer: LogTailer, tries: int = 40) -> list[Line]:
    """The next non-empty read (the tailer may need a few polls to notice a rotation)."""
    for _ in range(tries):
        lines = tailer.read_lines()
        if lines:
            return lines
        time.sleep(0.05)
    return []


def test_tailer_returns_complete_lines_and_resumes_from_a_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    tailer = LogTailer(log, None)
    lines = tailer.read_lines()
    assert [line.data for line in lines] == [b'{"a": 1}', b'{"b": 2}']
    assert lines[-1].end == len(b'{"a": 1}\n{"b": 2}\n')
    with log.open("ab") as handle:
        handle.write(b'3}\n')
    assert [line.data for line in tailer.read_lines()] == [b'{"c": 3}']
    resumed = LogTailer(log, Checkpoint(lines[0].inode, lines[0].end))
    assert [line.data for line in resumed.read_lines()] == [b'{"b": 2}', b'{"c": 3}']


def test_tailer_follows_rotation_after_finishing_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("log_shipper.tailer.ROTATION_GRACE_S", 0.0)
    log = tmp_path / "access.log"
    log.write_bytes(b"one\n")
    tailer = LogTailer(log, None)
    assert [line.data for line in tailer.read_lines()] == [b"one"]
    with log.open("ab") as handle:
        handle.write(b"two\n")
    log.rename(tmp_path / "access.log.1")
    log.write_bytes(b"three\n")
    old_lines = _next_lines(tailer)
    new_lines = _next_lines(tailer)
    assert [line.data for line in old_lines] == [b"two"] and [line.data for line in new_lines] == [b"three"]
    assert old_lines[0].inode != new_lines[0].inode and new_lines[0].end == len(b"three\n")


def test_checkpoint_in_a_rotated_file_is_found_by_inode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("log_shipper.tailer.ROTATION_GRACE_S", 0.0)
    log = tmp_path / "access.log"
    log.write_bytes(b"one\ntwo\n")
    inode = log.stat().st_ino
    log.rename(tmp_path / "access.log.1")
    log.write_bytes(b"three\n")
    tailer = LogTailer(log, Checkpoint(inode, len(b"one\n")))
    assert [line.data for line in _next_lines(tailer)] == [b"two"]
    assert [line.data for line in _next_lines(tailer)] == [b"three"]


def test_tailer_starts_over_after_truncation(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"first line\nsecond line\n")
    tailer = LogTailer(log, None)
    assert len(tailer.read_lines()) == 2
    log.write_bytes(b"after\n")  # truncated in place (copytruncate), then written again
    assert [(line.data, line.end) for line in _next_lines(tailer)] == [(b"after", 6)]


def test_oversized_lines_are_skipped_but_passed(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"x" * 200 + b"\nshort\n" + b"y" * 100)
    tailer = LogTailer(log, None, max_line_bytes=64)
    lines = tailer.read_lines()
    assert [line.data for line in lines] == [b"", b"short"] and tailer.oversized_lines == 1
    assert lines[0].end == 201  # the checkpoint still moves past it
    with log.open("ab") as handle:
        handle.write(b"\nok\n")
    assert [line.data for line in tailer.read_lines()] == [b"", b"ok"] and tailer.oversized_lines == 2


def test_checkpoint_is_saved_atomically(tmp_path: Path) -> None:
    path = tmp_path / "shipper" / "checkpoint.json"
    assert checkpoint.load(path) == checkpoint.State()
    checkpoint.save(path, checkpoint.State(Checkpoint(7, 42), Checkpoint(7, 10)))
    assert checkpoint.load(path).acked == Checkpoint(7, 42) and checkpoint.load(path).consumed == Checkpoint(7, 10)
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.json"]
    path.write_text("{torn")
    assert checkpoint.load(path) == checkpoint.State()


def test_commit_point_advances_only_over_a_finished_prefix() -> None:
    tp, other = TopicPartition("t", 0), TopicPartition("t", 1)
    tracker = OffsetTracker()
    for offset in (5, 6, 7):
        tracker.add(tp, offset)
    tracker.add(other, 0)
    tracker.done(tp, 6)
    assert tracker.committable() == {} and tracker.low_water(tp) == 5
    tracker.done(tp, 5)
    assert tracker.committable() == {tp: 7}
    tracker.committed({tp: 7})
    assert tracker.committable() == {}
    tracker.done(tp, 7)
    tracker.done(other, 0)
    assert tracker.committable() == {tp: 8, other: 1} and tracker.in_flight() == 0
    tracker.forget([other])
    tracker.done(other, 0)  # a late completion for a revoked partition is ignored
    assert tracker.committable() == {tp: 8}
    tracker.add(tp, 6)  # the partition came back and is read again from an earlier offset
    assert tracker.low_water(tp) == 6 and tracker.commit_point(tp) is None


# --- integration: our own broker + shipper + consumer ------------------------------------------


@pytest.fixture(scope="module")
def pipeline(cfg: DynasealConfig, config_path: Path, stack: object, receiver: Receiver,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """A private broker, shipper and consumer; the consumer gives up after 3 attempts, and parks a tenant
    after 3 failures in a row.

    Parking at the third failure, not the default fifth, makes one failing event enough to find the tenant
    down: with 5, parking needed the failures of two events to interleave, and an event that reached the
    consumer alone (the shipper ships what Envoy flushed) went to the DLQ after its 3 attempts instead.
    """
    directory = tmp_path_factory.mktemp("faults")
    config = pipeline_config(config_path, directory, receiver.url, kafka_port=free_ports(1)[0], max_attempts=3,
                             timeout_s=1.0)
    services = Services(config, cfg, directory / "logs")
    services.consumer_args = ["--park-after", "3"]
    try:
        for name in ("kafka", "consumer", "shipper"):
            services.start(name)
        yield services
    finally:
        services.stop()


@pytest.fixture(autouse=True)
def explain_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed test prints the services' recent log lines (what CI keeps of a failure is its output)."""
    yield
    if "pipeline" in request.fixturenames and failed(request):
        print(request.getfixturevalue("pipeline").log_tails())


def send(cfg: DynasealConfig, key: str, count: int, pause_s: float = 0.0) -> list[int]:
    """`count` non-streaming completions with one key; their totals."""
    totals = []
    for _ in range(count):
        totals.append(complete(cfg, key, max_tokens=8))
        if pause_s:
            time.sleep(pause_s)
    return totals


def in_background(cfg: DynasealConfig, key: str, count: int, pause_s: float) -> tuple[threading.Thread, list[int]]:
    """Send requests from a thread; the list fills with their totals."""
    totals: list[int] = []
    thread = threading.Thread(target=lambda: totals.extend(send(cfg, key, count, pause_s)), daemon=True)
    thread.start()
    return thread, totals


def tokens(delivered: dict[str, dict[str, Any]]) -> int:
    """Total tokens reported by these callbacks."""
    return sum(int(payload["tokens"]) for payload in delivered.values())


def assert_each_delivered_once_by_id(receiver: Receiver, jti: str, count: int) -> dict[str, dict[str, Any]]:
    """Every request of the key reached the receiver; repeats carry the same id and the same body."""
    delivered = receiver.delivered(jti)
    assert len(delivered) == count, f"expected {count} distinct callbacks, got {len(delivered)}"
    by_id: dict[str, list[Delivery]] = {}
    for attempt in receiver.for_key(jti):
        by_id.setdefault(attempt.webhook_id, []).append(attempt)
    for webhook_id, attempts in by_id.items():
        assert all(a.payload == attempts[0].payload for a in attempts), f"repeats of {webhook_id} differ"
        assert attempts[0].payload["request_id"] == webhook_id
    assert receiver.bad_signatures == 0
    return delivered


@pytest.mark.integration
def test_consumer_killed_mid_run_redelivers_with_the_same_webhook_id(
        cfg: DynasealConfig, pipeline: Services, receiver: Receiver, issuer_key: SigningKey,
        redis_client: Redis) -> None:
    key, jti = new_key(issuer_key)
    killed, lock = threading.Event(), threading.Lock()

    def kill_on_fifth(delivery: Delivery) -> None:
        # Killed while the 5th callback is being answered: it was received but never acknowledged.
        if delivery.payload.get("key_id") != jti:
            return
        with lock:
            if killed.is_set() or len(receiver.for_key(jti)) < 5:
                return
            killed.set()
        pipeline.kill("consumer")

    receiver.on_receive = kill_on_fifth
    try:
        thread, totals = in_background(cfg, key, 20, 0.02)
        wait_until(killed.is_set, 30, "the consumer to be killed mid-run")
        pipeline.start("consumer")
        thread.join(30)
        wait_until(lambda: len(receiver.delivered(jti)) == 20, 40, "every callback after the restart")
    finally:
        receiver.on_receive = None

    def repeats() -> list[str]:
        return [wid for wid, n in Counter(d.webhook_id for d in receiver.for_key(jti)).items() if n > 1]

    # The receiver records a callback before it answers: when all 20 were in flight at the kill, all 20 are
    # recorded at once, and the repeat comes only once the restarted consumer joined the group and read again.
    wait_until(lambda: bool(repeats()), 40, "the callback in flight at the kill repeated, with its webhook-id")
    assert_each_delivered_once_by_id(receiver, jti, 20)  # the repeats included: same id, same body
    assert tokens(receiver.delivered(jti)) == sum(totals)
    # Settled once per request although some events were handled twice.
    wait_until(settled(redis_client, jti, sum(totals), 20), 10, "settlement to the true total")


@pytest.mark.integration
def test_sigterm_drains_in_flight_callbacks_before_exit(
        cfg: DynasealConfig, pipeline: Services, receiver: Receiver, issuer_key: SigningKey) -> None:
    key, jti = new_key(issuer_key)
    exit_codes: list[int] = []
    stopper = threading.Thread(target=lambda: exit_codes.append(pipeline.terminate("consumer")), daemon=True)
    once = threading.Lock()

    def slow(payload: dict[str, object], attempt: int) -> int:
        if once.acquire(blocking=False):
            stopper.start()  # SIGTERM while this callback is in flight
        time.sleep(0.5)  # slow, yet within the tenant's 1 s callback timeout
        return 200

    receiver.behaviours[jti] = slow
    send(cfg, key, 3)
    wait_until(lambda: bool(exit_codes), 30, "the consumer to exit after SIGTERM")
    assert exit_codes == [0]
    pipeline.start("consumer")
    wait_until(lambda: len(receiver.delivered(jti)) == 3, 30, "every callback")
    # What was in flight at SIGTERM finished and was committed: nothing is delivered twice.
    attempts = [(d.webhook_id, d.status) for d in receiver.for_key(jti)]
    assert Counter(webhook_id for webhook_id, _ in attempts).most_common(1)[0][1] == 1, attempts


@pytest.mark.integration
def test_shipper_killed_mid_run_resumes_from_its_checkpoint(
        cfg: DynasealConfig, pipeline: Services, receiver: Receiver, issuer_key: SigningKey,
        redis_client: Redis) -> None:
    key, jti = new_key(issuer_key)
    thread, totals = in_background(cfg, key, 20, 0.03)
    wait_until(lambda: len(receiver.delivered(jti)) >= 3, 30, "the first callbacks")
    pipeline.kill("shipper")
    saved = checkpoint.load(pipeline.checkpoint).acked
    thread.join(30)
    assert saved is not None and saved.offset > 0
    pipeline.start("shipper")
    wait_until(lambda: len(receiver.delivered(jti)) == 20, 40, "every callback after the shipper restart")
    assert_each_delivered_once_by_id(receiver, jti, 20)
    assert tokens(receiver.delivered(jti)) == sum(totals)
    wait_until(lambda: pipeline.metric("shipper", "dynaseal_shipper_lag_bytes") == 0, 10, "shipper lag 0")
    wait_until(settled(redis_client, jti, sum(totals), 20), 10, "settlement to the true total")


@pytest.mark.integration
def test_receiver_failing_for_a_while_gets_retried_with_the_same_webhook_id(
        cfg: DynasealConfig, pipeline: Services, receiver: Receiver, issuer_key: SigningKey) -> None:
    key, jti = new_key(issuer_key)
    receiver.behaviours[jti] = lambda payload, attempt: 503 if attempt == 1 else (500 if attempt == 2 else 200)
    retries_before = pipeline.metric("consumer", "dynaseal_consumer_callback_retries_total")
    send(cfg, key, 5)
    wait_until(lambda: len(receiver.delivered(jti)) == 5, 30, "delivery after the receiver recovers")
    assert_each_delivered_once_by_id(receiver, jti, 5)
    attempts = Counter(d.webhook_id for d in receiver.for_key(jti))
    assert set(attempts.values()) == {3}, "two failures, then a success, for every callback"
    # Retried in place, or (three failures in a row: the tenant looked down) parked and replayed: the
    # same webhook-id either way, three attempts each.
    retried = pipeline.metric("consumer", "dynaseal_consumer_callback_retries_total") - retries_before
    assert retried + pipeline.metric("consumer", "dynaseal_consumer_parked_replayed_total") >= 5


def _dlq_records(pipeline: Services, jti: str) -> list[tuple[UsageEvent, dict[str, str]]]:
    consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{pipeline.ports['kafka']}", enable_auto_commit=False,
                             consumer_timeout_ms=1500)
    try:
        partition = TopicPartition(DLQ_TOPIC, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        found = []
        for record in consumer:
            event = UsageEvent.FromString(record.value)
            if event.jti == jti:
                found.append((event, {k: v.decode() for k, v in record.headers}))
        return found
    finally:
        consumer.close()


@pytest.mark.integration
def test_receiver_rejecting_with_400_sends_events_to_the_dlq(
        cfg: DynasealConfig, pipeline: Services, receiver: Receiver, issuer_key: SigningKey) -> None:
    key, jti = new_key(issuer_key)
    receiver.behaviours[jti] = lambda payload, attempt: 400
    send(cfg, key, 3)
    wait_until(lambda: len(_dlq_records(pipeline, jti)) == 3, 30, "three events in the DLQ")
    records = _dlq_records(pipeline, jti)
    assert {headers["dlq_reason"] for _, headers in records} == {"rejected:http_400"}
    assert len({event.request_id for event, _ in records}) == 3
    assert Counter(d.webhook_id for d in receiver.for_key(jti)) == Counter({e.request_id: 1 for e, _ in records})
    assert not receiver.delivered(jti)


@pytest.mark.integration
def test_receiver_down_parks_events_and_delivers_them_once_it_answers_again(
        cfg: DynasealConfig, pipeline: Services, receiver: Receiver, issuer_key: SigningKey) -> None:
    key, jti = new_key(issuer_key)
    answer = [503]
    receiver.behaviours[jti] = lambda payload, attempt: answer[0]
    parked = pipeline.metric("consumer", "dynaseal_consumer_parked_total")
    send(cfg, key, 2)
    # Failing, not rejecting: parked for the automatic replay, not dead-lettered.
    wait_until(lambda: pipeline.metric("consumer", "dynaseal_consumer_parked_total") >= parked + 2, 30,
               "two events parked")
    wait_until(lambda: max(Counter(d.webhook_id for d in receiver.for_key(jti)).values()) >= 4, 30,
               "the parked events probed again")
    assert not _dlq_records(pipeline, jti)
    answer[0] = 200
    wait_until(lambda: len(receiver.delivered(jti)) == 2, 60, "delivery once the receiver answers")
    assert_each_delivered_once_by_id(receiver, jti, 2)
    assert not _dlq_records(pipeline, jti)


@pytest.mark.integration
def test_broker_down_while_traffic_continues_loses_nothing(
        cfg: DynasealConfig, pipeline: Services, receiver: Receiver, issuer_key: SigningKey,
        redis_client: Redis) -> None:
    key, jti = new_key(issuer_key)
    before = send(cfg, key, 5)
    wait_until(lambda: len(receiver.delivered(jti)) == 5, 30, "callbacks before the outage")
    # Down before the next records are acknowledged: the dev broker keeps records in memory only
    # (see kafka-tansu-notes), so a test of "nothing lost" must not rely on what it held.
    pipeline.kill("kafka")
    during = send(cfg, key, 10, pause_s=0.1)
    wait_until(lambda: pipeline.metric("shipper", "dynaseal_shipper_lag_lines") >= 10, 15,
               "the shipper to hold the lines it cannot get acknowledged")
    assert len(receiver.delivered(jti)) == 5
    pipeline.start("kafka")
    wait_until(lambda: len(receiver.delivered(jti)) == 15, 60, "the events written while the broker was down")
    delivered = assert_each_delivered_once_by_id(receiver, jti, 15)
    assert tokens(delivered) == sum(before + during)
    wait_until(settled(redis_client, jti, sum(before + during), 15), 10, "settlement to the true total")
    assert pipeline.metric("shipper", "dynaseal_shipper_produce_errors_total") >= 1
    assert json.loads(pipeline.checkpoint.read_text())["acked"]["offset"] > 0
