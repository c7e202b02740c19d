"""Responses, Messages and embeddings through the real stack, each SDK unchanged, each billed from the
provider's usage in its callback; refusals in each API's own shape, raised by each SDK as its own exception.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam
from test_clients_sdks import Wire, jti_of, stored_callback, upstream_body

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey, mint

pytestmark = pytest.mark.integration

KEY_CAP = 64
CHAT, CLAUDE, EMBED = "gpt-4o-mini", "claude-sonnet-4-5", "text-embedding-3-small"


@pytest.fixture(scope="module")
def root(cfg: DynasealConfig, stack: object) -> str:
    """The gateway's root URL (the Anthropic SDK adds /v1 itself)."""
    return f"http://127.0.0.1:{cfg.gateway.ports.envoy}"


@pytest.fixture(scope="module")
def mock_url(cfg: DynasealConfig, stack: object) -> str:
    """Base URL of the mock upstream."""
    return f"http://127.0.0.1:{cfg.local.mock_upstream_port}"


def key_for(issuer_key: SigningKey, **claims: Any) -> str:
    """A demo-tenant key for the three APIs' models."""
    from conftest import DEMO_TENANT

    return mint(issuer_key, **{"tenant": DEMO_TENANT, "models": [CHAT, CLAUDE, EMBED], "max_tokens": KEY_CAP,
                               "ttl": 300, **claims})


def oai(root: str, key: str, wire: Wire | None = None) -> openai.OpenAI:
    """The openai SDK pointed at the gateway."""
    return openai.OpenAI(base_url=f"{root}/v1", api_key=key, max_retries=0,
                         # openai's annotation names httpx2.Client; it takes an httpx.Client as well
                         http_client=(wire or Wire()).client())  # type: ignore[arg-type]


def claude(root: str, key: str, **headers: str) -> anthropic.Anthropic:
    """The anthropic SDK pointed at the gateway, the dynamic key as its api_key (its own HTTP client)."""
    return anthropic.Anthropic(base_url=root, api_key=key, max_retries=0, default_headers=headers or None)


def upstream_record(mock_url: str, request_id: str) -> dict[str, Any]:
    """What the upstream received (headers and body) for the gateway request `request_id`."""
    for record in reversed(httpx.get(f"{mock_url}/_mock/requests").json()):
        if record["headers"].get("x-request-id") == request_id:
            return dict(record)
    raise AssertionError(f"the upstream never received request {request_id}")


# ------------------------------------------------------------------ Responses


def test_responses_create_gets_the_keys_cap_and_no_storage_and_is_billed(
        cfg: DynasealConfig, root: str, mock_url: str, issuer_key: SigningKey) -> None:
    key, wire = key_for(issuer_key), Wire()
    reply = oai(root, key, wire).responses.create(model=CHAT, input="Tell me about keys that expire.")
    assert reply.output_text and reply.usage is not None
    received = upstream_body(mock_url, wire.request_ids[0])
    assert received["max_output_tokens"] == KEY_CAP and received["store"] is False
    callback = stored_callback(cfg, jti_of(key))
    assert callback["endpoint"] == "responses" and callback["usage_source"] == "upstream"
    assert callback["tokens"] == reply.usage.total_tokens
    assert callback["usage"]["prompt_tokens"] == reply.usage.input_tokens
    assert callback["usage"]["prompt_tokens_details"]["cached_tokens"] == reply.usage.input_tokens_details.cached_tokens
    assert callback["content"] == reply.output_text


def test_responses_stream_is_billed_from_response_incomplete(cfg: DynasealConfig, root: str,
                                                            issuer_key: SigningKey) -> None:
    key = key_for(issuer_key)
    events = list(oai(root, key).responses.create(model=CHAT, input="Stream it.", instructions="Be brief.",
                                                  max_output_tokens=20, stream=True))
    # 20 tokens cut the mock's 24-word answer: the usage comes in response.incomplete.
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    usage = events[-1].response.usage
    assert usage is not None and usage.input_tokens_details.cached_tokens > 0
    callback = stored_callback(cfg, jti_of(key))
    assert callback["stream"] is True and callback["tokens"] == usage.total_tokens
    assert callback["usage"]["completion_tokens"] == usage.output_tokens == 20


def test_responses_refusals_are_openai_errors(root: str, issuer_key: SigningKey) -> None:
    client = oai(root, key_for(issuer_key))
    with pytest.raises(openai.PermissionDeniedError) as above_cap:
        client.responses.create(model=CHAT, input="x", max_output_tokens=KEY_CAP + 1)
    assert above_cap.value.code == "param_not_allowed"
    with pytest.raises(openai.PermissionDeniedError) as stored:
        client.responses.create(model=CHAT, input="x", previous_response_id="resp_123")
    assert stored.value.code == "param_not_allowed" and stored.value.param == "previous_response_id"
    with pytest.raises(openai.PermissionDeniedError) as server_tool:
        client.responses.create(model=CHAT, input="x", tools=[{"type": "web_search"}])
    assert server_tool.value.param == "web_search"
    with pytest.raises(openai.PermissionDeniedError) as model:
        client.responses.create(model=CLAUDE + "-other", input="x")
    assert model.value.code == "model_not_allowed"
    with pytest.raises(openai.PermissionDeniedError) as unknown:
        client.responses.create(model=CHAT, input="x", extra_body={"background": True})
    assert unknown.value.param == "background"


# ------------------------------------------------------------------ embeddings


def test_embeddings_create_float_and_base64_billed_from_prompt_tokens(cfg: DynasealConfig, root: str,
                                                                      issuer_key: SigningKey) -> None:
    key = key_for(issuer_key, uses=2)
    client = oai(root, key)
    floats = client.embeddings.create(model=EMBED, input=["edge devices", "short lived keys"],
                                      encoding_format="float")
    assert len(floats.data) == 2 and floats.usage.prompt_tokens == 5
    decoded = client.embeddings.create(model=EMBED, input="edge devices")  # the SDK asks for base64
    assert decoded.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)  # float32 on the wire
    callbacks = stored_callback(cfg, jti_of(key))
    assert callbacks["endpoint"] == "embeddings" and callbacks["usage_source"] == "upstream"
    assert callbacks["tokens"] in (5, 2)


# ------------------------------------------------------------------ Messages


def test_messages_create_with_the_key_as_api_key(cfg: DynasealConfig, root: str, mock_url: str,
                                                 issuer_key: SigningKey) -> None:
    key = key_for(issuer_key)
    raw = claude(root, key).messages.with_raw_response.create(
        model=CLAUDE, max_tokens=32, system="You are terse.",
        messages=[{"role": "user", "content": "Say something about keys."}])
    reply = raw.parse()
    assert reply.content[0].type == "text" and reply.usage.output_tokens <= 32
    record = upstream_record(mock_url, raw.headers["x-dynaseal-request-id"])
    # The provider's credential in the provider's header; the dynamic key nowhere.
    assert record["headers"]["x-api-key"] == "sk-mock-provider-test-key"
    assert "authorization" not in record["headers"] and record["headers"].get("anthropic-version")
    assert key not in str(record)
    callback = stored_callback(cfg, jti_of(key))
    prompt = reply.usage.input_tokens + (reply.usage.cache_read_input_tokens or 0) \
        + (reply.usage.cache_creation_input_tokens or 0)
    assert callback["endpoint"] == "messages" and callback["usage"]["prompt_tokens"] == prompt
    assert callback["usage"]["prompt_tokens_details"]["cached_tokens"] == reply.usage.cache_read_input_tokens
    assert callback["tokens"] == prompt + reply.usage.output_tokens


def test_messages_stream_billed_from_message_start_and_last_delta(cfg: DynasealConfig, root: str,
                                                                  issuer_key: SigningKey) -> None:
    key = key_for(issuer_key)
    with claude(root, key).messages.stream(model=CLAUDE, max_tokens=16,
                                           messages=[{"role": "user", "content": [
                                               {"type": "text", "text": "Cache this part please",
                                                "cache_control": {"type": "ephemeral"}},
                                               {"type": "text", "text": "and answer"}]}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens == 16 and final.usage.cache_creation_input_tokens == 4
    callback = stored_callback(cfg, jti_of(key))
    assert callback["stream"] is True and callback["usage"]["completion_tokens"] == 16
    assert callback["usage"]["prompt_tokens_details"]["cache_write_tokens"] == 4
    assert callback["usage"]["prompt_tokens"] == final.usage.input_tokens + 4


def test_messages_mid_stream_error_bills_the_reservation(cfg: DynasealConfig, root: str,
                                                         issuer_key: SigningKey) -> None:
    key = key_for(issuer_key)
    client = claude(root, key, **{"x-mock-stream-error-after": "3"})
    with pytest.raises(anthropic.APIStatusError), client.messages.stream(model=CLAUDE, max_tokens=16,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        list(stream.text_stream)
    callback = stored_callback(cfg, jti_of(key))
    assert callback["usage_source"] == "reserved" and callback["tokens"] >= 16


def test_messages_refusals_are_anthropic_errors(root: str, issuer_key: SigningKey) -> None:
    client = claude(root, key_for(issuer_key))
    hello: list[MessageParam] = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.PermissionDeniedError) as above_cap:
        client.messages.create(model=CLAUDE, max_tokens=KEY_CAP + 1, messages=hello)
    assert above_cap.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    assert above_cap.value.body["error"]["code"] == "param_not_allowed"  # type: ignore[index]
    with pytest.raises(anthropic.PermissionDeniedError) as model:
        client.messages.create(model="claude-opus-4-1", max_tokens=8, messages=hello)
    assert model.value.body["error"]["code"] == "model_not_allowed"  # type: ignore[index]
    with pytest.raises(anthropic.PermissionDeniedError) as server_tool:
        client.messages.create(model=CLAUDE, max_tokens=8, messages=hello,
                               tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert "web_search" in server_tool.value.message
    with pytest.raises(anthropic.BadRequestError) as thinking:
        client.messages.create(model=CLAUDE, max_tokens=32, messages=hello,
                               thinking={"type": "enabled", "budget_tokens": 32})
    assert thinking.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError) as bad_key:
        claude(root, "not-a-key").messages.create(model=CLAUDE, max_tokens=8, messages=hello)
    assert bad_key.value.body["type"] == "error"  # type: ignore[index]


def test_count_tokens_is_checked_but_not_metered(root: str, issuer_key: SigningKey) -> None:
    key = key_for(issuer_key, uses=1)
    client = claude(root, key)
    hello: list[MessageParam] = [{"role": "user", "content": "count these four words"}]
    assert client.messages.count_tokens(model=CLAUDE, messages=hello).input_tokens > 0
    assert client.messages.count_tokens(model=CLAUDE, messages=hello).input_tokens > 0  # spends no use
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.count_tokens(model="claude-opus-4-1", messages=hello)
    client.messages.create(model=CLAUDE, max_tokens=8, messages=hello)  # the one use
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model=CLAUDE, max_tokens=8, messages=hello)


# ------------------------------------------------------------------ agent frameworks


def test_openai_agents_sdk_runs_a_function_tool_over_several_turns(cfg: DynasealConfig, root: str,
                                                                    issuer_key: SigningKey) -> None:
    import agents

    key = key_for(issuer_key)
    calls: list[str] = []

    @agents.function_tool
    def key_expiry(city: str) -> str:
        """When the keys of a city expire."""
        calls.append(city)
        return f"keys in {city} expire in ten minutes"

    client = openai.AsyncOpenAI(base_url=f"{root}/v1", api_key=key, max_retries=0)
    model = agents.OpenAIResponsesModel(model=CHAT, openai_client=client)
    agent = agents.Agent(name="edge", instructions="Answer with the tool.", tools=[key_expiry], model=model)
    result = agents.Runner.run_sync(agent, "When do keys expire in Paris?",
                                    run_config=agents.RunConfig(tracing_disabled=True))
    assert result.final_output and len(calls) == 2  # two tool rounds, then the answer: three model calls
    callbacks = [stored_callback(cfg, jti_of(key))]
    assert callbacks[0]["endpoint"] == "responses" and callbacks[0]["usage_source"] == "upstream"


def test_langchain_chat_anthropic_and_chat_openai_responses(cfg: DynasealConfig, root: str,
                                                            issuer_key: SigningKey) -> None:
    from langchain_anthropic import ChatAnthropic
    from langchain_openai import ChatOpenAI

    claude_key, openai_key = key_for(issuer_key), key_for(issuer_key)
    anthropic_reply = ChatAnthropic(model=CLAUDE, api_key=claude_key, base_url=root, max_tokens=24,
                                    max_retries=0).invoke("Say hi")
    assert anthropic_reply.content
    assert stored_callback(cfg, jti_of(claude_key))["endpoint"] == "messages"
    chat = ChatOpenAI(model=CHAT, api_key=openai_key, base_url=f"{root}/v1", use_responses_api=True, max_retries=0)
    streamed = "".join(str(chunk.text) for chunk in chat.stream("Say hi"))
    assert streamed
    callback = stored_callback(cfg, jti_of(openai_key))
    assert callback["endpoint"] == "responses" and callback["usage_source"] == "upstream"


# ------------------------------------------------------------------ key carriers, paths, Envoy's replies


def callbacks_of(cfg: DynasealConfig, jti: str, count: int, timeout_s: float = 30) -> list[dict[str, Any]]:
    """The `count` callbacks the bundled issuer stored for this key (waits for them)."""
    import json
    import sqlite3
    import time
    from pathlib import Path

    db = Path(cfg.gateway.data_dir) / "issuer" / "issuer.db"
    deadline = time.monotonic() + timeout_s
    rows: list[Any] = []
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT payload FROM callbacks WHERE jti = ?", (jti,)).fetchall()
        if len(rows) >= count:
            break
        time.sleep(0.2)
    return [json.loads(row[0]) for row in rows]


def test_the_key_as_x_api_key_never_reaches_the_provider(cfg: DynasealConfig, root: str, mock_url: str,
                                                         issuer_key: SigningKey) -> None:
    key = key_for(issuer_key)
    client = anthropic.Anthropic(base_url=root, api_key=None, auth_token=None, max_retries=0,
                                 default_headers={"x-api-key": key})
    raw = client.messages.with_raw_response.create(model=CLAUDE, max_tokens=8,
                                                   messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().content
    record = upstream_record(mock_url, raw.headers["x-dynaseal-request-id"])
    assert record["headers"]["x-api-key"] == "sk-mock-provider-test-key" and key not in str(record)
    assert stored_callback(cfg, jti_of(key))["endpoint"] == "messages"


def test_seed_layout_paths_serve_responses_and_embeddings(cfg: DynasealConfig, root: str,
                                                          issuer_key: SigningKey) -> None:
    key = key_for(issuer_key, uses=2)
    client = openai.OpenAI(base_url=f"{root}/api/v1", api_key=key, max_retries=0)
    assert client.responses.create(model=CHAT, input="hi", max_output_tokens=16).output_text
    assert client.embeddings.create(model=EMBED, input="hi").data
    assert {c["endpoint"] for c in callbacks_of(cfg, jti_of(key), 2)} == {"responses", "embeddings"}


def test_envoys_own_replies_on_messages_are_anthropic_shaped(root: str, issuer_key: SigningKey) -> None:
    client = claude(root, key_for(issuer_key))
    with pytest.raises(anthropic.APIStatusError) as too_large:
        client.messages.create(model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "x" * 70_000}])
    assert too_large.value.status_code == 413
    assert too_large.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.batches.list()
    assert unknown.value.body["type"] == "error"  # type: ignore[index]


def test_concurrent_requests_on_a_budgeted_key_never_overspend(cfg: DynasealConfig, root: str,
                                                               issuer_key: SigningKey) -> None:
    from concurrent.futures import ThreadPoolExecutor

    budget = 400
    key = key_for(issuer_key, budget=budget)

    def call(i: int) -> int:
        try:
            oai(root, key).responses.create(model=CHAT, input=f"question {i}", max_output_tokens=20)
            return 200
        except openai.RateLimitError as refused:
            assert refused.code == "insufficient_quota"
            return 429

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(call, range(8)))
    served = statuses.count(200)
    assert 1 <= served < 8
    billed = callbacks_of(cfg, jti_of(key), served)
    assert len(billed) == served and sum(c["tokens"] for c in billed) <= budget


# ------------------------------------------------------------------ reservation ≥ bill, cut streams


def test_every_reservation_is_above_the_providers_bill(cfg: DynasealConfig, root: str,
                                                       issuer_key: SigningKey) -> None:
    from test_stream_metering_e2e import log_line

    key = key_for(issuer_key)
    dense = "ünïcödé ✓ 数据 " * 200
    tool: Any = {"type": "function", "name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}
    request_ids = []
    raw = oai(root, key).responses.with_raw_response.create(
        model=CHAT, input=dense, instructions=dense, tools=[tool],
        reasoning={"effort": "high"})
    request_ids.append(raw.headers["x-dynaseal-request-id"])
    cached: Any = {"type": "text", "text": dense, "cache_control": {"type": "ephemeral"}}
    raw_m = claude(root, key).messages.with_raw_response.create(
        model=CLAUDE, max_tokens=KEY_CAP, system=[cached], messages=[{"role": "user", "content": [cached]}])
    request_ids.append(raw_m.headers["x-dynaseal-request-id"])
    raw_e = oai(root, key).embeddings.with_raw_response.create(model=EMBED, input=[[1] * 300, dense],  # type: ignore[arg-type]
                                                               encoding_format="float")
    request_ids.append(raw_e.headers["x-dynaseal-request-id"])
    for request_id in request_ids:
        line = log_line(cfg, request_id)
        total = (line["total_tokens"] or (line["prompt_tokens"] + line["completion_tokens"]
                                          + (line["cached_tokens"] or 0) + (line["cache_write_tokens"] or 0)))
        assert line["endpoint"] and line["reserved"] >= total > 0, line


def test_a_responses_stream_the_client_leaves_is_billed_its_reservation(cfg: DynasealConfig, root: str,
                                                                        issuer_key: SigningKey) -> None:
    key = key_for(issuer_key)
    with httpx.Client(timeout=30) as client, client.stream(
            "POST", f"{root}/v1/responses", json={"model": CHAT, "input": "hi", "stream": True},
            headers={"authorization": f"Bearer {key}", "x-mock-chunk-delay-ms": "150"}) as reply:
        assert reply.status_code == 200
        for n, _line in enumerate(reply.iter_lines()):
            if n > 6:
                break
    callback = stored_callback(cfg, jti_of(key))
    assert callback["usage_source"] == "reserved" and callback["tokens"] >= KEY_CAP


def test_framework_refusals_are_their_sdks_exceptions(root: str, issuer_key: SigningKey) -> None:
    import agents
    from langchain_anthropic import ChatAnthropic
    from langchain_openai import ChatOpenAI

    key = key_for(issuer_key)
    with pytest.raises(anthropic.PermissionDeniedError) as lc_anthropic:
        ChatAnthropic(model="claude-opus-4-1", api_key=key, base_url=root, max_tokens=8, max_retries=0).invoke("hi")
    assert lc_anthropic.value.body["error"]["code"] == "model_not_allowed"  # type: ignore[index]
    with pytest.raises(openai.PermissionDeniedError) as lc_openai:
        ChatOpenAI(model=CHAT, api_key=key, base_url=f"{root}/v1", use_responses_api=True, max_retries=0,
                   max_tokens=KEY_CAP + 1).invoke("hi")
    assert lc_openai.value.code == "param_not_allowed"
    client = openai.AsyncOpenAI(base_url=f"{root}/v1", api_key=key, max_retries=0)
    agent = agents.Agent(name="edge", model=agents.OpenAIResponsesModel(model="gpt-4o", openai_client=client))
    with pytest.raises(openai.PermissionDeniedError) as agent_refused:
        agents.Runner.run_sync(agent, "hi", run_config=agents.RunConfig(tracing_disabled=True))
    assert agent_refused.value.code == "model_not_allowed"
