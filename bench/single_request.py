"""Latency one sequential request pays: direct to the mock upstream, through Envoy without
ext_authz, and through Envoy with dynaseal ext_authz (+ the Redis reservation).

Run: `python -m bench.single_request [--requests 1000] [--servers native,grpcio]`. Unlike the load
runs, this is one client, one request at a time: the p50 difference is what a single call pays for
each hop. Each authz transport (`authz.server`) gets its own stack, one after the other in the same
run; the authz line also gives the handler's mean (decision + Redis round trip, from its own
`dynaseal_authz_check_seconds`), so the rest of what ext_authz adds is the gRPC hop itself.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from bench.fixture import BODY, PATH, PROVIDER_KEY, PROVIDER_KEY_ENV, make_keys, write_config
from bench.harness import free_ports
from dynaseal.config import load_config
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.stack import LocalStack

PORT_NAMES = ["envoy", "envoy_admin", "issuer", "authz", "mock_upstream", "redis", "kafka", "authz_metrics",
              "consumer_metrics", "shipper_metrics", "admin"]


def envoy_without_authz(cfg_text: str, port: int, admin_port: int) -> str:
    """The rendered gateway config minus the ext_authz filter, on other ports."""
    config = yaml.safe_load(cfg_text)
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_authz"]
    listener["address"]["socket_address"]["port_value"] = port
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    return yaml.safe_dump(config)


def measure(client: httpx.Client, url: str, token: str, requests: int) -> tuple[float, float]:
    """(p50, p99) in ms of sequential POSTs after a warm-up; every reply must be 200."""
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    for _ in range(100):
        client.post(url, headers=headers, content=BODY).raise_for_status()
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        reply = client.post(url, headers=headers, content=BODY)
        timings.append((time.perf_counter() - started) * 1000)
        reply.raise_for_status()
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.99) - 1]


def handler_seconds(metrics_port: int) -> tuple[float, float]:
    """(sum, count) of authz's dynaseal_authz_check_seconds."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    values = dict(re.findall(r"^dynaseal_authz_check_seconds_(sum|count) (\S+)$", text, re.MULTILINE))
    return float(values.get("sum", 0)), float(values.get("count", 0))


def main(argv: list[str] | None = None) -> None:
    """For each authz transport: start the stack and a second Envoy, measure the three paths."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--servers", default="native,grpcio", help="authz transports, in order")
    args = parser.parse_args(argv)
    os.environ[PROVIDER_KEY_ENV] = PROVIDER_KEY
    for server in args.servers.split(","):
        print(f"authz.server: {server}")
        measure_stack(server, args.requests)


def measure_stack(server: str, requests: int) -> None:
    """One stack with this authz transport: the three paths, printed."""
    directory = Path(tempfile.mkdtemp(prefix="dynaseal-single-"))
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    keys = make_keys()
    path = write_config(directory, ports, keys)
    raw = yaml.safe_load(path.read_text())
    raw["authz"] = {"server": server}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(path)
    stack = LocalStack(cfg, path, pipeline=False)
    stack.start()
    plain_port, plain_admin = free_ports(2)
    plain_file = directory / "envoy-no-authz.yaml"
    plain_file.write_text(envoy_without_authz(envoy_config.render(cfg, directory / "plain.log"), plain_port,
                                              plain_admin))
    plain = subprocess.Popen([envoy_config.envoy_binary(), "-c", str(plain_file), "--disable-hot-restart",
                              "--log-level", "error", "--concurrency", "2"])
    try:
        while not http_ok(f"http://127.0.0.1:{plain_admin}/ready"):
            time.sleep(0.1)
        targets = {
            "direct to the mock upstream": f"http://127.0.0.1:{ports['mock_upstream']}{PATH}",
            "Envoy, no ext_authz": f"http://127.0.0.1:{plain_port}{PATH}",
            "Envoy + dynaseal ext_authz + Redis": f"http://127.0.0.1:{ports['envoy']}{PATH}",
        }
        results = {}
        with httpx.Client(timeout=10) as client:
            for name, url in targets.items():
                before = handler_seconds(ports["authz_metrics"])
                results[name] = measure(client, url, keys.token if "dynaseal" in name else PROVIDER_KEY, requests)
                after = handler_seconds(ports["authz_metrics"])
            handler_ms = (after[0] - before[0]) / max(1.0, after[1] - before[1]) * 1000
    finally:
        plain.terminate()
        plain.wait(10)
        stack.stop()
    base = results["direct to the mock upstream"][0]
    for name, (p50, p99) in results.items():
        print(f"  {name:38s} p50 {p50:6.3f} ms   p99 {p99:6.3f} ms   (+{p50 - base:.3f} ms p50 over direct)")
    added = results["Envoy + dynaseal ext_authz + Redis"][0] - results["Envoy, no ext_authz"][0]
    print(f"  ext_authz adds {added:+.3f} ms p50 over Envoy alone; the authz handler's mean is {handler_ms:.3f} ms")


if __name__ == "__main__":
    main()
