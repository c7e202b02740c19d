"""What-if: Envoy reaches authz over a unix socket instead of loopback TCP (the sidecar case).

`python -m bench.uds_authz [--seconds 10] [--rounds 2]`: one stack as `bench peers` starts it, plus
a second authz process (same config, same Redis) serving gRPC on a unix socket, and a listener
`s_uds` that is the gateway listener verbatim except that its ext_authz cluster is that socket
(`pipe` address). wrk drives D (`s_dynaseal`, TCP) and D-uds (`s_uds`) in turn, alternating, so
the machine's drift hits both alike. CPU per request is summed over every authz process (the idle
one costs ~0), Envoy and Redis, as in `bench peers`.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import gateway, results, wrk
from bench.fixture import BODY
from bench.harness import BenchStack, free_ports
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import grpc_serving
from dynaseal_launcher.processes import ServiceSpec, StartupError
from dynaseal_launcher.stack import AUTHZ_SERVICE_NAME

# The second authz binds the unix socket instead of the TCP port its config names.
PREAMBLE = """
import authz_service.server as _server
_new = _server.new_server
def _on_socket(kind, io_threads):
    srv = _new(kind, io_threads)
    add = srv.add_insecure_port
    srv.add_insecure_port = lambda _address: add("unix:{path}")
    return srv
_server.new_server = _on_socket
from authz_service.__main__ import main
raise SystemExit(main({args!r}))
"""


class UdsStack(BenchStack):
    """The bench stack plus authz on a unix socket and the listener `s_uds` that uses it."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        # Short: a unix socket path is limited to 107 bytes.
        self.socket = Path(tempfile.mkdtemp(prefix="dsuds-")) / "authz.sock"
        self.listener_ports["s_uds"] = free_ports(1)[0]

    def specs(self) -> list[ServiceSpec]:
        """The usual services, the unix-socket authz before Envoy, and Envoy's config with `s_uds`."""
        specs = super().specs()
        envoy_file = self.directory / "envoy" / "envoy.yaml"
        config: dict[str, Any] = yaml.safe_load(envoy_file.read_text())
        resources = config["static_resources"]
        tcp_cluster = next(c for c in resources["clusters"] if c["name"] == "dynaseal_authz")
        uds_cluster = copy.deepcopy(tcp_cluster)
        uds_cluster.update(name="dynaseal_authz_uds", type="STATIC")
        uds_cluster["load_assignment"] = {"cluster_name": "dynaseal_authz_uds", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(self.socket)}}}}]}]}
        resources["clusters"].append(uds_cluster)
        listener = copy.deepcopy(next(x for x in resources["listeners"] if x["name"] == "s_dynaseal"))
        listener["name"] = "s_uds"
        listener["address"]["socket_address"]["port_value"] = self.listener_ports["s_uds"]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        ext_authz = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
        ext_authz["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = "dynaseal_authz_uds"
        resources["listeners"].append(listener)
        envoy_file.write_text(yaml.safe_dump(config, sort_keys=False))
        ok, output = envoy_config.validate(envoy_file)
        if not ok:
            raise StartupError(f"{envoy_file} is invalid:\n{output[-3000:]}")
        authz = next(s for s in specs if s.name == "authz")
        at = list(authz.argv).index("-m")
        args = [*authz.argv[at + 2:]]
        metrics = args.index("--metrics-port")
        args[metrics + 1] = str(free_ports(1)[0])
        target = f"unix:{self.socket}"
        uds = ServiceSpec("authz-uds", [sys.executable, "-c", PREAMBLE.format(path=self.socket, args=args)], target,
                          lambda: grpc_serving(target, AUTHZ_SERVICE_NAME), env=authz.env)
        envoy_at = next(i for i, s in enumerate(specs) if s.name == "envoy")
        return [*specs[:envoy_at], uds, *specs[envoy_at:]]


def check(stack: BenchStack, listener: str) -> None:
    """20 bench requests on the listener answer 200."""
    headers = {"authorization": f"Bearer {stack.keys.token}", "content-type": "application/json"}
    with httpx.Client(timeout=5) as client:
        statuses = {client.post(stack.url(listener), content=BODY, headers=headers).status_code for _ in range(20)}
    if statuses != {200}:
        raise RuntimeError(f"{listener}: expected only 200, got {statuses}")


def own(run: gateway.GatewayRun) -> str:
    """Envoy, authz (all processes), Redis and their sum, µs per request."""
    parts = [run.cpu_us_per_request(s) for s in ("envoy", "authz", "redis")]
    return " | ".join(f"{p:.0f}" for p in parts) + f" | **{sum(parts):.0f}**"


def main(argv: list[str] | None = None) -> int:
    """Measure D and D-uds alternately; print (and with --record append) the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.uds_authz", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="dynaseal-uds-"))
    runs = []
    with UdsStack(directory) as stack:
        check(stack, "s_dynaseal")
        check(stack, "s_uds")
        script = wrk.write_script(directory, BODY, stack.keys.token)
        for n in range(1, args.rounds + 1):
            for label, listener, name in (("D", "s_dynaseal", "ext_authz over loopback TCP"),
                                          ("D-uds", "s_uds", "ext_authz over a unix socket")):
                runs.append(gateway.measure(stack, script, f"{label}{n}", listener, name, args.seconds,
                                            args.connections, args.warmup))
    lines = [*results.header(f"python -m bench.uds_authz --seconds {args.seconds:.0f} --rounds {args.rounds}",
                             f"wrk -t2 -c{args.connections} {args.seconds:.0f} s after {args.warmup:.0f} s; D and "
                             "D-uds alternate"),
             "### Envoy → authz over loopback TCP vs a unix socket (gateway listener, in front of the mock)", "",
             "| run | req/s | p50 ms | p99 ms | CPU µs/req: Envoy | authz | Redis | sum | other busy cores before |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.label} {r.name} | {r.result.rps:,.0f} | {r.result.p50_ms:.2f} | {r.result.p99_ms:.2f} | "
              f"{own(r)} | {r.busy_before:.2f} |" for r in runs]
    return results.publish(lines, args.record)


if __name__ == "__main__":
    raise SystemExit(main())
