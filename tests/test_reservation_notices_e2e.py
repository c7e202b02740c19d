"""The ledger closes what the log lost: a request whose log line was destroyed still reaches its tenant.

A private Envoy and a private authz with a reservation TTL of seconds (`gateway.reservation_ttl_s`),
a private broker, shipper and consumer (sweeping every second). The shipper is stopped, requests are
served, and the access log is truncated in place before the shipper comes back: their lines are gone.
Each admitted request must still get exactly one callback: its real usage, or its reservation
(`usage_source: reservation`) once the reservation expired.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_ports
from ledger_sync import counters
from pipeline_harness import Receiver, new_key, pipeline_config, wait_until
from reconcile import admitted_by_authz, admitted_ids, log_lines
from redis import Redis
from test_shipper_faults import Drill, send

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey
from dynaseal_launcher.probes import grpc_serving
from dynaseal_launcher.processes import ServiceSpec
from dynaseal_launcher.stack import AUTHZ_SERVICE_NAME

pytestmark = pytest.mark.integration
TTL_S = 4


class ExpiryDrill(Drill):
    """The shipper drill with an authz of its own (short reservations) and a consumer sweeping every second."""

    def spec(self, name: str) -> ServiceSpec:
        """authz of our own; the consumer sweeps often; the rest as the shipper drill runs them."""
        if name == "authz":
            target = f"127.0.0.1:{self.ports['authz']}"
            return ServiceSpec("authz", [sys.executable, "-m", "authz_service", "--config", str(self.config_path)],
                               "", lambda: grpc_serving(target, AUTHZ_SERVICE_NAME),
                               env={"PYTHONPATH": str(REPO)}, ready_timeout_s=30)
        spec = super().spec(name)
        if name == "consumer":
            return replace(spec, argv=[*spec.argv, "--expiry-sweep-s", "1"])
        return spec


@pytest.fixture(scope="module")
def drill(cfg: DynasealConfig, config_path: Path, stack: object, receiver: Receiver, redis_server: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExpiryDrill]:
    directory = tmp_path_factory.mktemp("expiry-drill")
    config = pipeline_config(config_path, directory, receiver.url, kafka_port=free_ports(1)[0])
    raw = yaml.safe_load(config.read_text())
    ports = raw["gateway"]["ports"]
    ports["envoy"], ports["envoy_admin"], ports["authz"], ports["authz_metrics"] = free_ports(4)
    raw["gateway"]["reservation_ttl_s"] = TTL_S
    # A Redis of its own: the session stack's consumers sweep the session Redis too, and would report
    # this drill's expired reservations to the session's issuer instead of this drill's receiver.
    raw["gateway"]["redis_url"] = redis_server
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    services = ExpiryDrill(config, cfg, directory / "logs")
    try:
        for name in ("kafka", "authz", "envoy", "consumer", "shipper"):
            services.start(name)
        yield services
    finally:
        services.stop()


def test_lines_destroyed_while_the_shipper_was_down_still_reach_the_tenant_once(
        drill: ExpiryDrill, receiver: Receiver, issuer_key: SigningKey, redis_server: str) -> None:
    redis_client = Redis.from_url(redis_server)
    key, jti = new_key(issuer_key)
    send(drill, key, 3)
    wait_until(lambda: len(receiver.delivered(jti)) == 3, 30, "the first callbacks")
    assert drill.terminate("shipper") == 0
    send(drill, key, 5)
    time.sleep(0.5)  # Envoy flushes every 200 ms
    lost = admitted_ids(log_lines(drill.access_log), {jti}) - set(receiver.delivered(jti))
    assert len(lost) == 5
    with drill.access_log.open("r+b") as handle:
        handle.truncate(0)  # the five lines are gone before anything read them
    drill.start("shipper")
    send(drill, key, 3)
    admitted = admitted_by_authz(redis_client, {jti})
    assert admitted == 11
    try:
        wait_until(lambda: len(receiver.delivered(jti)) == admitted, TTL_S + 60,
                   "a callback for every admitted request")
    finally:
        print("delivered", Counter(p["usage_source"] for p in receiver.delivered(jti).values()),
              "notices", drill.metric("consumer", "dynaseal_consumer_reservation_notices_total"))
    time.sleep(2.5)  # two more sweeps: nothing is reported twice
    delivered = {p["request_id"]: p for p in receiver.delivered(jti).values()}
    sources = Counter(p["usage_source"] for p in delivered.values())
    assert sources == Counter({"upstream": 6, "reservation": 5}), sources
    reserved = {rid for rid, p in delivered.items() if p["usage_source"] == "reservation"}
    assert reserved == lost
    ok = [d for d in receiver.for_key(jti) if 200 <= d.status < 300]
    assert len(ok) == admitted  # none twice
    for rid in reserved:
        payload = delivered[rid]
        assert payload["key_id"] == jti and payload["tokens"] > 0 and payload["request_id"] == rid
    webhook_ids = {d.webhook_id for d in ok if d.payload["usage_source"] == "reservation"}
    assert webhook_ids == {rid + ".reservation" for rid in reserved}
    # The ledger billed the lost requests at their reservations, the others at their usage; nothing stays open.
    assert counters(redis_client, "671249a93f1cf2f8bf9b2b82", jti).get("reserved", 0) == 0
