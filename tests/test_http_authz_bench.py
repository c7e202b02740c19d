"""bench.http_authz: the null HTTP ext_authz server parses what it must and refuses the rest, and the
bench's Envoy reaches it (and the gRPC one) over kept-alive connections."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator

import pytest

from bench.http_authz import VARIANTS, HttpAuthzStack, check
from bench.null_http_authz import (
    ALLOW,
    BAD_REQUEST,
    DENY,
    HEAD_TOO_LARGE,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    TOO_LARGE,
    NullHttpAuthz,
)

BODY = b'{"model":"gpt-4o-mini","messages":[]}'


def request(body: bytes = BODY, authorization: bytes = b"Bearer k", extra: bytes = b"") -> bytes:
    """One check request as Envoy sends it."""
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: " + authorization
            + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


class FakeTransport(asyncio.Transport):
    """Records writes and whether the server closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True


def feed(*chunks: bytes) -> FakeTransport:
    """A fresh connection fed these reads in turn."""
    transport = FakeTransport()
    protocol = NullHttpAuthz()
    protocol.connection_made(transport)
    for chunk in chunks:
        protocol.data_received(chunk)
    return transport


def test_requests_arriving_together_get_one_write_and_the_connection_stays_open() -> None:
    transport = feed(request() + request(authorization=b"Bearer deny") + request(b""))
    assert transport.writes == [ALLOW + DENY + ALLOW]
    assert not transport.closed


def test_a_request_split_across_reads_is_answered_once_whole() -> None:
    whole = request()
    transport = feed(whole[:10], whole[10:-5], whole[-5:])
    assert transport.writes == [ALLOW]
    # The next request on the same connection is read from its own first byte.
    transport = feed(whole + whole[:-1])
    assert transport.writes == [ALLOW]


@pytest.mark.parametrize("bad", [
    request(extra=b"transfer-encoding: chunked\r\n"),  # only a length-delimited body is accepted
    request(extra=b"content-length: 3\r\n"),  # two lengths that differ: a smuggling attempt
    request().replace(b"content-length: ", b"content-length: +"),
    request().replace(b"content-length: ", b"content-length: 1 "),
    request(extra=b"no colon here\r\n"),
    request(extra=b" folded: line\r\n"),
    request(extra=b"name : space before the colon\r\n"),
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/2\r\n\r\n",
])
def test_malformed_heads_get_400_and_the_connection_closed(bad: bytes) -> None:
    transport = feed(bad)
    assert transport.writes == [BAD_REQUEST]
    assert transport.closed


def test_oversized_heads_and_bodies_are_refused_without_waiting_for_them() -> None:
    endless = feed(b"POST / HTTP/1.1\r\nx: " + b"a" * (MAX_HEAD_BYTES + 1))
    assert (endless.writes, endless.closed) == ([HEAD_TOO_LARGE], True)
    huge = feed(request(extra=b"x: " + b"a" * MAX_HEAD_BYTES + b"\r\n"))
    assert (huge.writes, huge.closed) == ([HEAD_TOO_LARGE], True)
    length = f"content-length: {len(BODY)}".encode()
    big_body = request().replace(length, f"content-length: {MAX_BODY_BYTES + 1}".encode())
    assert feed(big_body).writes == [TOO_LARGE]


def test_a_request_after_an_answered_one_that_asked_to_close_is_not_read() -> None:
    transport = feed(request(extra=b"connection: close\r\n") + request())
    assert (transport.writes, transport.closed) == ([ALLOW], True)
    old = feed(request().replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert (old.writes, old.closed) == ([ALLOW], True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpAuthzStack]:
    """Envoy with U, H (the raw server) and Gn (pygrpc-native), answering with direct_response."""
    chosen = tuple(v for v in VARIANTS if v.label in ("U", "H", "Gn"))
    with HttpAuthzStack(tmp_path_factory.mktemp("httpauthz"), direct=True, variants=chosen) as running:
        yield running


def envoy_stat(stack: HttpAuthzStack, name: str) -> int:
    """One counter from Envoy's admin /stats."""
    url = f"http://127.0.0.1:{stack.ports['envoy_admin']}/stats?format=json&filter=^{name}$"
    with urllib.request.urlopen(url, timeout=5) as answer:
        stats = json.loads(answer.read())["stats"]
    return int(stats[0]["value"])


@pytest.mark.parametrize("label", ["U", "H", "Gn"])
def test_each_variant_answers_through_a_real_envoy_with_the_authz_header_and_refuses_the_deny_token(
        stack: HttpAuthzStack, label: str) -> None:
    check(stack, next(v for v in stack.variants if v.label == label))


def test_the_http_check_reuses_one_connection_for_sequential_requests(stack: HttpAuthzStack) -> None:
    h = next(v for v in stack.variants if v.label == "H")
    before = envoy_stat(stack, "cluster.authz_raw.upstream_rq_total")
    check(stack, h)  # 21 requests one after another
    assert envoy_stat(stack, "cluster.authz_raw.upstream_rq_total") - before == 21
    # Kept alive: Envoy opened one connection to the server for every check so far, never one per check.
    assert envoy_stat(stack, "cluster.authz_raw.upstream_cx_total") == 1
