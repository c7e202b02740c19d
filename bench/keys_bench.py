"""What a sender-constrained key (DPoP proof per request) and a depth-2 child key cost over a plain key.

Run: `python -m bench.keys_bench [--requests 2000] [--rounds 5] [--append]`. Calls `Authorizer.decide`
directly (no gRPC, no Envoy), first without Redis (the decision alone), then with a private
redis-server (decision + the one admit script, ADMIT: one level for plain and bound keys, three for the child).
The cases are interleaved round by round and each round's median is kept, so they share the machine's
noise; proofs are made before timing (a client's cost, not the gateway's).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from bench.harness import free_ports
from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import HolderKey, SigningKey, mint
from dynaseal.keys.tenants import build_registry
from dynaseal.ledger.quota import RedisQuota
from dynaseal.policy.authorizer import Authorizer, AuthRequest
from dynaseal_launcher.probes import redis_ping
from dynaseal_launcher.stack import redis_server_binary

URL = "http://bench.test/v1/chat/completions"
BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "Say hello in a few words."}],
                     "max_tokens": 16})
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _request(headers: dict[str, str]) -> AuthRequest:
    return AuthRequest("POST", "/v1/chat/completions", {":authority": "bench.test", ":scheme": "http",
                                                        "content-type": "application/json", **headers}, BODY)


def cases(requests: int) -> tuple[DynasealConfig, dict[str, Callable[[int], AuthRequest]]]:
    """The config and, per case, the request number i → its request."""
    signing = SigningKey.generate("bench-1")
    cfg = DynasealConfig.model_validate({"tenants": [{
        "id": "bench", "keys": [{"kid": signing.kid, "alg": "EdDSA", "public_jwk": signing.public_jwk()}],
        "limits": {"models": ["m"], "max_tokens": 64, "max_chain_depth": 2}}]})
    claims = {"tenant": "bench", "models": ["m"], "max_tokens": 64, "ttl": 3600}
    plain = mint(signing, **claims)  # type: ignore[arg-type]
    device = HolderKey.generate()
    bound = mint(signing, cnf=device.cnf_jkt(), **claims)  # type: ignore[arg-type]
    proofs = [device.proof("POST", URL, bound) for _ in range(requests)]
    agent, helper = HolderKey.generate(), HolderKey.generate()
    root = mint(signing, cnf=agent.cnf_jwk(), **claims)  # type: ignore[arg-type]
    grandchild = helper.child(agent.child(root, max_tokens=32, cnf=helper.cnf_jwk()), max_tokens=16)
    return cfg, {
        "plain key": lambda i: _request({"authorization": f"Bearer {plain}"}),
        "DPoP-bound key": lambda i: _request({"authorization": f"DPoP {bound}", "dpop": proofs[i]}),
        "depth-2 child key": lambda i: _request({"authorization": f"Bearer {grandchild}"}),
    }


async def _round(authorizer: Authorizer, make: Callable[[int], AuthRequest], start: int, count: int) -> float:
    """Median µs of `count` sequential decisions; every one must be allowed."""
    samples = []
    for i in range(start, start + count):
        request = make(i)
        began = time.perf_counter_ns()
        decision = await authorizer.decide(request)
        samples.append((time.perf_counter_ns() - began) / 1000)
        if not decision.allowed:
            raise RuntimeError(f"refused: {decision.code} {decision.message}")
    return statistics.median(samples)


async def measure(cfg: DynasealConfig, made: dict[str, Callable[[int], AuthRequest]], quota: RedisQuota | None,
                  requests: int, rounds: int, cache_size: int) -> dict[str, float]:
    """Median over rounds of each case's per-round median (µs per decision)."""
    authorizer = Authorizer(build_registry(cfg), quota=quota, cache_size=cache_size)
    per_round = requests // rounds
    medians: dict[str, list[float]] = {name: [] for name in made}
    for make in made.values():  # warm-up: caches, script load, first connection
        await _round(authorizer, make, 0, min(20, per_round))
    for r in range(rounds):
        for name, make in made.items():
            medians[name].append(await _round(authorizer, make, 20 + r * per_round, per_round))
    return {name: statistics.median(values) for name, values in medians.items()}


def _redis() -> tuple[subprocess.Popen[bytes], str]:
    port = free_ports(1)[0]
    directory = tempfile.mkdtemp(prefix="keys-bench-redis-")
    process = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not redis_ping("127.0.0.1", port):
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


async def run(requests: int, rounds: int) -> list[tuple[str, dict[str, float]]]:
    """Every configuration's results, in table order."""
    cfg, made = cases(requests + 40)
    results = [("decision, verified-key cache on", await measure(cfg, made, None, requests, rounds, 10_000)),
               ("decision, no cache (every signature checked)", await measure(cfg, made, None, requests, rounds, 0))]
    cfg, made = cases(requests + 40)  # fresh keys, so the counters and the replay set start empty
    process, url = _redis()
    try:
        quota = RedisQuota.from_url(url, timeout_s=1.0)
        await quota.ping()
        results.append(("decision + Redis admit, cache on", await measure(cfg, made, quota, requests, rounds,
                                                                           10_000)))
    finally:
        process.terminate()
        process.wait(10)
    return results


def table(results: list[tuple[str, dict[str, float]]]) -> str:
    """Markdown table: median µs per decision, and the extra over a plain key."""
    names = list(results[0][1])
    lines = ["| configuration | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, values in results:
        plain = values[names[0]]
        cells = [f"{values[names[0]]:.0f}"] + [f"{values[n]:.0f} (+{values[n] - plain:.0f})" for n in names[1:]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, optionally append it to bench/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed decisions per case and configuration")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--append", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args(argv)
    result = table(asyncio.run(run(args.requests, args.rounds)))
    print(result)
    if args.append:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as out:
            out.write(f"\n### Key kinds: plain vs DPoP-bound vs depth-2 child ({stamp}, {commit})\n\n"
                      f"`python -m bench.keys_bench --requests {args.requests} --rounds {args.rounds} --append`; "
                      "median µs per `Authorizer.decide` (extra over the plain key in brackets), sequential, "
                      "one process, on the shared 2-core machine.\n\n" + result + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
