"""Attacks through the real Envoy + authz + Redis (only the LLM is a mock): methods, paths, framing, headers.

Each test is an attack that must fail; those under "findings" were open before their fix.
"""

from __future__ import annotations

import json
import socket
from typing import Any, cast

import httpx
import pytest
from conftest import DEMO_TENANT

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey, mint

pytestmark = pytest.mark.integration
BODY = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "count to three"}], "max_tokens": 20}


@pytest.fixture(scope="module")
def base(cfg: DynasealConfig, stack: object) -> str:
    return f"http://127.0.0.1:{cfg.gateway.ports.envoy}"


@pytest.fixture(scope="module")
def mock(cfg: DynasealConfig, stack: object) -> str:
    return f"http://127.0.0.1:{cfg.local.mock_upstream_port}"


def key(issuer_key: SigningKey, **limits: Any) -> str:
    return mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=300, **limits)


def received(mock: str) -> list[dict[str, object]]:
    return list(httpx.get(f"{mock}/_mock/requests").json())


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def http1(token: str, body: bytes, *extra: bytes) -> bytes:
    head = [b"POST /v1/chat/completions HTTP/1.1", b"Host: gw", b"Authorization: Bearer " + token.encode(),
            b"Content-Type: application/json", *extra, b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


# --- findings of the review, fixed: regression tests ------------------------------------------------

def test_only_a_post_without_query_reaches_the_upstream(base: str, mock: str, issuer_key: SigningKey) -> None:
    httpx.delete(f"{mock}/_mock/requests")
    for method in ("GET", "DELETE"):
        httpx.request(method, f"{base}/v1/chat/completions?limit=100&order=desc", content=json.dumps(BODY),
                      headers={"authorization": f"Bearer {key(issuer_key)}", "content-type": "application/json"},
                      timeout=30)
    httpx.post(f"{base}/v1/chat/completions?limit=100", json=BODY, timeout=30,
               headers={"authorization": f"Bearer {key(issuer_key)}"})
    assert received(mock) == []  # refused at the gateway: nothing but a query-less POST reaches the provider


def test_the_provider_sees_no_client_chosen_host(base: str, mock: str, issuer_key: SigningKey) -> None:
    httpx.delete(f"{mock}/_mock/requests")
    httpx.post(f"{base}/v1/chat/completions", json=BODY, timeout=30,
               headers={"authorization": f"Bearer {key(issuer_key)}", "host": "attacker.example"})
    (record,) = received(mock)
    assert "attacker.example" not in json.dumps(record["headers"])


# --- holds ------------------------------------------------------------------------------------------

def test_router_control_headers_from_the_client_are_stripped(base: str, mock: str, issuer_key: SigningKey) -> None:
    httpx.delete(f"{mock}/_mock/requests")
    token = key(issuer_key)
    timed = httpx.post(f"{base}/v1/chat/completions", json=BODY, timeout=30, headers={
        "authorization": f"Bearer {token}", "x-envoy-upstream-rq-timeout-ms": "1", "x-mock-delay-ms": "300"})
    retried = httpx.post(f"{base}/v1/chat/completions", json=BODY, timeout=30, headers={
        "authorization": f"Bearer {token}", "x-envoy-retry-on": "5xx", "x-envoy-max-retries": "5",
        "x-envoy-upstream-rq-per-try-timeout-ms": "100", "x-mock-status": "500", "x-forwarded-for": "10.0.0.1",
        "x-envoy-internal": "true"})
    assert (timed.status_code, retried.status_code) == (200, 500)
    records = received(mock)
    assert len(records) == 2  # no retry, no early timeout: nothing a client can use to get a free 5xx
    for record in records:
        names = set(cast("dict[str, str]", record["headers"]))
        assert not {"x-envoy-retry-on", "x-forwarded-for", "x-envoy-internal"} & names


@pytest.mark.parametrize("extra", [
    (b"Transfer-Encoding: chunked", b"Content-Length: 5"),         # CL + TE smuggling
    (b"Authorization: Bearer x",),                                   # a second key header
    (b"Content-Type: text/plain",),                                  # a second content type
    (b"Content-Encoding: identity, gzip",),
])
def test_ambiguous_framing_and_doubled_headers_are_refused(cfg: DynasealConfig, stack: object,
                                                          issuer_key: SigningKey, extra: tuple[bytes, ...]) -> None:
    body = json.dumps(BODY).encode()
    framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if b"Transfer-Encoding: chunked" in extra else body
    if b"Transfer-Encoding: chunked" not in extra:
        extra = (*extra, b"Content-Length: %d" % len(body))
    reply = raw_exchange(cfg.gateway.ports.envoy, http1(key(issuer_key), framed, *extra))
    assert reply.split(b" ", 2)[1] in (b"400", b"401"), reply[:120]


def test_a_chunked_body_is_checked_like_any_other(cfg: DynasealConfig, stack: object, issuer_key: SigningKey) -> None:
    token = key(issuer_key, uses=1)
    body = json.dumps(BODY).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (1, body[i:i + 1]) for i in range(len(body))) + b"0\r\n\r\n"
    first = raw_exchange(cfg.gateway.ports.envoy, http1(token, chunked, b"Transfer-Encoding: chunked"))
    again = raw_exchange(cfg.gateway.ports.envoy, http1(token, chunked, b"Transfer-Encoding: chunked"))
    assert first.startswith(b"HTTP/1.1 200") and again.startswith(b"HTTP/1.1 429")


def test_pipelined_requests_on_one_connection_each_spend_a_use(cfg: DynasealConfig, stack: object,
                                                               issuer_key: SigningKey) -> None:
    token = key(issuer_key, uses=2)
    body = json.dumps(BODY).encode()
    one = b"\r\n".join([b"POST /v1/chat/completions HTTP/1.1", b"Host: gw", b"Authorization: Bearer " + token.encode(),
                        b"Content-Type: application/json", b"Content-Length: %d" % len(body)]) + b"\r\n\r\n" + body
    out = raw_exchange(cfg.gateway.ports.envoy, one * 3 + http1(token, body, b"Content-Length: %d" % len(body)))
    assert out.count(b"HTTP/1.1 200") == 2 and out.count(b"HTTP/1.1 429") == 2


@pytest.mark.parametrize("path", ["/v1/chat/completions/", "//v1/chat/completions", "/v1/chat%2Fcompletions",
                                  "/V1/chat/completions", "/v1/chat/completions%00", "/v1/completions",
                                  "/v1/responses/", "/V1/messages", "/v1/messages%2Fcount_tokens",
                                  "/v1/embeddings%00", "/v1/responses/resp_1/input_items"])
def test_path_variants_never_reach_the_upstream(base: str, mock: str, issuer_key: SigningKey, path: str) -> None:
    httpx.delete(f"{mock}/_mock/requests")
    reply = httpx.post(base + path, json=BODY, timeout=30, headers={"authorization": f"Bearer {key(issuer_key)}"})
    assert reply.status_code == 404 and received(mock) == []
