"""Envoy CPU per request of upstream routing: today's single upstream against named routes, one run.

`python -m bench.routing_cost [--seconds 8] [--rounds 2] [--no-record]`

Built like bench.lua_cost: one Envoy (`--concurrency 1`, CPU 0), a listener per variant, no authz
(`set_metadata` writes what authz's allow would), the gateway's own Lua filter and upstream
filters as rendered from the template, the bundled mock as every upstream. Variants:

| listener | what authz's allow carries | route |
|---|---|---|
| `today` | request id, no tenant (the response header allowlist does not run) | `upstream_llm` |
| `single` | + tenant (the response header allowlist runs) | `upstream_llm` |
| `routed` | + the route's credential and model splice (`up_auth.*`, `up_model.*`) | `up_default` (per-try filters) |
| `fallback` | as `routed` | `route-dead-default`: a refused connect, then the mock |

Requests: `wrk -t1 -c8` POSTs the bench body; CPU µs/request = Envoy's CPU time / requests.
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bench import results, wrk
from bench.fixture import BODY, MODEL, PROVIDER_KEY, PROVIDER_KEY_ENV, make_keys, write_config
from bench.harness import GATEWAY_PORTS, HOST, cpu_seconds, free_ports, wait_for_quiet
from bench.lua_cost import BUFFER, LUA, REQUEST_ID, ROUTER, Tally, set_metadata
from dynaseal.config import load_config
from dynaseal.routing.model_span import model_value_span
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import ServiceSpec, StartupError, Supervisor

SPAN = model_value_span(BODY)
assert SPAN is not None
ROUTED = {"up_auth.default": f"Bearer {PROVIDER_KEY}", "up_model.default": f'{SPAN[0]} {SPAN[1]} "gpt-4o"'}
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "today": ({"request_id": REQUEST_ID}, "upstream_llm"),
    "single": ({}, "upstream_llm"),
    "routed": (ROUTED, "up_default"),
    "fallback": (ROUTED, "route-dead-default"),
}


def routed_config(path: Path, dead_port: int) -> None:
    """The bench tenant with named routes: its model to [dead, default], every other to [default]."""
    raw = yaml.safe_load(path.read_text())
    raw["gateway"]["upstreams"] = [{"name": "dead", "base_url": f"http://{HOST}:{dead_port}/v1",
                                    "outlier_detection": None}]
    raw["tenants"][0]["upstream"] = {"routes": [
        {"model": MODEL, "upstreams": ["dead", {"upstream": "default", "model": "gpt-4o"}]},
        {"model": "*", "upstreams": ["default"]}]}
    raw["tenants"][0]["limits"]["models"] = ["*"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def render(cfg_text: str, ports: dict[str, int]) -> str:
    """One listener per variant, each with the gateway's Lua filter and a route to its cluster."""
    gateway = yaml.safe_load(cfg_text)
    template = gateway["static_resources"]["listeners"][0]
    hcm0 = template["filter_chains"][0]["filters"][0]["typed_config"]
    filters = {f["name"]: f for f in hcm0["http_filters"]}
    routes: dict[str, Any] = {}
    for entry in hcm0["route_config"]["virtual_hosts"][0]["routes"]:  # the first of each: chat completions
        if "route" in entry:
            routes.setdefault(entry["route"]["cluster"], entry["route"])
    listeners = []
    for name, (extra, cluster) in VARIANTS.items():
        listener = copy.deepcopy(template)
        listener["name"] = name
        listener["address"]["socket_address"]["port_value"] = ports[name]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = name
        hcm.pop("access_log", None)
        metadata = set_metadata(extra)
        if name == "today":  # no tenant: what the Lua filter did before the allowlist
            metadata["typed_config"]["metadata"][0]["value"] = {"request_id": REQUEST_ID, **extra}
        hcm["http_filters"] = [metadata, BUFFER, filters[LUA], filters[ROUTER]]
        vhost = hcm["route_config"]["virtual_hosts"][0]
        vhost["routes"] = [{"match": {"path": "/v1/chat/completions"}, "route": routes[cluster]}]
        listeners.append(listener)
    gateway["static_resources"]["listeners"] = listeners
    return yaml.safe_dump(gateway, sort_keys=False)


def run(work: Path, seconds: float, rounds: int) -> dict[str, Tally]:
    """Start the mock and Envoy, drive every listener `rounds` times, return the tallies."""
    names = list(VARIANTS)
    all_ports = free_ports(len(GATEWAY_PORTS) + len(names) + 1)
    gateway_ports = dict(zip(GATEWAY_PORTS, all_ports, strict=False))
    ports = dict(zip(names, all_ports[len(GATEWAY_PORTS):-1], strict=True))
    os.environ[PROVIDER_KEY_ENV] = PROVIDER_KEY
    config_path = write_config(work, gateway_ports, make_keys())
    routed_config(config_path, all_ports[-1])
    cfg = load_config(config_path)
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
        for name in names:  # warm-up, and every variant must answer 200
            result = wrk.run(f"http://{HOST}:{ports[name]}/v1/chat/completions", script, 1, 8, threads=1)
            if result.requests == 0 or result.non_2xx:
                raise StartupError(f"variant {name}: {result.non_2xx} non-2xx of {result.requests}")
        for round_no in range(rounds):
            for name in names:
                wait_for_quiet(max_wait_s=10)
                print(f"  round {round_no + 1}: {name} …", flush=True)
                before = cpu_seconds(envoy.process.pid)
                result = wrk.run(f"http://{HOST}:{ports[name]}/v1/chat/completions", script, seconds, 8, threads=1)
                tallies[name].cpu_s += cpu_seconds(envoy.process.pid) - before
                tallies[name].requests += result.requests
                tallies[name].rps.append(result.rps)
    finally:
        supervisor.stop()
    return tallies


def report(tallies: dict[str, Tally]) -> list[str]:
    """The Markdown table and the same-run differences."""
    per = {n: t.us_per(t.requests) for n, t in tallies.items()}
    lines = ["### Routing: Envoy CPU per request", "",
             "| listener | requests | req/s (median) | Envoy CPU µs/request | vs today |", "|---|---:|---:|---:|---:|"]
    for n, t in tallies.items():
        lines.append(f"| {n} | {t.requests:,} | {statistics.median(t.rps):,.0f} | {per[n]:.1f} | "
                     f"{per[n] / per['today']:.2f}× |")
    lines += ["", f"The response header allowlist adds {per['single'] - per['today']:+.1f} µs a request; a named "
              f"route with its per-try credential and model splice {per['routed'] - per['single']:+.1f} µs more; "
              f"a fallback past a refused upstream {per['fallback'] - per['routed']:+.1f} µs more.", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run, print, and append to bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.routing_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8, help="seconds per listener per round (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all listeners (default 2)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m bench.routing_cost " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = results.header(command.strip(), f"Envoy --concurrency 1 on CPU 0; {args.rounds} rounds × "
                                            f"{args.seconds:.0f} s per listener; wrk -t1 -c8; mock upstream on CPU 1")
    with tempfile.TemporaryDirectory(prefix="dynaseal-routing-cost-") as work:
        lines += report(run(Path(work), args.seconds, args.rounds))
    print("\n".join(lines))
    if not args.no_record:
        results.append(lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
