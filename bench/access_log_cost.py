"""Envoy CPU the gateway's access log costs per request: `python -m bench.access_log_cost`.

One Envoy (`--concurrency 1`, pinned to CPU 0), no authz: each listener's first filter, `set_metadata`,
writes what an allow of the bench request puts in the ext_authz namespace, then a `direct_response` 200,
so only the access log differs between listeners:

| listener | access log |
|---|---|
| `l_none` | none |
| `l_gateway` | the gateway's logger as `dynaseal envoy-config` renders it (39 JSON fields, `request_id` by CEL) |
| `l_nocel` | the same, `request_id` read from the metadata alone (measurement only: Envoy's own replies lose it) |

wrk -t1 -c8 POSTs the bench body to each in turn, `--rounds` times; CPU µs/request = Envoy's CPU over
the run / requests. Every log line is checked afterwards: as many as requests, each with the request id.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench import results, wrk
from bench.fixture import BODY, PROVIDER_KEY, PROVIDER_KEY_ENV, make_keys, write_config
from bench.harness import GATEWAY_PORTS, HOST, cpu_seconds, free_ports, wait_for_quiet
from bench.lua_cost import AUTHZ_NS, REQUEST_ID, ROUTER
from dynaseal.config import load_config
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import ServiceSpec, StartupError, Supervisor

LISTENERS = ("l_none", "l_gateway", "l_nocel")
NO_CEL_REQUEST_ID = f"%DYNAMIC_METADATA({AUTHZ_NS}:request_id)%"
# What an allow of the bench request sets (authorizer._allow for the bench tenant and key).
ALLOW_METADATA = {"request_id": REQUEST_ID, "tenant": "bench", "jti": "bench-jti", "event_id": "bench-jti",
                  "sub": "bench-user-0000000001", "model": "gpt-4o-mini", "stream": False, "reserved": 426}


def set_metadata() -> dict[str, Any]:
    """The filter standing in for ext_authz: the metadata an allow carries."""
    return {"name": "envoy.filters.http.set_metadata", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
        "metadata": [{"metadata_namespace": AUTHZ_NS, "value": ALLOW_METADATA}]}}


def no_cel_loggers(gateway_loggers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The gateway's logger with request_id read from authz's metadata, without CEL."""
    loggers = copy.deepcopy(gateway_loggers)
    loggers[0]["typed_config"]["log_format"]["json_format"]["request_id"] = NO_CEL_REQUEST_ID
    return loggers


def render(cfg_text: str, ports: dict[str, int], log_dir: Path) -> str:
    """The bench Envoy YAML: one direct_response listener per access-log variant."""
    gateway = yaml.safe_load(cfg_text)
    template = gateway["static_resources"]["listeners"][0]
    template_hcm = template["filter_chains"][0]["filters"][0]["typed_config"]
    router = next(f for f in template_hcm["http_filters"] if f["name"] == ROUTER)
    listeners = []
    for name in LISTENERS:
        listener = copy.deepcopy(template)
        listener["name"] = name
        listener["address"]["socket_address"]["port_value"] = ports[name]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = name
        loggers = hcm.pop("access_log")
        if name != "l_none":
            hcm["access_log"] = no_cel_loggers(loggers) if name == "l_nocel" else loggers
            for logger in hcm["access_log"]:
                logger["typed_config"]["path"] = str(log_dir / f"{name}.log")
        hcm["route_config"] = {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "{}"}}}]}]}
        hcm["http_filters"] = [set_metadata(), router]
        listeners.append(listener)
    gateway["static_resources"]["listeners"] = listeners
    gateway["static_resources"]["clusters"] = []
    return yaml.safe_dump(gateway, sort_keys=False)


def run(work: Path, seconds: float, rounds: int) -> dict[str, tuple[float, int, list[float]]]:
    """Start Envoy, drive every listener `rounds` times: (CPU s, requests, req/s per round) per listener."""
    all_ports = free_ports(len(GATEWAY_PORTS) + len(LISTENERS))
    gateway_ports = dict(zip(GATEWAY_PORTS, all_ports, strict=False))
    ports = dict(zip(LISTENERS, all_ports[len(GATEWAY_PORTS):], strict=True))
    os.environ[PROVIDER_KEY_ENV] = PROVIDER_KEY
    cfg = load_config(write_config(work, gateway_ports, make_keys()))
    envoy_file = work / "envoy.yaml"
    envoy_file.write_text(render(envoy_config.render(cfg, work / "access.log"), ports, work))
    ok, output = envoy_config.validate(envoy_file)
    if not ok:
        raise StartupError(f"bench Envoy config {envoy_file} is invalid:\n{output[-3000:]}")
    supervisor = Supervisor(work / "logs", HOST)
    admin = gateway_ports["envoy_admin"]
    tallies: dict[str, tuple[float, int, list[float]]] = {name: (0.0, 0, []) for name in LISTENERS}
    try:
        envoy = supervisor.start(ServiceSpec(
            "envoy", ["taskset", "-c", "0", envoy_config.envoy_binary(), "-c", str(envoy_file),
                      "--disable-hot-restart", "--log-level", "warn", "--concurrency", "1"],
            "envoy", lambda: http_ok(f"http://{HOST}:{admin}/ready")))
        script = wrk.write_script(work, BODY, "unused")
        for name in LISTENERS:  # warm-up
            wrk.run(f"http://{HOST}:{ports[name]}/v1/chat/completions", script, 1, 8, threads=1)
        for round_no in range(rounds):
            for name in LISTENERS:
                wait_for_quiet(max_wait_s=10)
                print(f"  round {round_no + 1}: {name} …", flush=True)
                before = cpu_seconds(envoy.process.pid)
                result = wrk.run(f"http://{HOST}:{ports[name]}/v1/chat/completions", script, seconds, 8, threads=1)
                cpu, requests, rps = tallies[name]
                tallies[name] = (cpu + cpu_seconds(envoy.process.pid) - before, requests + result.requests,
                                 [*rps, result.rps])
    finally:
        supervisor.stop()  # flushes the access logs
    for name in ("l_gateway", "l_nocel"):
        lines = (work / f"{name}.log").read_bytes().splitlines()
        if not lines or any(orjson.loads(line)["request_id"] != REQUEST_ID for line in lines):
            raise RuntimeError(f"{name}: a log line without the request id")
    return tallies


def report(tallies: dict[str, tuple[float, int, list[float]]]) -> list[str]:
    """The table and the differences."""
    per = {name: cpu * 1e6 / max(1, requests) for name, (cpu, requests, _) in tallies.items()}
    lines = ["### Access log: Envoy CPU per request (direct_response, authz's metadata set)", "",
             "| listener | requests | req/s (median) | Envoy CPU µs/request | vs l_none |", "|---|---:|---:|---:|---:|"]
    for name, (_, requests, rps) in tallies.items():
        lines.append(f"| {name} | {requests:,} | {statistics.median(rps):,.0f} | {per[name]:.1f} | "
                     f"{per[name] - per['l_none']:+.1f} |")
    lines += ["", f"The access log costs Envoy {per['l_gateway'] - per['l_none']:+.1f} µs a request as the gateway "
              f"renders it, {per['l_nocel'] - per['l_none']:+.1f} µs without the CEL expression.", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run, print, and with --record append to bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.access_log_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6, help="seconds per listener per round (default 6)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all listeners (default 3)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    lines = results.header(f"python -m bench.access_log_cost --seconds {args.seconds:.0f} --rounds {args.rounds}",
                           f"Envoy --concurrency 1 on CPU 0; {args.rounds} rounds × {args.seconds:.0f} s per "
                           "listener; wrk -t1 -c8")
    with tempfile.TemporaryDirectory(prefix="dynaseal-log-cost-") as work:
        lines += report(run(Path(work), args.seconds, args.rounds))
    return results.publish(lines, args.record)


if __name__ == "__main__":
    raise SystemExit(main())
