"""What Envoy's HTTP ext_authz (`http_service`) carries of today's CheckResponse, as bench/RESULTS.md states it.

A scripted HTTP/1.1 server behind the bench's H listener (`bench.http_authz_envoy`) answers by path; a real
Envoy shows what reaches the upstream route, the client and the access log.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml

from bench.harness import free_ports
from bench.http_authz_envoy import render
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import ServiceSpec, Supervisor

HOST = "127.0.0.1"
ANSWERS = {
    b"/allow": b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-dynaseal-authz: ok\r\n"
               b"x-envoy-auth-headers-to-remove: dynasealtoken, x-drop\r\n"
               b"x-ds-request-id: rid-1\r\nx-ds-reserved: 64\r\n\r\n",
    b"/deny": b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 7\r\n"
              b"x-ds-deny-code: rate_limited\r\nx-ds-jti: jti-1\r\ncontent-length: 11\r\n\r\n{\"e\":\"429\"}",
    b"/local": b"HTTP/1.1 203 Non-Authoritative Information\r\ncontent-type: application/json\r\n"
               b"content-length: 11\r\n\r\n{\"data\":[]}",
    b"/fail": b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nx-ds-deny-code: redis_down\r\n"
              b"content-length: 11\r\n\r\n{\"e\":\"503\"}",
}
RAW_BODY = b'{"model":"m","x":"\xff\xfe"}'  # not UTF-8: must reach the check byte for byte
BODIES: list[bytes] = []


class Scripted(asyncio.Protocol):
    """Answers each whole request by its path and keeps the bodies it got (in BODIES)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                           if line.lower().startswith(b"content-length:")), 0)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            BODIES.append(rest[:length])
            self.transport.write(ANSWERS[head.split(b" ")[1]])


def envoy_yaml(listener: int, authz: int, admin: int, access_log: Path) -> str:
    """The bench's H listener (direct_response) with metadata from `x-ds-*` answer headers, a client-header
    allowlist, route echoes of what reached the upstream, and an access log of the metadata."""
    config = render({"h_raw": listener}, {"upstream_llm": authz, "authz_raw": authz}, admin, direct=True)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    response = hcm["http_filters"][0]["typed_config"]["http_service"]["authorization_response"]
    response["dynamic_metadata_from_headers"] = {"patterns": [{"prefix": "x-ds-"}]}
    response["allowed_client_headers"] = {"patterns": [{"exact": "retry-after"}, {"exact": "content-type"}]}
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    route["response_headers_to_add"] += [
        {"header": {"key": f"x-seen-{name}", "value": f"%REQ({name})%"}} for name in ("dynasealtoken", "x-drop")] + [
        {"header": {"key": "x-meta-reserved",
                    "value": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:x-ds-reserved)%"}}]
    hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": str(access_log),
        "log_format": {"json_format": {"path": "%REQ(:path)%", "status": "%RESPONSE_CODE%",
                                       "meta": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz)%",
                                       "details": "%RESPONSE_CODE_DETAILS%"}}}}]
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class Seen:
    """What the client got per path, and the access log's line per path."""

    answers: dict[str, httpx.Response] = field(default_factory=dict)
    log: dict[str, dict[str, Any]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seen]:
    """Each scripted answer once through a real Envoy; Envoy stopped (its log flushed) before the asserts."""
    listener, authz, admin = free_ports(3)
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(Scripted, HOST, authz))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    directory = tmp_path_factory.mktemp("httpmode")
    access_log = directory / "access.log"
    config = directory / "envoy.yaml"
    config.write_text(envoy_yaml(listener, authz, admin, access_log))
    supervisor = Supervisor(directory / "logs", HOST)
    result = Seen()
    try:
        supervisor.start(ServiceSpec("envoy", [envoy_config.envoy_binary(), "-c", str(config), "--disable-hot-restart",
                                               "--log-level", "warn", "--concurrency", "1"],
                                     f"http://{HOST}:{admin}", lambda: http_ok(f"http://{HOST}:{admin}/ready")))
        with httpx.Client(timeout=5) as client:
            for path in ("/allow", "/deny", "/local", "/fail"):
                result.answers[path] = client.post(f"http://{HOST}:{listener}{path}", content=RAW_BODY,
                                                   headers={"dynasealtoken": "key", "x-drop": "1"})
    finally:
        supervisor.stop()  # flushes the access log
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()
    result.log = {line["path"]: line for line in map(json.loads, access_log.read_text().splitlines())}
    yield result


def test_an_allow_sets_upstream_headers_removes_the_named_ones_and_gives_string_metadata(seen: Seen) -> None:
    allow = seen.answers["/allow"]
    assert allow.status_code == 200
    assert allow.headers.get("x-authz-seen") == "ok"  # allowed_upstream_headers reached the route
    assert "x-seen-dynasealtoken" not in allow.headers and "x-seen-x-drop" not in allow.headers
    assert allow.headers["x-meta-reserved"] == "64"
    meta = seen.log["/allow"]["meta"]
    assert meta["x-ds-request-id"] == "rid-1" and meta["x-ds-reserved"] == "64"  # a string, keyed by header name


def test_a_denial_keeps_status_body_and_allowed_headers_and_its_metadata_but_leaks_no_metadata_header(
        seen: Seen) -> None:
    deny = seen.answers["/deny"]
    assert (deny.status_code, deny.content, deny.headers["retry-after"]) == (429, b'{"e":"429"}', "7")
    assert not [name for name in deny.headers if name.startswith("x-ds-")]
    assert seen.log["/deny"]["meta"] == {"x-ds-deny-code": "rate_limited", "x-ds-jti": "jti-1"}


def test_a_local_answer_cannot_be_a_200_but_another_2xx_passes_with_its_body(seen: Seen) -> None:
    local = seen.answers["/local"]
    assert (local.status_code, local.content) == (203, b'{"data":[]}')


def test_a_5xx_answer_fails_closed_without_its_body_or_metadata(seen: Seen) -> None:
    fail = seen.answers["/fail"]
    assert (fail.status_code, fail.content) == (503, b"")
    assert seen.log["/fail"]["details"] == "ext_authz_error" and seen.log["/fail"]["meta"] is None


def test_the_check_gets_the_request_body_byte_for_byte(seen: Seen) -> None:
    assert len(BODIES) == len(seen.answers) and set(BODIES) == {RAW_BODY}
