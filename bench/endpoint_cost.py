"""Envoy CPU per request and per streamed event for each endpoint against chat completions, same run.

`python -m bench.endpoint_cost [--seconds 5] [--rounds 2] [--no-record]`

One Envoy (`--concurrency 1`, pinned to CPU 0) with a listener per endpoint and the gateway's own
routes and response filters (Lua, sse_to_metadata, json_to_metadata with every endpoint's usage
rules, as rendered from the template). No authz runs: each listener's first filter, `set_metadata`,
writes what authz would for that endpoint (its `body_prefix` additions), and a `buffer` filter reads
the body first as ext_authz's `with_request_body` does. The upstream is the bundled mock on CPU 1,
speaking each API. Requests: `wrk -t1 -c8` POSTs each endpoint's bench body (plain JSON answers);
Envoy CPU µs/request = Envoy's CPU over the run / requests. Streams: 4 clients stream 24-token
answers sent one SSE event per write (`x-mock-chunk-delay-ms: 1`); µs/event = Envoy's CPU / SSE
events. Listeners run in turn, `--rounds` times, so drift hits all alike.
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
import orjson
import yaml

from bench import results, wrk
from bench.fixture import PROVIDER_KEY, PROVIDER_KEY_ENV, make_keys, write_config
from bench.harness import GATEWAY_PORTS, HOST, cpu_seconds, free_ports, wait_for_quiet
from dynaseal.config import load_config
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import ServiceSpec, StartupError, Supervisor

AUTHZ_NS = "envoy.filters.http.ext_authz"
SYSTEM = "You are a concise assistant for a banking app."
USER = "Summarise my last three transactions in one sentence and say whether any of them looks unusual on a weekday."
# endpoint -> (path, body, the additions authz would decide, streams?)
ENDPOINTS: dict[str, tuple[str, dict[str, Any], str, bool]] = {
    "chat": ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]},
             '"max_tokens":32,"stream_options":{"include_usage":true},', True),
    "responses": ("/v1/responses", {"model": "gpt-4o-mini", "instructions": SYSTEM, "input": USER},
                  '"max_output_tokens":32,"store":false,', True),
    "messages": ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 32, "system": SYSTEM,
                                  "messages": [{"role": "user", "content": USER}]}, "", True),
    "embeddings": ("/v1/embeddings", {"model": "text-embedding-3-small", "input": [SYSTEM, USER],
                                      "encoding_format": "float"}, "", False),
}
BUFFER = {"name": "envoy.filters.http.buffer", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": 65536}}
STREAM_CLIENTS = 4


def set_metadata(prefix: str, stream: bool) -> dict[str, Any]:
    """The filter standing in for ext_authz: the metadata an allow carries."""
    value: dict[str, Any] = {"request_id": "5f0c8a52-7f38-4d7e-9a0e-1d4f6b2c3a10", "tenant": "bench",
                             "jti": "bench-jti"}
    if prefix:
        value["body_prefix"] = prefix.replace(',"stream_options":{"include_usage":true}', "") if not stream \
            else prefix
    return {"name": "envoy.filters.http.set_metadata", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
        "metadata": [{"metadata_namespace": AUTHZ_NS, "value": value}]}}


def listener_names() -> list[str]:
    """q_<endpoint> for plain requests, s_<endpoint> for streams."""
    return [f"q_{n}" for n in ENDPOINTS] + [f"s_{n}" for n, spec in ENDPOINTS.items() if spec[3]]


def render(cfg_text: str, ports: dict[str, int]) -> str:
    """The bench Envoy YAML: the gateway's routes and response filters behind set_metadata + buffer."""
    gateway = yaml.safe_load(cfg_text)
    template = gateway["static_resources"]["listeners"][0]
    listeners = []
    for name in listener_names():
        listener = copy.deepcopy(template)
        listener["name"] = name
        listener["address"]["socket_address"]["port_value"] = ports[name]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = name
        hcm.pop("access_log", None)
        # The mock's Messages API wants a version header, as Anthropic does (clients send it).
        hcm["route_config"]["virtual_hosts"][0]["request_headers_to_add"].append(
            {"header": {"key": "anthropic-version", "value": "2023-06-01"}, "append_action": "ADD_IF_ABSENT"})
        filters = hcm["http_filters"]
        prefix = ENDPOINTS[name[2:]][2]
        hcm["http_filters"] = [set_metadata(prefix, name.startswith("s_")), BUFFER, *filters[1:]]
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
    events: int = 0
    streams: int = 0
    rps: list[float] = field(default_factory=list)

    def us_per(self, count: int) -> float:
        """Envoy CPU µs per unit of work."""
        return self.cpu_s * 1e6 / max(count, 1)


def stream_load(url: str, body: bytes, seconds: float) -> tuple[int, int]:
    """(streams, SSE events received) from STREAM_CLIENTS clients streaming for `seconds`."""
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


def _body(endpoint: str, stream: bool) -> bytes:
    body = dict(ENDPOINTS[endpoint][1])
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def run(work: Path, seconds: float, rounds: int) -> dict[str, Tally]:
    """Start the mock and Envoy, drive every listener `rounds` times, return the tallies."""
    names = listener_names()
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
    for n in ENDPOINTS:
        (work / n).mkdir()
    scripts = {n: wrk.write_script(work / n, _body(n, False), "unused") for n in ENDPOINTS}
    try:
        supervisor.start(ServiceSpec(
            "mock-llm", ["taskset", "-c", "1", sys.executable, "-m", "mock_llm", "--host", HOST,
                         "--port", str(mock_port)],
            "mock", lambda: http_ok(f"http://{HOST}:{mock_port}/healthz"), env={"MOCK_LLM_API_KEY": ""}))
        envoy = supervisor.start(ServiceSpec(
            "envoy", ["taskset", "-c", "0", envoy_config.envoy_binary(), "-c", str(envoy_file),
                      "--disable-hot-restart", "--log-level", "warn", "--concurrency", "1"],
            "envoy", lambda: http_ok(f"http://{HOST}:{admin}/ready")))
        for name in ENDPOINTS:  # warm-up, and a check that every endpoint answers 200
            result = wrk.run(f"http://{HOST}:{ports['q_' + name]}{ENDPOINTS[name][0]}", scripts[name], 1, 8, threads=1)
            if result.non_2xx or not result.requests:
                raise StartupError(f"{name}: {result.non_2xx} non-2xx answers of {result.requests}")
        for round_no in range(rounds):
            for name in names:
                wait_for_quiet(max_wait_s=10)
                endpoint = name[2:]
                url = f"http://{HOST}:{ports[name]}{ENDPOINTS[endpoint][0]}"
                print(f"  round {round_no + 1}: {name} …", flush=True)
                before = cpu_seconds(envoy.process.pid)
                if name.startswith("q_"):
                    result = wrk.run(url, scripts[endpoint], seconds, 8, threads=1)
                    tallies[name].requests += result.requests
                    tallies[name].rps.append(result.rps)
                else:
                    streams, events = stream_load(url, _body(endpoint, True), seconds)
                    tallies[name].streams += streams
                    tallies[name].events += events
                tallies[name].cpu_s += cpu_seconds(envoy.process.pid) - before
    finally:
        supervisor.stop()
    return tallies


def report(tallies: dict[str, Tally]) -> list[str]:
    """The Markdown tables and the same-run ratios against chat."""
    lines = ["### Endpoints: Envoy CPU per request (plain JSON answers)", "",
             "| endpoint | requests | req/s (median) | Envoy CPU µs/request | vs chat |", "|---|---:|---:|---:|---:|"]
    base = tallies["q_chat"].us_per(tallies["q_chat"].requests)
    for name in ENDPOINTS:
        t = tallies[f"q_{name}"]
        lines.append(f"| {name} | {t.requests:,} | {statistics.median(t.rps):,.0f} | {t.us_per(t.requests):.1f} | "
                     f"{t.us_per(t.requests) / base:.2f}× |")
    lines += ["", "### Endpoints: Envoy CPU per streamed SSE event", "",
              "| endpoint | streams | SSE events | events/stream | Envoy CPU µs/event | µs/stream "
              "| vs chat (µs/event) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    chat = tallies["s_chat"].us_per(tallies["s_chat"].events)
    for name, spec in ENDPOINTS.items():
        if not spec[3]:
            continue
        t = tallies[f"s_{name}"]
        lines.append(f"| {name} | {t.streams:,} | {t.events:,} | {t.events / max(t.streams, 1):.0f} | "
                     f"{t.us_per(t.events):.1f} | {t.us_per(t.streams):.0f} | {t.us_per(t.events) / chat:.2f}× |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    """Run, print, and append to bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.endpoint_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="seconds per listener per round (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all listeners (default 2)")
    parser.add_argument("--note", default="")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m bench.endpoint_cost " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = results.header(command.strip(), f"Envoy --concurrency 1 on CPU 0, mock on CPU 1; {args.rounds} rounds × "
                                            f"{args.seconds:.0f} s per listener; wrk -t1 -c8; "
                                            f"{STREAM_CLIENTS} stream clients, 24-token answers")
    if args.note:
        lines[2:2] = [args.note, ""]
    with tempfile.TemporaryDirectory(prefix="dynaseal-endpoint-cost-") as work:
        lines += report(run(Path(work), args.seconds, args.rounds))
    print("\n".join(lines))
    if not args.no_record:
        results.append(lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
