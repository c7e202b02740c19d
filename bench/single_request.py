"""Latency one sequential request pays: direct to the mock upstream, through Envoy without
ext_authz, and through Envoy with dynaseal ext_authz (+ the Redis reservation).

Run: `python -m bench.single_request [--requests 1000]`. Unlike the load runs, this is one
client, one request at a time: the p50 difference is what a single call pays for each hop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from bench.fixture import BODY, PATH, PROVIDER_KEY, PROVIDER_KEY_ENV, make_keys, write_config
from bench.harness import free_ports
from dynaseal import envoy_config
from dynaseal.config import load_config
from dynaseal.probes import http_ok
from dynaseal.stack import LocalStack

PORT_NAMES = ["envoy", "envoy_admin", "issuer", "authz", "mock_upstream", "redis", "kafka", "authz_metrics",
              "consumer_metrics", "shipper_metrics"]


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


def main(argv: list[str] | None = None) -> None:
    """Start the stack and a second Envoy, measure the three paths, print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args(argv)
    os.environ[PROVIDER_KEY_ENV] = PROVIDER_KEY
    directory = Path(tempfile.mkdtemp(prefix="dynaseal-single-"))
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    keys = make_keys()
    path = write_config(directory, ports, keys)
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
        with httpx.Client(timeout=10) as client:
            results = {name: measure(client, url, keys.token if "dynaseal" in name else PROVIDER_KEY,
                                     args.requests) for name, url in targets.items()}
    finally:
        plain.terminate()
        plain.wait(10)
        stack.stop()
    base = results["direct to the mock upstream"][0]
    for name, (p50, p99) in results.items():
        print(f"{name:38s} p50 {p50:6.3f} ms   p99 {p99:6.3f} ms   (+{p50 - base:.3f} ms p50 over direct)")


if __name__ == "__main__":
    main()
