"""Fault drills of the log shipper against real processes: nothing admitted is lost, whatever the log or broker does.

A private Envoy (own ports, own access log; the session's authz, Redis and mock LLM behind it),
a private tansu broker, shipper and consumer; callbacks go to a receiver in this process. Each
drill reconciles what authz admitted (Redis), what the access log holds and what was delivered.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import REPO, failed, free_ports
from pipeline_harness import Receiver, Services, complete, new_key, pipeline_config, wait_until
from reconcile import Report, admitted_by_authz, admitted_ids, log_lines, reconcile
from redis import Redis

from dynaseal.config import DynasealConfig, load_config
from dynaseal.keys.mint import SigningKey
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import ServiceSpec
from log_shipper import checkpoint
from log_shipper.rotation import ours

pytestmark = pytest.mark.integration


class Drill(Services):
    """The harness's services plus a private Envoy; the shipper tails that Envoy's log."""

    def __init__(self, config_path: Path, session_cfg: DynasealConfig, log_dir: Path) -> None:
        super().__init__(config_path, session_cfg, log_dir)
        self.private = load_config(config_path)
        self.access_log = Path(self.private.gateway.data_dir) / "envoy" / "access.log"
        self.envoy_file = self.access_log.parent / "envoy.yaml"
        self.access_log.parent.mkdir(parents=True, exist_ok=True)
        self.envoy_file.write_text(envoy_config.render(self.private, self.access_log))
        self.shipper_args: list[str] = []

    def spec(self, name: str) -> ServiceSpec:
        """envoy and shipper of our own; the rest as the harness runs them."""
        admin = f"http://127.0.0.1:{self.ports['envoy_admin']}"
        if name == "envoy":
            return ServiceSpec("envoy", [envoy_config.envoy_binary(), "-c", str(self.envoy_file),
                                         "--disable-hot-restart", "--log-level", "warn",
                                         "--file-flush-interval-msec", "200", "--concurrency", "2"],
                               "", lambda: http_ok(f"{admin}/ready"))
        if name == "shipper":
            port = self.ports["shipper_metrics"]
            return ServiceSpec("shipper", [sys.executable, "-m", "log_shipper", "--config", str(self.config_path),
                                           "--access-log", str(self.access_log), "--group-id", self.group_id,
                                           *self.shipper_args],
                               "", lambda: http_ok(f"http://127.0.0.1:{port}/metrics"),
                               env={"PYTHONPATH": str(REPO)}, ready_timeout_s=30)
        return super().spec(name)

    def reopen_logs(self) -> None:
        """Envoy's admin API: reopen the access log (a rotation's last step)."""
        httpx.post(f"http://127.0.0.1:{self.ports['envoy_admin']}/reopen_logs", timeout=5).raise_for_status()


@pytest.fixture(scope="module")
def drill(cfg: DynasealConfig, config_path: Path, stack: object, receiver: Receiver,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    """Private Envoy, broker, consumer and shipper."""
    directory = tmp_path_factory.mktemp("shipper-drills")
    config = pipeline_config(config_path, directory, receiver.url, kafka_port=free_ports(1)[0])
    raw = yaml.safe_load(config.read_text())
    raw["gateway"]["ports"]["envoy"], raw["gateway"]["ports"]["envoy_admin"] = free_ports(2)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    services = Drill(config, cfg, directory / "logs")
    try:
        for name in ("kafka", "envoy", "consumer", "shipper"):
            services.start(name)
        yield services
    finally:
        services.stop()


@pytest.fixture(autouse=True)
def explain_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed test prints the services' recent log lines (what CI keeps of a failure is its output)."""
    yield
    if "drill" in request.fixturenames and failed(request):
        print(request.getfixturevalue("drill").log_tails())


def send(drill: Drill, key: str, count: int, pause_s: float = 0.0) -> int:
    """`count` completions through the private Envoy; how many succeeded."""
    done = 0
    for _ in range(count):
        complete(drill.private, key, max_tokens=8)
        done += 1
        if pause_s:
            time.sleep(pause_s)
    return done


def received(receiver: Receiver, jti: str) -> list[str]:
    """One request id per callback the receiver answered 2xx."""
    return [d.payload["request_id"] for d in receiver.for_key(jti) if 200 <= d.status < 300]


def settle(drill: Drill, receiver: Receiver, redis_client: Redis, jti: str, expected: set[str] | int,
           name: str, timeout_s: float = 45) -> Report:
    """Wait until every expected request arrived (or time out), then reconcile and print the numbers."""
    count = expected if isinstance(expected, int) else len(expected)
    try:
        wait_until(lambda: len(set(received(receiver, jti))) >= count, timeout_s, f"{count} callbacks")
    finally:
        report = reconcile(admitted_by_authz(redis_client, {jti}), expected, received(receiver, jti))
        print(report.line(name))
    return report


def test_truncated_while_the_shipper_is_stopped_loses_nothing(
        drill: Drill, receiver: Receiver, issuer_key: SigningKey, redis_client: Redis) -> None:
    key, jti = new_key(issuer_key)
    send(drill, key, 6)
    wait_until(lambda: len(set(received(receiver, jti))) == 6, 30, "the first callbacks")
    assert drill.terminate("shipper") == 0
    before = admitted_ids(log_lines(drill.access_log), {jti})
    acked = checkpoint.load(drill.checkpoint).acked
    assert acked is not None
    offset = acked.offset
    with drill.access_log.open("r+b") as handle:
        handle.truncate(0)  # Envoy appends (O_APPEND): its next line lands at offset 0
    sent = 0
    while drill.access_log.stat().st_size <= offset + 2048 and sent < 200:
        sent += send(drill, key, 5)
        time.sleep(0.3)  # Envoy flushes every 200 ms
    drill.start("shipper")
    expected = before | admitted_ids(log_lines(drill.access_log), {jti})
    report = settle(drill, receiver, redis_client, jti, expected, "truncated-while-stopped")
    assert len(expected) == 6 + sent
    assert report.clean, report
    assert drill.metric("shipper", "dynaseal_shipper_log_restarts_total") >= 1


def test_rotation_that_creates_the_new_file_before_envoy_reopens_loses_nothing(
        drill: Drill, receiver: Receiver, issuer_key: SigningKey, redis_client: Redis) -> None:
    key, jti = new_key(issuer_key)
    send(drill, key, 5)
    wait_until(lambda: len(set(received(receiver, jti))) == 5, 30, "the first callbacks")
    rotated = drill.access_log.with_name("access.log.1")
    drill.access_log.rename(rotated)
    drill.access_log.write_bytes(b"")  # logrotate `create`: the new file exists, Envoy still writes the old
    time.sleep(1.8)  # quiet for longer than the shipper's grace, the new file empty
    send(drill, key, 10)  # Envoy has not reopened: these go to the old file
    time.sleep(1.5)
    in_old = len(admitted_ids(rotated.read_bytes().splitlines(), {jti}))
    drill.reopen_logs()
    send(drill, key, 10)
    time.sleep(0.5)  # Envoy's flush interval
    in_new = len(admitted_ids(drill.access_log.read_bytes().splitlines(), {jti}))
    expected = admitted_ids(log_lines(drill.access_log), {jti})
    report = settle(drill, receiver, redis_client, jti, expected, "rotation-create-mode")
    assert (in_old, in_new) == (15, 10), "the old file got the lines written before the reopen"
    assert len(expected) == 25
    assert report.clean, report
    rotated.unlink()


def test_broker_restart_while_the_consumer_is_behind_loses_nothing(
        drill: Drill, receiver: Receiver, issuer_key: SigningKey, redis_client: Redis) -> None:
    key, jti = new_key(issuer_key)
    assert drill.terminate("consumer") == 0
    produced = drill.metric("shipper", "dynaseal_shipper_events_produced_total")
    resets = drill.metric("shipper", "dynaseal_shipper_broker_resets_total")
    send(drill, key, 12)
    wait_until(lambda: drill.metric("shipper", "dynaseal_shipper_events_produced_total") >= produced + 12, 20,
               "the broker to acknowledge every event")
    assert drill.metric("shipper", "dynaseal_shipper_unconsumed_seconds") >= 0
    # The dev broker keeps records in memory: a restart loses the 12 acknowledged, unconsumed events.
    drill.kill("kafka")
    drill.start("kafka")
    wait_until(lambda: drill.metric("shipper", "dynaseal_shipper_broker_resets_total") > resets, 30,
               "the shipper to notice the broker lost its records")
    drill.start("consumer")
    expected = admitted_ids(log_lines(drill.access_log), {jti})
    report = settle(drill, receiver, redis_client, jti, expected, "broker-restart-consumer-behind")
    assert len(expected) == 12
    assert report.clean, report
    wait_until(lambda: drill.metric("shipper", "dynaseal_shipper_unconsumed_seconds") == 0, 20,
               "the group to commit every event")


def test_the_shipper_rotates_the_log_through_envoy_and_deletes_only_what_is_consumed(
        drill: Drill, receiver: Receiver, issuer_key: SigningKey, redis_client: Redis) -> None:
    drill.terminate("shipper")
    drill.shipper_args = ["--access-log-max-bytes", "6000"]
    drill.start("shipper")
    key, jti = new_key(issuer_key)
    sent = send(drill, key, 40, pause_s=0.03)
    report = settle(drill, receiver, redis_client, jti, sent, "size-rotation")
    assert report.lost == 0 and report.admitted == sent, report
    assert drill.metric("shipper", "dynaseal_shipper_rotations_total") >= 2
    # Rotated files go once the group committed them; the newest may still hold the consumed position.
    wait_until(lambda: len(ours(drill.access_log)) <= 1, 20, "the consumed rotated logs to be deleted")
    assert drill.access_log.exists()
    wait_until(lambda: drill.metric("shipper", "dynaseal_shipper_lag_lines") == 0, 10, "lag 0")
    assert drill.metric("shipper", "dynaseal_shipper_lag_seconds") == 0
