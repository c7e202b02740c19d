"""Drive one URL with `wrk`: a POST of the bench body and token, warm-up excluded.

wrk is closed-loop (each connection sends its next request when the previous answer arrives),
so its percentiles are latencies under saturation, not at a fixed rate.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = {authorization}

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"non_2xx":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def lua_string(value: str) -> str:
    """A Lua long-bracket string literal for any text without ']==]'."""
    assert "]==]" not in value
    return f"[==[{value}]==]"


@dataclass(frozen=True)
class WrkResult:
    """One wrk run."""

    requests: int
    seconds: float
    non_2xx: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds


def write_script(directory: Path, body: bytes, token: str) -> Path:
    """The Lua script that makes every request the bench request."""
    path = directory / "post.lua"
    path.write_text(LUA.format(body=lua_string(body.decode()), authorization=lua_string(f"Bearer {token}")))
    return path


def run(url: str, script: Path, seconds: float, connections: int, threads: int = 2) -> WrkResult:
    """Run wrk once and parse its summary."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise FileNotFoundError("wrk not found: apt-get install -y wrk")
    proc = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                           "--latency", "-s", str(script), url],
                          capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("WRKJSON "))
    raw = json.loads(line.removeprefix("WRKJSON "))
    return WrkResult(
        requests=raw["requests"], seconds=raw["duration_us"] / 1e6, non_2xx=raw["non_2xx"],
        errors=raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"],
        p50_ms=raw["p50_us"] / 1000, p90_ms=raw["p90_us"] / 1000, p99_ms=raw["p99_us"] / 1000)
