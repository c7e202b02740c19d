"""Envoy CPU the gateway's Lua filter costs: per request (body amendment) and per streamed chunk (usage strip).

`python -m bench.lua_cost [--seconds 8] [--rounds 2] [--no-record]`

One Envoy (`--concurrency 1`, pinned to CPU 0) with a listener per variant. No authz runs: each
listener's first filter, `set_metadata`, writes what authz would into the ext_authz namespace, so
the Lua filter (verbatim from `dynaseal/envoy/templates/gateway.yaml.tmpl` as rendered) sees exactly the gateway's
metadata and nothing else is measured. Variants, all in one run:

| listener | filters | route |
|---|---|---|
| `q_base` | set_metadata → buffer → router | `direct_response` 200 |
| `q_idle` | set_metadata → buffer → lua (no `body_prefix`) → router | `direct_response` 200 |
| `q_amend` | set_metadata (+`body_prefix`) → buffer → lua → router | `direct_response` 200 |
| `s_base` | set_metadata → buffer → sse_to_metadata → router | mock upstream, SSE |
| `s_idle` | set_metadata → buffer → lua (no `strip_usage`) → sse_to_metadata → router | mock upstream, SSE |
| `s_strip` | set_metadata (+`strip_usage`) → buffer → lua → sse_to_metadata → router | mock upstream, SSE |

(`buffer` reads the whole request body first, as ext_authz's `with_request_body` does in the gateway.)

Requests: `wrk -t1 -c8` POSTs the 324-byte bench body; CPU µs/request = Envoy's CPU time over the
run / requests. Streams: 4 concurrent clients stream 24-token answers the mock sends one SSE event
per write (`x-mock-chunk-delay-ms: 1`); CPU µs/chunk = Envoy's CPU time / upstream SSE events.
Listeners run in turn, `--rounds` times, so drift hits all alike; each ratio is from this one run.
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import results, wrk
from bench.fixture import BODY, PROVIDER_KEY, PROVIDER_KEY_ENV, make_keys, stream_body, write_config
from bench.harness import GATEWAY_PORTS, HOST, cpu_seconds, free_ports, wait_for_quiet
from dynaseal.config import load_config
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import ServiceSpec, StartupError, Supervisor

AUTHZ_NS = "envoy.filters.http.ext_authz"
LUA, SSE, ROUTER = "envoy.filters.http.lua", "envoy.filters.http.sse_to_metadata", "envoy.filters.http.router"
REQUEST_ID = "5f0c8a52-7f38-4d7e-9a0e-1d4f6b2c3a10"
PREFIX = '"stream_options":{"include_usage":true},'
Listeners = dict[str, tuple[dict[str, Any], bool]]
REQUEST_LISTENERS: Listeners = {"q_base": ({}, False), "q_idle": ({}, True), "q_amend": ({"body_prefix": PREFIX}, True)}
STREAM_LISTENERS: Listeners = {"s_base": ({}, False), "s_idle": ({}, True), "s_strip": ({"strip_usage": True}, True)}
BUFFER = {"name": "envoy.filters.http.buffer", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": 65536}}
STREAM_TOKENS = 24  # the mock's natural answer length: 28 SSE events a stream
STREAM_CLIENTS = 4


def set_metadata(extra: dict[str, Any]) -> dict[str, Any]:
    """The filter standing in for ext_authz: the metadata an allow carries."""
    return {"name": "envoy.filters.http.set_metadata", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
        "metadata": [{"metadata_namespace": AUTHZ_NS,
                      "value": {"request_id": REQUEST_ID, "tenant": "bench", "jti": "bench-jti", **extra}}]}}


def render(cfg_text: str, ports: dict[str, int]) -> str:
    """The bench Envoy YAML: the gateway's Lua and sse_to_metadata filters in each variant's chain."""
    gateway = yaml.safe_load(cfg_text)
    template = gateway["static_resources"]["listeners"][0]
    filters = {f["name"]: f for f in template["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]}
    listeners = []
    for name, (extra, with_lua) in {**REQUEST_LISTENERS, **STREAM_LISTENERS}.items():
        listener = copy.deepcopy(template)
        listener["name"] = name
        listener["address"]["socket_address"]["port_value"] = ports[name]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = name
        hcm.pop("access_log", None)
        # The buffer filter stands in for ext_authz's with_request_body: the whole body is read first.
        chain = [set_metadata(extra), BUFFER, *([filters[LUA]] if with_lua else [])]
        if name.startswith("q_"):
            hcm["route_config"] = {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "{}"}}}]}]}
        else:
            chain.append(filters[SSE])
        hcm["http_filters"] = [*chain, filters[ROUTER]]
        listeners.append(listener)
    gateway["static_resources"]["listeners"] = listeners
    gateway["static_resources"]["clusters"] = [c for c in gateway["static_resources"]["clusters"]
                                               if c["name"] == "upstream_llm"]
    return yaml.safe_dump(gateway, sort_keys=False)


@dataclass
class Tally:
    """Envoy CPU seconds and work done on one listener, summed over rounds."""

    cpu_s: float = 0.0
    requests: int = 0
    chunks: int = 0
    streams: int = 0
    rps: list[float] = field(default_factory=list)

    def us_per(self, count: int) -> float:
        """Envoy CPU µs per unit of work."""
        return self.cpu_s * 1e6 / max(count, 1)


def stream_load(url: str, seconds: float) -> tuple[int, int]:
    """(streams, SSE events received) from STREAM_CLIENTS clients streaming for `seconds`."""
    body = stream_body(STREAM_TOKENS)
    headers = {"content-type": "application/json", "x-mock-chunk-delay-ms": "1"}
    stop = time.monotonic() + seconds
    counts = [[0, 0] for _ in range(STREAM_CLIENTS)]

    def client(slot: list[int]) -> None:
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < stop:
                with http.stream("POST", url, content=body, headers=headers) as reply:
                    text = b"".join(reply.iter_raw())
                slot[0] += 1
                slot[1] += text.count(b"data: ")

    threads = [threading.Thread(target=client, args=(slot,)) for slot in counts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(s for s, _ in counts), sum(e for _, e in counts)


def run(work: Path, seconds: float, rounds: int) -> dict[str, Tally]:
    """Start the mock and Envoy, drive every listener `rounds` times, return the tallies."""
    names = [*REQUEST_LISTENERS, *STREAM_LISTENERS]
    all_ports = free_ports(len(GATEWAY_PORTS) + len(names))
    gateway_ports = dict(zip(GATEWAY_PORTS, all_ports, strict=False))
    ports = dict(zip(names, all_ports[len(GATEWAY_PORTS):], strict=True))
    os.environ[PROVIDER_KEY_ENV] = PROVIDER_KEY
    cfg = load_config(write_config(work, gateway_ports, make_keys()))
    envoy_file = work / "envoy.yaml"
    envoy_file.write_text(render(envoy_config.render(cfg, work / "access.log"), ports))
    ok, output = envoy_config.validate(envoy_file)
    if not ok:
        raise StartupError(f"bench Envoy config {envoy_file} is invalid:\n{output[-3000:]}")
    supervisor = Supervisor(work / "logs", HOST)
    mock_port, admin = gateway_ports["mock_upstream"], gateway_ports["envoy_admin"]
    tallies = {name: Tally() for name in names}
    try:
        supervisor.start(ServiceSpec(
            "mock-llm", ["taskset", "-c", "1", sys.executable, "-m", "mock_llm", "--host", HOST,
                         "--port", str(mock_port)],
            "mock", lambda: http_ok(f"http://{HOST}:{mock_port}/healthz"), env={"MOCK_LLM_API_KEY": ""}))
        envoy = supervisor.start(ServiceSpec(
            "envoy", ["taskset", "-c", "0", envoy_config.envoy_binary(), "-c", str(envoy_file),
                      "--disable-hot-restart", "--log-level", "warn", "--concurrency", "1"],
            "envoy", lambda: http_ok(f"http://{HOST}:{admin}/ready")))
        script = wrk.write_script(work, BODY, "unused")
        for name in REQUEST_LISTENERS:  # warm-up: Lua states, connections
            wrk.run(f"http://{HOST}:{ports[name]}/v1/chat/completions", script, 1, 8, threads=1)
        for round_no in range(rounds):
            for name in names:
                wait_for_quiet(max_wait_s=10)
                url = f"http://{HOST}:{ports[name]}/v1/chat/completions"
                print(f"  round {round_no + 1}: {name} …", flush=True)
                before = cpu_seconds(envoy.process.pid)
                if name in REQUEST_LISTENERS:
                    result = wrk.run(url, script, seconds, 8, threads=1)
                    tallies[name].requests += result.requests
                    tallies[name].rps.append(result.rps)
                else:
                    streams, events = stream_load(url, seconds)
                    tallies[name].streams += streams
                    # Chunks the upstream sent: the stripped usage event was sent too.
                    tallies[name].chunks += events + (streams if name == "s_strip" else 0)
                tallies[name].cpu_s += cpu_seconds(envoy.process.pid) - before
    finally:
        supervisor.stop()
    return tallies


def report(tallies: dict[str, Tally]) -> list[str]:
    """The Markdown tables and the same-run ratios."""
    q, s = {n: tallies[n] for n in REQUEST_LISTENERS}, {n: tallies[n] for n in STREAM_LISTENERS}
    per_request = {n: t.us_per(t.requests) for n, t in q.items()}
    per_chunk = {n: t.us_per(t.chunks) for n, t in s.items()}
    per_stream = {n: t.us_per(t.streams) for n, t in s.items()}
    lines = ["### Lua filter: Envoy CPU per request (body amendment)", "",
             "| listener | requests | req/s (median) | Envoy CPU µs/request | vs q_base |", "|---|---:|---:|---:|---:|"]
    for n, t in q.items():
        lines.append(f"| {n} | {t.requests:,} | {statistics.median(t.rps):,.0f} | {per_request[n]:.1f} | "
                     f"{per_request[n] / per_request['q_base']:.2f}× |")
    lines += ["", "### Lua filter: Envoy CPU per streamed chunk (usage strip)", "",
              "| listener | streams | upstream chunks | Envoy CPU µs/chunk | µs/stream | vs s_base |",
              "|---|---:|---:|---:|---:|---:|"]
    for n, t in s.items():
        lines.append(f"| {n} | {t.streams:,} | {t.chunks:,} | {per_chunk[n]:.1f} | {per_stream[n]:.0f} | "
                     f"{per_chunk[n] / per_chunk['s_base']:.2f}× |")
    lines += ["", f"Lua adds {per_request['q_idle'] - per_request['q_base']:+.1f} µs to a request it leaves alone, "
              f"{per_request['q_amend'] - per_request['q_base']:+.1f} µs to one it amends; "
              f"{per_chunk['s_idle'] - per_chunk['s_base']:+.2f} µs per chunk of a stream it leaves alone, "
              f"{per_chunk['s_strip'] - per_chunk['s_base']:+.2f} µs per chunk of one it strips.", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run, print, and append to bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.lua_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8, help="seconds per listener per round (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all listeners (default 2)")
    parser.add_argument("--note", default="")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m bench.lua_cost " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = results.header(command.strip(), f"Envoy --concurrency 1 on CPU 0; {args.rounds} rounds × "
                                            f"{args.seconds:.0f} s per listener; wrk -t1 -c8; "
                                            f"{STREAM_CLIENTS} stream clients, {STREAM_TOKENS}-token answers")
    if args.note:
        lines[2:2] = [args.note, ""]
    with tempfile.TemporaryDirectory(prefix="dynaseal-lua-cost-") as work:
        lines += report(run(Path(work), args.seconds, args.rounds))
    print("\n".join(lines))
    if not args.no_record:
        results.append(lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
