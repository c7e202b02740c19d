"""A private broker and callback consumer for two tenants, each with its own verifying receiver.

Events are produced straight to the usage topic (the shipper's job), so the tests choose exactly
which tenant gets what and when; settlement goes to the test Redis of `conftest.redis_server`.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from conftest import free_ports
from kafka import KafkaConsumer, TopicPartition
from ledger_sync import sync_client
from pipeline_harness import REPO, Receiver
from prometheus_client.parser import text_string_to_metric_families

from dynaseal.ledger import redis_keys
from dynaseal.pb import UsageEvent
from dynaseal.usage import kafka_io
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import ServiceSpec, Supervisor, tcp_open
from dynaseal_launcher.stack import tansu_binary

SLOW, FAST = "tenant-slow", "tenant-fast"


def _webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class ConsumerRig:
    """tansu + `python -m callback_consumer` on free ports; one Receiver per tenant."""

    def __init__(self, directory: Path, redis_url: str, consumer_args: list[str] | None = None,
                 callback: dict[str, Any] | None = None) -> None:
        self.directory = directory
        hooks = {SLOW: _webhook_secret(), FAST: _webhook_secret()}
        self.receivers = {tenant: Receiver(secret) for tenant, secret in hooks.items()}
        kafka, metrics, *others = free_ports(10)
        self.bootstrap = f"127.0.0.1:{kafka}"
        self.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        self.consumer_args = consumer_args or []
        self.redis_url = redis_url
        suffix = uuid.uuid4().hex[:8].upper()
        tenants: list[dict[str, Any]] = []
        for tenant, receiver in self.receivers.items():
            name = tenant.split("-")[1].upper()
            key_env, hook_env = f"DYNASEAL_TEST_{name}_KEY_{suffix}", f"DYNASEAL_TEST_{name}_HOOK_{suffix}"
            os.environ[key_env] = secrets.token_hex(24)
            os.environ[hook_env] = hooks[tenant]
            tenants.append({"id": tenant, "keys": [{"alg": "HS256", "secret_env": key_env}],
                            "callback": {"url": receiver.url, "secret_env": hook_env, **(callback or {})}})
        ports = dict(zip(["envoy", "envoy_admin", "issuer", "authz", "mock_upstream", "redis", "authz_metrics",
                          "shipper_metrics"], others, strict=True))
        raw = {"gateway": {"host": "127.0.0.1", "data_dir": str(directory / "data"), "redis_url": redis_url,
                           "kafka_bootstrap": self.bootstrap,
                           "ports": {**ports, "kafka": kafka, "consumer_metrics": metrics}},
               "tenants": tenants}
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "consumer.yaml"
        self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.supervisor = Supervisor(directory / "logs", "127.0.0.1")
        self.group_id = f"test-{uuid.uuid4().hex[:8]}"
        self._producer: Any = None

    def forget_callback_state(self) -> None:
        """Drop what an earlier rig left in the shared test Redis for these two tenant ids.

        The group's callback state lives in Redis per tenant (parked counters, callback leases): a
        consumer killed by an earlier test of the same worker can leave a tenant parked or its slots
        leased, and this rig's consumer would then park or wait where the test expects a backlog.
        """
        client = sync_client(self.redis_url, timeout_s=5.0)
        try:
            for tenant in (SLOW, FAST):
                tag = redis_keys.tenant_tag(tenant)[1:-1]
                stale = list(client.scan_iter(match=f"{redis_keys.PREFIX}:{{cb:{tag}}}:*"))
                if stale:
                    client.delete(*stale)
        finally:
            client.close()

    def start(self) -> None:
        """Receivers, broker, consumer; returns once the consumer serves metrics."""
        self.forget_callback_state()
        for receiver in self.receivers.values():
            receiver.__enter__()
        port = int(self.bootstrap.rsplit(":", 1)[1])
        self.supervisor.start(ServiceSpec(
            "kafka", [tansu_binary(), "broker", "--listener-url", f"tcp://{self.bootstrap}",
                      "--advertised-listener-url", f"tcp://{self.bootstrap}", "--storage-engine", "memory://tansu/"],
            "", lambda: tcp_open("127.0.0.1", port)))
        kafka_io.wait_for_topics(self.bootstrap)
        self.supervisor.start(ServiceSpec(
            "consumer", [sys.executable, "-m", "callback_consumer", "--config", str(self.config_path),
                         "--group-id", self.group_id, "--retry-base-s", "0.2", "--retry-cap-s", "1",
                         "--session-timeout-ms", "3000", "--heartbeat-interval-ms", "300", *self.consumer_args],
            "", lambda: http_ok(self.metrics_url), env={"PYTHONPATH": str(REPO)}, ready_timeout_s=30))

    def stop(self) -> None:
        """Everything down."""
        if self._producer is not None:
            kafka_io.close_quietly(self._producer)
        self.supervisor.stop()
        for receiver in self.receivers.values():
            receiver.__exit__()

    def produce(self, tenant: str, jti: str, count: int = 1) -> list[str]:
        """`count` usage events of one key, acknowledged by the broker; their request ids."""
        if self._producer is None:
            self._producer = kafka_io.new_producer(self.bootstrap, "test-producer", linger_ms=0)
        ids = []
        for _ in range(count):
            request_id = f"req-{uuid.uuid4().hex[:12]}"
            event = UsageEvent(request_id=request_id, tenant=tenant, jti=jti, event_id=f"evt-{jti}",
                               model="gpt-4o-mini", status=200, prompt_tokens=7, completion_tokens=5,
                               total_tokens=12, reserved=40, usage_source="upstream",
                               started_at="2026-11-23T10:32:22.903Z", duration_ms=80,
                               shipped_at_ms=int(time.time() * 1000))
            self._producer.send(kafka_io.USAGE_TOPIC, key=jti.encode(), value=event.SerializeToString()).get(10)
            ids.append(request_id)
        return ids

    def dlq(self, jti: str | None = None) -> list[tuple[UsageEvent, dict[str, str]]]:
        """Every DLQ record (of one key), oldest first, with its headers."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, consumer_timeout_ms=1500)
        try:
            partition = TopicPartition(kafka_io.DLQ_TOPIC, 0)
            consumer.assign([partition])
            consumer.seek_to_beginning(partition)
            found = []
            for record in consumer:
                event = UsageEvent.FromString(record.value)
                if jti is None or event.jti == jti:
                    found.append((event, {k: v.decode() for k, v in record.headers}))
            return found
        finally:
            consumer.close()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of one metric's samples (matching labels), scraped from the consumer."""
        total = 0.0
        for family in text_string_to_metric_families(httpx.get(self.metrics_url, timeout=2).text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    total += sample.value
        return total
