"""Many upstreams behind one gateway, through the real Envoy, authz and Redis, with the `openai` SDK.

Four scripted upstreams (tests/upstream_support.py) and a dead port; two tenants routing the same
client model name differently, each with its own physical names and credentials.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import yaml
from conftest import free_ports, jwt_payload
from ledger_sync import counters
from upstream_support import Behaviour, ScriptedUpstream

from dynaseal.config import load_config
from dynaseal.keys.mint import SigningKey, mint
from dynaseal.runtime.locations import redis_url
from dynaseal.usage.callbacks import callback_payload
from dynaseal.usage.events import parse_line

pytestmark = pytest.mark.integration

CREDENTIALS = {"T_KEY_DEAD": "sk-dead-0001", "T_KEY_BUSY": "sk-busy-0002", "T_KEY_GOOD_1": "sk-good-0003",
               "T_KEY_GOOD_2": "sk-good-0004", "T_KEY_SLOW": "sk-slow-0005", "T_BETA_GOOD": "sk-beta-0006"}


class Gateway:
    """The running stack, its upstreams and the tenants' signing keys."""

    def __init__(self, url: str, admin: str, upstreams: dict[str, ScriptedUpstream], alpha: SigningKey,
                 beta: SigningKey) -> None:
        self.url, self.admin, self.upstreams, self.alpha, self.beta = url, admin, upstreams, alpha, beta
        self.access_log = Path()
        self.key_file = Path()
        self.redis_url = ""

    def key(self, tenant: str = "alpha", models: tuple[str, ...] = ("fast", "smart", "slowpoke", "down", "solo"),
            **claims: Any) -> str:
        """A fresh dynamic key of a tenant."""
        signer = self.alpha if tenant == "alpha" else self.beta
        return mint(signer, tenant=tenant, models=list(models), max_tokens=50, ttl=600, **claims)

    def client(self, key: str, max_retries: int = 0) -> openai.OpenAI:
        """The `openai` SDK pointed at the gateway."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=max_retries, timeout=20)

    def requests_served(self) -> int:
        """Envoy's count of downstream requests so far."""
        stats = httpx.get(f"{self.admin}/stats", params={"filter": r"^http\.llm\.downstream_rq_total$"}).text
        match = re.search(r"downstream_rq_total: (\d+)", stats)
        assert match, stats
        return int(match.group(1))

    def reset(self) -> None:
        """Every upstream back to answering, with no recorded requests."""
        for upstream in self.upstreams.values():
            upstream.behaviour = Behaviour()
            upstream.take()
        self.upstreams["busy"].behaviour = Behaviour(status=503)
        self.upstreams["slow"].behaviour = Behaviour(delay_s=3)


def write_config(directory: Path, ports: dict[str, int], alpha: SigningKey, beta: SigningKey) -> Path:
    """Two routed tenants over four upstreams and a dead port."""
    names = ["envoy", "envoy_admin", "issuer", "authz", "mock_upstream", "redis", "kafka",
             "authz_metrics", "consumer_metrics", "shipper_metrics"]
    good = f"http://127.0.0.1:{ports['good']}/openai/v1"
    raw = {
        "gateway": {
            "data_dir": str(directory / "data"), "max_body_bytes": 65536, "redis_timeout_ms": 1000,
            "ports": dict(zip(names, free_ports(len(names)), strict=True)),
            "upstream": {"base_url": good},
            "upstreams": [
                {"name": "dead", "base_url": f"http://127.0.0.1:{ports['dead']}/v1", "api_key_env": "T_KEY_DEAD",
                 "outlier_detection": None},
                {"name": "busy", "base_url": f"http://127.0.0.1:{ports['busy']}/v1", "api_key_env": "T_KEY_BUSY",
                 "outlier_detection": None},
                {"name": "good", "base_url": good, "api_key_envs": ["T_KEY_GOOD_1", "T_KEY_GOOD_2"],
                 "outlier_detection": None},
                {"name": "slow", "base_url": f"http://127.0.0.1:{ports['slow']}/v1", "api_key_env": "T_KEY_SLOW",
                 "timeouts": {"first_byte_s": 0.5}, "outlier_detection": None},
                {"name": "flaky", "base_url": f"http://127.0.0.1:{ports['flaky']}/v1", "outlier_detection": None,
                 "api_key_file": str(directory / "flaky-keys.txt")},
            ],
        },
        "tenants": [
            {"id": "alpha", "keys": [{"kid": alpha.kid, "alg": "EdDSA", "public_jwk": alpha.public_jwk()}],
             "limits": {"models": ["fast", "smart", "slowpoke", "down", "solo"], "max_tokens": 100},
             "upstream": {"prices": {"fast": {"input": "1", "output": "2"}}, "routes": [
                 {"model": "fast", "upstreams": ["dead", "busy", {"upstream": "good", "model": "gpt-4o-mini"}]},
                 {"model": "smart", "upstreams": [{"upstream": "good", "model": "gpt-4o"}]},
                 {"model": "slowpoke", "upstreams": ["slow"]},
                 {"model": "down", "upstreams": ["dead"]},
                 {"model": "solo", "upstreams": ["flaky"]},
             ]}},
            {"id": "beta", "keys": [{"kid": beta.kid, "alg": "EdDSA", "public_jwk": beta.public_jwk()}],
             "limits": {"models": ["fast"], "max_tokens": 100},
             "upstream": {"provider_headers": True, "routes": [
                 {"model": "fast",
                  "upstreams": [{"upstream": "good", "model": "llama3", "api_key_env": "T_BETA_GOOD"}]},
             ]}},
        ],
    }
    (directory / "flaky-keys.txt").write_text("sk-flaky-0007\n")
    path = directory / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from dynaseal_launcher.stack import LocalStack

    os.environ.update(CREDENTIALS)
    port = dict(zip(["dead", "busy", "good", "slow", "flaky"], free_ports(5), strict=True))
    upstreams = {name: ScriptedUpstream(port[name], name) for name in ("busy", "good", "slow", "flaky")}
    alpha, beta = SigningKey.generate("alpha-1"), SigningKey.generate("beta-1")
    path = write_config(tmp_path_factory.mktemp("routing"), port, alpha, beta)
    cfg = load_config(path)
    stack = LocalStack(cfg, path, pipeline=False)
    stack.start()
    gw = Gateway(f"http://127.0.0.1:{cfg.gateway.ports.envoy}", f"http://127.0.0.1:{cfg.gateway.ports.envoy_admin}",
                 upstreams, alpha, beta)
    gw.access_log = stack.access_log
    gw.key_file = path.parent / "flaky-keys.txt"
    gw.redis_url = redis_url(cfg)
    try:
        yield gw
    finally:
        stack.stop()
        for upstream in upstreams.values():
            upstream.close()


@pytest.fixture
def gw(gateway: Gateway) -> Gateway:
    gateway.reset()
    return gateway


MESSAGES: Any = [{"role": "user", "content": "hi"}]


def test_each_tenant_reaches_its_upstream_with_its_physical_model_and_credential(gw: Gateway) -> None:
    key = gw.key()
    for _ in range(2):
        gw.client(key).chat.completions.create(model="smart", messages=MESSAGES, max_tokens=10)
    seen = gw.upstreams["good"].take()
    assert [r.json()["model"] for r in seen] == ["gpt-4o", "gpt-4o"]
    assert all(r.path == "/openai/v1/chat/completions" for r in seen)
    assert all(r.headers["host"] == f"127.0.0.1:{gw.upstreams['good'].port}" for r in seen)
    # Two keys balanced: one each.
    assert sorted(r.headers["authorization"] for r in seen) == ["Bearer sk-good-0003", "Bearer sk-good-0004"]
    # Nothing of the gateway's routing or the client's key reaches the provider.
    for request in seen:
        assert not [h for h in request.headers if h.startswith("x-dynaseal") or h.startswith("x-envoy")]
        assert key not in str(request.headers)
        assert request.json()["messages"] == MESSAGES and request.json()["max_tokens"] == 10

    gw.client(gw.key("beta", ("fast",))).chat.completions.create(model="fast", messages=MESSAGES, max_tokens=10)
    (beta,) = gw.upstreams["good"].take()
    assert beta.json()["model"] == "llama3"
    assert beta.headers["authorization"] == "Bearer sk-beta-0006"
    assert gw.upstreams["busy"].take() == []


def test_physical_model_replaces_the_value_only(gw: Gateway) -> None:
    # An escaped member name is the model member too; everything else arrives byte for byte.
    raw = b'{"messages":[{"role":"user","content":"\\"model\\": \\"x\\""}] , "mod\\u0065l" : "smart","max_tokens":5}'
    reply = httpx.post(f"{gw.url}/v1/chat/completions", content=raw,
                       headers={"authorization": f"Bearer {gw.key()}", "content-type": "application/json"})
    assert reply.status_code == 200, reply.text
    (seen,) = gw.upstreams["good"].take()
    assert seen.body == raw.replace(b'"smart"', b'"gpt-4o"')


def test_fallback_is_invisible_to_the_sdk(gw: Gateway) -> None:
    client = gw.client(gw.key())
    answer = client.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=10)
    assert answer.choices[0].message.content == "from good"
    (busy,) = gw.upstreams["busy"].take()
    (good,) = gw.upstreams["good"].take()
    # Each try carries its own upstream's model name and credential.
    assert (busy.json()["model"], busy.headers["authorization"]) == ("fast", "Bearer sk-busy-0002")
    assert good.json()["model"] == "gpt-4o-mini"
    assert good.headers["authorization"].startswith("Bearer sk-good-")
    assert busy.path == "/v1/chat/completions" and good.path == "/openai/v1/chat/completions"

    gw.upstreams["busy"].behaviour = Behaviour(status=429)
    stream = client.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=10, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "from good"
    assert len(gw.upstreams["busy"].take()) == 1
    assert gw.upstreams["good"].take()[0].json()["stream"] is True


def test_a_provider_429_keeps_its_retry_after(gw: Gateway) -> None:
    gw.upstreams["busy"].behaviour = Behaviour(status=429, retry_after="3")
    gw.upstreams["good"].behaviour = Behaviour(status=429, retry_after="7")
    with pytest.raises(openai.RateLimitError) as caught:
        gw.client(gw.key()).chat.completions.create(model="fast", messages=MESSAGES, max_tokens=10)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["x-dynaseal-request-id"]


def test_envoys_own_replies_are_openai_errors_the_sdk_understands(gw: Gateway) -> None:
    client = gw.client(gw.key())
    with pytest.raises(openai.InternalServerError) as unavailable:
        client.chat.completions.create(model="down", messages=MESSAGES, max_tokens=10)
    assert unavailable.value.status_code == 503
    assert unavailable.value.code == "upstream_unavailable"
    assert unavailable.value.response.headers["x-dynaseal-request-id"]
    with pytest.raises(openai.InternalServerError) as late:
        client.chat.completions.create(model="slowpoke", messages=MESSAGES, max_tokens=10)
    assert late.value.status_code == 504
    assert late.value.code == "upstream_timeout"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="fast", prompt="x")  # POST /v1/completions: no such route
    assert unknown.value.code == "not_found"
    # An API the route's upstreams do not speak (they declare chat completions only): authz's 404, its body kept.
    with pytest.raises(openai.NotFoundError) as unspoken:
        client.embeddings.create(model="fast", input="x")
    assert unspoken.value.code == "model_not_found" and "Embeddings API" in unspoken.value.message
    with pytest.raises(openai.APIStatusError) as large:
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x" * 70000}])
    assert (large.value.status_code, large.value.code) == (413, "request_too_large")


def test_a_refusal_no_retry_can_fix_stops_the_sdk_after_one_try(gw: Gateway) -> None:
    key = gw.key(uses=1)
    gw.client(key).chat.completions.create(model="smart", messages=MESSAGES, max_tokens=10)
    before = gw.requests_served()
    with pytest.raises(openai.RateLimitError) as exhausted:
        gw.client(key, max_retries=2).chat.completions.create(model="smart", messages=MESSAGES, max_tokens=10)
    assert exhausted.value.code == "key_exhausted"
    assert exhausted.value.response.headers["x-should-retry"] == "false"
    assert gw.requests_served() - before == 1


def test_a_rate_limit_refusal_says_when_to_retry(gw: Gateway) -> None:
    key = gw.key(rpm=1)
    gw.client(key).chat.completions.create(model="smart", messages=MESSAGES, max_tokens=10)
    reply = httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                       json={"model": "smart", "messages": MESSAGES, "max_tokens": 10})
    assert reply.status_code == 429 and reply.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(reply.headers["retry-after"]) <= 60
    assert "x-should-retry" not in reply.headers


def test_provider_headers_reach_the_client_by_allowlist(gw: Gateway) -> None:
    body = {"model": "fast", "messages": MESSAGES, "max_tokens": 10}
    plain = httpx.post(f"{gw.url}/v1/chat/completions", json=body,
                       headers={"authorization": f"Bearer {gw.key(models=('smart',))}"} | {})
    assert plain.status_code == 403  # fast is not in this key's models
    plain = httpx.post(f"{gw.url}/v1/chat/completions", json={**body, "model": "smart"},
                       headers={"authorization": f"Bearer {gw.key()}"})
    assert plain.status_code == 200
    assert plain.headers["x-request-id"] == "req_scripted"
    assert plain.headers["content-type"] == "application/json"
    for hidden in ("openai-organization", "openai-project", "x-ratelimit-remaining-requests", "set-cookie"):
        assert hidden not in plain.headers
    assert plain.headers.get("server") != "scripted"

    opted = httpx.post(f"{gw.url}/v1/chat/completions", json=body,
                       headers={"authorization": f"Bearer {gw.key('beta', ('fast',))}"})
    assert opted.status_code == 200
    assert opted.headers["openai-organization"] == "org-secret"
    assert opted.headers["x-ratelimit-remaining-requests"] == "99"
    assert "set-cookie" not in opted.headers


def test_a_client_cannot_pick_a_route_or_a_credential(gw: Gateway) -> None:
    # beta's route and alpha's model: the client's routing headers never survive authz.
    reply = httpx.post(f"{gw.url}/v1/chat/completions",
                       json={"model": "smart", "messages": MESSAGES, "max_tokens": 10},
                       headers={"authorization": f"Bearer {gw.key()}", "x-dynaseal-route": "route-dead",
                                "x-dynaseal-try": "busy"})
    assert reply.status_code == 200
    (seen,) = gw.upstreams["good"].take()
    assert seen.json()["model"] == "gpt-4o"
    assert gw.upstreams["busy"].take() == []


def logged_line(gw: Gateway, request_id: str) -> bytes:
    """The access-log line of one request (Envoy flushes the log every 200 ms)."""
    for _ in range(100):
        for line in gw.access_log.read_bytes().splitlines():
            if request_id.encode() in line and b'"tenant":"alpha"' in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no access-log line for {request_id}")


def logged_statuses(gw: Gateway, jti: str, count: int) -> list[int]:
    """The statuses of a key's requests in the access log, once `count` are there (bounded wait)."""
    statuses: list[int] = []
    for _ in range(100):
        lines = [json.loads(line) for line in gw.access_log.read_bytes().splitlines()]
        statuses = [r["code"] for r in lines if r.get("jti") == jti and r["path"].endswith("/chat/completions")]
        if len(statuses) >= count:
            return statuses
        time.sleep(0.1)
    return statuses


def test_a_single_use_key_survives_an_outage_of_its_only_upstream(gw: Gateway) -> None:
    key = gw.key(uses=1)
    flaky = gw.upstreams["flaky"]
    flaky.close()  # the port now refuses connections
    with pytest.raises(openai.InternalServerError) as outage:
        gw.client(key, max_retries=2).chat.completions.create(model="solo", messages=MESSAGES, max_tokens=10)
    # The SDK retried twice and each try found the key's one use back (not `key_exhausted`).
    assert outage.value.code == "upstream_unavailable"
    assert logged_statuses(gw, str(jwt_payload(key)["jti"]), 3) == [503, 503, 503]
    line = logged_line(gw, outage.value.response.headers["x-dynaseal-request-id"])
    payload = callback_payload(parse_line(line), include_content=False)  # type: ignore[arg-type]
    assert (payload["usage_source"], payload["tokens"], payload["status"]) == ("none", 0, 503)
    assert (payload["upstreams_tried"], payload["upstream"]) == (["flaky"], None)

    gw.upstreams["flaky"] = ScriptedUpstream(flaky.port, "flaky")  # the upstream is back
    answer = gw.client(key).chat.completions.create(model="solo", messages=MESSAGES, max_tokens=10)
    assert answer.choices[0].message.content == "from flaky"
    state = counters(redis.Redis.from_url(gw.redis_url), "alpha", str(jwt_payload(key)["jti"]))
    assert state["uses"] == 1 and state.get("reserved", 0) > 0  # served: its reservation awaits settlement
    with pytest.raises(openai.RateLimitError) as spent:
        gw.client(key).chat.completions.create(model="solo", messages=MESSAGES, max_tokens=10)
    assert spent.value.code == "key_exhausted"


def test_a_provider_refusal_gives_back_and_the_callback_names_the_upstreams(gw: Gateway) -> None:
    key = gw.key(uses=1)
    gw.upstreams["good"].behaviour = Behaviour(status=503)
    with pytest.raises(openai.InternalServerError) as refused:
        gw.client(key).chat.completions.create(model="fast", messages=MESSAGES, max_tokens=10)
    line = logged_line(gw, refused.value.response.headers["x-dynaseal-request-id"])
    payload = callback_payload(parse_line(line), include_content=False)  # type: ignore[arg-type]
    assert payload["usage_source"] == "none" and payload["cost"] == {"amount": "0", "currency": "USD"}
    assert (payload["upstreams_tried"], payload["upstream"]) == (["dead", "busy", "good"], None)

    gw.upstreams["good"].behaviour = Behaviour()
    raw = gw.client(key).chat.completions.with_raw_response.create(model="fast", messages=MESSAGES, max_tokens=10)
    assert raw.parse().choices[0].message.content == "from good"
    line = logged_line(gw, raw.headers["x-dynaseal-request-id"])
    payload = callback_payload(parse_line(line), include_content=False)  # type: ignore[arg-type]
    assert payload["usage_source"] == "upstream" and payload["tokens"] == 7
    # Priced as the model the client asked for (fast: 1 and 2 per million), whatever gpt-4o-mini costs.
    assert payload["model"] == "fast" and payload["cost"] == {"amount": "0.000009", "currency": "USD"}
    assert (payload["upstreams_tried"], payload["upstream"]) == (["dead", "busy", "good"], "good")


def test_a_client_cannot_give_back_by_itself(gw: Gateway) -> None:
    key = gw.key(uses=1)
    gw.client(key).chat.completions.create(model="smart", messages=MESSAGES, max_tokens=10)
    unknown = httpx.post(f"{gw.url}/_dynaseal/other", headers={"x-dynaseal-give-back": "x.y"}).json()
    for token in ("", "x.y", "W10.0123456789abcdef0123456789abcdef"):
        reply = httpx.post(f"{gw.url}/_dynaseal/give-back", headers={"x-dynaseal-give-back": token})
        # Answered exactly as a path that does not exist.
        assert reply.status_code == 404 and reply.json() == unknown and unknown["error"]["code"] == "not_found"
    state = counters(redis.Redis.from_url(gw.redis_url), "alpha", str(jwt_payload(key)["jti"]))
    assert state["uses"] == 1


def test_a_started_stream_is_never_retried(gw: Gateway) -> None:
    gw.upstreams["busy"].behaviour = Behaviour(break_stream=True)
    stream = gw.client(gw.key()).chat.completions.create(model="fast", messages=MESSAGES, max_tokens=10, stream=True)
    received = []
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for chunk in stream:
            received.append(chunk)
    assert received and received[0].choices[0].delta.content == "from busy"
    assert len(gw.upstreams["busy"].take()) == 1
    assert gw.upstreams["good"].take() == []  # the answer had begun: no second provider


def test_a_rotated_key_file_is_used_without_a_restart(gw: Gateway) -> None:
    client = gw.client(gw.key())
    client.chat.completions.create(model="solo", messages=MESSAGES, max_tokens=10)
    assert [r.headers["authorization"] for r in gw.upstreams["flaky"].take()] == ["Bearer sk-flaky-0007"]
    gw.key_file.write_text("sk-flaky-0008\n")
    later = time.time() + 5
    os.utime(gw.key_file, (later, later))
    seen: list[str] = []
    for _ in range(40):  # authz looks at the file at most once a second
        client.chat.completions.create(model="solo", messages=MESSAGES, max_tokens=10)
        seen = [r.headers["authorization"] for r in gw.upstreams["flaky"].take()]
        if seen == ["Bearer sk-flaky-0008"]:
            break
        time.sleep(0.1)
    assert seen == ["Bearer sk-flaky-0008"]
