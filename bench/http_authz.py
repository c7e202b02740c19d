"""What the ext_authz call costs on each transport: gRPC (the product's) against HTTP/1.1, null servers.

`python -m bench.http_authz [--seconds 8] [--rounds 3] [--upstream mock|direct] [--pace-ms N]`: one stack — the
mock LLM, one Envoy (`bench.http_authz_envoy`: a listener per variant, otherwise identical) and a
null authz server per transport, each allowing every request with one header for upstream:

| variant | listener | authz |
|---|---|---|
| U | `u` | none: Envoy without ext_authz |
| G | `g_grpcio` | gRPC ext_authz → `bench.null_grpc_authz` on grpc.aio |
| Gn | `g_native` | gRPC ext_authz → the same servicer on pygrpc-native (the product's default transport) |
| H | `h_raw` | HTTP ext_authz → `bench.null_http_authz`, an asyncio.Protocol answering in one write |
| Hu | `h_uvicorn` | HTTP ext_authz → the same answers from an ASGI app on uvicorn (h11) |

wrk (`-t2 -c16`, the bench's chat-completions POST) drives every variant once per round, the order
rotated each round so the machine's drift hits all alike. CPU per request of Envoy and of the
variant's own authz process are read around each run; ratios are taken within a round.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from bench import gateway, results, wrk
from bench.fixture import BODY
from bench.harness import HOST, BenchStack, free_ports
from bench.http_authz_envoy import SEEN_HEADER, render
from bench.null_http_authz import DENY_AUTHORIZATION, DENY_BODY
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import ServiceSpec, StartupError, tcp_open


@dataclass(frozen=True)
class Variant:
    """One thing measured: its label, listener, authz service (None: no ext_authz) and what it is."""

    label: str
    listener: str
    authz: str | None
    what: str


VARIANTS = (
    Variant("U", "u", None, "Envoy, no ext_authz"),
    Variant("G", "g_grpcio", "authz-grpcio", "gRPC ext_authz → null grpc.aio"),
    Variant("Gn", "g_native", "authz-native", "gRPC ext_authz → null pygrpc-native"),
    Variant("H", "h_raw", "authz-raw", "HTTP ext_authz → null asyncio.Protocol"),
    Variant("Hu", "h_uvicorn", "authz-uvicorn", "HTTP ext_authz → null ASGI on uvicorn (h11)"),
)
# authz service → (cluster, command after `python -m`).
SERVERS = {
    "authz-grpcio": ("authz_grpcio", ["bench.null_grpc_authz", "--server", "grpcio"]),
    "authz-native": ("authz_native", ["bench.null_grpc_authz", "--server", "native"]),
    "authz-raw": ("authz_raw", ["bench.null_http_authz", "--kind", "raw"]),
    "authz-uvicorn": ("authz_uvicorn", ["bench.null_http_authz", "--kind", "uvicorn"]),
}


class HttpAuthzStack(BenchStack):
    """The mock, the null authz servers and the variants' Envoy (no Redis, no dynaseal authz)."""

    def __init__(self, directory: Path, *, direct: bool = False, variants: tuple[Variant, ...] = VARIANTS) -> None:
        super().__init__(directory)
        self.direct = direct
        self.variants = variants
        names = [v.authz for v in variants if v.authz]
        ports = free_ports(2 + len(names) + len(variants))
        self.ports.update(mock_upstream=ports[0], envoy_admin=ports[1])
        self.server_ports = dict(zip(names, ports[2:], strict=False))
        self.listener_ports = {v.listener: port for v, port in zip(variants, ports[2 + len(names):], strict=True)}

    def __enter__(self) -> HttpAuthzStack:
        self.start()
        return self

    def specs(self) -> list[ServiceSpec]:
        """The mock (unless direct), each null server, then Envoy."""
        specs = []
        if not self.direct:
            mock = self.ports["mock_upstream"]
            specs.append(ServiceSpec(
                "mock-llm", [sys.executable, "-m", "mock_llm", "--host", HOST, "--port", str(mock)],
                f"http://{HOST}:{mock}", lambda: http_ok(f"http://{HOST}:{mock}/healthz"),
                env={"MOCK_LLM_API_KEY": ""}))
        for name, port in self.server_ports.items():
            specs.append(ServiceSpec(
                name, [sys.executable, "-m", *SERVERS[name][1], "--host", HOST, "--port", str(port)],
                f"{HOST}:{port}", functools.partial(tcp_open, HOST, port)))
        envoy_file = self.directory / "envoy.yaml"
        clusters = {"upstream_llm": self.ports["mock_upstream"],
                    **{SERVERS[name][0]: port for name, port in self.server_ports.items()}}
        envoy_file.write_text(yaml.safe_dump(render(self.listener_ports, clusters, self.ports["envoy_admin"],
                                                    self.direct), sort_keys=False))
        ok, output = envoy_config.validate(envoy_file)
        if not ok:
            raise StartupError(f"{envoy_file} is invalid:\n{output[-3000:]}")
        admin = f"http://{HOST}:{self.ports['envoy_admin']}"
        specs.append(ServiceSpec(
            "envoy", [envoy_config.envoy_binary(), "-c", str(envoy_file), "--disable-hot-restart",
                      "--log-level", "warn", "--concurrency", "1"], admin, lambda: http_ok(f"{admin}/ready")))
        return specs


def check(stack: HttpAuthzStack, variant: Variant, samples: int = 20) -> None:
    """The bench request answers 200 with authz's header echoed by the route (none in U), twice per
    keep-alive connection; the deny token gets authz's 403 and body (200 in U): the check is really on."""
    headers = {"authorization": f"Bearer {stack.keys.token}", "content-type": "application/json"}
    url = stack.url(variant.listener)
    with httpx.Client(timeout=5) as client:
        answers = [client.post(url, content=BODY, headers=headers) for _ in range(samples)]
        denied = client.post(url, content=BODY, headers={**headers, "authorization": DENY_AUTHORIZATION.decode()})
    seen = {(a.status_code, a.headers.get(SEEN_HEADER)) for a in answers}
    want = (200, None if variant.authz is None else "ok")
    if seen != {want}:
        raise RuntimeError(f"{variant.label}: expected only {want} (status, {SEEN_HEADER}), got {seen}")
    deny_want = (200, None) if variant.authz is None else (403, DENY_BODY)
    deny_got = (denied.status_code, None if variant.authz is None else denied.content)
    if deny_got != deny_want:
        raise RuntimeError(f"{variant.label}: the deny token got {deny_got}, not {deny_want}")


@dataclass(frozen=True)
class Measured:
    """One variant's run in one round."""

    round: int
    variant: Variant
    run: gateway.GatewayRun

    @property
    def envoy(self) -> float:
        """Envoy's CPU µs per request."""
        return self.run.cpu_us_per_request("envoy")

    @property
    def authz(self) -> float:
        """The variant's own authz process's CPU µs per request (0 for U)."""
        return self.run.cpu_us_per_request(self.variant.authz) if self.variant.authz else 0.0


def paced_script(directory: Path, token: str, pace_ms: int) -> Path:
    """The bench request's wrk script; with `pace_ms` each connection waits that long before its next request,
    so every variant runs at about the same rate (connections ÷ (pace + latency)) instead of its maximum."""
    script = wrk.write_script(directory, BODY, token)
    if pace_ms > 0:
        with script.open("a") as f:
            f.write(f"\ndelay = function() return {pace_ms} end\n")
    return script


def measure_rounds(stack: HttpAuthzStack, rounds: int, seconds: float, connections: int,
                   warmup_s: float, pace_ms: int = 0) -> list[Measured]:
    """Every variant once per round, the order rotated by one each round."""
    script = paced_script(stack.directory, stack.keys.token, pace_ms)
    out = []
    for n in range(rounds):
        order = stack.variants[n % len(stack.variants):] + stack.variants[:n % len(stack.variants)]
        for v in order:
            run = gateway.measure(stack, script, v.label, v.listener, v.what, seconds, connections, warmup_s)
            out.append(Measured(n + 1, v, run))
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _median(values: list[float], fmt: str = "{:.2f}") -> str:
    good = [v for v in values if v == v]  # NaN (a zero base) left out
    return fmt.format(statistics.median(good)) if good else "—"


def _rounds(measured: list[Measured]) -> list[dict[str, Measured]]:
    by_round: dict[int, dict[str, Measured]] = {}
    for m in measured:
        by_round.setdefault(m.round, {})[m.variant.label] = m
    return list(by_round.values())


def _labels(measured: list[Measured]) -> list[str]:
    return [v.label for v in VARIANTS if any(m.variant.label == v.label for m in measured)]


def runs_table(measured: list[Measured]) -> list[str]:
    """Every run: req/s, latency, CPU µs per request of Envoy and of the variant's authz, and Envoy over U."""
    lines = ["| round | variant | req/s | p50 ms | p99 ms | Envoy | authz | Envoy + authz | Envoy − U's | "
             "mock | other busy cores before |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rounds = _rounds(measured)
    for m in measured:
        u = rounds[m.round - 1].get("U")
        r = m.run
        lines.append(f"| {m.round} | {m.variant.label} {m.variant.what} | {r.result.rps:,.0f} | "
                     f"{r.result.p50_ms:.2f} | {r.result.p99_ms:.2f} | {m.envoy:.0f} | {m.authz:.0f} | "
                     f"{m.envoy + m.authz:.0f} | {f'{m.envoy - u.envoy:+.0f}' if u else '—'} | "
                     f"{r.cpu_us_per_request('mock-llm'):.0f} | {r.busy_before:.2f} |")
    noisy = sorted({f"{m.variant.label}{m.round}" for m in measured if m.run.busy_before > 0.25})
    if noisy:
        lines += ["", f"Other work kept the machine busy before {', '.join(noisy)}: read those runs with care."]
    return lines


def summary_table(measured: list[Measured]) -> list[str]:
    """Per variant, medians over the rounds of: req/s over U's, and the CPU µs per request the ext_authz
    call adds — to Envoy (Envoy − U's), in authz, and both (Envoy + authz − U's Envoy)."""
    lines = ["| variant | req/s ÷ U's | Envoy − U's | authz | added in all (Envoy + authz − U's Envoy) |",
             "|---|---:|---:|---:|---:|"]
    rounds = _rounds(measured)
    for label in _labels(measured):
        pairs = [(ms[label], ms["U"]) for ms in rounds if label in ms and "U" in ms]
        lines.append(f"| {label} | {_median([_ratio(x.run.result.rps, u.run.result.rps) for x, u in pairs])} | "
                     f"{_median([x.envoy - u.envoy for x, u in pairs], '{:+.0f}')} | "
                     f"{_median([x.authz for x, _ in pairs], '{:.0f}')} | "
                     f"{_median([x.envoy + x.authz - u.envoy for x, u in pairs], '{:+.0f}')} |")
    return lines


def against_table(measured: list[Measured], base: str) -> list[str]:
    """Per variant, medians over the rounds of its ratios to `base` in the same round: req/s, what the
    call adds to Envoy (over U), authz's CPU, and all the call adds."""
    lines = [f"| variant | req/s ÷ {base}'s | (Envoy − U) ÷ {base}'s | authz ÷ {base}'s | "
             f"(Envoy + authz − U) ÷ {base}'s |", "|---|---:|---:|---:|---:|"]
    rounds = _rounds(measured)
    for label in _labels(measured):
        if label in ("U", base):
            continue
        rows = [(ms[label], ms["U"], ms[base]) for ms in rounds if {label, "U", base} <= ms.keys()]
        lines.append(" | ".join([
            f"| {label}",
            _median([_ratio(x.run.result.rps, b.run.result.rps) for x, _, b in rows]),
            _median([_ratio(x.envoy - u.envoy, b.envoy - u.envoy) for x, u, b in rows]),
            _median([_ratio(x.authz, b.authz) for x, _, b in rows]),
            _median([_ratio(x.envoy + x.authz - u.envoy, b.envoy + b.authz - u.envoy) for x, u, b in rows]),
        ]) + " |")
    return lines


def report(measured: list[Measured]) -> list[str]:
    """Every run, then the medians and the ratios against each gRPC variant present."""
    labels = _labels(measured)
    lines = [*runs_table(measured), "", "Medians over the rounds (CPU µs per request):", "", *summary_table(measured)]
    for base in ("G", "Gn"):
        if base in labels and "U" in labels:
            lines += ["", f"Against {base} in the same round (medians of the rounds' ratios):", "",
                      *against_table(measured, base)]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Measure every variant each round; print (and with --record append) the tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.http_authz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--upstream", choices=("mock", "direct"), default="mock",
                        help="the mock LLM (default) or Envoy's direct_response (Envoy and authz alone)")
    parser.add_argument("--pace-ms", type=int, default=0,
                        help="each wrk connection waits this long between requests: about the same rate for every "
                             "variant (CPU per request falls as the rate rises), instead of each one's maximum")
    parser.add_argument("--only", default=",".join(v.label for v in VARIANTS),
                        help="comma-separated variant labels (default: all)")
    parser.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    args = parser.parse_args(argv)
    chosen = tuple(v for v in VARIANTS if v.label in args.only.split(","))
    directory = Path(tempfile.mkdtemp(prefix="dynaseal-httpauthz-"))
    with HttpAuthzStack(directory, direct=args.upstream == "direct", variants=chosen) as stack:
        for v in chosen:
            check(stack, v)
        measured = measure_rounds(stack, args.rounds, args.seconds, args.connections, args.warmup, args.pace_ms)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    command = (f"python -m bench.http_authz --seconds {args.seconds:g} --rounds {args.rounds} "
               f"--upstream {args.upstream} --pace-ms {args.pace_ms} --only {args.only}")
    lines = [*results.header(command, f"wrk -t2 -c{args.connections} {args.seconds:g} s after {args.warmup:g} s; "
                             f"Envoy --concurrency 1; `uptime` at the end: {uptime}"),
             "### ext_authz over gRPC vs HTTP/1.1, null servers (CPU µs per request)", "", *report(measured)]
    return results.publish(lines, args.record)


if __name__ == "__main__":
    raise SystemExit(main())
