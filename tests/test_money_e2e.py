"""Money through the real stack: Envoy meters the token details, callbacks carry the exact cost, money
budgets hold under concurrency, threshold callbacks arrive once per id across a consumer kill -9.

Real Envoy, authz, Redis and Kafka; only the LLM is the mock. The demo tenant's prices (dev config, plus a
reasoning price from conftest): deepseek-chat input 0.27, cached input 0.07, output 1.10, reasoning 2.19
USD per million tokens; `mock-large` is allowed and unpriced (served, flagged).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import DEMO_TENANT, free_ports
from ledger_sync import counters
from openai.types.chat import ChatCompletionMessageParam
from pipeline_harness import Delivery, Receiver, Services, complete, new_key, pipeline_config, sdk, wait_until
from redis import Redis

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey
from dynaseal.money.budget_thresholds import threshold_webhook_id

pytestmark = pytest.mark.integration
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Tell me about usage callbacks at the edge."}]
# The mock's usage for MESSAGES, max_tokens=10 and reasoning_effort set: prompt 3 + (3+4) + (8+4) = 22, of which
# the system message's 7 are cached; completion 10, of which 10 // 2 = 5 are reasoning.
USAGE = {"prompt": 22, "cached": 7, "completion": 10, "reasoning": 5}
# By hand, per million: 15 × 0.27 + 7 × 0.07 + 5 × 1.10 + 5 × 2.19 = 4.05 + 0.49 + 5.50 + 10.95 = 20.99.
COST = "0.00002099"
THRESHOLDS = [0.25, 0.5, 0.75]


def _with_thresholds(path: Path, thresholds: list[float]) -> Path:
    raw = yaml.safe_load(path.read_text())
    next(t for t in raw["tenants"] if t["id"] == DEMO_TENANT)["callback"]["budget_thresholds"] = thresholds
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def money_receiver(cfg: DynasealConfig) -> Iterator[Receiver]:
    from dynaseal.config import config_environment

    with Receiver(config_environment(cfg)["DYNASEAL_DEMO_WEBHOOK_SECRET"]) as running:
        yield running


@pytest.fixture(scope="module")
def pipeline(cfg: DynasealConfig, config_path: Path, stack: object, money_receiver: Receiver,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """A private broker, shipper and consumer (with budget thresholds) delivering to `money_receiver`."""
    directory = tmp_path_factory.mktemp("money")
    config = _with_thresholds(pipeline_config(config_path, directory, money_receiver.url,
                                              kafka_port=free_ports(1)[0], max_attempts=5, timeout_s=2.0),
                              THRESHOLDS)
    services = Services(config, cfg, directory / "logs")
    try:
        for name in ("kafka", "consumer", "shipper"):
            services.start(name)
        yield services
    finally:
        services.stop()


def _usage_callbacks(receiver: Receiver, jti: str) -> list[dict[str, Any]]:
    return [p for p in receiver.delivered(jti).values() if p.get("type") == "usage"]


def _thresholds(receiver: Receiver, jti: str) -> list[Delivery]:
    return [d for d in receiver.for_key(jti) if d.payload.get("type") == "budget_threshold"]


def test_cost_of_streamed_and_plain_requests_matches_the_table_for_each_token_type(
        cfg: DynasealConfig, pipeline: Services, money_receiver: Receiver, issuer_key: SigningKey) -> None:
    key, jti = new_key(issuer_key)
    client = sdk(cfg, key)
    plain = client.chat.completions.create(model="deepseek-chat", messages=MESSAGES, max_tokens=10,
                                           reasoning_effort="low")
    chunks = list(client.chat.completions.create(model="deepseek-chat", messages=MESSAGES, max_tokens=10,
                                                 reasoning_effort="low", stream=True,
                                                 stream_options={"include_usage": True}))
    for usage in (plain.usage, chunks[-1].usage):  # the upstream reported the details the test relies on
        assert usage is not None and usage.prompt_tokens_details is not None
        assert usage.completion_tokens_details is not None
        assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens, usage.completion_tokens,
                usage.completion_tokens_details.reasoning_tokens) == tuple(USAGE.values())
    wait_until(lambda: len(_usage_callbacks(money_receiver, jti)) == 2, 30, "both callbacks")
    for callback in _usage_callbacks(money_receiver, jti):
        assert callback["cost"] == {"amount": COST, "currency": "USD"}, callback["stream"]
        assert callback["usage"]["prompt_tokens_details"] == {"cached_tokens": USAGE["cached"], "cache_write_tokens": 0}
        assert callback["usage"]["completion_tokens_details"] == {"reasoning_tokens": USAGE["reasoning"]}
    assert {c["stream"] for c in _usage_callbacks(money_receiver, jti)} == {True, False}
    # Prometheus: the same money by tenant, model and price line.
    labels = {"tenant": DEMO_TENANT, "gen_ai_request_model": "deepseek-chat"}
    wait_until(lambda: pipeline.metric("consumer", "dynaseal_cost_total", {**labels, "gen_ai_token_type": "reasoning",
                                                                          "currency": "USD"}) > 0, 10, "cost metric")
    assert pipeline.metric("consumer", "gen_ai_client_token_usage_count", {**labels, "gen_ai_token_type": "input"}) >= 2
    assert pipeline.metric("consumer", "dynaseal_tokens_total", {**labels, "gen_ai_token_type": "cached_input"}) >= 14


def test_unpriced_model_is_served_and_flagged(cfg: DynasealConfig, pipeline: Services, money_receiver: Receiver,
                                              issuer_key: SigningKey) -> None:
    key, jti = new_key(issuer_key, models=["mock-large"])
    before = pipeline.metric("consumer", "dynaseal_unpriced_requests_total", {"gen_ai_request_model": "mock-large"})
    reply = sdk(cfg, key).chat.completions.create(model="mock-large", messages=MESSAGES, max_tokens=5)
    assert reply.usage is not None
    wait_until(lambda: len(_usage_callbacks(money_receiver, jti)) == 1, 30, "the callback")
    callback = _usage_callbacks(money_receiver, jti)[0]
    assert callback["cost"] is None and callback["tokens"] == reply.usage.total_tokens
    wait_until(lambda: pipeline.metric("consumer", "dynaseal_unpriced_requests_total",
                                       {"gen_ai_request_model": "mock-large"}) == before + 1, 10, "unpriced metric")
    # A key whose budget is money cannot use it: its cost has no bound.
    money_key, _ = new_key(issuer_key, models=["mock-large"], budget_cost="1")
    with httpx.Client(timeout=10) as http:
        refused = http.post(f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/chat/completions",
                            headers={"authorization": f"Bearer {money_key}"},
                            json={"model": "mock-large", "messages": MESSAGES, "max_tokens": 5})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"


def test_money_budget_holds_under_200_concurrent_requests(cfg: DynasealConfig, stack: object,
                                                          issuer_key: SigningKey, redis_client: Redis) -> None:
    key, jti = new_key(issuer_key, max_tokens=20, budget_cost="0.0005")
    url = f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/chat/completions"
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "count to three"}], "max_tokens": 20}

    async def fire() -> list[int]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
            replies = await asyncio.gather(*(client.post(url, headers={"authorization": f"Bearer {key}"}, json=body)
                                             for _ in range(200)))
        return [r.status_code for r in replies]

    statuses = asyncio.run(fire())
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429} and 0 < admitted < 200
    state = counters(redis_client, DEMO_TENANT, jti)
    assert state["uses"] == admitted
    assert state.get("reserved_cost", 0) + state.get("spent_cost", 0) <= 500
    # Settled by the stack's consumer to the true cost: still within the budget, nothing left reserved.
    wait_until(lambda: counters(redis_client, DEMO_TENANT, jti).get("reserved_cost") == 0, 30, "settlement")
    assert 0 < counters(redis_client, DEMO_TENANT, jti)["spent_cost"] <= 500


def test_each_threshold_callback_arrives_once_by_id_across_a_consumer_kill(
        cfg: DynasealConfig, pipeline: Services, money_receiver: Receiver, issuer_key: SigningKey,
        redis_client: Redis) -> None:
    # 13 micro-units a request (15 × 0.27 + 8 × 1.10 = 12.85, rounded up) against 240: thresholds at 60, 120, 180
    # are crossed by the 5th, 10th and 14th request (each reserves 60 at admit, so the 14th still fits).
    key, jti = new_key(issuer_key, budget_cost="0.00024")
    killed, lock = threading.Event(), threading.Lock()

    def kill_on_first_threshold(delivery: Delivery) -> None:
        if delivery.payload.get("key_id") != jti or delivery.payload.get("type") != "budget_threshold":
            return
        with lock:
            if killed.is_set():
                return
            killed.set()
        pipeline.kill("consumer")  # it never sees this answer: the threshold is still pending in Redis

    money_receiver.on_receive = kill_on_first_threshold
    try:
        for _ in range(14):
            complete(cfg, key, max_tokens=8)
            # The stack's own consumer settles too (no thresholds there): wait, so reservations never pile up.
            wait_until(lambda: counters(redis_client, DEMO_TENANT, jti).get("reserved_cost") == 0, 30, "settlement")
        wait_until(killed.is_set, 30, "the consumer to be killed at the first threshold callback")
        pipeline.start("consumer")
        expected = {threshold_webhook_id(DEMO_TENANT, jti, "cost", bp) for bp in (2500, 5000, 7500)}
        wait_until(lambda: {d.webhook_id for d in _thresholds(money_receiver, jti) if d.status == 200} == expected,
                   60, "all three threshold callbacks")
        wait_until(lambda: len(_usage_callbacks(money_receiver, jti)) == 14, 30, "every usage callback")
    finally:
        money_receiver.on_receive = None
    time.sleep(1.0)  # late repeats, if any, would arrive now
    deliveries = _thresholds(money_receiver, jti)
    by_id: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        by_id.setdefault(delivery.webhook_id, []).append(delivery)
    assert set(by_id) == expected, "one webhook-id per threshold, never another"
    for attempts in by_id.values():
        assert all(a.payload == attempts[0].payload for a in attempts), "repeats carry the same body"
    assert sorted(a[0].payload["threshold"] for a in by_id.values()) == THRESHOLDS
    assert max(Counter(d.webhook_id for d in deliveries).values()) >= 2, "the one in flight at the kill is repeated"
    for attempts in by_id.values():
        payload = attempts[0].payload
        spent, limit = Decimal(payload["spent"]["amount"]), Decimal(payload["limit"]["amount"])
        assert limit == Decimal("0.00024") and spent >= Decimal(str(payload["threshold"])) * limit


def _dlq(pipeline: Services, jti: str) -> list[dict[str, str]]:
    from kafka import KafkaConsumer, TopicPartition

    from dynaseal.pb import UsageEvent
    from dynaseal.usage.kafka_io import DLQ_TOPIC

    consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{pipeline.ports['kafka']}", enable_auto_commit=False,
                             consumer_timeout_ms=1500)
    try:
        partition = TopicPartition(DLQ_TOPIC, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        return [{k: v.decode() for k, v in record.headers} for record in consumer
                if UsageEvent.FromString(record.value).jti == jti]
    finally:
        consumer.close()


def test_a_rejected_threshold_callback_is_dead_lettered_once_and_replayed_with_its_id(
        cfg: DynasealConfig, pipeline: Services, money_receiver: Receiver, issuer_key: SigningKey,
        redis_client: Redis) -> None:
    import subprocess
    import sys

    from pipeline_harness import REPO

    key, jti = new_key(issuer_key, budget_cost="0.0001")  # 13 micro-units a request: 0.25 (25) at the 2nd

    def one() -> None:
        complete(cfg, key, max_tokens=8)
        wait_until(lambda: counters(redis_client, DEMO_TENANT, jti).get("reserved_cost") == 0, 30, "settlement")

    money_receiver.behaviours[jti] = lambda payload, attempt: 400 if payload["type"] == "budget_threshold" else 200
    one()
    one()
    wait_until(lambda: any(h.get("dlq_type") == "budget_threshold" for h in _dlq(pipeline, jti)), 30, "the DLQ entry")
    one()  # a later settlement does not report it again: it was dead-lettered
    wait_until(lambda: len(_usage_callbacks(money_receiver, jti)) == 3, 30, "every usage callback")
    wid = threshold_webhook_id(DEMO_TENANT, jti, "cost", 2500)
    entries = [h for h in _dlq(pipeline, jti) if h.get("dlq_type") == "budget_threshold"]
    assert [(h["dlq_webhook_id"], h["dlq_reason"]) for h in entries] == [(wid, "rejected:http_400")]
    assert [d.webhook_id for d in _thresholds(money_receiver, jti)] == [wid]
    money_receiver.behaviours[jti] = lambda payload, attempt: 200
    done = subprocess.run([sys.executable, "-m", "dynaseal_launcher.cli", "--config", str(pipeline.config_path), "dlq",
                           "replay", "--tenant", DEMO_TENANT, "--retry-base-s", "0.1", "--retry-cap-s", "0.2"],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout + done.stderr
    replayed = _thresholds(money_receiver, jti)
    assert [(d.webhook_id, d.status) for d in replayed] == [(wid, 400), (wid, 200)]
    assert replayed[0].payload == replayed[1].payload
