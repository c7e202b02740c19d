"""Envoy's own side of the gateway, on the real Envoy and mock upstream with a scripted ext_authz.

authz's answer is fixed per test (bench/scripted_authz.py), so what is checked here is Envoy alone:
the body amendment, the usage-chunk stripping, the request-id headers, routes, header rules and the
downstream limits. The same behaviour through the real authz is in tests/test_clients_sdks.py.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import TenantKeys, write_test_config
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from bench.scripted_authz import ScriptedAuthz, allow, deny
from dynaseal.config import load_config
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import ServiceSpec, Supervisor

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Tell me something about the edge of the network."}]
PREFIX = '"max_tokens":7,"stream_options":{"include_usage":true},'
MAX_CONNECTIONS = 40


@dataclass
class Edge:
    """The running Envoy + mock upstream + scripted authz."""

    url: str
    mock: str
    authz: ScriptedAuthz
    access_log: Path

    def script(self, answer: Any) -> None:
        """Make every following Check answer `answer(check)` (or the fixed CheckResponse)."""
        self.authz.answer = answer if callable(answer) else (lambda _check: answer)

    def recorded(self) -> list[dict[str, Any]]:
        """What the upstream received since the last clear."""
        return list(httpx.get(f"{self.mock}/_mock/requests").json())

    def clear(self) -> None:
        """Forget what the upstream received."""
        httpx.delete(f"{self.mock}/_mock/requests")

    def log_line(self, request_id: str, timeout_s: float = 10) -> dict[str, Any]:
        """The access-log line with this request id (lines reach the file within ~0.2 s)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.access_log.exists():
                for line in self.access_log.read_text().splitlines():
                    entry = json.loads(line)
                    if entry.get("request_id") == request_id:
                        return dict(entry)
            time.sleep(0.1)
        raise AssertionError(f"no access-log line for {request_id}")


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, test_keys: TenantKeys) -> Iterator[Edge]:
    """Envoy rendered from the gateway template (short header timeout, few connections)."""
    directory = tmp_path_factory.mktemp("edge")
    path = write_test_config(directory, test_keys)
    raw = yaml.safe_load(path.read_text())
    raw["gateway"]["limits"] = {"request_headers_timeout_s": 1, "max_connections": MAX_CONNECTIONS}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(path)
    gw = cfg.gateway
    access_log = directory / "access.log"
    envoy_file = directory / "envoy.yaml"
    envoy_file.write_text(envoy_config.render(cfg, access_log))
    ok, output = envoy_config.validate(envoy_file)
    assert ok, output[-3000:]
    supervisor = Supervisor(directory / "logs", gw.host)
    with ScriptedAuthz(lambda _check: allow(), port=gw.ports.authz) as authz:
        try:
            mock = f"http://{gw.host}:{cfg.local.mock_upstream_port}"
            supervisor.start(ServiceSpec(
                "mock-llm", [sys.executable, "-m", "mock_llm", "--host", gw.host,
                             "--port", str(cfg.local.mock_upstream_port)],
                mock, lambda: http_ok(f"{mock}/healthz")))
            supervisor.start(ServiceSpec(
                "envoy", [envoy_config.envoy_binary(), "-c", str(envoy_file), "--disable-hot-restart",
                          "--log-level", "warn", "--file-flush-interval-msec", "100", "--concurrency", "1"],
                "envoy", lambda: http_ok(f"http://{gw.host}:{gw.ports.envoy_admin}/ready")))
            yield Edge(f"http://{gw.host}:{gw.ports.envoy}", mock, authz, access_log)
        finally:
            supervisor.stop()


@pytest.fixture(autouse=True)
def _plain_allow(edge: Edge) -> None:
    edge.script(lambda _check: allow())
    edge.clear()


def sse_events(text: str) -> list[str]:
    """The data payloads of an SSE body, in order."""
    events = text.replace("\r\n", "\n").split("\n\n")
    return [e[len("data: "):] for e in events if e.startswith("data: ")]


def usage_chunks(text: str) -> list[dict[str, Any]]:
    """The usage-only chunks (choices empty, usage set) of an SSE body."""
    chunks = [json.loads(e) for e in sse_events(text) if e != "[DONE]"]
    return [c for c in chunks if c["choices"] == [] and c.get("usage")]


# ------------------------------------------------------------------ body amendment


def test_body_prefix_goes_in_after_the_opening_brace(edge: Edge) -> None:
    edge.script(lambda _check: allow({"body_prefix": PREFIX}))
    client_body = ' \n\t{"model": "gpt-4o-mini", "messages": ' + json.dumps(MESSAGES) + ', "stream": true}'
    reply = httpx.post(f"{edge.url}/v1/chat/completions", content=client_body,
                       headers={"content-type": "application/json"})
    assert reply.status_code == 200, reply.text
    [seen] = edge.recorded()
    assert seen["raw_body"] == ' \n\t{' + PREFIX + client_body.lstrip()[1:]
    assert int(seen["headers"]["content-length"]) == len(seen["raw_body"].encode("latin-1"))
    added = {k: v for k, v in seen["body"].items() if k not in json.loads(client_body)}
    assert added == {"max_tokens": 7, "stream_options": {"include_usage": True}}
    assert {k: seen["body"][k] for k in json.loads(client_body)} == json.loads(client_body)


def test_body_is_untouched_without_a_prefix(edge: Edge) -> None:
    client_body = '{"model":"gpt-4o-mini","messages":' + json.dumps(MESSAGES) + ',"max_tokens":5}'
    reply = httpx.post(f"{edge.url}/v1/chat/completions", content=client_body)
    assert reply.status_code == 200, reply.text
    assert edge.recorded()[0]["raw_body"] == client_body


def test_large_body_is_amended_whole(edge: Edge) -> None:
    edge.script(lambda _check: allow({"body_prefix": '"max_tokens":3,'}))
    long_text = "é" * 20000  # multi-byte, crossing many buffer slices
    client_body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": long_text}]},
                             ensure_ascii=False).encode()
    reply = httpx.post(f"{edge.url}/v1/chat/completions", content=client_body)
    assert reply.status_code == 200, reply.text
    [seen] = edge.recorded()
    assert seen["raw_body"].encode("latin-1") == b'{"max_tokens":3,' + client_body[1:]
    assert seen["body"]["messages"][0]["content"] == long_text


@pytest.mark.parametrize("client_body", [b'[{"model": "x"}]', b'x{"model": "x"}', b"", b"   "])
def test_a_body_that_cannot_be_amended_is_refused_not_forwarded(edge: Edge, client_body: bytes) -> None:
    """authz checks this first; should the two ever disagree, Envoy fails closed."""
    edge.script(lambda _check: allow({"body_prefix": PREFIX}))
    reply = httpx.post(f"{edge.url}/v1/chat/completions", content=client_body)
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert reply.headers["x-dynaseal-request-id"]
    assert edge.recorded() == []


# ------------------------------------------------------------------ usage stripping


def stream(edge: Edge, include_usage: bool, strip: bool, **mock_headers: str) -> httpx.Response:
    """A streamed completion; the upstream is always asked for usage (as authz's prefix does)."""
    metadata: dict[str, Any] = {}
    if not include_usage:
        metadata["body_prefix"] = '"stream_options":{"include_usage":true},'
    if strip:
        metadata["strip_usage"] = True
    edge.script(lambda _check: allow(metadata))
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 12, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    headers = {f"x-mock-{k.replace('_', '-')}": v for k, v in mock_headers.items()}
    reply = httpx.post(f"{edge.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply


@pytest.mark.parametrize("shape", [{}, {"split_bytes": "7", "chunk_delay_ms": "1"},
                                   {"split_bytes": "61", "chunk_delay_ms": "1", "sse_newline": "crlf"},
                                   {"sse_newline": "crlf"}], ids=["whole", "split7", "split61-crlf", "crlf"])
def test_usage_chunk_is_stripped_only_for_a_client_that_did_not_ask(edge: Edge, shape: dict[str, str]) -> None:
    asked = stream(edge, include_usage=True, strip=False, **shape)
    not_asked = stream(edge, include_usage=False, strip=True, **shape)
    assert len(usage_chunks(asked.text)) == 1
    assert usage_chunks(not_asked.text) == []
    # Everything else arrives unchanged: the same text, in order, ending with [DONE].
    def text_of(reply: httpx.Response) -> str:
        chunks = [json.loads(e) for e in sse_events(reply.text) if e != "[DONE]"]
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text_of(asked) == text_of(not_asked) != ""
    assert sse_events(not_asked.text)[-1] == "[DONE]"
    assert "content-length" not in not_asked.headers
    # sse_to_metadata read the usage before it was stripped: both are billed the same.
    ids = [r.headers["x-dynaseal-request-id"] for r in (asked, not_asked)]
    lines = [edge.log_line(i) for i in ids]
    assert lines[0]["total_tokens"] == lines[1]["total_tokens"] == usage_chunks(asked.text)[0]["usage"]["total_tokens"]


def test_strip_usage_leaves_a_non_streaming_answer_alone(edge: Edge) -> None:
    edge.script(lambda _check: allow({"strip_usage": True}))
    reply = httpx.post(f"{edge.url}/v1/chat/completions",
                       json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 4})
    assert reply.status_code == 200
    assert reply.json()["usage"]["completion_tokens"] == 4


# ------------------------------------------------------------------ request ids


def test_allowed_answer_names_authz_request_id_beside_the_upstreams_own(edge: Edge) -> None:
    request_id = "0b8f8a4e-1111-4222-8333-944445555666"
    edge.script(lambda _check: allow({"request_id": request_id}))
    reply = httpx.post(f"{edge.url}/v1/chat/completions", headers={"x-request-id": "client-chosen"},
                       json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 3})
    assert reply.status_code == 200
    assert reply.headers.get_list("x-dynaseal-request-id") == [request_id]
    # The mock (like OpenAI) sends its own x-request-id: passed on as it is, never the gateway's.
    assert reply.headers["x-request-id"].startswith("req_")
    [seen] = edge.recorded()
    assert seen["headers"]["x-request-id"] == request_id
    assert edge.log_line(request_id)["code"] == 200


def test_client_request_id_is_never_kept(edge: Edge) -> None:
    edge.script(lambda _check: deny(401, '{"error":{"code":"invalid_api_key"}}'))
    httpx.post(f"{edge.url}/v1/chat/completions", headers={"x-request-id": "client-chosen"}, json={})
    envoy_id = edge.authz.seen[-1].attributes.request.http.headers["x-request-id"]
    assert envoy_id and envoy_id != "client-chosen"


def test_authz_refusal_keeps_authz_request_id(edge: Edge) -> None:
    edge.script(lambda _check: deny(403, '{"error":{"code":"model_not_allowed"}}', request_id="deny-id-1"))
    reply = httpx.post(f"{edge.url}/v1/chat/completions", json={"model": "x"})
    assert reply.status_code == 403
    assert reply.headers.get_list("x-dynaseal-request-id") == ["deny-id-1"]


def test_envoy_local_replies_name_envoys_request_id(edge: Edge, tmp_path: Path) -> None:
    not_found = httpx.get(f"{edge.url}/v1/nothing-here")
    too_large = httpx.post(f"{edge.url}/v1/chat/completions", content=b"{" + b" " * 70000 + b"}")

    def broken(_check: CheckRequest) -> CheckResponse:
        raise RuntimeError("authz failed")

    edge.script(broken)
    authz_down = httpx.post(f"{edge.url}/v1/chat/completions", json={"model": "x"})
    for reply, status, code in ((not_found, 404, "not_found"), (too_large, 413, "request_too_large"),
                                (authz_down, 503, "authz_unavailable")):
        assert reply.status_code == status
        assert reply.json()["error"]["code"] == code
        [request_id] = reply.headers.get_list("x-dynaseal-request-id")
        # The access log's request_id falls back to Envoy's id for requests authz never allowed.
        assert edge.log_line(request_id)["code"] == status


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
def test_envoy_local_replies_on_messages_are_anthropic_shaped(edge: Edge, prefix: str) -> None:
    not_found = httpx.post(f"{edge.url}{prefix}/messages/batches", json={})
    too_large = httpx.post(f"{edge.url}{prefix}/messages", content=b"{" + b" " * 70000 + b"}")

    def broken(_check: CheckRequest) -> CheckResponse:
        raise RuntimeError("authz failed")

    edge.script(broken)
    authz_down = httpx.post(f"{edge.url}{prefix}/messages", json={"model": "x"})
    for reply, status, kind in ((not_found, 404, "not_found_error"), (too_large, 413, "request_too_large"),
                                (authz_down, 503, "api_error")):
        assert reply.status_code == status
        body = reply.json()
        assert body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"]
        assert reply.headers.get("x-dynaseal-request-id")
    # The OpenAI paths keep OpenAI's shape.
    assert httpx.post(f"{edge.url}{prefix}/responses", json={"model": "x"}).json()["error"]["code"] \
        == "authz_unavailable"


# ------------------------------------------------------------------ routes and headers


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat/completions",
                                  "/client-side/chat/completions"])
def test_chat_paths_reach_the_upstream_chat_path(edge: Edge, path: str) -> None:
    reply = httpx.post(f"{edge.url}{path}", json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 2})
    assert reply.status_code == 200, reply.text
    assert edge.recorded()[0]["path"] == "/v1/chat/completions"


@pytest.mark.parametrize("path", ["/v1/models", "/api/v1/models"])
def test_model_list_goes_through_authz(edge: Edge, path: str) -> None:
    listing = '{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":0,"owned_by":"dynaseal"}]}'
    edge.script(lambda _check: deny(200, listing, request_id="models-1"))
    reply = httpx.get(f"{edge.url}{path}")
    assert reply.status_code == 200
    assert reply.json()["data"][0]["id"] == "gpt-4o-mini"
    assert reply.headers["x-dynaseal-request-id"] == "models-1"
    assert edge.authz.seen[-1].attributes.request.http.path == path
    assert httpx.post(f"{edge.url}{path}").status_code == 404
    assert edge.recorded() == []


@pytest.mark.parametrize("path", ["/v1/models/gpt-4o", "/v1/chat/completions/x", "/v1/completions",
                                  "/v1/responses/resp_1/cancel", "/v1/embeddings/x", "/"])
def test_other_paths_are_404(edge: Edge, path: str) -> None:
    reply = httpx.post(f"{edge.url}{path}", json={})
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "not_found"


def test_gateway_controls_accept_encoding_and_drops_underscore_headers(edge: Edge) -> None:
    reply = httpx.post(f"{edge.url}/v1/chat/completions",
                       headers={"accept-encoding": "gzip, br", "openai_organization": "org-evil"},
                       json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 2})
    assert reply.status_code == 200
    seen = edge.recorded()[0]["headers"]
    assert seen["accept-encoding"] == "identity"
    assert "openai_organization" not in seen
    assert "openai_organization" not in edge.authz.seen[-1].attributes.request.http.headers


def test_client_address_is_the_peer_not_a_forwarded_for_header(edge: Edge) -> None:
    httpx.post(f"{edge.url}/v1/chat/completions", headers={"x-forwarded-for": "203.0.113.9"},
               json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 2})
    check = edge.authz.seen[-1]
    assert check.attributes.source.address.socket_address.address == "127.0.0.1"
    assert check.attributes.request.http.headers["x-envoy-external-address"] == "127.0.0.1"
    # Nothing about the client's address, or Envoy's own headers, goes on to the provider.
    seen = edge.recorded()[0]["headers"]
    assert not {"x-forwarded-for", "x-forwarded-proto"} & set(seen)
    assert [name for name in seen if name.startswith("x-envoy")] == []


# ------------------------------------------------------------------ downstream limits


def test_slow_request_headers_are_cut_off(edge: Edge) -> None:
    host, port = edge.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_connections_beyond_the_limit_are_refused(edge: Edge) -> None:
    host, port = edge.url.removeprefix("http://").split(":")
    socks = [socket.create_connection((host, int(port)), timeout=5) for _ in range(MAX_CONNECTIONS + 10)]
    try:
        answered = 0
        for sock in socks:
            try:
                sock.sendall(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
                answered += sock.recv(4096).startswith(b"HTTP/1.1 404")
            except OSError:
                pass
        assert 0 < answered <= MAX_CONNECTIONS
    finally:
        for sock in socks:
            sock.close()
    assert httpx.get(f"{edge.url}/nothing").status_code == 404  # and the gateway serves again


def test_access_log_carries_captured_content_only_when_asked(edge: Edge) -> None:
    edge.script(lambda _check: allow({"capture_content": True, "strip_usage": True,
                                      "body_prefix": '"stream_options":{"include_usage":true},'}))
    reply = httpx.post(f"{edge.url}/v1/chat/completions",
                       json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 3, "stream": True})
    line = edge.log_line(reply.headers["x-dynaseal-request-id"])
    captured = base64.b64decode(line["content_b64"]).decode()
    assert len(usage_chunks(captured)) == 1  # the copy is what the upstream sent
    assert usage_chunks(reply.text) == []
