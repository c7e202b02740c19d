"""The mock's Responses, Messages and embeddings APIs, read by the providers' own SDKs (in process): the
event sequences, usage fields, tool calls and error shapes those SDKs parse."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest
import uvicorn
from anthropic.types import MessageParam, ToolParam
from starlette.testclient import TestClient

from mock_llm import create_app

KEY = "sk-mock-endpoints-0123456789"


@pytest.fixture(scope="module")
def http() -> TestClient:
    return TestClient(create_app(api_key=KEY), base_url="http://mock")


@pytest.fixture(scope="module")
def oai(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://mock/v1", api_key=KEY, http_client=http, max_retries=0)


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every SSE event."""
    events = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            events.append((lines["event"], orjson.loads(lines["data"])))
    return events


def test_responses_plain_and_streamed_agree(oai: openai.OpenAI, http: TestClient) -> None:
    reply = oai.responses.create(model="gpt-4o-mini", input="Tell me a story", instructions="Be kind",
                                 max_output_tokens=100, reasoning={"effort": "low"})
    usage = reply.usage
    assert reply.status == "completed" and reply.output_text and usage is not None
    assert usage.input_tokens == 3 + (2 + 4) + (4 + 4) and usage.input_tokens_details.cached_tokens == 6
    assert usage.output_tokens == 24 and usage.output_tokens_details.reasoning_tokens == 12
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    raw = http.post("/v1/responses", headers={"authorization": f"Bearer {KEY}"},
                    json={"model": "m", "input": "Tell me a story", "stream": True, "max_output_tokens": 16})
    events = sse_events(raw.content)
    assert [name for name, _ in events[:5]] == ["response.created", "response.in_progress",
                                                "response.output_item.added", "response.content_part.added",
                                                "response.output_text.delta"]
    assert [name for name, _ in events[-4:]] == ["response.output_text.done", "response.content_part.done",
                                                 "response.output_item.done", "response.incomplete"]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert events[0][1]["response"]["usage"] is None
    final = events[-1][1]["response"]
    assert final["usage"]["output_tokens"] == 16 and final["incomplete_details"] == {"reason": "max_output_tokens"}


def test_responses_call_function_tools_then_answer(oai: openai.OpenAI) -> None:
    tool: Any = {"type": "function", "name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"]}}
    history: list[Any] = [{"role": "user", "content": "weather?"}]
    for _ in range(2):
        reply = oai.responses.create(model="m", input=history, tools=[tool])
        [call] = reply.output
        assert call.type == "function_call" and orjson.loads(call.arguments) == {"city": "mock", "days": 1}
        history += [call.model_dump(), {"type": "function_call_output", "call_id": call.call_id, "output": "sun"}]
    assert oai.responses.create(model="m", input=history, tools=[tool]).output_text


def test_embeddings_float_and_base64(oai: openai.OpenAI) -> None:
    mixed: Any = ["a b", [1, 2, 3]]  # a text and a token array in one call: more than the SDK's types allow
    floats = oai.embeddings.create(model="e", input=mixed, encoding_format="float", dimensions=4)
    assert [len(d.embedding) for d in floats.data] == [4, 4] and floats.usage.prompt_tokens == 2 + 3
    assert oai.embeddings.create(model="e", input="a b", dimensions=4).data[0].embedding == pytest.approx(
        floats.data[0].embedding, abs=1e-6)
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model="e", input=[])


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """The mock on a free loopback port (the anthropic SDK brings its own HTTP client)."""
    from conftest import free_ports

    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(create_app(api_key=KEY), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def claude(url: str, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0, default_headers=headers or None)


def test_messages_usage_cache_and_stream_sequence(http: TestClient) -> None:
    body = {"model": "claude", "max_tokens": 10, "stream": True, "system": "be brief",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "cached words",
                                                       "cache_control": {"type": "ephemeral"}},
                                                      {"type": "text", "text": "and more"}]}]}
    raw = http.post("/v1/messages", headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"}, json=body)
    events = sse_events(raw.content)
    assert [name for name, _ in events] == ["message_start", "content_block_start", "ping",
                                            *["content_block_delta"] * 10, "content_block_stop",
                                            "message_delta", "message_stop"]
    usage = events[0][1]["message"]["usage"]
    assert usage == {"input_tokens": 3 + 4 + 4 - 2, "cache_creation_input_tokens": 2,
                     "cache_read_input_tokens": 2 + 4, "output_tokens": 1}
    assert events[-2][1]["usage"] == {"output_tokens": 10} and events[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_messages_errors_are_anthropic_shaped(http: TestClient, served: str) -> None:
    version = {"anthropic-version": "2023-06-01"}
    bad_key = http.post("/v1/messages", headers={"x-api-key": "nope", **version}, json={})
    assert bad_key.status_code == 401 and bad_key.json()["error"]["type"] == "authentication_error"
    no_version = http.post("/v1/messages", headers={"x-api-key": KEY}, json={})
    assert no_version.status_code == 400 and no_version.json()["type"] == "error"
    no_cap = http.post("/v1/messages", headers={"x-api-key": KEY, **version},
                       json={"model": "c", "messages": [{"role": "user", "content": "hi"}]})
    assert no_cap.status_code == 400 and no_cap.json()["error"]["type"] == "invalid_request_error"
    overloaded = http.post("/v1/messages", headers={"x-api-key": KEY, "x-mock-status": "529", **version}, json={})
    assert overloaded.status_code == 529 and overloaded.json()["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.RateLimitError):
        claude(served, **{"x-mock-status": "429"}).messages.create(
            model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}])


def test_messages_tool_use_and_mid_stream_error(served: str) -> None:
    tool: ToolParam = {"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}},
                                                          "required": ["q"]}}
    hi: list[MessageParam] = [{"role": "user", "content": "hi"}]
    reply = claude(served).messages.create(model="c", max_tokens=50, messages=hi, tools=[tool])
    assert reply.stop_reason == "tool_use" and reply.content[0].input == {"q": "mock"}  # type: ignore[union-attr]
    with pytest.raises(anthropic.APIStatusError) as error, \
            claude(served, **{"x-mock-stream-error-after": "2"}).messages.stream(model="c", max_tokens=50,
                                                                                messages=hi) as stream:
        list(stream.text_stream)
    assert "Overloaded" in str(error.value)
    assert claude(served).messages.count_tokens(model="c", messages=hi).input_tokens == 3 + 1 + 4
