"""The Envoy config of `bench.http_authz`: one listener per ext_authz transport, the rest identical.

Every listener is the same minimal chain, `[ext_authz] → router`, in front of the same upstream (the
mock LLM, or a `direct_response` with `--upstream direct`), so two listeners differ only in how
Envoy asks for the decision:

| listener | ext_authz |
|---|---|
| `u` | none |
| `g_grpcio`, `g_native` | `grpc_service` (envoy_grpc, HTTP/2): a CheckRequest with every header and the raw body |
| `h_raw`, `h_uvicorn` | `http_service` (HTTP/1.1 keep-alive): every header and the body; one answer header goes on |

Each route echoes the header authz added (`x-authz-seen`), so a run can prove the answer reached the
route before it is measured.
"""

from __future__ import annotations

from typing import Any

from bench.null_http_authz import ALLOW_HEADER

HOST = "127.0.0.1"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
SEEN_HEADER = "x-authz-seen"
MAX_BODY_BYTES = 65536
DIRECT_BODY = '{"id":"bench","object":"chat.completion","choices":[]}'
# listener → (ext_authz transport, authz cluster): "grpc", "http" or None.
LISTENERS: dict[str, tuple[str | None, str | None]] = {
    "u": (None, None),
    "g_grpcio": ("grpc", "authz_grpcio"),
    "g_native": ("grpc", "authz_native"),
    "h_raw": ("http", "authz_raw"),
    "h_uvicorn": ("http", "authz_uvicorn"),
}


def ext_authz_filter(transport: str, cluster: str, port: int) -> dict[str, Any]:
    """The ext_authz filter on one transport; what the gateway template sets, where the transport has it."""
    typed: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "failure_mode_allow": False,
        "status_on_error": {"code": "ServiceUnavailable"},
        # pack_as_bytes is what the gateway sets; the HTTP check carries the body as its own body either way.
        "with_request_body": {"max_request_bytes": MAX_BODY_BYTES, "allow_partial_message": False,
                              "pack_as_bytes": True},
    }
    if transport == "grpc":
        typed["grpc_service"] = {"envoy_grpc": {"cluster_name": cluster, "skip_envoy_headers": True},
                                 "timeout": "2s"}
    else:
        # The gRPC check sees every header (authz must, to drop the ones the provider may not get);
        # the HTTP check sends only those allowed, so allow every one for the same work.
        typed["allowed_headers"] = {"patterns": [{"safe_regex": {"regex": ".*"}}]}
        typed["http_service"] = {
            "server_uri": {"uri": f"http://{HOST}:{port}", "cluster": cluster, "timeout": "2s"},
            "authorization_response": {"allowed_upstream_headers": {"patterns": [{"exact": ALLOW_HEADER}]}},
        }
    return {"name": EXT_AUTHZ, "typed_config": typed}


def _cluster(name: str, port: int, http2: bool) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": HOST, "port_value": port}}}}]}]},
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return cluster


def _listener(name: str, port: int, auth: dict[str, Any] | None, direct: bool) -> dict[str, Any]:
    route: dict[str, Any] = {"match": {"prefix": "/"}}
    if direct:
        route["direct_response"] = {"status": 200, "body": {"inline_string": DIRECT_BODY}}
    else:
        route["route"] = {"cluster": "upstream_llm", "timeout": "10s"}
    # Empty (left out) where no authz answered: U, or an answer without the header.
    route["response_headers_to_add"] = [{"header": {"key": SEEN_HEADER, "value": f"%REQ({ALLOW_HEADER})%"}}]
    router = {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    return {
        "name": name,
        "address": {"socket_address": {"address": HOST, "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                     "HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}]},
            "http_filters": [*([auth] if auth else []), router],
        }}]}],
    }


def render(listener_ports: dict[str, int], cluster_ports: dict[str, int], admin_port: int,
           direct: bool) -> dict[str, Any]:
    """The whole bootstrap: `listener_ports` by listener name, `cluster_ports` by cluster name
    (`upstream_llm` and each authz cluster)."""
    listeners = []
    for name, port in listener_ports.items():
        transport, cluster = LISTENERS[name]
        auth = ext_authz_filter(transport, cluster, cluster_ports[cluster]) if transport and cluster else None
        listeners.append(_listener(name, port, auth, direct))
    grpc_clusters = {cluster for transport, cluster in LISTENERS.values() if transport == "grpc"}
    clusters = [_cluster(name, port, http2=name in grpc_clusters) for name, port in cluster_ports.items()]
    return {"admin": {"address": {"socket_address": {"address": HOST, "port_value": admin_port}}},
            "static_resources": {"listeners": listeners, "clusters": clusters}}
