"""Render the Envoy config from the gateway template: every contract in it comes from `dynaseal.contracts`."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from string import Template

from dynaseal.config import DynasealConfig
from dynaseal.contracts import usage_record
from dynaseal.envoy import admin_routes, local_replies, upstream_clusters
from dynaseal.envoy.endpoint_routes import endpoint_routes
from dynaseal.origin_patterns import origin_regex

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
GATEWAY_TEMPLATE = TEMPLATE_DIR / "gateway.yaml.tmpl"
EDGE_SECRET = "edge_certificate"  # the SDS secret the client listener serves
# The control keys the gateway's Lua filter uses (its per-try twin's are upstream_clusters.UPSTREAM_LUA_KEYS).
GATEWAY_LUA_KEYS = ("AUTHZ", "ROUTE", "CONTENT", "BODY_PREFIX", "STRIP_USAGE", "CAPTURE_CONTENT", "GIVE_BACK",
                    "PROVIDER_HEADERS", "TENANT", "ROUTE_OVERDUE", "ROUTE_GIVEN_BACK", "CONTENT_BODY",
                    "CONTENT_TRUNCATED", "GIVE_BACK_HEADER", "GIVE_BACK_PATH", "REQUEST_ID_HEADER", "GATEWAY_CLUSTER")


def upstream_of(cfg: DynasealConfig) -> upstream_clusters.Endpoint:
    """The configured upstream, or the bundled mock on its local port."""
    gw = cfg.gateway
    return upstream_clusters.split_base_url(gw.upstream.base_url or cfg.local.mock_upstream_url(gw.host))


def _tls_block(upstream: upstream_clusters.Endpoint, ca_file: str) -> str:
    if upstream.scheme != "https":
        return ""
    return (
        "    transport_socket:\n"
        "      name: envoy.transport_sockets.tls\n"
        "      typed_config:\n"
        '        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n'
        f"        sni: {upstream.host}\n"
        "        common_tls_context:\n"
        "          validation_context:\n"
        f"            trusted_ca: {{ filename: {ca_file} }}\n"
        f"            match_typed_subject_alt_names: [{{ san_type: DNS, matcher: {{ exact: {upstream.host} }} }}]\n"
    )


def _listener_tls_block(cfg: DynasealConfig) -> str:
    """The client listener's TLS: the certificate by file-based SDS, HTTP/2 and HTTP/1.1 by ALPN."""
    tls = cfg.gateway.tls
    if tls is None:
        return ""
    return (
        "      transport_socket:\n"
        "        name: envoy.transport_sockets.tls\n"
        "        typed_config:\n"
        '          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n'
        "          common_tls_context:\n"
        "            alpn_protocols: [h2, http/1.1]\n"
        "            tls_params: { tls_minimum_protocol_version: TLSv1_2 }\n"
        "            tls_certificate_sds_secret_configs:\n"
        f"            - name: {EDGE_SECRET}\n"
        f"              sds_config: {{ resource_api_version: V3, path_config_source: {{ path: {tls.sds_file} }} }}\n"
    )


def tls_sds(cfg: DynasealConfig) -> str | None:
    """The SDS file `gateway.tls.sds_file` must hold (None without TLS). Envoy watches the files it
    names: replacing them (a rename, or a Kubernetes secret update) serves the new certificate to
    new connections without a restart."""
    tls = cfg.gateway.tls
    if tls is None:
        return None
    cert_dir = str(PurePosixPath(tls.cert_file).parent)
    # One directory for both: watch it, so a cert/key pair swapped together (Kubernetes' ..data
    # symlink) is read as a pair.
    watched = (f"    watched_directory: {{ path: {cert_dir} }}\n"
               if cert_dir == str(PurePosixPath(tls.key_file).parent) else "")
    return (
        "# Rendered by `dynaseal envoy-config` from gateway.tls: the edge certificate, by file.\n"
        "resources:\n"
        '- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n'
        f"  name: {EDGE_SECRET}\n"
        "  tls_certificate:\n"
        f"    certificate_chain: {{ filename: {tls.cert_file} }}\n"
        f"    private_key: {{ filename: {tls.key_file} }}\n"
        f"{watched}"
    )


def render(cfg: DynasealConfig, access_log: Path, authz_host: str | None = None,
           template: Path = GATEWAY_TEMPLATE) -> str:
    """The Envoy YAML for this config."""
    gw = cfg.gateway
    upstream = upstream_of(cfg)
    default_port = 443 if upstream.scheme == "https" else 80
    host_header = upstream.host if upstream.port == default_port else f"{upstream.host}:{upstream.port}"
    limits = gw.limits
    return Template(template.read_text()).substitute(
        host=gw.host,
        admin_port=gw.ports.envoy_admin,
        envoy_port=gw.ports.envoy,
        access_log=str(access_log),
        # The access log's fields come from the one usage-record definition (dynaseal.contracts.usage_record).
        access_log_json_format=usage_record.json_format_yaml(indent=16),
        # So do the usage rules that fill its token fields, and the Lua filter's control keys.
        sse_usage_rules=usage_record.usage_rules_yaml(indent=20, sse=True),
        json_usage_rules=usage_record.usage_rules_yaml(indent=16, sse=False),
        lua_control_keys=usage_record.lua_constants(GATEWAY_LUA_KEYS).replace("\n", "\n" + " " * 18),
        lua_not_amendable=local_replies.not_amendable_body(),
        # The gateway's own names Envoy and authz share (dynaseal.contracts.usage_record).
        request_id_header=usage_record.REQUEST_ID_HEADER,
        authz_namespace=usage_record.AUTHZ_NAMESPACE,
        give_back_path=usage_record.GIVE_BACK_PATH,
        gateway_cluster=usage_record.GATEWAY_CLUSTER,
        # Envoy's own replies: codes, statuses, types and messages from the error registry.
        local_reply_mappers=local_replies.mappers_yaml(12, gw.max_body_bytes),
        max_body_bytes=gw.max_body_bytes,
        authz_timeout="2s",
        authz_host=authz_host or gw.host,
        authz_port=gw.ports.authz,
        upstream_chat_path=f"{upstream.path_prefix}/chat/completions",
        upstream_models_path=f"{upstream.path_prefix}/models",
        xff_trusted_hops=gw.xff_trusted_hops,
        max_connections=limits.max_connections,
        request_headers_timeout=f"{limits.request_headers_timeout_s}s",
        request_timeout=f"{limits.request_timeout_s}s",
        idle_timeout=f"{limits.idle_timeout_s}s",
        stream_idle_timeout=f"{limits.stream_idle_timeout_s}s",
        max_stream_duration=f"{limits.max_stream_duration_s}s",
        host_rewrite=f"host_rewrite_literal: {host_header!r}".replace("'", '"'),
        upstream_discovery="STATIC" if upstream_clusters.is_ip(upstream.host) else "LOGICAL_DNS",
        upstream_address=upstream.host,
        upstream_port=upstream.port,
        upstream_tls=_tls_block(upstream, gw.upstream.ca_file),
        cors_origins=cors_origin_matchers(cfg),
        # Named upstreams and tenants' routes (empty without routes): authz's route header picks one, so the
        # route is chosen again after ext_authz.
        routed_routes=upstream_clusters.routes(cfg, f"{limits.max_stream_duration_s}s",
                                               f"{limits.stream_idle_timeout_s}s"),
        routed_clusters=upstream_clusters.clusters(cfg),
        clear_route_cache="true" if upstream_clusters.used_chains(cfg) else "false",
        self_address=gw.host if upstream_clusters.is_ip(gw.host) and gw.host not in ("0.0.0.0", "::") else "127.0.0.1",
        endpoint_routes=endpoint_routes(upstream.path_prefix, 14, "upstream_llm", f"{limits.max_stream_duration_s}s",
                                        f"{limits.stream_idle_timeout_s}s",
                                        f"host_rewrite_literal: {host_header!r}".replace("'", '"')),
        listener_tls=_listener_tls_block(cfg),
        # The seed's backend registration, to the admin service without ext_authz (dynaseal.envoy.admin_routes).
        admin_routes=admin_routes.routes(cfg),
        admin_cluster=admin_routes.cluster(
            cfg, gw.host if upstream_clusters.is_ip(gw.host) and gw.host not in ("0.0.0.0", "::") else "127.0.0.1"),
        # File-based SDS needs the node named (any name: no management server is involved).
        edge_node="node: { id: dynaseal-gateway, cluster: dynaseal }\n" if gw.tls else "",
    )


def cors_origin_matchers(cfg: DynasealConfig) -> str:
    """Envoy string matchers (a JSON list, valid YAML) for the union of every tenant's CORS origins."""
    origins = sorted({o for t in cfg.tenants if t.cors for o in t.cors.origins})
    matchers = [{"safe_regex": {"regex": origin_regex(o)}} if "://*." in o else {"exact": o} for o in origins]
    return json.dumps(matchers)
