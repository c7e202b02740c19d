"""Routes per format through the real Envoy, authz and Redis, each SDK unchanged.

Two providers (tests/format_upstream_support.py): `anthro` speaks Anthropic's Messages only and reads its
key from `x-api-key`; `oai` speaks chat completions, Responses and embeddings with `Authorization:
Bearer`. A third, `busy`, speaks chat and Responses and answers 503. One tenant routes `claude-x` to
anthro, `fast` to oai, `sturdy` to busy then oai, each with a physical name: every endpoint goes to the
upstreams of its model's route that speak its API, and nowhere else.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis
import yaml
from conftest import free_ports, jwt_payload
from format_upstream_support import AnthropicUpstream, OpenAIUpstream
from ledger_sync import counters
from upstream_support import Behaviour

from dynaseal.config import load_config
from dynaseal.keys.mint import SigningKey, mint
from dynaseal.runtime.locations import redis_url

pytestmark = pytest.mark.integration

CREDENTIALS = {"T_FMT_ANTHRO": "sk-ant-fmt-0001", "T_FMT_OAI": "sk-oai-fmt-0002", "T_FMT_BUSY": "sk-busy-fmt-0003"}
MODELS = ("claude-x", "fast", "sturdy", "claude-down")
CHAT: Any = [{"role": "user", "content": "tell me about routes"}]


class Gateway:
    """The running stack, its upstreams and the tenant's signing key."""

    def __init__(self, url: str, upstreams: dict[str, AnthropicUpstream | OpenAIUpstream], signer: SigningKey,
                 access_log: Path, redis: str) -> None:
        self.url, self.upstreams, self.signer, self.access_log, self.redis_url = \
            url, upstreams, signer, access_log, redis

    def key(self, **claims: Any) -> str:
        """A fresh dynamic key for every model of the tenant."""
        return mint(self.signer, tenant="fmt", models=list(MODELS), max_tokens=64, ttl=600, **claims)

    def openai(self, key: str, max_retries: int = 0) -> openai.OpenAI:
        """The `openai` SDK pointed at the gateway."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=max_retries, timeout=20)

    def anthropic(self, key: str) -> anthropic.Anthropic:
        """The `anthropic` SDK pointed at the gateway, the dynamic key as its api_key."""
        return anthropic.Anthropic(base_url=self.url, api_key=key, max_retries=0, timeout=20)

    def reset(self) -> None:
        """Every upstream answering again (busy: 503), nothing recorded."""
        for upstream in self.upstreams.values():
            upstream.behaviour = Behaviour()
            upstream.take()
        self.upstreams["busy"].behaviour = Behaviour(status=503)


def write_config(directory: Path, ports: dict[str, int], signer: SigningKey) -> Path:
    """One routed tenant over an Anthropic-style upstream, an OpenAI-style one, a busy one and a dead port."""
    names = ["envoy", "envoy_admin", "issuer", "authz", "mock_upstream", "redis", "kafka",
             "authz_metrics", "consumer_metrics", "shipper_metrics"]
    raw = {
        "gateway": {
            "data_dir": str(directory / "data"), "max_body_bytes": 65536, "redis_timeout_ms": 1000,
            "ports": dict(zip(names, free_ports(len(names)), strict=True)),
            "upstreams": [
                {"name": "anthro", "base_url": f"http://127.0.0.1:{ports['anthro']}/anthropic/v1",
                 "formats": ["messages"], "api_key_env": "T_FMT_ANTHRO", "outlier_detection": None},
                {"name": "oai", "base_url": f"http://127.0.0.1:{ports['oai']}/v1",
                 "formats": ["chat_completions", "responses", "embeddings"], "api_key_env": "T_FMT_OAI",
                 "outlier_detection": None},
                {"name": "busy", "base_url": f"http://127.0.0.1:{ports['busy']}/v1",
                 "formats": ["chat_completions", "responses"], "api_key_env": "T_FMT_BUSY",
                 "outlier_detection": None},
                {"name": "gone", "base_url": f"http://127.0.0.1:{ports['gone']}/elsewhere/v1", "formats": ["messages"],
                 "api_key_env": "T_FMT_ANTHRO", "outlier_detection": None},
            ],
        },
        "tenants": [
            {"id": "fmt", "keys": [{"kid": signer.kid, "alg": "EdDSA", "public_jwk": signer.public_jwk()}],
             "limits": {"models": list(MODELS), "max_tokens": 100},
             "upstream": {"routes": [
                 {"model": "claude-x", "upstreams": [{"upstream": "anthro", "model": "claude-sonnet-4-5-20250929"}]},
                 {"model": "fast", "upstreams": [{"upstream": "oai", "model": "gpt-4o-mini"}]},
                 {"model": "sturdy", "upstreams": ["busy", {"upstream": "oai", "model": "gpt-4.1-mini"}]},
                 {"model": "claude-down", "upstreams": ["gone"]},
             ]}},
        ],
    }
    path = directory / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from dynaseal_launcher.stack import LocalStack

    os.environ.update(CREDENTIALS)
    port = dict(zip(["anthro", "oai", "busy", "gone"], free_ports(4), strict=True))
    upstreams: dict[str, AnthropicUpstream | OpenAIUpstream] = {
        "anthro": AnthropicUpstream(port["anthro"], "anthro", CREDENTIALS["T_FMT_ANTHRO"]),
        "oai": OpenAIUpstream(port["oai"], "oai", CREDENTIALS["T_FMT_OAI"]),
        "busy": OpenAIUpstream(port["busy"], "busy", CREDENTIALS["T_FMT_BUSY"]),
    }
    signer = SigningKey.generate("fmt-1")
    path = write_config(tmp_path_factory.mktemp("formats"), port, signer)
    cfg = load_config(path)
    stack = LocalStack(cfg, path, pipeline=False)
    stack.start()
    try:
        yield Gateway(f"http://127.0.0.1:{cfg.gateway.ports.envoy}", upstreams, signer, stack.access_log,
                      redis_url(cfg))
    finally:
        stack.stop()
        for upstream in upstreams.values():
            upstream.close()


@pytest.fixture
def gw(gateway: Gateway) -> Gateway:
    gateway.reset()
    return gateway


def nothing_reached_the_other_upstreams(gw: Gateway, *but: str) -> None:
    for name, upstream in gw.upstreams.items():
        if name not in but:
            assert upstream.take() == [], f"{name} was sent a request"


def test_the_anthropic_sdk_reaches_the_messages_upstream_with_its_key_in_x_api_key(gw: Gateway) -> None:
    key = gw.key()
    reply = gw.anthropic(key).messages.create(model="claude-x", max_tokens=32,
                                              messages=[{"role": "user", "content": "Say something."}])
    assert reply.type == "message" and reply.content[0].type == "text" and reply.content[0].text
    assert reply.model == "claude-sonnet-4-5-20250929"  # the physical model, as the provider answers
    (seen,) = gw.upstreams["anthro"].take()
    assert seen.path == "/anthropic/v1/messages"
    assert seen.headers["x-api-key"] == CREDENTIALS["T_FMT_ANTHRO"] and "authorization" not in seen.headers
    assert seen.headers["anthropic-version"]  # the SDK's, passed on
    assert seen.headers["host"] == f"127.0.0.1:{gw.upstreams['anthro'].port}"
    assert seen.json()["model"] == "claude-sonnet-4-5-20250929" and seen.json()["max_tokens"] == 32
    assert key not in str(seen.headers) and not [h for h in seen.headers if h.startswith("x-dynaseal")]
    nothing_reached_the_other_upstreams(gw, "anthro")

    with gw.anthropic(key).messages.stream(model="claude-x", max_tokens=32,
                                           messages=[{"role": "user", "content": "Stream it."}]) as stream:
        assert "".join(stream.text_stream)
    assert [r.json()["stream"] for r in gw.upstreams["anthro"].take()] == [True]

    counted = gw.anthropic(key).messages.count_tokens(model="claude-x",
                                                      messages=[{"role": "user", "content": "Count me."}])
    assert counted.input_tokens > 0
    (count,) = gw.upstreams["anthro"].take()
    assert count.path == "/anthropic/v1/messages/count_tokens"
    assert count.headers["x-api-key"] == CREDENTIALS["T_FMT_ANTHRO"]
    assert count.json()["model"] == "claude-sonnet-4-5-20250929"


def test_the_openai_sdks_responses_and_embeddings_reach_the_openai_upstream(gw: Gateway) -> None:
    client = gw.openai(gw.key())
    reply = client.responses.create(model="fast", input="Tell me about routes.")
    assert reply.output_text and reply.model == "gpt-4o-mini"
    streamed = list(client.responses.create(model="fast", input="Stream it.", stream=True))
    assert streamed[-1].type in ("response.completed", "response.incomplete")
    vectors = client.embeddings.create(model="fast", input=["edge", "keys"], encoding_format="float")
    assert len(vectors.data) == 2 and vectors.usage.prompt_tokens == 2
    chat = client.chat.completions.create(model="fast", messages=CHAT, max_tokens=10)
    assert chat.choices[0].message.content == "from oai"
    seen = gw.upstreams["oai"].take()
    assert [r.path for r in seen] == ["/v1/responses", "/v1/responses", "/v1/embeddings", "/v1/chat/completions"]
    assert {r.json()["model"] for r in seen} == {"gpt-4o-mini"}
    assert {r.headers["authorization"] for r in seen} == {f"Bearer {CREDENTIALS['T_FMT_OAI']}"}
    assert not [r for r in seen if "x-api-key" in r.headers or "anthropic-version" in r.headers]
    # The gateway's additions travel with the physical model: the key's cap, no storage.
    assert seen[0].json()["max_output_tokens"] == 64 and seen[0].json()["store"] is False
    nothing_reached_the_other_upstreams(gw, "oai")


def test_an_api_none_of_the_models_upstreams_speaks_is_refused_and_spends_nothing(gw: Gateway) -> None:
    key = gw.key(uses=1)
    with pytest.raises(anthropic.NotFoundError) as messages:
        gw.anthropic(key).messages.create(model="fast", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    error = messages.value.body["error"]  # type: ignore[index]
    assert error["type"] == "not_found_error" and error["code"] == "model_not_found"
    assert "model 'fast'" in error["message"] and "Messages API" in error["message"]
    assert messages.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.NotFoundError) as responses:
        gw.openai(key).responses.create(model="claude-x", input="hi")
    assert responses.value.code == "model_not_found" and "Responses API" in responses.value.message
    with pytest.raises(openai.NotFoundError) as chat:
        gw.openai(key, max_retries=2).chat.completions.create(model="claude-x", messages=CHAT, max_tokens=10)
    assert chat.value.code == "model_not_found" and "Chat Completions API" in chat.value.message
    nothing_reached_the_other_upstreams(gw)


def logged(gw: Gateway, request_id: str) -> dict[str, Any]:
    """The access-log line of one request (Envoy flushes its log every 200 ms)."""
    for _ in range(100):
        for line in gw.access_log.read_bytes().splitlines():
            if request_id.encode() in line:
                return dict(json.loads(line))
        time.sleep(0.1)
    raise AssertionError(f"no access-log line for {request_id}")


def test_responses_fall_back_past_a_503_invisibly_to_the_sdk(gw: Gateway) -> None:
    client = gw.openai(gw.key())
    raw = client.responses.with_raw_response.create(model="sturdy", input="Tell me about fallback.")
    reply = raw.parse()
    assert reply.output_text and reply.model == "gpt-4.1-mini"
    (busy,) = gw.upstreams["busy"].take()
    (oai,) = gw.upstreams["oai"].take()
    assert (busy.path, busy.json()["model"], busy.headers["authorization"]) == \
        ("/v1/responses", "sturdy", f"Bearer {CREDENTIALS['T_FMT_BUSY']}")
    assert (oai.path, oai.json()["model"], oai.headers["authorization"]) == \
        ("/v1/responses", "gpt-4.1-mini", f"Bearer {CREDENTIALS['T_FMT_OAI']}")
    # Apart from the model's bytes, each try sent the same body.
    assert busy.body.replace(b'"sturdy"', b'"gpt-4.1-mini"') == oai.body
    assert logged(gw, raw.headers["x-dynaseal-request-id"])["upstreams_tried"] == "busy,oai"

    events = list(client.responses.create(model="sturdy", input="Stream the fallback.", stream=True))
    assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
    assert len(gw.upstreams["busy"].take()) == 1 and len(gw.upstreams["oai"].take()) == 1

    # Embeddings for the same model skip busy, which does not speak them.
    client.embeddings.create(model="sturdy", input="x", encoding_format="float")
    assert gw.upstreams["busy"].take() == [] and [r.path for r in gw.upstreams["oai"].take()] == ["/v1/embeddings"]


def test_envoys_own_503_on_a_routed_messages_path_is_anthropic_shaped(gw: Gateway) -> None:
    with pytest.raises(anthropic.InternalServerError) as down:
        gw.anthropic(gw.key()).messages.create(model="claude-down", max_tokens=16,
                                               messages=[{"role": "user", "content": "hi"}])
    assert down.value.status_code == 503
    body = down.value.body
    assert isinstance(body, dict) and body["type"] == "error", body
    assert body["error"]["type"] == "api_error" and body["error"]["code"] == "upstream_unavailable"


def test_a_refused_request_left_the_single_use_key_whole(gw: Gateway) -> None:
    key = gw.key(uses=1)
    with pytest.raises(anthropic.NotFoundError):
        gw.anthropic(key).messages.create(model="fast", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    state = counters(redis.Redis.from_url(gw.redis_url), "fmt", str(jwt_payload(key)["jti"]))
    assert state.get("uses", 0) == 0 and state.get("reserved", 0) == 0
    gw.anthropic(key).messages.create(model="claude-x", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert len(gw.upstreams["anthro"].take()) == 1
    with httpx.Client() as plain:  # the one use is spent now
        spent = plain.post(f"{gw.url}/v1/messages", headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                           json={"model": "claude-x", "max_tokens": 16, "messages": [{"role": "user", "content": "x"}]})
    assert spent.status_code == 429 and spent.json()["error"]["code"] == "key_exhausted"


def test_a_client_cannot_steer_a_format_to_another_chain(gw: Gateway) -> None:
    key = gw.key()
    steer = {"x-api-key": key, "anthropic-version": "2023-06-01", "x-dynaseal-route": "route-oai",
             "x-dynaseal-try": "oai"}
    body = {"model": "fast", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client() as plain:
        refused = plain.post(f"{gw.url}/v1/messages", headers=steer, json=body)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
        served = plain.post(f"{gw.url}/v1/messages", headers=steer, json={**body, "model": "claude-x"})
    assert served.status_code == 200, served.text
    (seen,) = gw.upstreams["anthro"].take()
    assert seen.headers["x-api-key"] == CREDENTIALS["T_FMT_ANTHRO"]
    nothing_reached_the_other_upstreams(gw, "anthro")
