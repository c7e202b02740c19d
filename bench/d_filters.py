"""Where Envoy's CPU goes on the D path, filter by filter: `python -m bench.d_filters`.

Envoy's binary is stripped, so perf cannot name its functions; this attributes by taking things out.
One stack; besides D (`s_dynaseal`) and U (`s_none`, no ext_authz), the bench Envoy gets copies of the
gateway listener each without one part (measurement only: none of them is a configuration to ship):

| listener | without |
|---|---|
| `x_nolua` | the Lua filter (body amendment, response-header allowlist, give-back, usage strip) |
| `x_nolog` | the access log (the JSON line with authz's metadata and the usage) |
| `x_nometa` | sse_to_metadata and json_to_metadata (the usage readers) |
| `x_nocors` | the CORS filter |
| `x_nocel` | the CEL expression of the access log's request_id (read from the metadata alone) |

wrk drives D and each variant in turn, D again before every variant, `--rounds` times; Envoy's CPU per
request of each variant is compared with the D just before it.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bench import ab, gateway, results, wrk
from bench.fixture import BODY
from bench.harness import BenchStack, free_ports
from dynaseal_launcher import envoy_config
from dynaseal_launcher.processes import ServiceSpec, StartupError

VARIANTS = {
    "x_nolua": "D without the Lua filter",
    "x_nolog": "D without the access log",
    "x_nometa": "D without sse_to_metadata and json_to_metadata",
    "x_nocors": "D without the CORS filter",
    "x_nocel": "D with the access log's request_id read without CEL (DYNAMIC_METADATA only)",
}
DROPPED_FILTERS = {"x_nolua": ("envoy.filters.http.lua",),
                   "x_nometa": ("envoy.filters.http.sse_to_metadata", "envoy.filters.http.json_to_metadata"),
                   "x_nocors": ("envoy.filters.http.cors",)}


def variant(listener: dict[str, Any], name: str, port: int) -> dict[str, Any]:
    """The gateway listener without the part `name` takes out."""
    copied = copy.deepcopy(listener)
    copied["name"] = name
    copied["address"]["socket_address"]["port_value"] = port
    hcm = copied["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = name
    if name == "x_nolog":
        hcm.pop("access_log", None)
    if name == "x_nocel":
        log_format = hcm["access_log"][0]["typed_config"]["log_format"]["json_format"]
        log_format["request_id"] = "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:request_id)%"
    dropped = DROPPED_FILTERS.get(name, ())
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] not in dropped]
    return copied


class FiltersStack(BenchStack):
    """The bench stack with the variant listeners added to its Envoy."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        ab.relax_redis_deadline(self)
        for name, port in zip(VARIANTS, free_ports(len(VARIANTS)), strict=True):
            self.listener_ports[name] = port

    def specs(self) -> list[ServiceSpec]:
        """The usual services; Envoy's config with the variants."""
        specs = super().specs()
        envoy_file = self.directory / "envoy" / "envoy.yaml"
        config: dict[str, Any] = yaml.safe_load(envoy_file.read_text())
        listeners = config["static_resources"]["listeners"]
        base = next(x for x in listeners if x["name"] == "s_dynaseal")
        listeners += [variant(base, name, self.listener_ports[name]) for name in VARIANTS]
        envoy_file.write_text(yaml.safe_dump(config, sort_keys=False))
        ok, output = envoy_config.validate(envoy_file)
        if not ok:
            raise StartupError(f"{envoy_file} is invalid:\n{output[-3000:]}")
        return specs


def main(argv: list[str] | None = None) -> int:
    """Measure U, D and the variants; print (and with --record append) the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.d_filters", description=__doc__)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--only", default=",".join(["s_none", *VARIANTS]),
                        help="comma-separated listeners to measure (default: U and every variant)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    chosen = {name: what for name, what in {"s_none": "U: the gateway listener without ext_authz", **VARIANTS}.items()
              if name in args.only.split(",")}
    directory = Path(tempfile.mkdtemp(prefix="dynaseal-filters-"))
    runs: list[tuple[gateway.GatewayRun, gateway.GatewayRun]] = []
    with FiltersStack(directory) as stack:
        for name in ("s_dynaseal", *VARIANTS):
            ab.check(stack, name)
        script = wrk.write_script(directory, BODY, stack.keys.token)

        def measure(label: str, listener: str, name: str) -> gateway.GatewayRun:
            return gateway.measure(stack, script, label, listener, name, args.seconds, args.connections, args.warmup)

        for n in range(1, args.rounds + 1):
            for name, what in chosen.items():
                runs.append((measure(f"D{n}", "s_dynaseal", "D"), measure(f"{name}{n}", name, what)))
    command = f"python -m bench.d_filters --seconds {args.seconds:.0f} --rounds {args.rounds} --only {args.only}"
    lines = [*results.header(command,
                             f"wrk -t2 -c{args.connections} {args.seconds:.0f} s after {args.warmup:.0f} s; each "
                             "variant right after a D run"),
             "### Envoy's CPU on the D path, part by part (each listener without one part, vs the D just before)", "",
             "| variant | req/s | Envoy µs/req | D's Envoy just before | difference | authz | Redis |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for d, x in runs:
        envoy, base = x.cpu_us_per_request("envoy"), d.cpu_us_per_request("envoy")
        lines.append(f"| {x.label} {x.name} | {x.result.rps:,.0f} | {envoy:.0f} | {base:.0f} | {envoy - base:+.0f} | "
                     f"{x.cpu_us_per_request('authz'):.0f} | {x.cpu_us_per_request('redis'):.0f} |")
    return results.publish(lines, args.record)


if __name__ == "__main__":
    raise SystemExit(main())
