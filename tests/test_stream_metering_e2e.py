"""Stream metering a client cannot steer, through the real stack (Envoy + authz + Redis + shipper + consumer).

The upstream behaves like vLLM with `continuous_usage_stats`: the running usage in every chunk (the mock's
`x-mock-usage: continuous`, which the tests' config forwards). Envoy's sse_to_metadata keeps the last usage it
read, so a client that reads 3 chunks and leaves used to be billed that interim count; it must be billed at
least the reservation. A stream that ends is billed its final usage.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
from pipeline_harness import MESSAGES, new_key, settled, wait_until
from redis import Redis

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey
from dynaseal.usage.events import RESERVED, UPSTREAM, parse_line

pytestmark = pytest.mark.integration
CONTINUOUS = {"x-mock-usage": "continuous"}


@pytest.fixture(scope="module")
def gw(cfg: DynasealConfig, stack: object) -> str:
    return f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/chat/completions"


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "deepseek-chat", "messages": MESSAGES, "max_tokens": 20, "stream": True, **extra}


def log_line(cfg: DynasealConfig, request_id: str, timeout_s: float = 20) -> dict[str, Any]:
    """The access-log line of one request (Envoy writes it at stream end, flushed every 0.2 s)."""
    access_log = Path(cfg.gateway.data_dir) / "envoy" / "access.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if access_log.exists():
            for raw in access_log.read_text().splitlines():
                if request_id in raw:
                    entry = json.loads(raw)
                    if entry.get("request_id") == request_id:
                        return dict(entry)
        time.sleep(0.1)
    raise AssertionError(f"no access-log line for {request_id}")


def read_events_then_leave(client: httpx.Client, gw: str, key: str, events: int, **extra: Any) -> str:
    """Stream, read `events` SSE events and close the connection; the gateway's request id."""
    headers = {"authorization": f"Bearer {key}", **CONTINUOUS, "x-mock-chunk-delay-ms": "150"}
    with client.stream("POST", gw, json=body(**extra), headers=headers) as reply:
        assert reply.status_code == 200, reply.read()
        seen = 0
        for line in reply.iter_lines():
            if line.startswith("data: "):
                assert json.loads(line[6:])["usage"]["total_tokens"] > 0  # the running usage, as vLLM sends it
                seen += 1
                if seen == events:
                    break
        return reply.headers["x-dynaseal-request-id"]


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_client_leaving_after_3_chunks_is_billed_at_least_the_reservation(
        gw: str, cfg: DynasealConfig, issuer_key: SigningKey, redis_client: Redis, include_usage: bool) -> None:
    key, jti = new_key(issuer_key)
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    with httpx.Client(timeout=15) as client:
        request_id = read_events_then_leave(client, gw, key, 3, **extra)
    entry = log_line(cfg, request_id)
    reserved = int(entry["reserved"])
    # What Envoy read last is an interim count, far below what was reserved (the scenario is real)...
    assert entry["flags"] == "DC", entry
    assert entry["total_tokens"] is not None and entry["total_tokens"] < reserved, entry
    event = parse_line(json.dumps(entry))
    # ...and the bill is the reservation, not that count.
    assert event is not None and (event.usage_source, event.total_tokens) == (RESERVED, reserved)
    wait_until(settled(redis_client, jti, reserved, 1), 30, "settlement at the reservation")


def test_a_whole_stream_with_running_usage_is_billed_its_final_usage(
        gw: str, cfg: DynasealConfig, issuer_key: SigningKey, redis_client: Redis) -> None:
    key, jti = new_key(issuer_key)
    reply = httpx.post(gw, json=body(stream_options={"include_usage": True}),
                       headers={"authorization": f"Bearer {key}", **CONTINUOUS}, timeout=15)
    chunks = [json.loads(line[6:]) for line in reply.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    running = [c["usage"]["total_tokens"] for c in chunks]
    assert len(set(running)) > 3 and running == sorted(running)  # the usage grew chunk by chunk
    final = chunks[-1]["usage"]
    entry = log_line(cfg, reply.headers["x-dynaseal-request-id"])
    event = parse_line(json.dumps(entry))
    assert event is not None and (event.usage_source, event.total_tokens) == (UPSTREAM, final["total_tokens"])
    assert final["total_tokens"] < event.reserved  # billed its usage, not its reservation
    wait_until(settled(redis_client, jti, final["total_tokens"], 1), 30, "settlement at the final usage")


def test_a_stream_the_upstream_resets_after_3_chunks_is_billed_at_least_the_reservation(
        gw: str, cfg: DynasealConfig, issuer_key: SigningKey, redis_client: Redis) -> None:
    key, jti = new_key(issuer_key)
    headers = {"authorization": f"Bearer {key}", **CONTINUOUS, "x-mock-abort-after-frames": "4"}
    seen: list[int] = []
    with httpx.Client(timeout=15) as client, \
            client.stream("POST", gw, json=body(stream_options={"include_usage": True}), headers=headers) as reply:
        request_id = reply.headers["x-dynaseal-request-id"]
        with pytest.raises(httpx.HTTPError):  # the stream ends without its last chunk
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:])["usage"]["total_tokens"])
    assert seen and len(seen) <= 4
    entry = log_line(cfg, request_id)
    reserved = int(entry["reserved"])
    assert entry["flags"] in ("UPE", "UC", "UR"), entry  # an upstream that dropped a started response
    assert entry["total_tokens"] == seen[-1] < reserved, entry  # Envoy read the last interim count
    event = parse_line(json.dumps(entry))
    assert event is not None and (event.usage_source, event.total_tokens) == (RESERVED, reserved), entry
    wait_until(settled(redis_client, jti, reserved, 1), 30, "settlement at the reservation")


def h2_read_events_then_reset(gw: str, key: str, events: int) -> tuple[str, socket.socket]:
    """Over HTTP/2 (cleartext, prior knowledge), read `events` SSE events, then reset only that stream
    (RST_STREAM CANCEL); the connection stays open. The request id and the still-open socket."""
    url = httpx.URL(gw)
    sock = socket.create_connection((url.host, url.port), timeout=15)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    payload = json.dumps(body(stream_options={"include_usage": True})).encode()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", f"{url.host}:{url.port}"),
                          (":path", url.path), ("authorization", f"Bearer {key}"),
                          ("content-type", "application/json"), ("x-mock-usage", "continuous"),
                          ("x-mock-chunk-delay-ms", "150")])
    conn.send_data(1, payload, end_stream=True)
    sock.sendall(conn.data_to_send())
    request_id, data = "", b""
    for _ in range(1000):  # bounded: frames until `events` events arrived
        received = sock.recv(65536)
        assert received, "the connection closed"
        for event in conn.receive_data(received):
            if isinstance(event, h2.events.ResponseReceived):
                # header_encoding="utf-8" (above): h2 hands the names and values over as str
                request_id = dict(cast("list[tuple[str, str]]", event.headers))["x-dynaseal-request-id"]
            elif isinstance(event, h2.events.DataReceived):
                data += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, 1)
        sock.sendall(conn.data_to_send())
        if data.count(b"\n\n") >= events:
            break
    conn.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    sock.sendall(conn.data_to_send())
    return request_id, sock


def test_an_http2_client_resetting_its_stream_after_3_chunks_is_billed_at_least_the_reservation(
        gw: str, cfg: DynasealConfig, issuer_key: SigningKey, redis_client: Redis) -> None:
    key, jti = new_key(issuer_key)
    request_id, sock = h2_read_events_then_reset(gw, key, 3)
    try:
        entry = log_line(cfg, request_id)  # logged while the connection is still open
    finally:
        sock.close()
    reserved = int(entry["reserved"])
    assert entry["flags"] == "DR" and entry["total_tokens"] is not None and entry["total_tokens"] < reserved, entry
    event = parse_line(json.dumps(entry))
    assert event is not None and (event.usage_source, event.total_tokens) == (RESERVED, reserved)
    wait_until(settled(redis_client, jti, reserved, 1), 30, "settlement at the reservation")
