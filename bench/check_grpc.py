"""Direct benchmark of the authz gRPC `Check` (no Envoy): latency at 1k/s and max rate on one core.

authz (the real `python -m authz_service`, real Redis reservation) is pinned to CPU 0; the load
generator (`bench.check_client`, its own process) and Redis share CPU 1. The same client is then
pointed at `bench.null_authz` (parse and allow, on CPU 0) so the framework's floor is measured
in the same run.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.harness import HOST, BenchStack, cpu_seconds, free_ports, wait_for_quiet
from dynaseal_launcher.processes import ServiceSpec, Supervisor, tcp_open

SERVER_CPU = "0"
CLIENT_CPU = "1"


@dataclass
class CheckRun:
    """One client run against one server."""

    server: str
    mode: str
    result: dict[str, float]
    server_cpu: float  # fraction of one core the server used during the run
    handler_ms: tuple[float, float] | None = None  # in-handler p50, p99 (histogram bucket bounds)
    busy_before: float = 0.0  # cores busy on the machine just before the run (other work)

    @property
    def server_us_per_check(self) -> float:
        """Server CPU microseconds per answered Check."""
        return self.server_cpu * 1e6 / max(1.0, self.result["rps"])


def check_histogram(metrics_url: str) -> dict[float, float]:
    """Cumulative counts of authz's in-handler Check latency histogram, by upper bound in seconds."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    found = re.findall(r'^dynaseal_authz_check_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.MULTILINE)
    return {float(le): float(count) for le, count in found}


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound (ms) of the bucket holding the q-quantile of what was observed between two scrapes."""
    total = after.get(math.inf, 0.0) - before.get(math.inf, 0.0)
    for bound in sorted(after):
        if after[bound] - before.get(bound, 0.0) >= q * total:
            return bound * 1000
    return math.inf


def measured(server: str, pid: int, target: str, token: str, mode: str, seconds: float, rate: float,
             concurrency: int, metrics_url: str | None = None) -> CheckRun:
    """Run the load generator pinned to the client CPU; the server's CPU is counted after warm-up."""
    busy = wait_for_quiet()
    argv = ["taskset", "-c", CLIENT_CPU, sys.executable, "-m", "bench.check_client", "--target", target,
            "--token", token, "--mode", mode, "--seconds", str(seconds), "--rate", str(rate),
            "--concurrency", str(concurrency)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent) as proc:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "WARM":
            raise RuntimeError(f"Check client against {target} failed during warm-up")
        histogram = check_histogram(metrics_url) if metrics_url else {}
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        line = proc.stdout.readline()
        cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        proc.wait(timeout=30)
        handler = None
        if metrics_url:
            after = check_histogram(metrics_url)
            handler = (histogram_quantile(histogram, after, 0.5), histogram_quantile(histogram, after, 0.99))
    result: dict[str, float] = json.loads(line)
    if result["failures"] or result["not_ok"]:
        raise RuntimeError(f"Check bench against {target}: {result['failures']} failed calls, "
                           f"{result['not_ok']} sampled answers were not OK")
    return CheckRun(server, mode, result, cpu, handler, busy)


def run(directory: Path, seconds: float, rate: float = 1000, concurrency: int = 32,
        authz_args: tuple[str, ...] = ()) -> list[CheckRun]:
    """Fixed rate and max rate against dynaseal authz, then the same against the null server."""
    runs = []
    stack = BenchStack(directory, with_envoy=False, with_mock=False, authz_cpus=SERVER_CPU,
                       redis_cpus=CLIENT_CPU, authz_args=authz_args)
    with stack:
        pid = stack.services["authz"].process.pid
        metrics = f"http://{HOST}:{stack.ports['authz_metrics']}/metrics"
        for mode in ("rate", "max"):
            runs.append(measured("dynaseal", pid, stack.authz_target, stack.keys.token, mode, seconds, rate,
                                 concurrency, metrics))
        token = stack.keys.token
    port = free_ports(1)[0]
    supervisor = Supervisor(directory / "logs", HOST)
    try:
        null = supervisor.start(ServiceSpec(
            "null-authz", ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "bench.null_authz", "--port", str(port)],
            f"grpc://{HOST}:{port}", lambda: tcp_open(HOST, port)))
        for mode in ("rate", "max"):
            runs.append(measured("null", null.process.pid, f"{HOST}:{port}", token, mode, seconds, rate, concurrency))
    finally:
        supervisor.stop()
    return runs

