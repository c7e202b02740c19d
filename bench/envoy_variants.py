"""What Envoy's side of ext_authz costs, setting by setting: B, C and C's ext_authz variants in one run.

`python -m bench envoy`: the variants are listeners of the bench Envoy (`envoy_bench.VARIANTS`),
each the gateway's ext_authz filter with one change, all calling the same authz. Reported like the
gateway table, plus Envoy's CPU per request against B's (the goal: C ≤ 1.5 × B).
"""

from __future__ import annotations

from bench import envoy_bench, gateway, results, wrk
from bench.fixture import BODY
from bench.harness import BenchStack


def run(stack: BenchStack, seconds: float, connections: int, warmup_s: float) -> list[gateway.GatewayRun]:
    """B, C, then every variant, then C again (a drift check), on one stack."""
    gateway.check_sample(stack)
    script = wrk.write_script(stack.directory, BODY, stack.keys.token)
    plan = [("B", "b_jwt", "Envoy jwt_authn"), ("C", "c_dynaseal", "the gateway's ext_authz, as in the template"),
            *((name, name, what) for name, what in envoy_bench.VARIANTS.items()),
            ("C2", "c_dynaseal", "C again, after the variants")]
    return [gateway.measure(stack, script, label, listener, name, seconds, connections, warmup_s)
            for label, listener, name in plan]


def table(runs: list[gateway.GatewayRun]) -> list[str]:
    """The gateway table plus Envoy CPU relative to B."""
    lines = [*results.gateway_table(runs), ""]
    b = next((r for r in runs if r.label == "B"), None)
    if b is not None:
        base = b.cpu_us_per_request("envoy")
        lines.append("Envoy CPU per request relative to B: " + ", ".join(
            f"{r.label} {r.cpu_us_per_request('envoy') / base:.2f}×" for r in runs if r.label != "B"))
    return lines
