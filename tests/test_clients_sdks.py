"""Clients people already have, unchanged, through the real stack (Envoy, authz, Redis, pipeline).

The openai SDK with its default arguments, LangChain's ChatOpenAI and the LiteLLM SDK each call the
gateway as they would call OpenAI. What each sent is taken from its own HTTP client; what the upstream
received from the mock's recording: the two bodies differ only by the keys the gateway adds.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import DEMO_TENANT
from openai.types.chat import ChatCompletionMessageParam

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey, mint

pytestmark = pytest.mark.integration

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something about keys that expire."}]
KEY_CAP = 48
GATEWAY_ADDITIONS = {"max_tokens", "stream_options"}


class Wire:
    """An httpx client for an SDK that keeps what was sent and the gateway's request ids that came back."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.request_ids: list[str] = []

    def _request(self, request: httpx.Request) -> None:
        if request.method == "POST":
            self.sent.append(json.loads(request.read()))

    def _response(self, response: httpx.Response) -> None:
        self.request_ids.append(response.headers.get("x-dynaseal-request-id", ""))

    def client(self) -> httpx.Client:
        """The client to hand to the SDK (openai's annotation names httpx2.Client; it takes this one too)."""
        return httpx.Client(timeout=30, event_hooks={"request": [self._request], "response": [self._response]})


@pytest.fixture(scope="module")
def gw(cfg: DynasealConfig, stack: object) -> str:
    """Base URL of the gateway's OpenAI-compatible API."""
    return f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1"


@pytest.fixture(scope="module")
def mock_url(cfg: DynasealConfig, stack: object) -> str:
    """Base URL of the mock upstream."""
    return f"http://127.0.0.1:{cfg.local.mock_upstream_port}"


@pytest.fixture
def wire() -> Iterator[Wire]:
    """A fresh recording client per test."""
    yield Wire()


def demo_key(issuer_key: SigningKey, **claims: Any) -> str:
    """A demo-tenant key (its callbacks reach the bundled issuer)."""
    return mint(issuer_key, **{"tenant": DEMO_TENANT, "models": ["deepseek-chat", "gpt-4o-mini"],
                               "max_tokens": KEY_CAP, "ttl": 300, **claims})


def jti_of(key: str) -> str:
    """The key's jti."""
    from conftest import jwt_payload

    return str(jwt_payload(key)["jti"])


def upstream_body(mock_url: str, request_id: str) -> dict[str, Any]:
    """The body the upstream received for the gateway request `request_id`."""
    for record in reversed(httpx.get(f"{mock_url}/_mock/requests").json()):
        if record["headers"].get("x-request-id") == request_id:
            return dict(record["body"])
    raise AssertionError(f"the upstream never received request {request_id}")


def assert_only_additions(sent: dict[str, Any], received: dict[str, Any], added: dict[str, Any]) -> None:
    """`received` is `sent` plus exactly `added` (the gateway's additions), nothing changed or dropped."""
    assert {k: v for k, v in received.items() if k in sent} == sent
    assert {k: v for k, v in received.items() if k not in sent} == added


def stored_callback(cfg: DynasealConfig, jti: str, timeout_s: float = 30) -> dict[str, Any]:
    """The callback payload the bundled issuer stored for this key (its database, as stored)."""
    db = Path(cfg.gateway.data_dir) / "issuer" / "issuer.db"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT payload FROM callbacks WHERE jti = ?", (jti,)).fetchone()
        if row:
            return dict(json.loads(row[0]))
        time.sleep(0.2)
    raise AssertionError(f"no callback stored for key {jti}")


# ------------------------------------------------------------------ the openai SDK


def test_openai_sdk_without_max_tokens_gets_the_keys_cap(gw: str, mock_url: str, issuer_key: SigningKey,
                                                         wire: Wire) -> None:
    client = openai.OpenAI(base_url=gw, api_key=demo_key(issuer_key), max_retries=0,
                           http_client=wire.client())  # type: ignore[arg-type]
    reply = client.chat.completions.create(model="deepseek-chat", messages=MESSAGES)
    assert reply.choices[0].message.content
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= KEY_CAP
    assert_only_additions(wire.sent[0], upstream_body(mock_url, wire.request_ids[0]), {"max_tokens": KEY_CAP})


def test_openai_sdk_stream_without_stream_options(gw: str, mock_url: str, cfg: DynasealConfig,
                                                  issuer_key: SigningKey, wire: Wire) -> None:
    """The most common streaming call: every chunk has a choice, no usage chunk the client did not ask for."""
    key = demo_key(issuer_key)
    client = openai.OpenAI(base_url=gw, api_key=key, max_retries=0, http_client=wire.client())  # type: ignore[arg-type]
    text = []
    chunks = list(client.chat.completions.create(model="deepseek-chat", messages=MESSAGES, stream=True,
                                                 max_tokens=20))
    for chunk in chunks:
        text.append(chunk.choices[0].delta.content or "")  # an empty choices list would IndexError here
    assert "".join(text).strip()
    assert all(chunk.usage is None for chunk in chunks)
    assert_only_additions(wire.sent[0], upstream_body(mock_url, wire.request_ids[0]),
                          {"stream_options": {"include_usage": True}})
    # Billed on the upstream's usage all the same.
    callback = stored_callback(cfg, jti_of(key))
    assert callback["usage_source"] == "upstream" and callback["request_id"] == wire.request_ids[0]
    assert callback["usage"]["completion_tokens"] == len("".join(text).split())


def test_stream_with_and_without_usage_is_billed_the_same(gw: str, mock_url: str, cfg: DynasealConfig,
                                                          issuer_key: SigningKey, wire: Wire) -> None:
    asked_key, silent_key = demo_key(issuer_key), demo_key(issuer_key)
    usage_chunks: dict[str, list[Any]] = {}
    options: Any  # the SDK's overloads take its keyword arguments one by one
    for name, key, options in (("asked", asked_key, {"stream_options": {"include_usage": True}}),
                               ("silent", silent_key, {})):
        client = openai.OpenAI(base_url=gw, api_key=key, max_retries=0, http_client=wire.client())  # type: ignore[arg-type]
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, **options)
        usage_chunks[name] = [c.usage for c in stream if c.usage is not None]
    assert len(usage_chunks["asked"]) == 1 and usage_chunks["silent"] == []
    # Neither set max_tokens: the gateway added the key's cap to both, and include_usage to the silent one.
    assert_only_additions(wire.sent[0], upstream_body(mock_url, wire.request_ids[0]), {"max_tokens": KEY_CAP})
    assert_only_additions(wire.sent[1], upstream_body(mock_url, wire.request_ids[1]),
                          {"max_tokens": KEY_CAP, "stream_options": {"include_usage": True}})
    asked, silent = stored_callback(cfg, jti_of(asked_key)), stored_callback(cfg, jti_of(silent_key))
    seen = usage_chunks["asked"][0]
    assert asked["usage"] == silent["usage"]
    assert (asked["usage"]["prompt_tokens"], asked["usage"]["completion_tokens"], asked["usage"]["total_tokens"]) == \
        (seen.prompt_tokens, seen.completion_tokens, seen.total_tokens)
    assert asked["usage_source"] == silent["usage_source"] == "upstream"


def test_openai_sdk_lists_the_keys_models(gw: str, issuer_key: SigningKey) -> None:
    client = openai.OpenAI(base_url=gw, api_key=demo_key(issuer_key, models=["gpt-4o-mini", "not-a-tenant-model"]),
                           max_retries=0)
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]
    seed_layout = openai.OpenAI(base_url=gw.replace("/v1", "/api/v1"), api_key=demo_key(issuer_key), max_retries=0)
    assert sorted(m.id for m in seed_layout.models.list()) == ["deepseek-chat", "gpt-4o-mini"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw, api_key="sk-not-a-dynamic-key", max_retries=0).models.list()


def test_every_answer_names_the_gateways_request_id(gw: str, issuer_key: SigningKey) -> None:
    client = openai.OpenAI(base_url=gw, api_key=demo_key(issuer_key), max_retries=0)
    ok = client.chat.completions.with_raw_response.create(model="deepseek-chat", messages=MESSAGES, max_tokens=3)
    refused = httpx.post(f"{gw}/chat/completions", headers={"authorization": "Bearer nope"}, json={})
    unknown = httpx.get(f"{gw}/embeddings")
    ids = [r.headers.get("x-dynaseal-request-id") for r in (ok, refused, unknown)]
    assert all(ids) and len(set(ids)) == 3
    assert (refused.status_code, unknown.status_code) == (401, 404)
    assert ok.headers["x-request-id"] != ids[0]  # the provider's own id, passed on as it is


# ------------------------------------------------------------------ LangChain and LiteLLM


def test_langchain_chat_openai_invoke_and_stream(gw: str, mock_url: str, cfg: DynasealConfig,
                                                 issuer_key: SigningKey, wire: Wire) -> None:
    langchain_openai = pytest.importorskip("langchain_openai", reason="langchain-openai is not installed")
    key = demo_key(issuer_key)
    llm = langchain_openai.ChatOpenAI(model="deepseek-chat", base_url=gw, api_key=key, max_retries=0,
                                      http_client=wire.client())
    answer = llm.invoke("Say something about keys that expire.")
    assert answer.content and answer.usage_metadata and answer.usage_metadata["output_tokens"] <= KEY_CAP
    pieces = list(llm.stream("And about edges?"))
    assert "".join(str(p.content) for p in pieces).strip()
    for sent, request_id in zip(wire.sent, wire.request_ids, strict=True):
        received = upstream_body(mock_url, request_id)
        assert set(received) - set(sent) <= GATEWAY_ADDITIONS
        assert_only_additions(sent, received, {k: received[k] for k in set(received) - set(sent)})


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic on litellm's own TypedDicts
def test_litellm_completion_and_stream(gw: str, mock_url: str, issuer_key: SigningKey,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the price list at import
    litellm = pytest.importorskip("litellm", reason="litellm is not installed")
    key = demo_key(issuer_key)
    reply = litellm.completion(model="openai/deepseek-chat", api_base=gw, api_key=key, messages=MESSAGES,
                               max_retries=0)
    assert reply.choices[0].message.content
    assert 0 < reply.usage.completion_tokens <= KEY_CAP
    text = [chunk.choices[0].delta.content or "" for chunk in
            litellm.completion(model="openai/deepseek-chat", api_base=gw, api_key=key, messages=MESSAGES,
                               stream=True, max_tokens=10, max_retries=0)]
    assert 0 < len("".join(text).split()) <= 10
    with pytest.raises(litellm.exceptions.AuthenticationError):
        litellm.completion(model="openai/deepseek-chat", api_base=gw, api_key="sk-nope", messages=MESSAGES,
                           max_retries=0)
