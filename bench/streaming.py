"""Streaming benchmark: time to first token and total time through Envoy, with and without ext_authz.

Both listeners are the real gateway listener (`dynaseal/envoy/templates/gateway.yaml.tmpl` as rendered), one with the
ext_authz filter removed, in front of the mock upstream pacing its SSE frames with
`x-mock-chunk-delay-ms`, so every chunk travels on its own. Requests alternate between the two
listeners so drift hits both alike. If ext_authz cost anything per chunk, the total-time gap
would exceed the first-token gap by about (chunks × per-chunk cost).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import httpx

from bench.fixture import stream_body
from bench.harness import BenchStack

CHUNK_DELAY_MS = 10


@dataclass
class StreamStats:
    """Medians over the streams of one listener."""

    listener: str
    ttft_ms: float
    total_ms: float
    chunks: float
    streams: int


def one_stream(client: httpx.Client, url: str, token: str, body: bytes) -> tuple[float, float, int]:
    """(ms to the first content chunk, ms to the end, chunks received) for one streamed completion."""
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json",
               "x-mock-chunk-delay-ms": str(CHUNK_DELAY_MS)}
    started = time.perf_counter()
    first = None
    chunks = 0
    with client.stream("POST", url, content=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: streaming request answered {response.status_code}")
        for piece in response.iter_raw():
            if piece and first is None:
                first = time.perf_counter()
            chunks += 1
    ended = time.perf_counter()
    if first is None or chunks < 2:
        # Unpaced (one piece) means the mock never saw x-mock-chunk-delay-ms: the numbers would say nothing.
        raise RuntimeError(f"{url}: the stream came in {chunks} piece(s): chunks were not paced")
    return (first - started) * 1000, (ended - started) * 1000, chunks


def run(stack: BenchStack, streams: int = 20) -> list[StreamStats]:
    """Alternate streams between `s_none` and `s_dynaseal`; medians per listener."""
    body = stream_body()
    samples: dict[str, list[tuple[float, float, int]]] = {"s_none": [], "s_dynaseal": []}
    with httpx.Client(timeout=30) as client:
        for listener in samples:  # warm-up: connections, caches
            one_stream(client, stack.url(listener), stack.keys.token, body)
        for _ in range(streams):
            for listener, values in samples.items():
                values.append(one_stream(client, stack.url(listener), stack.keys.token, body))
    return [StreamStats(listener, statistics.median(v[0] for v in values), statistics.median(v[1] for v in values),
                        statistics.median(v[2] for v in values), len(values))
            for listener, values in samples.items()]
