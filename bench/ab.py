"""Before/after of one change to the D path, in one stack and one run: `python -m bench.ab --before REV`.

The D path is Envoy's gateway listener, authz and Redis. A change may touch authz's Python or the Envoy
template, so both sides run side by side in one stack, on the same Redis and mock:
- after: the working tree, as `python -m bench peers` measures D (`s_dynaseal` and the bench's authz);
- before: the tree at REV (`git archive`), with its own authz process on another port and its own copy
  of the gateway listener (`s_before`, rendered from REV's template, calling REV's authz).
wrk drives before and after in turn, alternating, `--rounds` times, so the machine's drift hits both
alike; each pair is compared within itself. CPU per request: Envoy, authz (the idle authz of the other
side costs ~0) and Redis, as in `bench peers`.

`--in-process`: for a change to authz's Python alone, where the whole path's noise on a shared machine
hides a few µs. `bench.authz_stages` (the decision and the Check handler in one process, on a Redis of
its own) runs from REV's tree and from the working tree in turn, `--rounds` times; CPU µs per request
of each stage, before and after.
"""

from __future__ import annotations

import argparse
import copy
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import gateway, results, wrk
from bench.fixture import BODY
from bench.harness import HOST, BenchStack, free_ports
from dynaseal.config import load_config
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import grpc_serving
from dynaseal_launcher.processes import ServiceSpec, StartupError
from dynaseal_launcher.stack import AUTHZ_SERVICE_NAME

REPO = Path(__file__).resolve().parent.parent
EXT_AUTHZ = "envoy.filters.http.ext_authz"
REDIS_TIMEOUT_MS = 500
# Runs with REV's tree first on the path: its authz, or its template rendered for the bench config.
AUTHZ_BEFORE = "import sys\nsys.path.insert(0, {tree!r})\nfrom authz_service.__main__ import main\n" \
               "raise SystemExit(main({args!r}))\n"
STAGES = "import sys\nsys.path.insert(0, {tree!r})\nfrom bench.authz_stages import main\n" \
         "raise SystemExit(main(['--requests', '{requests}', '--rounds', '3']))\n"
RENDER_BEFORE = "import sys\nsys.path.insert(0, {tree!r})\nfrom pathlib import Path\n" \
                "from dynaseal.config import load_config\nfrom dynaseal_launcher import envoy_config\n" \
                "print(envoy_config.render(load_config({config!r}), Path({log!r})))\n"


def export(rev: str, into: Path) -> Path:
    """The tree at `rev`, extracted from `git archive`."""
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def relax_redis_deadline(stack: BenchStack) -> None:
    """Give the stack's authz a 500 ms Redis deadline (call before it starts).

    A loaded shared machine stalls Redis past the 50 ms default now and then: the request fails
    closed (503) and the run would abort. A longer deadline changes no per-request work.
    """
    raw = yaml.safe_load(stack.config_path.read_text())
    raw["gateway"]["redis_timeout_ms"] = REDIS_TIMEOUT_MS
    stack.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    stack.cfg = load_config(stack.config_path)


class AbStack(BenchStack):
    """The bench stack plus REV's authz (`authz-before`) and REV's gateway listener (`s_before`)."""

    def __init__(self, directory: Path, before_tree: Path) -> None:
        super().__init__(directory)
        relax_redis_deadline(self)
        self.before_tree = before_tree
        self.before_port = free_ports(1)[0]
        self.listener_ports["s_before"] = free_ports(1)[0]

    def _before_listener(self) -> dict[str, Any]:
        """REV's gateway listener for the bench config, its ext_authz calling REV's authz."""
        code = RENDER_BEFORE.format(tree=str(self.before_tree), config=str(self.config_path),
                                    log=str(self.directory / "envoy" / "access-before.log"))
        rendered = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        if rendered.returncode != 0:
            raise StartupError(f"rendering the gateway config at the baseline failed:\n{rendered.stderr[-2000:]}")
        listener: dict[str, Any] = yaml.safe_load(rendered.stdout)["static_resources"]["listeners"][0]
        listener["name"] = "s_before"
        listener["address"]["socket_address"]["port_value"] = self.listener_ports["s_before"]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = "s_before"
        ext_authz = next(f for f in hcm["http_filters"] if f["name"] == EXT_AUTHZ)
        ext_authz["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = "dynaseal_authz_before"
        return listener

    def specs(self) -> list[ServiceSpec]:
        """The usual services, REV's authz before Envoy, and Envoy's config with `s_before`."""
        specs = super().specs()
        envoy_file = self.directory / "envoy" / "envoy.yaml"
        config: dict[str, Any] = yaml.safe_load(envoy_file.read_text())
        resources = config["static_resources"]
        cluster = copy.deepcopy(next(c for c in resources["clusters"] if c["name"] == "dynaseal_authz"))
        cluster["name"] = "dynaseal_authz_before"
        cluster["load_assignment"] = {"cluster_name": "dynaseal_authz_before", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": HOST, "port_value": self.before_port}}}}]}]}
        resources["clusters"].append(cluster)
        resources["listeners"].append(self._before_listener())
        envoy_file.write_text(yaml.safe_dump(config, sort_keys=False))
        ok, output = envoy_config.validate(envoy_file)
        if not ok:
            raise StartupError(f"{envoy_file} is invalid:\n{output[-3000:]}")
        authz = next(s for s in specs if s.name == "authz")
        at = list(authz.argv).index("-m")
        args = [*authz.argv[at + 2:]]
        args[args.index("--metrics-port") + 1] = str(free_ports(1)[0])
        args += ["--port", str(self.before_port)]
        target = f"{HOST}:{self.before_port}"
        before = ServiceSpec("authz-before", [sys.executable, "-c", AUTHZ_BEFORE.format(tree=str(self.before_tree),
                                                                                        args=args)],
                             f"grpc://{target}", lambda: grpc_serving(target, AUTHZ_SERVICE_NAME), env=authz.env)
        envoy_at = next(i for i, s in enumerate(specs) if s.name == "envoy")
        return [*specs[:envoy_at], before, *specs[envoy_at:]]


def check(stack: BenchStack, listener: str) -> None:
    """20 bench requests on the listener answer 200 with a completion; a tampered key gets 401."""
    headers = {"authorization": f"Bearer {stack.keys.token}", "content-type": "application/json"}
    with httpx.Client(timeout=5) as client:
        answers = [client.post(stack.url(listener), content=BODY, headers=headers) for _ in range(20)]
        if {a.status_code for a in answers} != {200} or any("choices" not in a.json() for a in answers):
            raise RuntimeError(f"{listener}: expected only 200 with choices, got {[a.status_code for a in answers]}")
        head, payload, sig = stack.keys.token.split(".")
        bad = {**headers, "authorization": f"Bearer {head}.{payload}.{sig[::-1]}"}
        if (status := client.post(stack.url(listener), content=BODY, headers=bad).status_code) != 401:
            raise RuntimeError(f"{listener}: a tampered key got {status}, not 401: auth is not on")


def own(run: gateway.GatewayRun) -> list[float]:
    """Envoy, authz (every process), Redis µs per request."""
    return [run.cpu_us_per_request(s) for s in ("envoy", "authz", "redis")]


def table(runs: list[gateway.GatewayRun]) -> list[str]:
    """Every run, then each after against the before just ahead of it, then the medians of the ratios."""
    lines = ["| run | req/s | p50 ms | p99 ms | CPU µs/req: Envoy | authz | Redis | D sum | other busy cores before |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        parts = own(r)
        lines.append(f"| {r.label} {r.name} | {r.result.rps:,.0f} | {r.result.p50_ms:.2f} | {r.result.p99_ms:.2f} | "
                     + " | ".join(f"{p:.0f}" for p in parts) + f" | **{sum(parts):.0f}** | {r.busy_before:.2f} |")
    pairs = [(runs[i], runs[i + 1]) for i in range(0, len(runs) - 1, 2)]
    ratios = {name: sorted(own(a)[n] / max(1.0, own(b)[n]) for b, a in pairs)
              for n, name in enumerate(("Envoy", "authz", "Redis"))}
    sums = sorted(sum(own(a)) / max(1.0, sum(own(b))) for b, a in pairs)
    lines += ["", "After / before, per pair (CPU per request): " + "; ".join(
        f"round {k}: D {sum(own(a)) / max(1.0, sum(own(b))):.2f} (Envoy {own(a)[0] / max(1.0, own(b)[0]):.2f}, "
        f"authz {own(a)[1] / max(1.0, own(b)[1]):.2f}, Redis {own(a)[2] / max(1.0, own(b)[2]):.2f})"
        for k, (b, a) in enumerate(pairs, 1)),
        "Median ratio: D " + f"{sums[len(sums) // 2]:.2f}, "
        + ", ".join(f"{name} {values[len(values) // 2]:.2f}" for name, values in ratios.items())]
    return lines


def stages(tree: Path, requests: int) -> dict[str, float]:
    """`bench.authz_stages` run from `tree`: CPU µs per request of each stage."""
    done = subprocess.run([sys.executable, "-c", STAGES.format(tree=str(tree), requests=requests)],
                          capture_output=True, text=True, check=True, cwd=tree)
    rows = [line.strip("|").split("|") for line in done.stdout.splitlines() if line.startswith("| ")]
    return {name.strip(): float(value) for name, value in rows[1:]}


def in_process(before: Path, rounds: int, requests: int, rev: str) -> list[str]:
    """authz_stages before and after, alternating; the table of medians and their ratios."""
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(rounds):
        runs["before"].append(stages(before, requests))
        runs["after"].append(stages(REPO, requests))

    def median(side: str, stage: str) -> float:
        values = sorted(run[stage] for run in runs[side])
        return values[len(values) // 2]

    lines = [f"| stage (in process, CPU µs/request, median of {rounds}) | before ({rev}) | after | after / before |",
             "|---|---:|---:|---:|"]
    for stage in runs["after"][0]:
        if stage in runs["before"][0]:
            b, a = median("before", stage), median("after", stage)
            lines.append(f"| {stage} | {b:.1f} | {a:.1f} | {a / max(b, 0.01):.2f} |")
    return [*lines, "", *per_round(runs["before"], runs["after"])]


def per_round(before: list[dict[str, float]], after: list[dict[str, float]]) -> list[str]:
    """Each round's after / before of each stage (the two ran back to back), and the median of those ratios."""
    lines = ["| stage: after / before | " + " | ".join(f"round {n}" for n in range(1, len(after) + 1))
             + " | median |", "|---|" + "---:|" * (len(after) + 1)]
    for stage in (s for s in after[0] if s in before[0]):
        ratios = [a[stage] / max(b[stage], 0.01) for b, a in zip(before, after, strict=True)]
        lines.append(f"| {stage} | " + " | ".join(f"{r:.2f}" for r in ratios)
                     + f" | {sorted(ratios)[len(ratios) // 2]:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Measure before and after alternately; print (and with --record append) the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("--before", required=True, help="the git revision to compare the working tree with")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--in-process", action="store_true", help="authz's decision and handler only (no stack)")
    parser.add_argument("--requests", type=int, default=3000, help="requests per stage (--in-process)")
    parser.add_argument("--note", default="")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="dynaseal-ab-"))
    tree = export(args.before, directory / "before-tree")
    if args.in_process:
        lines = [*results.header(f"python -m bench.ab --before {args.before} --in-process --rounds {args.rounds}",
                                 "bench.authz_stages from each tree in turn"), *([args.note, ""] if args.note else []),
                 "### authz in process before and after", "",
                 *in_process(tree, args.rounds, args.requests, args.before)]
        return results.publish(lines, args.record)
    runs = []
    with AbStack(directory, tree) as stack:
        check(stack, "s_before")
        check(stack, "s_dynaseal")
        script = wrk.write_script(directory, BODY, stack.keys.token)
        for n in range(1, args.rounds + 1):
            for label, listener, name in (("before", "s_before", f"D at {args.before}"),
                                          ("after", "s_dynaseal", "D, working tree")):
                runs.append(gateway.measure(stack, script, f"{label}{n}", listener, name, args.seconds,
                                            args.connections, args.warmup))
    command = f"python -m bench.ab --before {args.before} --seconds {args.seconds:.0f} --rounds {args.rounds}"
    lines = [*results.header(command, f"wrk -t2 -c{args.connections} {args.seconds:.0f} s after {args.warmup:.0f} s "
                             "warm-up; before and after alternate in one stack"),
             *([args.note, ""] if args.note else []),
             "### D before and after (gateway listener, in front of the mock)", "", *table(runs)]
    return results.publish(lines, args.record)


if __name__ == "__main__":
    raise SystemExit(main())
