"""Usage pipeline end to end: openai SDK → Envoy → access log → shipper → Kafka → consumer → signed callbacks.

Real Envoy, authz, Redis, Kafka (tansu) and issuer from the `stack` fixture; only the LLM is the mock.
Besides the stack's own consumer (which posts to the bundled issuer), a second consumer group with its
own config copy posts to a receiver in this process, so tests control the tenant's answers.
The harness here (receiver, config copy, service runner) is shared with test_pipeline_faults.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest
import yaml
from conftest import DEMO_TENANT
from ledger_sync import counters
from pipeline_harness import (
    MESSAGES,
    Receiver,
    Services,
    complete,
    new_key,
    pipeline_config,
    sdk,
    settled,
    stream,
    wait_until,
)
from redis import Redis

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey
from dynaseal.ledger import redis_keys

pytestmark = pytest.mark.integration

# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_consumer(cfg: DynasealConfig, config_path: Path, stack: object, receiver: Receiver,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """A second consumer group on the session's broker, delivering to `receiver`."""
    directory = tmp_path_factory.mktemp("e2e-consumer")
    services = Services(pipeline_config(config_path, directory, receiver.url), cfg, directory / "logs")
    services.start("consumer")
    yield services
    services.stop()


# --- tests -------------------------------------------------------------------------------------

@dataclass
class Traffic:
    """The mixed requests of one run: which keys did what, and what the SDK saw."""

    totals: dict[str, int]  # jti → upstream total tokens (successful requests)
    texts: dict[str, str]  # jti → streamed text
    denied: str
    failing: str
    leaving: str


def mixed_traffic(cfg: DynasealConfig, signing_key: SigningKey, plain: int = 3, streamed: int = 3) -> Traffic:
    """Non-streaming and streaming successes, a denial, an upstream 500 and a client leaving mid-stream."""
    totals: dict[str, int] = {}
    texts: dict[str, str] = {}
    for _ in range(plain):
        key, jti = new_key(signing_key)
        totals[jti] = complete(cfg, key)
    for _ in range(streamed):
        key, jti = new_key(signing_key)
        texts[jti], totals[jti] = stream(cfg, key)
    denied_key, denied = new_key(signing_key)
    with pytest.raises(openai.PermissionDeniedError):  # model outside the key: denied by authz, no event
        sdk(cfg, denied_key).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
    failing_key, failing = new_key(signing_key)
    with pytest.raises(openai.InternalServerError):  # admitted, then the upstream fails
        sdk(cfg, failing_key).chat.completions.create(model="deepseek-chat", messages=MESSAGES, max_tokens=12,
                                                      extra_headers={"x-mock-status": "500"})
    leaving_key, leaving = new_key(signing_key)
    chunks = sdk(cfg, leaving_key).chat.completions.create(
        model="deepseek-chat", messages=MESSAGES, max_tokens=30, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-mock-chunk-delay-ms": "60"})
    for n, _ in enumerate(chunks):
        if n == 2:
            break
    chunks.close()  # the client goes away before the usage chunk
    return Traffic(totals, texts, denied, failing, leaving)


def test_mixed_requests_give_exactly_the_expected_callbacks(
        cfg: DynasealConfig, issuer_key: SigningKey, receiver: Receiver, own_consumer: Services) -> None:
    traffic = mixed_traffic(cfg, issuer_key)
    expected = [*traffic.totals, traffic.failing, traffic.leaving]
    wait_until(lambda: all(len(receiver.delivered(j)) == 1 for j in expected), 30, "one callback per admitted request")

    for jti, total in traffic.totals.items():
        (payload,) = receiver.delivered(jti).values()
        assert payload["usage_source"] == "upstream" and payload["status"] == 200
        assert payload["tokens"] == payload["usage"]["total_tokens"] == total
        assert payload["usage"]["prompt_tokens"] + payload["usage"]["completion_tokens"] == total
        assert payload["key_id"] == payload["event_id"] == jti and payload["model"] == "deepseek-chat"
        assert payload["stream"] is (jti in traffic.texts)
        assert payload["content"], "the demo tenant asks for content"
        if jti in traffic.texts:
            assert payload["content"] == traffic.texts[jti]
        assert payload["started_at"].endswith("Z") and payload["duration_ms"] >= 0
    ((failed_id, failed),) = receiver.delivered(traffic.failing).items()
    assert (failed["status"], failed["tokens"], failed["usage_source"]) == (500, 0, "none")
    assert failed_id == failed["request_id"]  # webhook-id is the gateway's request id
    ((_, left),) = receiver.delivered(traffic.leaving).items()
    assert left["usage_source"] == "reserved" and left["tokens"] > 0 and left["content"] == ""
    assert not receiver.for_key(traffic.denied), "a denied request must not produce a callback"
    assert receiver.bad_signatures == 0


def _reservation_ids_are_request_ids(redis_client: Redis, jti: str) -> bool:
    """Whether authz reserved (open or settled) under the gateway's request id, a UUID: the id usage events carry."""
    ids = [rid.decode() for name in (redis_keys.reservations, redis_keys.settled)
           for rid in cast("list[bytes]", redis_client.hkeys(name(DEMO_TENANT, jti)))
           if not rid.endswith(b"#c")]  # the money fields beside them (`<request id>#c`)
    return bool(ids) and all(len(rid) == 36 and rid.count("-") == 4 for rid in ids)


def test_budgets_settle_to_the_true_totals(cfg: DynasealConfig, issuer_key: SigningKey, receiver: Receiver,
                                          own_consumer: Services, redis_client: Redis) -> None:
    traffic = mixed_traffic(cfg, issuer_key, plain=2, streamed=2)
    expected = [*traffic.totals, traffic.failing, traffic.leaving]
    wait_until(lambda: all(len(receiver.delivered(j)) == 1 for j in expected), 30, "callbacks")
    # Settlement finds a reservation only if authz reserved under the id the event carries.
    assert _reservation_ids_are_request_ids(redis_client, traffic.failing), \
        "authz must reserve under the request id the access log carries for settlement to match"
    # Upstream usage; 0 for the upstream error (released); the reservation for the client that left.
    for jti, total in traffic.totals.items():
        wait_until(settled(redis_client, jti, total, 1), 10, f"settlement of {jti}")
    # No provider served the failing request: its use and reservation were given back, nothing settles on it.
    wait_until(lambda: {k: v for k, v in counters(redis_client, DEMO_TENANT, traffic.failing).items()
                        if k in ("uses", "reserved", "spent") and v} == {}, 10, "give-back of the failed request")
    ((_, left),) = receiver.delivered(traffic.leaving).items()
    wait_until(settled(redis_client, traffic.leaving, left["tokens"], 1), 10, "billing of the abandoned stream")
    assert not counters(redis_client, DEMO_TENANT, traffic.denied).get("spent")


def test_stack_consumer_delivers_to_the_bundled_issuer(cfg: DynasealConfig, issuer_key: SigningKey) -> None:
    traffic = mixed_traffic(cfg, issuer_key, plain=1, streamed=1)
    issuer = f"http://127.0.0.1:{cfg.gateway.ports.issuer}"
    login = httpx.post(f"{issuer}/user/login", data={"username": "user1", "password": "user1"}, timeout=10)
    login.raise_for_status()
    bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}

    def stored(jti: str) -> list[dict[str, Any]]:
        page = httpx.get(f"{issuer}/usage", params={"jti": jti}, headers=bearer, timeout=10)
        page.raise_for_status()
        return list(page.json()["items"])

    admitted = [*traffic.totals, traffic.failing, traffic.leaving]
    wait_until(lambda: all(len(stored(j)) == 1 for j in admitted), 30, "the issuer to store one callback each")
    for jti, total in traffic.totals.items():
        (item,) = stored(jti)
        assert item["tokens"] == total and item["model"] == "deepseek-chat"
        assert item["content"] == traffic.texts.get(jti, item["content"]) and item["content"]
    assert stored(traffic.failing)[0]["tokens"] == 0
    assert stored(traffic.leaving)[0]["tokens"] > 0
    assert stored(traffic.denied) == []


def test_consumer_reports_lag_and_deliveries(own_consumer: Services) -> None:
    wait_until(lambda: own_consumer.metric("consumer", "dynaseal_consumer_lag_total") == 0, 15, "lag to reach 0")
    assert own_consumer.metric("consumer", "dynaseal_consumer_deliveries_total", {"outcome": "delivered"}) >= 1
    assert own_consumer.metric("consumer", "dynaseal_consumer_callback_seconds_count") >= 1


def test_rendered_envoy_config_with_content_capture_validates(cfg: DynasealConfig, tmp_path: Path) -> None:
    from dynaseal_launcher import envoy_config

    rendered = envoy_config.render(cfg, tmp_path / "access.log")
    target = tmp_path / "envoy.yaml"
    target.write_text(rendered)
    ok, output = envoy_config.validate(target)
    assert ok, output[-2000:]
    hcm = yaml.safe_load(rendered)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = [f["name"] for f in hcm["typed_config"]["http_filters"]]
    # After ext_authz (its metadata says whether to capture), before the router.
    assert filters.index("envoy.filters.http.ext_authz") < filters.index("envoy.filters.http.lua") < \
        filters.index("envoy.filters.http.router")
    log_format = hcm["typed_config"]["access_log"][0]["typed_config"]["log_format"]["json_format"]
    assert log_format["content_b64"] == "%DYNAMIC_METADATA(dynaseal.content:body_b64)%"


def test_replayed_client_request_ids_give_one_callback_per_request_with_the_gateways_id(
        cfg: DynasealConfig, issuer_key: SigningKey, receiver: Receiver, own_consumer: Services,
        redis_client: Redis) -> None:
    key, jti = new_key(issuer_key, uses=5)
    chosen = "0f0f0f0f-0000-4000-8000-000000000000"
    client = sdk(cfg, key)
    replies = [client.chat.completions.with_raw_response.create(
        model="deepseek-chat", messages=MESSAGES, max_tokens=8, extra_headers={"x-request-id": chosen})
        for _ in range(5)]
    gateway_ids = [r.headers["x-dynaseal-request-id"] for r in replies]
    assert len(set(gateway_ids)) == 5 and chosen not in gateway_ids
    wait_until(lambda: len(receiver.delivered(jti)) == 5, 30, "five callbacks")
    delivered = receiver.delivered(jti)
    assert set(delivered) == set(gateway_ids)  # webhook-id = the id the client was told
    assert all(payload["request_id"] == webhook_id for webhook_id, payload in delivered.items())
    total = sum(p["tokens"] for p in delivered.values())
    wait_until(settled(redis_client, jti, total, 5), 10, "settlement of all five")
