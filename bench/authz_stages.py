"""CPU of each stage of one authz Check, in process, without the gRPC transport: what the decision costs
beside what carrying it costs.

`python -m bench.authz_stages [--requests 3000] [--rounds 5]`: a real Redis (the project's binary) and
the bench tenant; the CheckRequest bytes Envoy sends for the bench request, each with its own id.
Stages, CPU µs per request (median of rounds, one process, one event loop):
- decode: `CheckRequest.FromString` of the wire bytes;
- decision: `Authorizer.decide` without Redis (key from cache, body checks, content rules);
- decision + Redis: the same with the real ledger (one EVALSHA over the pipelined client, awaited);
- answer: `to_check_response` + `SerializeToString`;
- Check handler: the servicer's whole `Check` (request adapter, decision + Redis, answer, metrics) + both
  protobuf ends, i.e. all of authz's own work but the transport and the event loop's wake-ups.
The authz CPU per request measured under load (bench peers / gateway) minus the last row is what the
transport, the event loop and the kernel cost there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from authz_service.envoy_adapter import to_auth_request, to_check_response
from authz_service.servicer import AuthorizationServicer
from bench.check_client import check_request
from bench.fixture import PROVIDER_KEY, PROVIDER_KEY_ENV, make_keys, write_config
from bench.harness import HOST, free_ports
from dynaseal.config import load_config
from dynaseal.keys.tenants import build_registry
from dynaseal.ledger.quota import RedisQuota
from dynaseal.policy.authorizer import Authorizer
from dynaseal_launcher.probes import redis_ping
from dynaseal_launcher.stack import redis_server_binary


def median_us(fn: Callable[[], Any], requests: int, rounds: int) -> float:
    """Median over rounds of CPU µs per call."""
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(requests):
            fn()
        samples.append((time.process_time() - started) / requests * 1e6)
    return statistics.median(samples)


def median_async_us(loop: asyncio.AbstractEventLoop, fn: Callable[[], Awaitable[Any]], requests: int,
                    rounds: int, concurrent: int = 1) -> float:
    """Median over rounds of CPU µs per awaited call, `concurrent` callers at once on one loop (uvloop)."""
    async def callers() -> None:
        async def caller(count: int) -> None:
            for _ in range(count):
                await fn()
        await asyncio.gather(*(caller(requests // concurrent) for _ in range(concurrent)))

    samples = []
    for _ in range(rounds):
        started = time.process_time()
        loop.run_until_complete(callers())
        samples.append((time.process_time() - started) / (requests // concurrent * concurrent) * 1e6)
    return statistics.median(samples)


def measure(requests: int, rounds: int) -> list[tuple[str, float]]:
    """Every stage's CPU µs per request."""
    os.environ.setdefault(PROVIDER_KEY_ENV, PROVIDER_KEY)
    port = free_ports(1)[0]
    redis = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", HOST, "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if redis_ping(HOST, port):
                break
            time.sleep(0.05)
        keys = make_keys()
        with tempfile.TemporaryDirectory() as tmp:
            registry = build_registry(load_config(write_config(Path(tmp), {"redis": port}, keys)))
        loop = uvloop.new_event_loop()
        quota = RedisQuota.from_url(f"redis://{HOST}:{port}/0", 0.5)
        bare, ledger = Authorizer(registry, quota=None), Authorizer(registry, quota=quota)
        servicer = AuthorizationServicer(ledger)
        template = check_request(keys.token)
        ids = iter(range(10**9))

        def wire() -> bytes:
            n = next(ids)
            template.attributes.request.http.id = f"stage-{n}"
            data: bytes = template.SerializeToString()
            return data

        payload = wire()
        parsed = CheckRequest.FromString(payload)
        request = to_auth_request(parsed)
        decision = loop.run_until_complete(ledger.decide(request))
        assert decision.allowed, decision
        async def check() -> bytes:
            answer = await servicer.Check(CheckRequest.FromString(wire()), None)
            data: bytes = answer.SerializeToString()
            return data

        rows = [
            ("decode: CheckRequest.FromString", median_us(lambda: CheckRequest.FromString(payload), requests, rounds)),
            ("decision without Redis", median_async_us(loop, lambda: bare.decide(request), requests, rounds)),
            ("decision + Redis admit, one at a time", median_async_us(loop, lambda: ledger.decide(request), requests,
                                                                      rounds)),
            ("decision + Redis admit, 16 at a time", median_async_us(loop, lambda: ledger.decide(request), requests,
                                                                     rounds, 16)),
            ("answer: to_check_response + serialize",
             median_us(lambda: to_check_response(decision).SerializeToString(), requests, rounds)),
            ("Check handler (wire bytes in and out), one at a time", median_async_us(loop, check, requests, rounds)),
            ("Check handler (wire bytes in and out), 16 at a time", median_async_us(loop, check, requests, rounds, 16)),
        ]
        loop.close()
        return rows
    finally:
        redis.terminate()
        redis.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    """Print the stages as a Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m bench.authz_stages", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rows = measure(args.requests, args.rounds)
    print("| stage (in process, no transport) | CPU µs/request |\n|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
