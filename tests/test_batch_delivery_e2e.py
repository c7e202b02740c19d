"""Batched delivery end to end: a private broker and consumer send the demo tenant's callbacks in batches
to the bundled issuer (the session stack's, real process), which stores each event by its own id.

One event of the batch is one the issuer refuses (an `event_id` over its 256-character limit): the
rest of the batch is acknowledged, the refused one is sent again alone, refused again, and goes to
the DLQ. Every other event is stored once.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_TENANT, free_ports
from kafka import KafkaConsumer, TopicPartition
from pipeline_harness import Services, pipeline_config, wait_until

from dynaseal.config import DynasealConfig
from dynaseal.pb import UsageEvent
from dynaseal.usage import kafka_io

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def batching(cfg: DynasealConfig, config_path: Path, stack: object,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    directory = tmp_path_factory.mktemp("batches")
    issuer = f"http://127.0.0.1:{cfg.gateway.ports.issuer}/v1/callback/usage"
    config = pipeline_config(config_path, directory, issuer, kafka_port=free_ports(1)[0], max_attempts=2)
    raw = yaml.safe_load(config.read_text())
    demo = next(t for t in raw["tenants"] if t["id"] == DEMO_TENANT)
    demo["callback"]["batch"] = {"max_events": 5, "max_wait_ms": 300}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    services = Services(config, cfg, directory / "logs")
    try:
        for name in ("kafka", "consumer"):
            services.start(name)
        yield services
    finally:
        services.stop()


def _stored(cfg: DynasealConfig, ids: list[str]) -> dict[str, int]:
    db = Path(cfg.gateway.data_dir) / "issuer" / "issuer.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        rows = conn.execute(f"SELECT webhook_id, count(*) FROM callbacks WHERE webhook_id IN "
                            f"({','.join('?' * len(ids))}) GROUP BY webhook_id", ids).fetchall()
    return {str(w): int(n) for w, n in rows}


def _dlq(services: Services, jti: str) -> list[tuple[UsageEvent, dict[str, str]]]:
    consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{services.ports['kafka']}", enable_auto_commit=False,
                             consumer_timeout_ms=1500)
    try:
        partition = TopicPartition(kafka_io.DLQ_TOPIC, 0)
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


def test_a_batch_partly_refused_stores_the_rest_and_retries_the_refused_alone(
        cfg: DynasealConfig, batching: Services) -> None:
    jti = f"batch-{uuid.uuid4().hex[:8]}"
    producer = kafka_io.new_producer(f"127.0.0.1:{batching.ports['kafka']}", "batch-test", linger_ms=0)
    ids, refused = [], ""
    try:
        for i in range(9):
            rid = f"req-{uuid.uuid4().hex[:12]}"
            event_id = "x" * 300 if i == 3 else f"evt-{jti}"
            if i == 3:
                refused = rid
            else:
                ids.append(rid)
            event = UsageEvent(request_id=rid, tenant=DEMO_TENANT, jti=jti, event_id=event_id, model="deepseek-chat",
                               status=200, prompt_tokens=7, completion_tokens=5, total_tokens=12, reserved=40,
                               usage_source="upstream", started_at="2026-11-23T10:32:22.903Z", duration_ms=80,
                               shipped_at_ms=int(time.time() * 1000))
            producer.send(kafka_io.USAGE_TOPIC, key=jti.encode(), value=event.SerializeToString())
        producer.flush(10)
    finally:
        producer.close()
    wait_until(lambda: len(_stored(cfg, ids)) == len(ids), 30, "every accepted event stored")
    wait_until(lambda: len(_dlq(batching, jti)) == 1, 30, "the refused event in the DLQ")
    assert _stored(cfg, ids) == dict.fromkeys(ids, 1)
    assert not _stored(cfg, [refused])
    [(event, headers)] = _dlq(batching, jti)
    assert event.request_id == refused and headers["dlq_reason"] == "rejected:http_400"
    # Sent in batches (one at least partly refused), not one request per event.
    partial = batching.metric("consumer", "dynaseal_consumer_callback_batches_total", {"result": "partial"})
    complete = batching.metric("consumer", "dynaseal_consumer_callback_batches_total", {"result": "complete"})
    assert partial >= 1 and partial + complete <= 4
