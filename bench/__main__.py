"""`python -m bench`: the gateway, direct-Check and streaming benchmarks in one run (~3 min).

Prints a Markdown report and appends it to bench/RESULTS.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from bench import check_grpc, cluster, envoy_variants, gateway, litellm_bench, peers, profile, results, streaming
from bench.harness import BenchStack

PARTS = ("gateway", "stream", "check")
EXTRA = ("profile", "cluster", "envoy", "litellm", "peers")


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("parts", nargs="*", choices=[*PARTS, *EXTRA, []],
                        help="which benchmarks (default: gateway stream check; profile, cluster, envoy, "
                             "litellm and peers only when named)")
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds per wrk run (default 15)")
    parser.add_argument("--warmup", type=float, default=3, help="discarded warm-up seconds per run (default 3)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--envoy-concurrency", type=int, default=1, help="Envoy worker threads (default 1)")
    parser.add_argument("--authz-workers", type=int, default=1,
                        help="authz processes sharing the gRPC port via SO_REUSEPORT (default 1)")
    parser.add_argument("--authz-server", choices=("native", "grpcio"),
                        help="authz's gRPC transport (default: the config's authz.server)")
    parser.add_argument("--other-server", choices=("native", "grpcio"),
                        help="also run C with authz on this transport (C*), for a same-run comparison")
    parser.add_argument("--configs", default="ABC", help="gateway configurations to run (default ABC)")
    parser.add_argument("--redis-py", action="store_true",
                        help="also run C with redis-py as authz's Redis client (the client before the pipelined one)")
    parser.add_argument("--check-seconds", type=float, default=10, help="seconds per direct Check run")
    parser.add_argument("--check-rate", type=float, default=1000, help="fixed Check rate per second")
    parser.add_argument("--streams", type=int, default=20, help="streams per listener (default 20)")
    parser.add_argument("--note", default="", help="a line saying what this run is about")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks and report."""
    rest = list(sys.argv[1:] if argv is None else argv)
    if rest[:1] == ["pipeline-soak"]:  # its own options: the whole local stack, not the bench stack
        from bench import pipeline_soak

        return pipeline_soak.main(rest[1:])
    if rest[:1] == ["callback-receiver"]:  # the bundled issuer alone, before vs after in one run
        from bench import callback_receiver

        return callback_receiver.main(rest[1:])
    args = parse(argv)
    parts = args.parts or list(PARTS)
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    settings = (f"Envoy --concurrency {args.envoy_concurrency}; wrk -t2 -c{args.connections} {args.seconds:.0f} s "
                f"after a {args.warmup:.0f} s warm-up; authz workers {args.authz_workers}; "
                f"authz.server {args.authz_server or 'default (native)'}")
    lines = results.header(command.strip(), settings)
    if args.note:
        lines[2:2] = [args.note, ""]
    work = Path(tempfile.mkdtemp(prefix="dynaseal-bench-"))
    if {"gateway", "stream", "envoy", "litellm", "peers"} & set(parts):
        lines += _stack_parts(args, parts, work)
    lines += _direct_parts(args, parts, work)
    report = "\n".join(lines)
    print("\n" + report)
    if not args.no_record:
        results.append(lines)
        print(f"appended to {results.RESULTS}")
    return 0


def _stack_parts(args: argparse.Namespace, parts: list[str], work: Path) -> list[str]:
    """The parts that run on one bench stack (Envoy, authz, Redis, the mock): their report lines."""
    lines: list[str] = []
    stack = BenchStack(work / "gateway", authz_workers=args.authz_workers,
                       envoy_concurrency=args.envoy_concurrency, authz_server=args.authz_server)
    with stack:
        if "gateway" in parts:
            print(f"gateway: {args.configs} × ({args.warmup:.0f} s warm-up + {args.seconds:.0f} s) …", flush=True)
            runs = gateway.run(stack, args.seconds, args.connections, args.warmup, args.configs,
                               args.redis_py, args.other_server)
            lines += ["### Gateway: Envoy A no auth · B jwt_authn · C dynaseal ext_authz (direct_response)", "",
                      *results.gateway_table(runs), ""]
        if "envoy" in parts:
            print("envoy: B, C and C's ext_authz variants …", flush=True)
            variant_runs = envoy_variants.run(stack, args.seconds, args.connections, args.warmup)
            lines += ["### Envoy's side of ext_authz: C's variants (direct_response)", "",
                      *(f"- {r.label}: {r.name}" for r in variant_runs if r.label.startswith("c_")), "",
                      *envoy_variants.table(variant_runs), ""]
        if "litellm" in parts:
            print("litellm: the gateway and LiteLLM's proxy in front of the same mock …", flush=True)
            lite_runs, why = litellm_bench.run(stack, args.seconds, args.connections, args.warmup)
            lines += ["### Beside LiteLLM: the same request and client, each proxy in front of the mock", "",
                      *(litellm_bench.table(lite_runs) if lite_runs else [why]), ""]
        if "peers" in parts:
            print("peers: U, D, TensorZero, Portkey and LiteLLM in front of the same mock …", flush=True)
            load = peers.loadavg()
            peer_runs, skipped = peers.run(stack, args.seconds, args.connections, args.warmup)
            lines += ["### Beside the other gateways: the same request, client and mock, one run", "",
                      f"Machine: {load} (other work shares the 2 cores: compare ratios, not absolutes).", "",
                      *peers.table(peer_runs, skipped), ""]
        if "stream" in parts:
            print(f"stream: {args.streams} streams per listener …", flush=True)
            stats = streaming.run(stack, args.streams)
            lines += ["### Streaming through the gateway listener (mock upstream)", "",
                      *results.stream_table(stats, streaming.CHUNK_DELAY_MS), ""]
    return lines


def _direct_parts(args: argparse.Namespace, parts: list[str], work: Path) -> list[str]:
    """The parts that start their own processes (direct Check, the cluster, the profile): their report lines."""
    lines: list[str] = []
    if "check" in parts:
        print("check: direct gRPC Check, fixed rate and max, dynaseal then null server …", flush=True)
        check_runs = check_grpc.run(work / "check", args.check_seconds, args.check_rate,
                                    authz_args=("--server", args.authz_server) if args.authz_server else ())
        lines += [f"### Direct Check (no Envoy): authz on CPU 0, client + Redis on CPU 1, "
                  f"{args.check_rate:.0f}/s and max", "", *results.check_table(check_runs), ""]
    if "cluster" in parts:
        print("cluster: RedisQuota.admit on one Redis and on a 3-master cluster …", flush=True)
        cluster_runs = cluster.run(work / "cluster", args.check_seconds / 2, args.check_rate)
        lines += ["### Hot path on a Redis Cluster vs one Redis (RedisQuota.admit on CPU 0, every redis-server "
                  "on CPU 1)", "", *cluster.table(cluster_runs), ""]
    if "profile" in parts:
        print(f"profile: py-spy on authz while wrk drives C for {args.seconds:.0f} s …", flush=True)
        result, summary = profile.run(work / "profile", args.seconds, args.connections)
        lines += [f"### Profile of authz under load C ({result.rps:,.0f} req/s while sampled, py-spy --nonblocking)",
                  "", *summary, ""]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
