"""Envoy routes and clusters for named upstreams and tenants' routes (dynaseal.upstreams).

Per upstream, a cluster `up_<name>` whose one host carries its name in metadata. Per ordered list of
upstreams a route uses, an aggregate cluster (`route-a-b`) trying them in that order: Envoy's retry
goes to the next priority (the next upstream) on a connect failure, a reset, no first byte within
the per-try timeout, or a 5xx/429, and never once the answer's headers went to the client (a
started stream is never retried). The routed cluster's upstream filters apply, per try, what authz
decided for that upstream (dynaseal.routing.routes): credential (in the header of the format's
provider), physical model, path and host. A route's chain is per format: only its upstreams that speak
the endpoint's format (dynaseal.upstreams.targets_by_format), with one Envoy route per chain and format.
"""

from __future__ import annotations

import ipaddress
import json
import textwrap
from dataclasses import dataclass
from urllib.parse import urlsplit

from dynaseal.config import DynasealConfig
from dynaseal.contracts import usage_record as record
from dynaseal.upstreams import UpstreamSpec, chain_name, declared_upstreams, targets_by_format

# Each format's gateway paths; the route rewrites the path to the capture (the API's path under a base URL,
# count_tokens with messages), and the upstream filter puts the upstream's base path before it.
PATHS_OF_FORMAT = {
    "chat_completions": r"^/(?:v1|api/v1|client-side)(/chat/completions)$",
    "responses": r"^/(?:v1|api/v1)(/responses)$",
    "messages": r"^/(?:v1|api/v1)(/messages(?:/count_tokens)?)$",
    "embeddings": r"^/(?:v1|api/v1)(/embeddings)$",
}

# The per-try edits. TRY_HEADER (the host's upstream name) is set by header_mutation just before.
# Headers are shared by every try of a request (the body is not): each try sets what it needs outright,
# and the endpoint is kept in metadata from the first try.
_UPSTREAM_LUA = """\
local UPSTREAMS = {%(table)s}
%(control_keys)s
local match, sub = string.match, string.sub

function envoy_on_request(handle)
  local headers = handle:headers()
  local name = headers:get(TRY_HEADER) or ""
  headers:remove(TRY_HEADER)
  headers:remove("authorization")
  headers:remove("x-api-key")
  local meta = handle:streamInfo():dynamicMetadata()
  local authz = meta:get(AUTHZ)
  local up = UPSTREAMS[name]
  if up == nil or authz == nil then
    -- never: only authz's allow routes here and every host is named; nothing usable goes out.
    headers:replace(":path", "/dynaseal-misrouted")
    return
  end
  local route = meta:get(ROUTE) or {}
  local endpoint = route[ROUTE_ENDPOINT]
  if endpoint == nil then
    endpoint = headers:get(":path")
    meta:set(ROUTE, ROUTE_ENDPOINT, endpoint)
  end
  local tried = route[ROUTE_TRIED]
  meta:set(ROUTE, ROUTE_TRIED, tried and (tried .. "," .. name) or name)
  -- A try that ran past its upstream's first_byte_s before this one began may have been generated (a
  -- timeout is no refusal): the request is then never given back, whatever the last upstream answers.
  local now = tonumber(handle:timestampString(EnvoyTimestampResolution.MILLISECOND))
  local last, since = route[ROUTE_LAST_TRY], route[ROUTE_LAST_TRY_MS]
  if now == nil or (last ~= nil and since ~= nil and UPSTREAMS[last] ~= nil and now - since >= UPSTREAMS[last][3]) then
    meta:set(ROUTE, ROUTE_OVERDUE, true)  -- no clock: assume the worst
  else
    meta:set(ROUTE, ROUTE_LAST_TRY, name)
    meta:set(ROUTE, ROUTE_LAST_TRY_MS, now)
  end
  headers:replace(":path", up[1] .. endpoint)
  headers:replace(":authority", up[2])
  local auth = authz[UP_AUTH_PREFIX .. name]
  if auth ~= nil then
    -- The provider's own header: x-api-key for the messages format, authorization otherwise.
    headers:replace(authz[UP_AUTH_HEADER] or "authorization", auth)
  end
  local splice = authz[UP_MODEL_PREFIX .. name]
  if splice ~= nil then
    local offset, length, value = match(splice, "^(%%d+) (%%d+) (.*)$")
    offset, length = tonumber(offset), tonumber(length)
    local body = handle:body()
    local raw = body:getBytes(0, body:length())
    -- setBytes also sets content-length.
    body:setBytes(sub(raw, 1, offset) .. value .. sub(raw, offset + length + 1))
  end
end
"""

# The control keys the per-try filter reads and keeps, from the one definition (dynaseal.contracts.usage_record).
UPSTREAM_LUA_KEYS = record.lua_constants((
    "AUTHZ", "ROUTE", "TRY_HEADER", "ROUTE_ENDPOINT", "ROUTE_TRIED", "ROUTE_LAST_TRY", "ROUTE_LAST_TRY_MS",
    "ROUTE_OVERDUE", "UP_AUTH_PREFIX", "UP_AUTH_HEADER", "UP_MODEL_PREFIX"))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An upstream's base URL split into what a cluster and the per-try edits need."""

    scheme: str
    host: str
    port: int
    path_prefix: str

    @property
    def authority(self) -> str:
        """The Host header: the port only when not the scheme's default."""
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def split_base_url(base_url: str) -> Endpoint:
    """Split an http(s) base URL into what a cluster and its route need; ValueError for anything else."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"upstream base_url must be an http(s) URL, got {base_url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Endpoint(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


def endpoint_of(spec: UpstreamSpec) -> Endpoint:
    """A named upstream's base URL, split (validated as http(s) by the schema)."""
    return split_base_url(spec.base_url)


def is_ip(host: str) -> bool:
    """Whether Envoy can use `host` as it is (STATIC) or must resolve it (LOGICAL_DNS)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def used_chains(cfg: DynasealConfig) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Every chain a route sends a format to: name -> (its upstreams in order, the formats it serves).

    A route's chain for a format is its upstreams that speak that format (dynaseal.upstreams.targets_by_format,
    as authz computes it), so one route may use a different chain per format.
    """
    upstreams = declared_upstreams(cfg)
    chains: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for tenant in cfg.tenants:
        for route in tenant.upstream.routes if tenant.upstream else ():
            for fmt, targets in targets_by_format(route, upstreams).items():
                names = tuple(t.upstream for t in targets)
                _, formats = chains.get(chain_name(names), (names, ()))
                chains[chain_name(names)] = (names, tuple(sorted({*formats, fmt})))
    return chains


def _upstream_filters(upstreams: dict[str, UpstreamSpec], indent: int) -> str:
    # ["name"] keys: a name may be a Lua keyword (`local`, `end`, ...), which `name = ` would not load.
    table = ", ".join(f"[{json.dumps(name)}] = {{{json.dumps(endpoint_of(spec).path_prefix)}, "
                      f"{json.dumps(endpoint_of(spec).authority)}, {int(spec.timeouts.first_byte_s * 1000)}}}"
                      for name, spec in sorted(upstreams.items()))
    code = _UPSTREAM_LUA % {"table": table, "control_keys": UPSTREAM_LUA_KEYS}
    pad = " " * indent
    lua = "\n".join(f"{pad}            {line}" if line else "" for line in code.splitlines())
    return (
        f"{pad}typed_extension_protocol_options:\n"
        f"{pad}  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
        f'{pad}    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n'
        f"{pad}    explicit_http_config: {{ http_protocol_options: {{}} }}\n"
        f"{pad}    http_filters:\n"
        f"{pad}    - name: envoy.filters.http.header_mutation\n"
        f"{pad}      typed_config:\n"
        f'{pad}        "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation\n'
        f"{pad}        mutations:\n"
        f"{pad}          request_mutations:\n"
        f"{pad}          - append: {{ header: {{ key: {record.TRY_HEADER}, "
        f'value: "%UPSTREAM_METADATA(dynaseal:name)%" }}, '
        f"append_action: OVERWRITE_IF_EXISTS_OR_ADD }}\n"
        f"{pad}    - name: envoy.filters.http.lua\n"
        f"{pad}      typed_config:\n"
        f'{pad}        "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua\n'
        f"{pad}        default_source_code:\n"
        f"{pad}          inline_string: |\n{lua}\n"
        f"{pad}    - name: envoy.filters.http.upstream_codec\n"
        f"{pad}      typed_config:\n"
        f'{pad}        "@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec\n'
    )


def _tls(spec: UpstreamSpec, endpoint: Endpoint) -> str:
    if endpoint.scheme != "https":
        return ""
    # verify: false only for a self-hosted server on a trusted network: the provider key goes to whoever answers.
    context = ("        common_tls_context:\n"
               "          validation_context:\n"
               f"            trusted_ca: {{ filename: {spec.tls.ca_file} }}\n"
               "            match_typed_subject_alt_names:\n"
               f"            - {{ san_type: DNS, matcher: {{ exact: {endpoint.host} }} }}\n"
               ) if spec.tls.verify else "        common_tls_context: {}\n"
    return (
        "    transport_socket:\n"
        "      name: envoy.transport_sockets.tls\n"
        "      typed_config:\n"
        '        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n'
        f"        sni: {endpoint.host}\n" + context)


def clusters(cfg: DynasealConfig) -> str:
    """The `up_<name>` cluster of every upstream and the aggregate cluster of every multi-upstream route."""
    upstreams = declared_upstreams(cfg)
    chains = used_chains(cfg)
    if not chains:
        return ""
    filters = _upstream_filters(upstreams, 4)
    out: list[str] = []
    for name, spec in sorted(upstreams.items()):
        ep = endpoint_of(spec)
        outlier = spec.outlier_detection
        out.append(
            f"  - name: up_{name}\n"
            f"    type: {'STATIC' if is_ip(ep.host) else 'LOGICAL_DNS'}\n"
            f"    connect_timeout: {spec.timeouts.connect_s}s\n"
            "    dns_lookup_family: V4_PREFERRED\n"
            + (f"    outlier_detection: {{ consecutive_5xx: {outlier.consecutive_5xx}, "
               f"base_ejection_time: {outlier.base_ejection_s}s, max_ejection_percent: 100 }}\n" if outlier else "")
            + "    load_assignment:\n"
            f"      cluster_name: up_{name}\n"
            "      endpoints:\n"
            "      - lb_endpoints:\n"
            "        - endpoint:\n"
            f"            address: {{ socket_address: {{ address: {ep.host}, port_value: {ep.port} }} }}\n"
            f"          metadata: {{ filter_metadata: {{ dynaseal: {{ name: {name} }} }} }}\n"
            + _tls(spec, ep) + filters)
    for chain, (names, _) in sorted(chains.items()):
        if len(names) < 2:
            continue
        out.append(
            f"  - name: {chain}\n"
            f"    connect_timeout: {max(upstreams[n].timeouts.connect_s for n in names)}s\n"
            "    lb_policy: CLUSTER_PROVIDED\n"
            # Envoy allows 3 retries in flight per cluster by default: under load every further fallback
            # would be refused (503, overflow). Each request still tries each upstream at most once.
            "    circuit_breakers: { thresholds: [{ max_retries: 1024 }] }\n"
            "    cluster_type:\n"
            "      name: envoy.clusters.aggregate\n"
            "      typed_config:\n"
            '        "@type": type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig\n'
            f"        clusters: [{', '.join(f'up_{n}' for n in names)}]\n" + filters)
    return "".join(out)


_ROUTE = """\
- match:
    safe_regex: { regex: "%(paths)s" }
    headers:
    - { name: ":method", string_match: { exact: POST } }
    - { name: %(route_header)s, string_match: { exact: %(chain)s } }
  request_headers_to_remove: [%(route_header)s]
  route:
    cluster: %(cluster)s
    timeout: %(timeout)s
    idle_timeout: %(idle)s
    regex_rewrite: { pattern: { regex: "%(paths)s" }, substitution: '\\1' }
    retry_policy:
      retry_on: "connect-failure,reset,5xx,retriable-status-codes"
      retriable_status_codes: [429, 500, 502, 503, 504]
      num_retries: %(retries)d
      per_try_timeout: %(per_try)ss
      retry_back_off: { base_interval: 0.01s, max_interval: 0.1s }
      retry_priority:
        name: envoy.retry_priorities.previous_priorities
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig
          update_frequency: 1
"""


def routes(cfg: DynasealConfig, max_stream_duration: str, stream_idle_timeout: str) -> str:
    """One route per chain and format, chosen by authz's `x-dynaseal-route` (client values never survive authz)."""
    upstreams = declared_upstreams(cfg)
    out: list[str] = []
    for chain, (names, formats) in sorted(used_chains(cfg).items()):
        for fmt in formats:
            out.append(textwrap.indent(_ROUTE % {
                "paths": PATHS_OF_FORMAT[fmt], "chain": chain, "route_header": record.ROUTE_HEADER,
                "cluster": chain if len(names) > 1 else f"up_{names[0]}",
                "timeout": max_stream_duration, "idle": stream_idle_timeout,
                "retries": len(names) - 1, "per_try": max(upstreams[n].timeouts.first_byte_s for n in names)},
                " " * 14))
    return "".join(out)
