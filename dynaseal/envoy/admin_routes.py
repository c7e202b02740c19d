"""Envoy routes sending the seed's backend registration on the gateway's port to the admin service.

`POST /api/v1/user/login`, `POST /api/v1/api_key/create` and `GET /api/v1/user/me` are the seed's LLM
server routes a business backend calls (client/get_llm_api.py). They carry no dynamic key, so ext_authz
is off on them; the admin service authenticates them itself. Nothing else reaches the admin service
through Envoy: the operator's `/admin/v1` stays on its own port.
"""

from __future__ import annotations

from dynaseal.config import DynasealConfig
from dynaseal.envoy.upstream_clusters import is_ip

CLUSTER = "dynaseal_admin"
SEED_ROUTES = (("/api/v1/user/login", "POST"), ("/api/v1/api_key/create", "POST"), ("/api/v1/user/me", "GET"))


def routes(cfg: DynasealConfig, indent: int = 14) -> str:
    """The route entries (each line indented, ending in a newline); empty without an `admin` section."""
    if cfg.admin is None:
        return ""
    pad = " " * indent
    lines: list[str] = []
    for path, method in SEED_ROUTES:
        lines += [
            f'{pad}- match: {{ path: {path}, headers: [{{ name: ":method", string_match: {{ exact: {method} }} }}] }}',
            f"{pad}  route: {{ cluster: {CLUSTER}, timeout: 15s }}",
            f"{pad}  typed_per_filter_config:",
            f"{pad}    envoy.filters.http.ext_authz:",
            f'{pad}      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute',
            f"{pad}      disabled: true",
        ]
    return "\n".join(lines) + "\n"


def cluster(cfg: DynasealConfig, address: str) -> str:
    """The admin service's cluster (indented for `clusters:`), empty without an `admin` section.

    `admin.service_host` (a compose service or Kubernetes Service name) wins over `address` (the gateway's own);
    a name is resolved by DNS, as the authz cluster's is."""
    if cfg.admin is None:
        return ""
    address = cfg.admin.service_host or address
    discovery = "STATIC" if is_ip(address) else "STRICT_DNS"
    port = cfg.gateway.ports.admin
    return (f"  - name: {CLUSTER}\n    type: {discovery}\n    connect_timeout: 1s\n    load_assignment:\n"
            f"      cluster_name: {CLUSTER}\n      endpoints:\n      - lb_endpoints:\n"
            f"        - endpoint: {{ address: {{ socket_address: {{ address: {address}, port_value: {port} }} }} }}\n")
