"""The usage store against the callbacks actually delivered: a mixed run through a real broker (tansu), the real
callback consumer and Redis, with the usage recorder and the callback consumer killed (-9) midway and
records repeated.

Events are produced straight to the usage topic (the shipper's job, priced by the same money code), so the
run holds every kind the store must count: priced and unpriced models, streams, upstream errors (no
usage), content-rule refusals, an expired reservation's notice and the real line that arrives after it.
"""

from __future__ import annotations

import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import free_ports
from consumer_support import FAST, SLOW, ConsumerRig
from pipeline_harness import REPO, wait_until
from sqlalchemy import Engine, func, select

from dynaseal.money.pricing import Price, TokenUsage, format_amount, to_micros
from dynaseal.pb import UsageEvent
from dynaseal.usage import kafka_io
from dynaseal.usage_store.queries import UsageFilter, refusals_by_code, usage_totals
from dynaseal.usage_store.schema import make_engine, usage_requests
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import RunningService, ServiceSpec, Supervisor

pytestmark = pytest.mark.integration
PRICES = {"gpt-4o-mini": Price("USD", Decimal("0.15"), Decimal("0.075"), Decimal("0.60"), Decimal("0.60")),
          "gpt-4o": Price("USD", Decimal("2.50"), Decimal("1.25"), Decimal("10.00"), Decimal("10.00"))}


@dataclass
class Run:
    """What was produced, by kind (for the assertions' messages)."""

    produced: list[UsageEvent] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)


def usage_event(tenant: str, model: str, prompt: int, completion: int, *, status: int = 200, stream: bool = False,
                request_id: str | None = None, source: str = "upstream") -> UsageEvent:
    """An admitted request's event, priced as the shipper prices it (dynaseal.money)."""
    jti = f"k-{tenant}-{model}"
    if source == "none":
        prompt = completion = 0
    event = UsageEvent(request_id=request_id or f"req-{uuid.uuid4().hex[:16]}", tenant=tenant, jti=jti, event_id=jti,
                       model=model, status=status, stream=stream, prompt_tokens=prompt, completion_tokens=completion,
                       total_tokens=prompt + completion, reserved=200, usage_source=source,
                       started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), duration_ms=40,
                       shipped_at_ms=int(time.time() * 1000))
    price = PRICES.get(model)
    if price is None:
        event.unpriced = True
    else:
        cost = price.cost(TokenUsage(prompt, completion))
        event.cost, event.currency, event.cost_micros = format_amount(cost), "USD", to_micros(cost)
    return event


def blocked(tenant: str) -> UsageEvent:
    """A content-rule refusal's event (no usage)."""
    return UsageEvent(request_id=f"req-{uuid.uuid4().hex[:16]}", tenant=tenant, jti=f"k-{tenant}-blocked",
                      event_id="e", status=400, usage_source="none", content_rule="no-card-numbers",
                      started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), model="gpt-4o-mini")


def mixed_wave(run: Run, size: int) -> list[UsageEvent]:
    """`size` events of both tenants, every kind in proportion."""
    wave = []
    for n in range(size):
        tenant = (FAST, SLOW)[(n // 6) % 2]
        kind = ("plain", "stream", "unpriced", "error", "big", "blocked")[n % 6]
        if kind == "blocked":
            wave.append(blocked(tenant))
        elif kind == "error":
            wave.append(usage_event(tenant, "gpt-4o-mini", 0, 0, status=500, source="none"))
        else:
            model = {"unpriced": "mock-large", "big": "gpt-4o"}.get(kind, "gpt-4o-mini")
            wave.append(usage_event(tenant, model, 11 + n, 7 + 2 * n, stream=kind == "stream"))
        run.kinds[kind] += 1
    run.produced += wave
    return wave


def produce(rig: ConsumerRig, events: list[UsageEvent]) -> None:
    """Onto the usage topic, keyed by jti as the shipper does, acknowledged."""
    producer = kafka_io.new_producer(rig.bootstrap, "test-usage-producer", linger_ms=0)
    try:
        futures = [producer.send(kafka_io.USAGE_TOPIC, key=e.jti.encode(), value=e.SerializeToString()) for e in events]
        for future in futures:
            future.get(10)
    finally:
        kafka_io.close_quietly(producer)


class RecorderProcess:
    """`python -m usage_recorder` on the rig's broker, killable and restartable."""

    def __init__(self, rig: ConsumerRig, directory: Path) -> None:
        self.rig = rig
        self.url = f"sqlite:///{directory / 'usage.db'}"
        self.supervisor = Supervisor(directory / "logs", "127.0.0.1")
        self.running: RunningService | None = None
        self.group_id = f"usage-{uuid.uuid4().hex[:8]}"

    def start(self) -> None:
        """Start and wait until it serves metrics (on a port free now: a port held before a kill may have been
        taken since, by any process's outgoing connection)."""
        port = free_ports(1)[0]
        self.running = self.supervisor.start(ServiceSpec(
            "usage-recorder", [sys.executable, "-m", "usage_recorder", "--config", str(self.rig.config_path),
                               "--database-url", self.url, "--metrics-port", str(port), "--group-id", self.group_id,
                               "--session-timeout-ms", "3000", "--heartbeat-interval-ms", "300"],
            "", lambda: http_ok(f"http://127.0.0.1:{port}/metrics"), env={"PYTHONPATH": str(REPO)},
            ready_timeout_s=30))

    def kill(self) -> None:
        """SIGKILL: no commit, no cleanup."""
        assert self.running is not None
        self.running.process.kill()
        self.running.process.wait(10)


@pytest.fixture(scope="module")
def rig(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsumerRig]:
    running = ConsumerRig(tmp_path_factory.mktemp("usage-e2e"), redis_server)
    try:
        running.start()
        yield running
    finally:
        running.stop()


def stored_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(usage_requests)).scalar_one())


def delivered_usage(rig: ConsumerRig) -> dict[str, dict[str, dict[str, Any]]]:
    """tenant → request id → the usage callback that counts (a real one supersedes a reservation's notice)."""
    by_tenant: dict[str, dict[str, dict[str, Any]]] = {}
    for tenant, receiver in rig.receivers.items():
        kept: dict[str, dict[str, Any]] = {}
        with receiver.lock:
            payloads = [d.payload for d in receiver.deliveries if 200 <= d.status < 300]
        for payload in payloads:
            if payload.get("type") != "usage":
                continue
            seen = kept.get(payload["request_id"])
            if seen is None or (seen["usage_source"] == "reservation" and payload["usage_source"] != "reservation"):
                kept[payload["request_id"]] = payload
        by_tenant[tenant] = kept
    return by_tenant


def delivered_blocked(rig: ConsumerRig) -> dict[str, set[str]]:
    result = {}
    for tenant, receiver in rig.receivers.items():
        with receiver.lock:
            result[tenant] = {d.webhook_id for d in receiver.deliveries
                              if 200 <= d.status < 300 and d.payload.get("type") == "content_blocked"}
    return result


@pytest.fixture
def recorder(rig: ConsumerRig, tmp_path: Path) -> Iterator[RecorderProcess]:
    process = RecorderProcess(rig, tmp_path)
    try:
        yield process
    finally:
        process.supervisor.stop()


def test_store_counts_and_costs_equal_the_delivered_callbacks_with_consumers_killed_midway(
        rig: ConsumerRig, recorder: RecorderProcess) -> None:
    engine = make_engine(recorder.url)
    run = Run()
    recorder.start()
    late = usage_event(FAST, "gpt-4o", 300, 90)  # its log line comes after its reservation expired
    notice = UsageEvent(request_id=late.request_id, tenant=FAST, jti=late.jti, event_id=late.jti,
                        usage_source="reservation", total_tokens=600, reserved=600, cost="0.009", currency="USD",
                        cost_micros=9000, started_at=late.started_at)
    first = mixed_wave(run, 24)
    produce(rig, [*first, notice])
    wait_until(lambda: stored_rows(engine) >= 10, 60, "the recorder to store part of the first wave")
    recorder.kill()
    # The callback consumer too, mid-delivery: it sends again what it had not committed (same webhook-ids).
    consumer_spec = rig.supervisor.stop_service("consumer", signal.SIGKILL)
    second = mixed_wave(run, 30)
    produce(rig, second)
    produce(rig, first[:6] + second[:6])  # a shipper that repeats after a crash: same request ids
    rig.supervisor.start(consumer_spec)
    recorder.start()
    third = mixed_wave(run, 18)
    produce(rig, [*third, late])
    run.produced.append(late)

    usage_ids = {e.request_id for e in run.produced if not e.content_rule}
    blocked_ids = {e.request_id for e in run.produced if e.content_rule}
    wait_until(lambda: stored_rows(engine) == len(usage_ids) + len(blocked_ids), 90, "every request in the store")
    wait_until(lambda: {rid for kept in delivered_usage(rig).values() for rid in kept} == usage_ids
               and all(p["usage_source"] != "reservation" for p in delivered_usage(rig)[FAST].values()), 90,
               "every usage callback delivered, the late line after its notice")
    wait_until(lambda: set().union(*delivered_blocked(rig).values()) == blocked_ids, 60,
               "every refusal callback delivered")

    window = UsageFilter(int(time.time()) - 3600, int(time.time()) + 3600)
    totals = {row["tenant"]: row for row in usage_totals(engine, window) if row["cost"] is not None}
    unpriced = {row["tenant"]: row for row in usage_totals(engine, window) if row["cost"] is None}
    for tenant, callbacks in delivered_usage(rig).items():
        priced = [p for p in callbacks.values() if p["cost"] is not None]
        assert totals[tenant]["requests"] == len(priced), tenant
        assert totals[tenant]["total_tokens"] == sum(p["tokens"] for p in priced), tenant
        assert Decimal(totals[tenant]["cost"]["amount"]) == sum(Decimal(p["cost"]["amount"]) for p in priced), tenant
        assert unpriced[tenant]["requests"] == sum(1 for p in callbacks.values() if p["cost"] is None), tenant
        assert unpriced[tenant]["total_tokens"] == sum(p["tokens"] for p in callbacks.values() if p["cost"] is None)
    refused = {row["tenant"]: row["count"] for row in refusals_by_code(engine, window)}
    assert refused == {tenant: len(ids) for tenant, ids in delivered_blocked(rig).items()}
    # The late request is billed its real usage, not its notice's reservation.
    with engine.connect() as connection:
        row = connection.execute(select(usage_requests).where(usage_requests.c.request_id == late.request_id)).one()
    assert (row.usage_source, row.total_tokens, row.cost) == ("upstream", 390, late.cost)
    assert run.kinds["blocked"] and run.kinds["error"] and run.kinds["unpriced"]
