"""Format a benchmark run as Markdown and append it to bench/RESULTS.md."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from pathlib import Path

from bench.check_grpc import CheckRun
from bench.gateway import GatewayRun
from bench.streaming import StreamStats

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
REPO = RESULTS.parent.parent


def git_commit() -> str:
    """`git rev-parse --short HEAD`, with `+dirty` when the work tree has changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> str:
    """Cores and CPU model."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {model}"


def envoy_version() -> str:
    """Envoy's version string."""
    from dynaseal_launcher.envoy_config import envoy_binary

    out = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return found.group(1) if found else "unknown"


def header(command: str, settings: str) -> list[str]:
    """The lines that say when, what and where."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [f"## {now} · commit `{git_commit()}`", "",
            f"- command: `{command}`", f"- machine: {machine()}; Envoy {envoy_version()}", f"- {settings}", ""]


def gateway_table(runs: list[GatewayRun]) -> list[str]:
    """Requests/s, latency, CPU per request per process, and every ratio."""
    lines = ["| config | req/s | p50 ms | p90 ms | p99 ms | CPU µs/req: Envoy | authz | Redis | wrk | kernel+other |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        res = r.result
        cpu = " | ".join(f"{r.cpu_us_per_request(s):.0f}" for s in ("envoy", "authz", "redis", "wrk", "other"))
        lines.append(f"| {r.label} {r.name} | {res.rps:,.0f} | {res.p50_ms:.2f} | {res.p90_ms:.2f} | "
                     f"{res.p99_ms:.2f} | {cpu} |")
    noisy = [r.label for r in runs if r.busy_before > 0.25]
    if noisy:
        lines += ["", f"Warning: other work kept the machine busy before {', '.join(noisy)}: "
                      "those numbers are suspect."]
    rss = [f"{r.label} {r.authz_rss_mib:.0f} MiB" for r in runs if r.label.startswith("C") and r.authz_rss_mib]
    if rss:
        lines += ["", "authz resident memory right after each C run: " + ", ".join(rss)]
    by_label = {r.label: r.result.rps for r in runs}
    ratios = [f"{a}/{b} = {by_label[a] / by_label[b]:.2f}"
              for a, b in (("B", "A"), ("C", "A"), ("C", "B"), ("C*", "B"), ("C", "C*"), ("C", "C'"))
              if a in by_label and b in by_label]
    if ratios:
        goal = " (goal C/B ≥ 0.5)" if {"B", "C"} <= by_label.keys() else ""
        lines += ["", "Ratios of req/s: " + ", ".join(ratios) + goal]
    return lines


def check_table(runs: list[CheckRun]) -> list[str]:
    """Direct Check: latency at a fixed rate, max rate, server CPU per call."""
    lines = ["| server | load | answered/s | p50 ms | p90 ms | p99 ms | p99.9 ms | server CPU | µs/Check "
             "| client CPU | in-handler p50 / p99 ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        res = r.result
        handler = f"≤ {r.handler_ms[0]:g} / ≤ {r.handler_ms[1]:g}" if r.handler_ms else "—"
        load = "open loop, fixed rate" if r.mode == "rate" else "closed loop, max"
        lines.append(f"| {r.server} | {load} | {res['rps']:,.0f} | {res['p50_ms']:.2f} | {res['p90_ms']:.2f} | "
                     f"{res['p99_ms']:.2f} | {res['p99.9_ms']:.2f} | {r.server_cpu:.0%} | "
                     f"{r.server_us_per_check:.0f} | {res['client_cpu']:.0%} | {handler} |")
    lines += ["", "Latencies are seen by the client (its own gRPC stack included); in-handler is authz's "
                  "`dynaseal_authz_check_seconds` (decision + Redis, no gRPC framework), as histogram bucket bounds "
                  "(≤)."]
    noisy = [f"{r.server} {r.mode}" for r in runs if r.busy_before > 0.25]
    if noisy:
        lines += ["", f"Warning: other work kept the machine busy before {', '.join(noisy)}: "
                      "those numbers are suspect."]
    return lines


def stream_table(stats: list[StreamStats], chunk_delay_ms: int) -> list[str]:
    """TTFT and total time, and the per-chunk difference."""
    lines = ["| listener | streams | median TTFT ms | median total ms | chunks |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {s.listener} | {s.streams} | {s.ttft_ms:.1f} | {s.total_ms:.1f} | {s.chunks:.0f} |" for s in stats]
    by = {s.listener: s for s in stats}
    if {"s_none", "s_dynaseal"} <= by.keys():
        none, dyn = by["s_none"], by["s_dynaseal"]
        per_chunk = ((dyn.total_ms - dyn.ttft_ms) - (none.total_ms - none.ttft_ms)) / max(1.0, dyn.chunks)
        lines += ["", f"ext_authz adds {dyn.ttft_ms - none.ttft_ms:+.2f} ms to the first token and "
                      f"{per_chunk * 1000:+.0f} µs per chunk after it (mock paces chunks {chunk_delay_ms} ms apart)."]
    return lines


def append(lines: list[str]) -> None:
    """Append a run's section to RESULTS.md."""
    with RESULTS.open("a") as f:
        f.write("\n" + "\n".join(lines) + "\n")


def publish(lines: list[str], record: bool) -> int:
    """Print a bench's section and, with `--record`, append it to RESULTS.md; the command's exit code."""
    print("\n".join(lines))
    if record:
        append(lines)
    return 0
