"""Tests for mock_llm: a real server subprocess driven by the official openai SDK, plus a few in-process checks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam
from starlette.testclient import TestClient

from mock_llm import DEFAULT_COMPLETION_WORDS, create_app
from mock_llm.__main__ import API_KEY_ENV, build_parser

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-mock-test-key-0123456789"
# system: 5 words, user: 6 words -> prompt_tokens = (5 + 4) + (6 + 4) + 3 = 22
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Say hello to the gateway please"},
]
EXPECTED_PROMPT_TOKENS = 22


def _free_port() -> int:
    """Ask the OS for a currently free TCP port on localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """Run ``python -m mock_llm`` on a free port for the whole module and yield its root URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mock_llm", "--port", str(port), "--api-key", API_KEY],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 15
            while True:
                if proc.poll() is not None:
                    stderr.seek(0)
                    pytest.fail(f"mock_llm exited early ({proc.returncode}): {stderr.read().decode()}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("mock_llm did not answer /healthz in time")
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[openai.OpenAI]:
    """Official SDK client with retries off, so injected errors surface immediately."""
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    """Raw HTTP client for wire-level assertions the SDK hides."""
    with httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=10) as c:
        yield c


def _sse_frames(response: httpx.Response) -> list[str]:
    """Split a raw SSE body into the payloads of its ``data:`` events."""
    assert response.text.endswith("\n\n")
    events = [e for e in response.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e.removeprefix("data: ") for e in events]


def test_non_streaming_usage_and_shape(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["content-type"] == "application/json"
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "gpt-4o-mini"
    assert resp.system_fingerprint
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    assert choice.message.content is not None
    assert len(choice.message.content.split()) == DEFAULT_COMPLETION_WORDS
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == EXPECTED_PROMPT_TOKENS
    assert resp.usage.completion_tokens == DEFAULT_COMPLETION_WORDS
    assert resp.usage.total_tokens == EXPECTED_PROMPT_TOKENS + DEFAULT_COMPLETION_WORDS
    # Deterministic: the same prompt yields the same text.
    again = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert again.choices[0].message.content == choice.message.content
    assert again.id != resp.id


def test_streaming_with_include_usage_matches_non_streaming(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    stream = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0] is chunks[-1]
    assert chunks[-1].choices == []
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and plain.usage is not None
    assert len(text.split()) == usage.completion_tokens == DEFAULT_COMPLETION_WORDS
    assert text == plain.choices[0].message.content
    assert usage.model_dump() == plain.usage.model_dump()


def test_streaming_wire_format(http: httpx.Client) -> None:
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 3, "stream": True}
    with_usage = http.post("/v1/chat/completions", json={**body, "stream_options": {"include_usage": True}})
    assert with_usage.headers["content-type"].startswith("text/event-stream")
    frames = _sse_frames(with_usage)
    assert frames[-1] == "[DONE]"
    chunks = [orjson.loads(f) for f in frames[:-1]]
    # role chunk + 3 word chunks + finish chunk + usage chunk
    assert len(chunks) == 6
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:4]]
    assert words[0].endswith(" ") and words[1].endswith(" ") and not words[2].endswith(" ")
    assert chunks[4]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}

    without = _sse_frames(http.post("/v1/chat/completions", json=body))
    assert without[-1] == "[DONE]"
    assert all("usage" not in orjson.loads(f) for f in without[:-1])


@pytest.mark.parametrize("switch", ["body", "header"])
def test_continuous_usage_puts_the_usage_so_far_in_every_chunk_as_vllm_does(http: httpx.Client, switch: str) -> None:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 3, "stream": True,
                            "stream_options": {"include_usage": True}}
    headers = {}
    if switch == "body":
        body["stream_options"]["continuous_usage_stats"] = True
    else:
        headers["x-mock-usage"] = "continuous"
    frames = _sse_frames(http.post("/v1/chat/completions", json=body, headers=headers))
    chunks = [orjson.loads(f) for f in frames[:-1]]
    assert frames[-1] == "[DONE]" and len(chunks) == 6
    # role chunk 0 tokens, then one per word, the finish chunk repeats the count; the usage-only chunk is final
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 3, 3, 3]
    assert all(c["usage"]["prompt_tokens"] == EXPECTED_PROMPT_TOKENS for c in chunks)
    assert all(c["usage"]["total_tokens"] == EXPECTED_PROMPT_TOKENS + c["usage"]["completion_tokens"] for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-2]["choices"][0]["finish_reason"] == "length"
    # Without include_usage only the running counts: the last content chunk's is the final one.
    del body["stream_options"]["include_usage"]
    plain = [orjson.loads(f) for f in _sse_frames(http.post("/v1/chat/completions", json=body,
                                                            headers=headers))[:-1]]
    assert len(plain) == 5 and plain[-1]["usage"]["completion_tokens"] == 3
    bad = http.post("/v1/chat/completions", json=body, headers={"x-mock-usage": "sometimes"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-mock-usage"


def test_streaming_without_include_usage_has_no_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert chunks, "stream produced no chunks"
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("limits", "per_choice", "finish"),
    [
        ({"max_tokens": 5}, 5, "length"),
        ({"max_completion_tokens": 3, "max_tokens": 10}, 3, "length"),
        ({"max_tokens": 100}, DEFAULT_COMPLETION_WORDS, "stop"),
    ],
)
def test_token_caps_with_two_choices(
    client: openai.OpenAI, limits: dict[str, Any], per_choice: int, finish: str, stream: bool
) -> None:
    if not stream:
        resp = client.chat.completions.create(model="mock-large", messages=MESSAGES, n=2, **limits)
        assert [c.index for c in resp.choices] == [0, 1]
        assert [len(c.message.content.split()) for c in resp.choices] == [per_choice, per_choice]
        assert [c.finish_reason for c in resp.choices] == [finish, finish]
        assert resp.usage.completion_tokens == 2 * per_choice
        return
    chunks = list(
        client.chat.completions.create(
            model="mock-large",
            messages=MESSAGES,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
            **limits,
        )
    )
    texts = {0: "", 1: ""}
    finishes: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert [len(texts[i].split()) for i in (0, 1)] == [per_choice, per_choice]
    assert finishes == {0: finish, 1: finish}
    assert chunks[-1].usage.completion_tokens == 2 * per_choice


def test_wrong_api_key_is_authentication_error(base_url: str) -> None:
    bad = openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-wrong-key-000000", max_retries=0)
    with bad, pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert info.value.type == "invalid_request_error"


@pytest.mark.parametrize(
    ("status", "exc_type", "code"),
    [
        (500, openai.InternalServerError, "server_error"),
        (503, openai.InternalServerError, "service_unavailable"),
        (429, openai.RateLimitError, "rate_limit_exceeded"),
    ],
)
def test_injected_status(client: openai.OpenAI, status: int, exc_type: type[openai.APIStatusError], code: str) -> None:
    with pytest.raises(exc_type) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-status": str(status)}
        )
    assert info.value.status_code == status
    assert info.value.code == code


def test_missing_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="mock-missing-model", messages=MESSAGES)
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"model": "gpt-4o", "messages": []}', "messages"),
        (b'{"model": "", "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user"}]}', "messages.[0].content"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "n": 9}', "n"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens"),
    ],
)
def test_invalid_bodies_are_openai_400s(http: httpx.Client, content: bytes, param: str | None) -> None:
    resp = http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_recording_shows_headers_exactly_as_received(http: httpx.Client, client: openai.OpenAI) -> None:
    assert http.delete("/_mock/requests").status_code == 200
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Trace-Id": "t-1"})
    http.post("/v1/chat/completions", content=b"{oops", headers={"dynasealtoken": "dyn.abc"})
    records = http.get("/_mock/requests").json()
    assert len(records) == 2  # the GET/DELETE control calls themselves are not recorded
    sdk, raw = records
    assert sdk["method"] == "POST" and sdk["path"] == "/v1/chat/completions"
    assert sdk["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert sdk["headers"]["x-trace-id"] == "t-1"
    assert "dynasealtoken" not in sdk["headers"]
    assert sdk["body"]["model"] == "gpt-4o-mini" and sdk["body"]["messages"] == MESSAGES
    assert raw["headers"]["dynasealtoken"] == "dyn.abc"
    assert raw["body"] is None
    assert http.delete("/_mock/requests").json() == {"cleared": 2}
    assert http.get("/_mock/requests").json() == []


def test_delay_hooks(http: httpx.Client) -> None:
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 2}
    start = time.monotonic()
    assert http.post("/v1/chat/completions", json=body, headers={"x-mock-delay-ms": "200"}).status_code == 200
    assert time.monotonic() - start >= 0.2
    # role + 2 words + finish + [DONE] = 5 frames -> 4 gaps of 60 ms
    start = time.monotonic()
    streamed = http.post("/v1/chat/completions", json={**body, "stream": True}, headers={"x-mock-chunk-delay-ms": "60"})
    assert len(_sse_frames(streamed)) == 5
    assert time.monotonic() - start >= 0.24
    # With a chunk delay, frames are delivered incrementally (first frame well before the last).
    arrivals: list[float] = []
    start = time.monotonic()
    with http.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True}, headers={"x-mock-chunk-delay-ms": "60"}
    ) as resp:
        arrivals.extend(time.monotonic() - start for line in resp.iter_lines() if line.startswith("data: "))
    assert len(arrivals) == 5
    assert arrivals[-1] - arrivals[0] >= 0.2
    bad = http.post("/v1/chat/completions", json=body, headers={"x-mock-delay-ms": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-mock-delay-ms"


def test_models_health_and_unknown_path(client: openai.OpenAI, http: httpx.Client) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["gpt-4o-mini", "gpt-4o", "deepseek-chat", "mock-large", "claude-sonnet-4-5",
                   "text-embedding-3-small"]
    health = http.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    unknown = http.post("/v1/completions", json={})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_url"
    wrong_method = http.get("/v1/chat/completions")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_in_process_app_without_key_accepts_anything_and_counts_parts() -> None:
    app = create_app()
    with TestClient(app) as tc:
        body = {
            "model": "gpt-4o",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "two words"},
                        {"type": "image_url", "image_url": {"url": "https://example.invalid/x.png"}},
                    ],
                }
            ],
        }
        for headers in ({}, {"authorization": "Bearer anything"}):
            resp = tc.post("/v1/chat/completions", json=body, headers=headers)
            assert resp.status_code == 200
            assert resp.json()["usage"]["prompt_tokens"] == 2 + 4 + 3
        other = tc.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "zzz"}]})
        assert other.json()["choices"][0]["message"]["content"] != resp.json()["choices"][0]["message"]["content"]
    assert len(app.state.recorder) == 3


def test_cli_api_key_defaults_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8100, "from-env")
    monkeypatch.delenv(API_KEY_ENV)
    assert build_parser().parse_args(["--port", "9"]).api_key is None


def test_abort_hook_drops_the_connection_mid_stream(http: httpx.Client) -> None:
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 5, "stream": True}
    frames: list[str] = []
    with pytest.raises(httpx.HTTPError), \
            http.stream("POST", "/v1/chat/completions", json=body, headers={"x-mock-abort-after-frames": "2"}) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: "):
                frames.append(line)
    assert len(frames) == 2
