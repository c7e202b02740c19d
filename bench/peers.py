"""Dynaseal beside the other gateways: one command, one run, the same mock, client and request.

`python -m bench peers`: wrk drives, in turn, Envoy without auth (U, the gateway listener with its
ext_authz filter removed), the real gateway (D: Envoy + authz + Redis), TensorZero's gateway (T),
the Portkey gateway (P) and LiteLLM's proxy (L), each in front of the same mock upstream. The mock
is a Python server and caps requests/s for the fast ones, so the comparison is the CPU each proxy's
own processes spend per request (read from /proc around the measured seconds).

None of the peers is a project dependency; each is optional and skipped, with the reason, when absent:
- TensorZero: `python -m venv .venv-peers && .venv-peers/bin/pip install tensorzero` (or
  `$TENSORZERO_PYTHON`, an interpreter that has it). Its Rust gateway, embedded in the wheel, is
  served over HTTP by `bench/tensorzero_serve.py` with observability off (no ClickHouse).
- Portkey: `npm install --prefix bench/portkey` (bench/portkey/package.json pins the version; or
  `$PORTKEY_GATEWAY`, the path of its `build/start-server.js`), run headless with `node`.
- LiteLLM: see `bench/litellm_bench.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson

from bench import gateway, litellm_bench, wrk
from bench.fixture import BODY, MODEL, PROVIDER_KEY, PROVIDER_KEY_ENV
from bench.harness import HOST, BenchStack, free_ports
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import ServiceSpec, StartupError

REPO = Path(__file__).resolve().parent.parent
PEERS_VENV = REPO / ".venv-peers"
PORTKEY_DIR = Path(__file__).resolve().parent / "portkey"
PORTKEY_ENTRY = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
TENSORZERO_SERVE = Path(__file__).resolve().parent / "tensorzero_serve.py"
# TensorZero's OpenAI-compatible endpoint names a model it knows through this prefix.
TENSORZERO_MODEL = f"tensorzero::model_name::{MODEL}"
SAMPLE = 20

# Which processes are each proxy's own, and what each proxy checks on a request.
OWN = {"U": ("envoy",), "D": ("envoy", "authz", "redis"), "T": ("tensorzero",), "P": ("portkey",),
       "L": ("litellm",)}
CHECKS = {"U": "nothing", "D": "key, limits, reservation, metering", "T": "nothing", "P": "nothing",
          "L": "one static key"}


@dataclass(frozen=True)
class Target:
    """A started peer: its label, the service whose CPU is its own, the URL and wrk script to drive."""

    label: str
    name: str
    url: str
    script: Path
    headers: dict[str, str]
    body: bytes


def site_version(python: Path, dist: str) -> str | None:
    """The version of `dist` installed for that interpreter's venv (from its metadata), or None."""
    for found in (python.parent.parent / "lib").glob(f"python*/site-packages/{dist}-*.dist-info"):
        return found.name.removeprefix(f"{dist}-").removesuffix(".dist-info")
    return None


def tensorzero_python() -> tuple[Path | None, str]:
    """An interpreter with the `tensorzero` wheel, or (None, why not)."""
    for candidate in (os.environ.get("TENSORZERO_PYTHON"), str(PEERS_VENV / "bin" / "python")):
        if candidate and Path(candidate).exists() and site_version(Path(candidate), "tensorzero"):
            return Path(candidate), ""
    return None, ("TensorZero is not installed (`python -m venv .venv-peers && .venv-peers/bin/pip install "
                  "tensorzero`, or set $TENSORZERO_PYTHON): not measured")


def portkey_entry() -> tuple[tuple[str, Path] | None, str]:
    """(node, the Portkey gateway's start-server.js), or (None, why not)."""
    node = shutil.which("node")
    entry = Path(os.environ.get("PORTKEY_GATEWAY") or PORTKEY_ENTRY)
    if node is None:
        return None, "Portkey needs Node.js (`node` is not on PATH): not measured"
    if not entry.exists():
        return None, ("the Portkey gateway is not installed (`npm install --prefix bench/portkey`, or set "
                      "$PORTKEY_GATEWAY to its build/start-server.js): not measured")
    return (node, entry), ""


def portkey_version(entry: Path) -> str:
    """The installed @portkey-ai/gateway version."""
    try:
        return str(json.loads((entry.parent.parent / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def tensorzero_config(mock_port: int) -> str:
    """TensorZero's config: one model on the mock, observability off (no ClickHouse, no Postgres)."""
    return (
        "[gateway.observability]\nenabled = false\n\n"
        f'[models."{MODEL}"]\nrouting = ["mock"]\n\n'
        f'[models."{MODEL}".providers.mock]\ntype = "openai"\nmodel_name = "{MODEL}"\n'
        f'api_base = "http://{HOST}:{mock_port}/v1/"\napi_key_location = "env::{PROVIDER_KEY_ENV}"\n'
    )


def tensorzero_body() -> bytes:
    """The bench body, its model named the way TensorZero's OpenAI-compatible endpoint takes it."""
    body = orjson.loads(BODY)
    body["model"] = TENSORZERO_MODEL
    return orjson.dumps(body)


def start_tensorzero(stack: BenchStack, python: Path) -> str:
    """Start TensorZero's gateway in its own process; its chat-completions URL."""
    directory = stack.directory / "tensorzero"
    directory.mkdir(exist_ok=True)
    config = directory / "tensorzero.toml"
    config.write_text(tensorzero_config(stack.ports["mock_upstream"]))
    url_file = directory / "base_url"
    url_file.unlink(missing_ok=True)

    def ready() -> bool:
        # The URL is published once the gateway listens (it has no health route in this mode).
        if not url_file.exists():
            return False
        address = urlsplit(url_file.read_text().strip())
        try:
            socket.create_connection((address.hostname or HOST, address.port or 80), timeout=0.5).close()
        except OSError:
            return False
        return True

    spec = ServiceSpec("tensorzero", [str(python), str(TENSORZERO_SERVE), str(config), str(url_file)],
                       "tensorzero", ready, env={"RUST_LOG": "warn"}, ready_timeout_s=60)
    stack.services["tensorzero"] = stack.supervisor.start(spec)
    return url_file.read_text().strip().rstrip("/") + "/chat/completions"


def start_portkey(stack: BenchStack, node: str, entry: Path) -> str:
    """Start the Portkey gateway, headless, one Node process; its chat-completions URL."""
    port = free_ports(1)[0]
    spec = ServiceSpec("portkey", [node, str(entry), "--headless", f"--port={port}"], f"http://{HOST}:{port}",
                       lambda: http_ok(f"http://{HOST}:{port}/"), ready_timeout_s=60)
    stack.services["portkey"] = stack.supervisor.start(spec)
    return f"http://{HOST}:{port}/v1/chat/completions"


def write_script(directory: Path, body: bytes, authorization: str, extra: dict[str, str]) -> Path:
    """wrk's script for one peer: the bench request, with the peer's own headers added."""
    directory.mkdir(parents=True, exist_ok=True)
    path = wrk.write_script(directory, body, authorization)
    # The spaces matter: `[[` would open a Lua long string.
    lines = "".join(f"wrk.headers[ {wrk.lua_string(k)} ] = {wrk.lua_string(v)}\n" for k, v in extra.items())
    path.write_text(lines + path.read_text())
    return path


def check_peer(target: Target) -> None:
    """The peer answers the request with 200 and a completion from the mock, every time of a sample."""
    with httpx.Client(timeout=30) as client:
        for _ in range(SAMPLE):
            answer = client.post(target.url, content=target.body, headers=target.headers)
            if answer.status_code != 200 or "choices" not in answer.json():
                raise RuntimeError(f"{target.label}: expected 200 with choices, got {answer.status_code}: "
                                   f"{answer.text[:300]}")


def prepare(stack: BenchStack) -> tuple[list[Target], list[str]]:
    """Start every installed peer and check it; the targets, and a line for each peer skipped."""
    targets: list[Target] = []
    skipped: list[str] = []
    bearer = {"authorization": f"Bearer {stack.keys.token}", "content-type": "application/json"}
    python, why = tensorzero_python()
    if python is None:
        skipped.append(f"T TensorZero: {why}")
    else:
        try:
            url = start_tensorzero(stack, python)
            body = tensorzero_body()
            # The same Authorization header as D sends (TensorZero checks none); only the model name differs.
            script = write_script(stack.directory / "tensorzero", body, stack.keys.token, {})
            targets.append(Target("T", f"TensorZero {site_version(python, 'tensorzero')} (embedded gateway over "
                                  "HTTP, observability off)", url, script, bearer, body))
        except StartupError as exc:
            skipped.append(f"T TensorZero: did not start ({str(exc)[:300]})")
    found, why = portkey_entry()
    if found is None:
        skipped.append(f"P Portkey: {why}")
    else:
        node, entry = found
        try:
            url = start_portkey(stack, node, entry)
            # Portkey takes the provider and its key from the request: it checks no key of its own.
            extra = {"x-portkey-provider": "openai",
                     "x-portkey-custom-host": f"http://{HOST}:{stack.ports['mock_upstream']}/v1"}
            script = write_script(stack.directory / "portkey", BODY, PROVIDER_KEY, extra)
            headers = {"authorization": f"Bearer {PROVIDER_KEY}", "content-type": "application/json", **extra}
            targets.append(Target("P", f"Portkey gateway {portkey_version(entry)} (node, --headless)", url, script,
                                  headers, BODY))
        except StartupError as exc:
            skipped.append(f"P Portkey: did not start ({str(exc)[:300]})")
    command = litellm_bench.litellm_command()
    if command is None:
        skipped.append("L LiteLLM: not installed (`pip install 'litellm[proxy]'` into .venv-litellm): not measured")
    else:
        try:
            url = litellm_bench.start_litellm(stack, command)
            litellm_bench.check_litellm(url)
            script = write_script(stack.directory / "litellm", BODY, litellm_bench.MASTER_KEY, {})
            headers = {"authorization": f"Bearer {litellm_bench.MASTER_KEY}", "content-type": "application/json"}
            targets.append(Target("L", f"LiteLLM {litellm_bench.litellm_version(command)} proxy, master key",
                                  url, script, headers, BODY))
        except StartupError as exc:
            skipped.append(f"L LiteLLM: did not start ({str(exc)[:300]})")
    for target in targets:
        check_peer(target)
    return targets, skipped


def run(stack: BenchStack, seconds: float, connections: int, warmup_s: float) -> tuple[list[gateway.GatewayRun],
                                                                                       list[str]]:
    """U, D and every installed peer, measured in turn in one stack; the runs and the skipped peers."""
    targets, skipped = prepare(stack)
    gateway.check_sample(stack)
    ours = wrk.write_script(stack.directory, BODY, stack.keys.token)
    runs = [gateway.measure(stack, ours, "U", "s_none", "Envoy, no auth (the gateway listener without ext_authz)",
                            seconds, connections, warmup_s),
            gateway.measure(stack, ours, "D", "s_dynaseal", "Dynaseal (Envoy + ext_authz + Redis + access log)",
                            seconds, connections, warmup_s)]
    for target in targets:
        stack.other_urls[target.label] = target.url
        runs.append(gateway.measure(stack, target.script, target.label, target.label, target.name, seconds,
                                    connections, warmup_s))
    return runs, skipped


def own_cpu(run: gateway.GatewayRun) -> float:
    """CPU µs per request of the proxy's own processes."""
    return sum(run.cpu_us_per_request(s) for s in OWN.get(run.label, ()))


def table(runs: list[gateway.GatewayRun], skipped: list[str]) -> list[str]:
    """Requests/s, latency, own CPU per request (and D's parts), ratios to TensorZero and to D."""
    lines = ["| proxy (in front of the same mock) | checks | req/s | p50 ms | p99 ms | own CPU µs/req | "
             "Envoy | authz | Redis | mock | wrk | other busy cores before |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        res = r.result
        parts = " | ".join(f"{r.cpu_us_per_request(s):.0f}" if s in OWN.get(r.label, ()) else "–"
                           for s in ("envoy", "authz", "redis"))
        lines.append(f"| {r.label} {r.name} | {CHECKS.get(r.label, '')} | {res.rps:,.0f} | {res.p50_ms:.2f} | "
                     f"{res.p99_ms:.2f} | **{own_cpu(r):,.0f}** | {parts} | {r.cpu_us_per_request('mock-llm'):.0f} | "
                     f"{r.cpu_us_per_request('wrk'):.0f} | {r.busy_before:.2f} |")
    by = {r.label: r for r in runs}
    lines.append("")
    if "D" in by:
        d = own_cpu(by["D"])
        ratios = [f"{label}: {own_cpu(by[label]) / max(1.0, d):.2f}×" for label in ("U", "T", "P", "L") if label in by]
        lines.append(f"Own CPU per request relative to D ({d:,.0f} µs): " + ", ".join(ratios) + ".")
        if "T" in by:
            t = own_cpu(by["T"])
            lines.append(f"D / T = {d / max(1.0, t):.2f} (goal ≤ 2: D ≤ 2 × TensorZero's pass-through).")
    lines += [f"- skipped: {line}" for line in skipped]
    return lines


def loadavg() -> str:
    """The machine's load average (other work shares its cores)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} at {time.strftime('%H:%M:%S', time.gmtime())} UTC"
