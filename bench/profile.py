"""Where authz spends its time under gateway load C: a py-spy profile, summarized.

`python -m bench profile`: drives configuration C with wrk while `py-spy record` samples the authz
process (non-blocking, so it barely slows it), then prints each thread's share and the
functions with the most samples, own time and inclusive. py-spy is a measuring tool, not a
project dependency: `pip install py-spy` into the venv first.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from bench import gateway, wrk
from bench.fixture import BODY
from bench.harness import BenchStack, wait_for_quiet

TOP = 18


def py_spy() -> str:
    """The py-spy binary beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise FileNotFoundError("py-spy not found: .venv/bin/python -m pip install py-spy")
    return found


def summarize(raw: Path, top: int = TOP) -> list[str]:
    """Thread shares and the top functions (own and inclusive) from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        threads[frames[0].split(":", 1)[-1].strip() if frames else "?"] += n
        own[frames[-1]] += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
    def share(n: int) -> str:
        return f"{100 * n / max(1, total):.1f} %"
    lines = [f"{total} samples", "", "| thread | share |", "|---|---:|"]
    lines += [f"| {name} | {share(n)} |" for name, n in threads.most_common()]
    lines += ["", "| own time (function) | share |", "|---|---:|"]
    lines += [f"| `{name}` | {share(n)} |" for name, n in own.most_common(top)]
    lines += ["", "| inclusive (function) | share |", "|---|---:|"]
    lines += [f"| `{name}` | {share(n)} |" for name, n in inclusive.most_common(top + 8)
              if "runpy" not in name and "__main__" not in name]
    return lines


def run(directory: Path, seconds: float, connections: int,
        native: bool = False) -> tuple[wrk.WrkResult, list[str]]:
    """Profile authz while wrk drives configuration C (`native`: C frames too, e.g. uvloop's)."""
    raw = directory / "authz-profile.txt"
    with BenchStack(directory) as stack:
        gateway.check_sample(stack)
        script = wrk.write_script(directory, BODY, stack.keys.token)
        url = stack.url("c_dynaseal")
        wait_for_quiet()
        wrk.run(url, script, 3, connections)
        pid = stack.services["authz"].process.pid
        # --native has to stop the process to unwind C stacks: it cannot be --nonblocking.
        argv = [py_spy(), "record", "--native" if native else "--nonblocking", "--threads", "-r", "250",
                "-d", str(round(seconds)), "-f", "raw", "-o", str(raw), "-p", str(pid)]
        result: list[wrk.WrkResult] = []
        load = threading.Thread(target=lambda: result.append(wrk.run(url, script, seconds + 2, connections)))
        load.start()
        subprocess.run(argv, check=True, capture_output=True, timeout=seconds + 60)
        load.join()
    return result[0], summarize(raw)
