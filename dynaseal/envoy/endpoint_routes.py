"""Envoy routes of the endpoints beside chat completions, rendered from the one list authz serves.

Each route names the format its upstream must speak in its metadata (`dynaseal.format`), the
name upstreams declare in `formats:`. These routes serve tenants without routes: every format goes to
the gateway's one upstream, which must speak them all (the bundled mock does). A routed tenant's request
carries authz's route header and matches its chain's route for the format first
(dynaseal.envoy.upstream_clusters).
"""

from __future__ import annotations

from dynaseal.policy.endpoints import PATHS


def endpoint_routes(upstream_prefix: str, indent: int, cluster: str, timeout: str, idle_timeout: str,
                    host_rewrite: str) -> str:
    """The YAML route entries (each line indented by `indent` spaces, the first unindented)."""
    pad = " " * indent
    lines: list[str] = []
    for path, endpoint in PATHS.items():
        upstream_path = upstream_prefix + path[path.index("/v1/") + 3:]
        lines += [
            f'{pad}- match: {{ path: {path}, headers: [{{ name: ":method", string_match: {{ exact: POST }} }}] }}',
            f"{pad}  metadata: {{ filter_metadata: {{ dynaseal: {{ format: {endpoint.format}, "
            f"endpoint: {endpoint.name} }} }} }}",
            f"{pad}  route: {{ cluster: {cluster}, timeout: {timeout}, idle_timeout: {idle_timeout}, "
            f"prefix_rewrite: {upstream_path}, {host_rewrite} }}",
        ]
    return "\n".join(lines).lstrip()
