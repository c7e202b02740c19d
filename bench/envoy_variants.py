"""What Envoy's side of ext_authz costs, setting by setting: B, C and C's ext_authz variants in one run.

`python -m bench envoy`: the variants are listeners of the bench Envoy (`envoy_bench.VARIANTS`),
each the gateway's ext_authz filter with one change, all calling the same authz. Reported like the
gateway table, plus Envoy's CPU per request against B's (the goal: C ≤ 1.5 × B).
"""

from __future__ import annotations

import itertools

from bench import envoy_bench, gateway, results, wrk
from bench.fixture import BODY
from bench.harness import BenchStack

# What-if authz for the attribution of Envoy's cost: every allow a bare OK, without the header
# mutations and dynamic metadata the gateway needs (measurement only: nothing would be billed).
BARE_OK = ("import authz_service.envoy_adapter as _a\n"
           "_bare = _a.CheckResponse(status=_a._OK).SerializeToString()\n"
           "_a.allow_response = lambda decision: _a.CheckResponse.FromString(_bare)")


def run(stack: BenchStack, seconds: float, connections: int, warmup_s: float) -> list[gateway.GatewayRun]:
    """B, then for each variant C and the variant back to back (the machine drifts: each variant is
    compared with the C measured just before it), then C with a bare-OK authz, on one stack."""
    gateway.check_sample(stack)
    script = wrk.write_script(stack.directory, BODY, stack.keys.token)

    def measure(label: str, listener: str, name: str) -> gateway.GatewayRun:
        return gateway.measure(stack, script, label, listener, name, seconds, connections, warmup_s)

    runs = [measure("B", "b_jwt", "Envoy jwt_authn")]
    for n, (variant, what) in enumerate(envoy_bench.VARIANTS.items(), 1):
        runs += [measure(f"C{n}", "c_dynaseal", "C, the template's ext_authz"), measure(variant, variant, what)]
    server = ("--server", stack.authz_server) if stack.authz_server else ()
    runs.append(measure("C9", "c_dynaseal", "C, the template's ext_authz"))
    stack.restart_authz(BARE_OK, server)
    runs.append(measure("c_bare", "c_dynaseal", "C with authz answering a bare OK: no header mutations, "
                        "no metadata (measurement only)"))
    stack.restart_authz("", server)
    return runs


def table(runs: list[gateway.GatewayRun]) -> list[str]:
    """The gateway table, Envoy CPU relative to B, and each variant's Envoy CPU relative to the C before it."""
    lines = [*results.gateway_table(runs), ""]
    b = next((r for r in runs if r.label == "B"), None)
    if b is not None:
        base = b.cpu_us_per_request("envoy")
        lines.append("Envoy CPU per request relative to B: " + ", ".join(
            f"{r.label} {r.cpu_us_per_request('envoy') / base:.2f}×" for r in runs if r.label != "B"))
    pairs = [(before, after) for before, after in itertools.pairwise(runs)
             if before.label.startswith("C") and after.label.startswith("c_")]
    if pairs:
        lines += ["", "Each variant against the C just before it (Envoy CPU µs/req, req/s): " + "; ".join(
            f"{after.label} {after.cpu_us_per_request('envoy'):.0f} vs {before.cpu_us_per_request('envoy'):.0f} "
            f"({after.cpu_us_per_request('envoy') / max(1.0, before.cpu_us_per_request('envoy')) - 1:+.0%}), "
            f"{after.result.rps / before.result.rps - 1:+.0%} req/s" for before, after in pairs)]
    return lines
