"""Gateway benchmark: Envoy with no auth (A), native jwt_authn (B), dynaseal ext_authz (C).

Same request on all three (the bench body and EdDSA token), each listener ending in a
`direct_response`; wrk with fixed threads, connections and duration; a warm-up run before each
is discarded. Before loading, a sample of requests on each listener must answer 200 (and C must
refuse a tampered token), so a misconfigured run cannot pass for a fast one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import wrk
from bench.fixture import BODY
from bench.harness import BenchStack, children_cpu_seconds, machine_busy_seconds, rss_mib, wait_for_quiet

CONFIGS = (("A", "a_none", "Envoy, no auth"),
           ("B", "b_jwt", "Envoy jwt_authn (EdDSA, inline JWKS, jwt_cache)"),
           ("C", "c_dynaseal", "Envoy + dynaseal ext_authz + Redis reservation"))
SAMPLE = 20
# What-if variant of C: authz with redis-py's client (the pipelined client switched off), so the
# pipelined client's gain is measured in the same run.
REDIS_PY = ("import dynaseal.ledger.redis_pipeline as _p\n"
            "_p.PipelinedRedis.from_url = classmethod(lambda cls, url, timeout_s: None)")


@dataclass
class GatewayRun:
    """One configuration's wrk result and the CPU each server spent on it."""

    label: str
    name: str
    result: wrk.WrkResult
    cpu_s: dict[str, float] = field(default_factory=dict)
    busy_before: float = 0.0  # cores busy on the machine just before the run (other work)
    authz_rss_mib: float = 0.0  # authz's resident memory right after the run

    def cpu_us_per_request(self, service: str) -> float:
        """CPU microseconds a service (all its processes: `authz`, `authz-2`, …) spent per request."""
        spent = sum(v for k, v in self.cpu_s.items() if k == service or k.startswith(f"{service}-"))
        return spent / max(1, self.result.requests) * 1e6


def check_sample(stack: BenchStack) -> None:
    """Every listener answers the bench request with 200; C refuses a tampered key with 401."""
    headers = {"authorization": f"Bearer {stack.keys.token}", "content-type": "application/json"}
    with httpx.Client(timeout=5) as client:
        for _, listener, _ in CONFIGS:
            statuses = {client.post(stack.url(listener), content=BODY, headers=headers).status_code
                        for _ in range(SAMPLE)}
            if statuses != {200}:
                raise RuntimeError(f"{listener}: expected only 200 for the bench request, got {statuses}")
        head, payload, sig = stack.keys.token.split(".")
        bad = {**headers, "authorization": f"Bearer {head}.{payload}.{sig[::-1]}"}
        for listener in ("b_jwt", "c_dynaseal"):
            status = client.post(stack.url(listener), content=BODY, headers=bad).status_code
            if status != 401:
                raise RuntimeError(f"{listener}: a tampered key got {status}, not 401: auth is not on")


def run(stack: BenchStack, seconds: float, connections: int, warmup_s: float,
        labels: str = "ABC", redis_py_variant: bool = False, other_server: str | None = None) -> list[GatewayRun]:
    """Warm up and measure each configuration in turn (then C on the other gRPC transport, then C
    with redis-py, if asked)."""
    check_sample(stack)
    script = wrk.write_script(stack.directory, BODY, stack.keys.token)
    configs = [c for c in CONFIGS if c[0] in labels]
    if other_server:
        configs.append(("C*", "c_dynaseal", f"C with authz.server: {other_server}"))
    if redis_py_variant:
        configs.append(("C'", "c_dynaseal", "C with redis-py as the Redis client (before)"))
    runs = []
    for label, listener, name in configs:
        if label == "C*":
            stack.restart_authz(extra_args=("--server", other_server or ""))
            check_sample(stack)
        if label == "C'":
            stack.restart_authz(REDIS_PY, extra_args=("--server", stack.authz_server) if stack.authz_server else ())
            check_sample(stack)
        runs.append(measure(stack, script, label, listener, name, seconds, connections, warmup_s))
    return runs


def measure(stack: BenchStack, script: Path, label: str, listener: str, name: str, seconds: float,
            connections: int, warmup_s: float) -> GatewayRun:
    """One listener: wait for a quiet machine, warm up, then wrk with every process's CPU read around it."""
    url = stack.url(listener)
    quiet = wait_for_quiet()
    wrk.run(url, script, warmup_s, connections)
    before, busy, load = stack.cpu(), machine_busy_seconds(), children_cpu_seconds()
    result = wrk.run(url, script, seconds, connections)
    after = stack.cpu()
    cpu = {k: after[k] - before.get(k, 0.0) for k in after}
    cpu["wrk"] = children_cpu_seconds() - load
    # Whatever else ran on the machine meanwhile (other sessions' work): a noise indicator.
    cpu["other"] = max(0.0, machine_busy_seconds() - busy - sum(cpu.values()))  # + kernel networking
    if result.non_2xx or result.errors:
        raise RuntimeError(f"{label}: {result.non_2xx} non-2xx answers and {result.errors} socket errors")
    authz = stack.services.get("authz")
    return GatewayRun(label, name, result, cpu, quiet, rss_mib(authz.process.pid) if authz else 0.0)
