"""Dynaseal beside LiteLLM's proxy: the same request, client and mock upstream, in one run.

`python -m bench litellm`: wrk drives, in turn, the gateway listener without auth (`s_none`), the
real gateway (`s_dynaseal`: ext_authz + Redis + access log + usage filters) and a LiteLLM proxy
with its cheapest offline auth (a master key, no database), each in front of the same mock
upstream. The mock is a Python server too, so requests/s are capped by it for the first two;
CPU per request of each proxy's own processes is the fairer comparison.

LiteLLM is not a project dependency: install it beside the project, e.g.
`python -m venv .venv-litellm && .venv-litellm/bin/pip install 'litellm[proxy]'` (or set
`$LITELLM` to its `litellm` command). Without it this part says so and measures nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import httpx
import yaml

from bench import gateway, wrk
from bench.fixture import BODY, MODEL, PROVIDER_KEY
from bench.harness import HOST, BenchStack, free_ports
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import ServiceSpec

REPO = Path(__file__).resolve().parent.parent
MASTER_KEY = "sk-litellm-bench-master-key-0123456789"


def litellm_command() -> str | None:
    """`$LITELLM`, else `litellm` in the repository's `.venv-litellm` or `.venv-peers`, else beside this
    interpreter (the test extra installs it, without the proxy's own dependencies), else on PATH."""
    for candidate in (os.environ.get("LITELLM"), str(REPO / ".venv-litellm" / "bin" / "litellm"),
                      str(REPO / ".venv-peers" / "bin" / "litellm"), str(Path(sys.executable).parent / "litellm")):
        if candidate and Path(candidate).exists():
            return candidate
    return shutil.which("litellm")


def litellm_version(command: str) -> str:
    """The installed LiteLLM version (read from its venv's metadata)."""
    for dist in (Path(command).resolve().parent.parent / "lib").glob("python*/site-packages/litellm-*.dist-info"):
        return dist.name.removeprefix("litellm-").removesuffix(".dist-info")
    return "unknown"


def start_litellm(stack: BenchStack, command: str) -> str:
    """Start LiteLLM's proxy (master key, one worker) before the stack's mock; its chat URL."""
    port = free_ports(1)[0]
    config = stack.directory / "litellm.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": MODEL, "litellm_params": {
            "model": f"openai/{MODEL}", "api_base": f"http://{HOST}:{stack.ports['mock_upstream']}/v1",
            "api_key": PROVIDER_KEY}}],
        "general_settings": {"master_key": MASTER_KEY},
        "litellm_settings": {"telemetry": False},
    }))
    # The model cost map from the package, not fetched: this bench runs offline.
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    spec = ServiceSpec("litellm", [command, "--config", str(config), "--host", HOST, "--port", str(port)],
                       f"http://{HOST}:{port}", lambda: http_ok(f"http://{HOST}:{port}/health/liveliness"),
                       env=env, ready_timeout_s=120)
    stack.services["litellm"] = stack.supervisor.start(spec)
    return f"http://{HOST}:{port}/v1/chat/completions"


def check_litellm(url: str) -> None:
    """The master key gets 200 from the mock through LiteLLM; another key is refused."""
    headers = {"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
    with httpx.Client(timeout=30) as client:
        ok = client.post(url, content=BODY, headers=headers)
        if ok.status_code != 200 or "choices" not in ok.json():
            raise RuntimeError(f"LiteLLM: expected 200 with choices, got {ok.status_code}: {ok.text[:300]}")
        bad = client.post(url, content=BODY, headers={**headers, "authorization": "Bearer sk-not-the-key"})
        if bad.status_code < 400:
            raise RuntimeError(f"LiteLLM: a wrong key got {bad.status_code}: auth is not on")


def run(stack: BenchStack, seconds: float, connections: int, warmup_s: float) -> tuple[list[gateway.GatewayRun], str]:
    """s_none, s_dynaseal and LiteLLM, each in front of the mock; ([] and why) when LiteLLM is absent."""
    command = litellm_command()
    if command is None:
        return [], ("LiteLLM is not installed (`python -m venv .venv-litellm && .venv-litellm/bin/pip install "
                    "'litellm[proxy]'`): not measured")
    url = start_litellm(stack, command)
    check_litellm(url)
    gateway.check_sample(stack)
    ours = wrk.write_script(stack.directory, BODY, stack.keys.token)
    (stack.directory / "litellm").mkdir(exist_ok=True)
    theirs = wrk.write_script(stack.directory / "litellm", BODY, MASTER_KEY)
    stack.other_urls["litellm"] = url
    runs = [gateway.measure(stack, ours, "U", "s_none", "Envoy, no auth → mock", seconds, connections, warmup_s),
            gateway.measure(stack, ours, "D", "s_dynaseal", "Dynaseal gateway (ext_authz + Redis + access log) → mock",
                            seconds, connections, warmup_s),
            gateway.measure(stack, theirs, "L", "litellm", f"LiteLLM {litellm_version(command)} proxy, master key "
                            "→ mock", seconds, connections, warmup_s)]
    return runs, ""


def table(runs: list[gateway.GatewayRun]) -> list[str]:
    """Requests/s, latency and CPU per request of each proxy's processes, and the D/L ratios."""
    lines = ["| config | req/s | p50 ms | p90 ms | p99 ms | CPU µs/req: Envoy | authz | Redis | LiteLLM | mock | wrk |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        res = r.result
        cpu = " | ".join(f"{r.cpu_us_per_request(s):.0f}" for s in ("envoy", "authz", "redis", "litellm",
                                                                     "mock-llm", "wrk"))
        lines.append(f"| {r.label} {r.name} | {res.rps:,.0f} | {res.p50_ms:.2f} | {res.p90_ms:.2f} | "
                     f"{res.p99_ms:.2f} | {cpu} |")
    by = {r.label: r for r in runs}
    if {"D", "L"} <= by.keys():
        d, lite = by["D"], by["L"]
        ours = sum(d.cpu_us_per_request(s) for s in ("envoy", "authz", "redis"))
        theirs = lite.cpu_us_per_request("litellm")
        lines += ["", f"D/L = {d.result.rps / lite.result.rps:.1f}× the requests/s; the gateway's own CPU per "
                      f"request (Envoy + authz + Redis) {ours:.0f} µs vs LiteLLM's {theirs:.0f} µs "
                      f"({theirs / max(1.0, ours):.1f}×)."]
    return lines
