"""Which protobuf stubs decode a CheckRequest fastest: xds-protos (upb) vs envoy-data-plane (betterproto).

Run: `python bench/stub_choice.py`. envoy-data-plane is not a project dependency: install it in a
scratch venv beside xds-protos to compare. One request with 5 headers and a 324-byte body.
"""

from __future__ import annotations

import time

from envoy.service.auth.v3 import external_auth_pb2

ROUNDS = 20_000


def sample_request() -> bytes:
    """A serialized CheckRequest like the ones Envoy sends."""
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.id = "POST", "/v1/chat/completions", "abc-123"
    headers = {"authorization": "Bearer " + "e" * 414, "content-type": "application/json", ":authority": "gw",
               "user-agent": "OpenAI/Python", "x-request-id": "abc-123"}
    for name, value in headers.items():
        http.headers[name] = value
    http.raw_body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b"x" * 250 + b'"}]}'
    data: bytes = request.SerializeToString()
    return data


def per_call_us(decode: object, data: bytes, rounds: int) -> float:
    """Mean microseconds to decode and read one header."""
    started = time.perf_counter()
    for _ in range(rounds):
        decoded = decode(data)  # type: ignore[operator]
        _ = decoded.attributes.request.http.headers["authorization"]
    return (time.perf_counter() - started) / rounds * 1e6


def main() -> None:
    """Print both timings."""
    data = sample_request()
    print(f"xds-protos (upb): {per_call_us(external_auth_pb2.CheckRequest.FromString, data, ROUNDS):.2f} us")
    try:
        from envoy_data_plane.envoy.service.auth.v3 import CheckRequest
    except ImportError:
        print("envoy-data-plane not installed: skipped")
        return
    timing = per_call_us(lambda raw: CheckRequest().parse(raw), data, ROUNDS // 10)
    print(f"envoy-data-plane (betterproto): {timing:.2f} us")


if __name__ == "__main__":
    main()
