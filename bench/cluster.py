"""The hot path's Redis cost on one Redis vs a 3-master Redis Cluster, in one run: `python -m bench cluster`.

What is driven is `RedisQuota.admit` itself (what authz awaits per Check), in this process on
CPU 0; every redis-server runs on CPU 1 (one single server, or all three masters together), so
the cluster gets no more CPU than the single server. Each admit picks one of 1000 keys (spread
over every slot) and runs the full ADMIT script; "+tenant" keys belong to a tenant with a
`tenant_budget`, so each admit also runs TENANT_ADMIT on the tenant's slot (a second round trip).

Per configuration: a closed loop with 64 admits in flight (admits/s, CPU µs per admit of the
client and of Redis), then an open loop at a fixed rate (latency from the scheduled send time).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from bench.harness import wait_for_quiet
from dynaseal.errors import QuotaUnavailable
from dynaseal.keys.claims import VerifiedKey
from dynaseal.keys.tenants import Tenant
from dynaseal.ledger.quota import RedisQuota
from dynaseal.ledger.redis_async import redis_py
from dynaseal.policy.quota_refusals import admit_request
from dynaseal.policy.request_policy import CheckedRequest
from dynaseal.tenant_config import Limits, TenantBudget
from dynaseal_launcher.local_cluster import LocalCluster, cluster_ports, start_cluster
from dynaseal_launcher.probes import redis_ping
from dynaseal_launcher.processes import ServiceSpec, Supervisor
from dynaseal_launcher.stack import redis_server_binary

IN_FLIGHT = 64
KEYS = 1000
REQUEST = CheckedRequest(model="m", stream=False, n=1, max_tokens=20, prompt_bound=100)


@dataclass(frozen=True)
class ClusterRun:
    """One configuration's numbers."""

    name: str
    admits_per_s: float
    client_us: float
    redis_us: float
    p50_ms: float
    p99_ms: float
    rate: float
    errors: int
    busy_cores: float


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _keys(tenant_wide: bool) -> list[VerifiedKey]:
    limits = Limits(tenant_budget=TenantBudget(tokens=10**12, window="month")) if tenant_wide else Limits()
    tenant = Tenant(id=f"bench-{uuid.uuid4().hex[:6]}", name="bench", keys_by_kid=MappingProxyType({}),
                    seed_key=None, limits=limits, provider_key=None, callback=None)
    return [VerifiedKey(tenant=tenant, jti=f"k{i}", exp=time.time() + 3600, event_id="e", sub=None, models=None,
                        max_tokens=20, budget=None, uses=None, rpm=None) for i in range(KEYS)]


async def _closed(quota: RedisQuota, keys: list[VerifiedKey], seconds: float) -> int:
    stop = time.monotonic() + seconds
    done = 0

    async def worker(w: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < stop:
            await admit_request(quota, keys[(w * 7919 + i) % KEYS], REQUEST, f"c{w}-{i}-{uuid.uuid4().hex[:8]}")
            i += 1
            done += 1
    await asyncio.gather(*(worker(w) for w in range(IN_FLIGHT)))
    return done


async def _open(quota: RedisQuota, keys: list[VerifiedKey], seconds: float, rate: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    tasks = []

    async def one(i: int, at: float) -> None:
        nonlocal errors
        await asyncio.sleep(max(0.0, at - loop.time()))
        try:
            await admit_request(quota, keys[i % KEYS], REQUEST, f"o{i}-{uuid.uuid4().hex[:8]}")
        except QuotaUnavailable:  # counted, not hidden: a 503 authz would have answered
            errors += 1
            return
        latencies.append((loop.time() - at) * 1000)
    for i in range(int(seconds * rate)):
        tasks.append(loop.create_task(one(i, start + i / rate)))
    await asyncio.gather(*tasks)
    return latencies, errors


def _measure(name: str, make: Callable[[], RedisQuota], pids: list[int], tenant_wide: bool, seconds: float,
             rate: float) -> ClusterRun:
    keys = _keys(tenant_wide)

    async def run() -> ClusterRun:
        quota = make()
        try:
            assert await quota.ping()
            await _closed(quota, keys, 0.5)  # warm: connections, scripts, slot map
            busy = wait_for_quiet()
            redis_before, client_before = sum(_cpu(p) for p in pids), time.process_time()
            started = time.monotonic()
            count = await _closed(quota, keys, seconds)
            elapsed = time.monotonic() - started
            client_s, redis_s = time.process_time() - client_before, sum(_cpu(p) for p in pids) - redis_before
            latencies, errors = await _open(quota, keys, seconds, rate)
        finally:
            await quota.client.aclose()
        cuts = statistics.quantiles(latencies, n=100)
        return ClusterRun(name, count / elapsed, client_s / count * 1e6, redis_s / count * 1e6, cuts[49], cuts[98],
                          rate, errors, busy)
    return asyncio.run(run())


def run(directory: Path, seconds: float = 5.0, rate: float = 1000.0) -> list[ClusterRun]:
    """Start one Redis and a 3-master cluster on CPU 1, drive each configuration from CPU 0."""
    pin = ["taskset", "-c", "1"] if os.cpu_count() and os.cpu_count() > 1 else []  # type: ignore[operator]
    if pin:
        os.sched_setaffinity(0, {0})
    supervisor = Supervisor(directory / "single", "127.0.0.1")
    [port] = cluster_ports(1)
    single = supervisor.start(ServiceSpec(
        "redis", [*pin, redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(directory)],
        f"redis://127.0.0.1:{port}", lambda: redis_ping("127.0.0.1", port)))
    single_url = f"redis://127.0.0.1:{port}/0"
    cluster: LocalCluster = start_cluster(directory / "cluster", masters=3, pin=lambda _: pin)
    timeout = 1.0
    try:
        single_pids, cluster_pids = [single.process.pid], cluster.pids()
        configs = [
            ("single Redis · pipelined", lambda: RedisQuota.from_url(single_url, timeout), single_pids, False),
            ("cluster · pipelined (per master)", lambda: RedisQuota.from_url(cluster.url, timeout),
             cluster_pids, False),
            ("cluster · redis-py asyncio RedisCluster",
             lambda: RedisQuota(redis_py(cluster.url, timeout, max_connections=IN_FLIGHT), timeout_s=timeout),
             cluster_pids, False),
            ("single Redis · pipelined · +tenant", lambda: RedisQuota.from_url(single_url, timeout),
             single_pids, True),
            ("cluster · pipelined · +tenant", lambda: RedisQuota.from_url(cluster.url, timeout),
             cluster_pids, True),
        ]
        runs = []
        for name, make, pids, tenant_wide in configs:
            print(f"  {name} …", flush=True)
            runs.append(_measure(name, make, pids, tenant_wide, seconds, rate))
        return runs
    finally:
        cluster.stop()
        supervisor.stop()


def table(runs: list[ClusterRun]) -> list[str]:
    """Markdown rows."""
    lines = ["| configuration | admits/s (64 in flight) | client CPU µs/admit | Redis CPU µs/admit | "
             f"p50 ms @ {runs[0].rate:.0f}/s | p99 ms | 503s | other work (cores) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.name} | {r.admits_per_s:,.0f} | {r.client_us:.0f} | {r.redis_us:.0f} | {r.p50_ms:.2f} | "
              f"{r.p99_ms:.2f} | {r.errors} | {r.busy_cores:.2f} |" for r in runs]
    return lines
