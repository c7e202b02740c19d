"""System calls per request of Envoy, authz and Redis on the ext_authz path: `python -m bench.syscalls`.

The D profile puts a fifth to a quarter of each process's CPU in the kernel; this counts what asks for
it. One stack, requests sent one at a time to the direct_response listener C (so the upstream's calls
are not mixed in), `strace -f -c` attached to each process while they run. Prints calls per request of
every system call made at least once per two requests. Needs `strace` (`apt-get install -y strace`);
strace slows the traced processes, so this counts calls, it does not time them.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.fixture import BODY
from bench.harness import BenchStack

PROCESSES = ("envoy", "authz", "redis")


def per_request(summary: Path, requests: int) -> list[tuple[str, float]]:
    """(syscall, calls per request) from `strace -c` output, the frequent ones."""
    rows = []
    for line in summary.read_text().splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
            calls = int(parts[3])
            if calls * 2 >= requests:
                rows.append((parts[-1], calls / requests))
    return sorted(rows, key=lambda row: -row[1])


def run(directory: Path, requests: int) -> list[str]:
    """Trace each process over `requests` sequential requests; Markdown lines."""
    strace = shutil.which("strace")
    if strace is None:
        return ["strace is not installed (`apt-get install -y strace`): not measured"]
    with BenchStack(directory) as stack:
        headers = {"authorization": f"Bearer {stack.keys.token}", "content-type": "application/json"}
        with httpx.Client(timeout=5) as client:
            for _ in range(50):  # warm: connections open, key verified and cached, script loaded
                client.post(stack.url("c_dynaseal"), content=BODY, headers=headers)
            tracers = {name: subprocess.Popen([strace, "-f", "-c", "-o", str(directory / f"{name}.strace"), "-p",
                                               str(stack.services[name].process.pid)], stderr=subprocess.DEVNULL)
                       for name in PROCESSES}
            time.sleep(1.0)  # strace attaches to every thread
            for _ in range(requests):
                answer = client.post(stack.url("c_dynaseal"), content=BODY, headers=headers)
                if answer.status_code != 200:
                    raise RuntimeError(f"expected 200, got {answer.status_code}: {answer.text[:200]}")
            for tracer in tracers.values():
                tracer.send_signal(signal.SIGINT)
                tracer.wait(timeout=30)
    lines = [f"{requests} sequential requests on listener C (ext_authz + Redis, direct_response); calls per request",
             "", "| process | system calls per request (≥ 0.5) | total |", "|---|---|---:|"]
    for name in PROCESSES:
        rows = per_request(directory / f"{name}.strace", requests)
        lines.append(f"| {name} | " + ", ".join(f"`{sc}` {n:.2f}" for sc, n in rows)
                     + f" | {sum(n for _, n in rows):.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.syscalls", description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    print("\n".join(run(Path(tempfile.mkdtemp(prefix="dynaseal-syscalls-")), args.requests)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
