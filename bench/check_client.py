"""Load generator for the authz gRPC `Check` alone (no Envoy): `python -m bench.check_client ...`.

Runs in its own process. Two modes, both printing one JSON line:
- `rate`: open loop at a fixed request rate; each call is timed from the moment it is sent, and
  calls are sent on schedule whether or not earlier ones have answered (no coordinated omission).
- `max`: closed loop with a fixed number of calls in flight, for the highest sustained rate.
Requests look like the ones Envoy sends for the bench request (headers, raw body, a unique id);
every 50th answer is decoded and must be an OK (allow), so a refusal cannot pass for speed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time

import grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from bench.fixture import BODY, PATH

METHOD = "/envoy.service.auth.v3.Authorization/Check"
VERIFY_EVERY = 50


def check_request(token: str) -> CheckRequest:
    """A CheckRequest as Envoy's ext_authz builds it for the bench request."""
    request = CheckRequest()
    attrs = request.attributes
    attrs.source.address.socket_address.address = "127.0.0.1"
    attrs.source.address.socket_address.port_value = 40000
    attrs.destination.address.socket_address.address = "127.0.0.1"
    attrs.destination.address.socket_address.port_value = 8000
    http = attrs.request.http
    http.method, http.path, http.host, http.scheme, http.protocol = "POST", PATH, "127.0.0.1:8000", "http", "HTTP/1.1"
    http.size = len(BODY)
    http.raw_body = BODY
    for name, value in {":authority": "127.0.0.1:8000", ":path": PATH, ":method": "POST", ":scheme": "http",
                        "content-type": "application/json", "content-length": str(len(BODY)),
                        "authorization": f"Bearer {token}", "x-forwarded-proto": "http"}.items():
        http.headers[name] = value
    return request


class Client:
    """Serialized requests with fresh ids, and the latencies of the answers."""

    def __init__(self, target: str, token: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.call = self.channel.unary_unary(METHOD)  # bytes in, bytes out: no client-side proto work
        self.template = check_request(token)
        self.ids = itertools.count()
        self.latencies: list[float] = []
        self.failures = 0
        self.not_ok = 0

    def next_request(self) -> tuple[int, bytes]:
        """The template with a unique request id (the Redis reservation is keyed by it)."""
        n = next(self.ids)
        http = self.template.attributes.request.http
        http.id = f"bench-{time.monotonic_ns()}-{n}"
        http.headers["x-request-id"] = http.id
        return n, self.template.SerializeToString()

    async def one(self) -> None:
        """Send one Check and record its latency."""
        n, payload = self.next_request()
        started = time.perf_counter()
        try:
            answer = await self.call(payload, timeout=5)
        except grpc.aio.AioRpcError:
            self.failures += 1
            return
        self.latencies.append(time.perf_counter() - started)
        if n % VERIFY_EVERY == 0 and CheckResponse.FromString(answer).status.code != 0:
            self.not_ok += 1


async def open_loop(client: Client, rate: float, seconds: float) -> float:
    """Send at `rate` per second for `seconds`; return the wall time."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    tasks: set[asyncio.Task[None]] = set()
    start = loop.time() + 0.01
    for i in range(int(rate * seconds)):
        delay = start + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(client.one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return loop.time() - start


async def closed_loop(client: Client, concurrency: int, seconds: float) -> float:
    """Keep `concurrency` calls in flight for `seconds`; return the wall time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def worker() -> None:
        while loop.time() < deadline:
            await client.one()

    start = loop.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return loop.time() - start


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0–100) of sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    """Warm up, run the chosen mode, summarize."""
    client = Client(args.target, args.token)
    await closed_loop(client, 4, args.warmup)
    client.latencies.clear()
    print("WARM", flush=True)  # the parent starts measuring the server's CPU here
    cpu_before = time.process_time()
    if args.mode == "rate":
        wall = await open_loop(client, args.rate, args.seconds)
    else:
        wall = await closed_loop(client, args.concurrency, args.seconds)
    cpu = time.process_time() - cpu_before
    await client.channel.close()
    values = sorted(client.latencies)
    return {
        "mode": args.mode, "sent": len(values) + client.failures, "ok": len(values),
        "failures": client.failures, "not_ok": client.not_ok, "seconds": wall,
        "rps": len(values) / wall, "client_cpu": cpu / wall,
        **{f"p{q}_ms": percentile(values, q) * 1000 for q in (50, 90, 99, 99.9)},
        "max_ms": (values[-1] if values else float("nan")) * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run, print one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.check_client", description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--mode", choices=("rate", "max"), default="rate")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    args = parser.parse_args(argv)
    try:
        import uvloop

        result = uvloop.run(main_async(args))
    except ImportError:  # pragma: no cover
        result = asyncio.run(main_async(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
