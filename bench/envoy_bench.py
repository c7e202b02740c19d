"""One Envoy config with a listener per benchmark configuration, derived from the real gateway.

Everything dynaseal-specific (the ext_authz filter, the authz cluster, the upstream cluster, the
usage filters) is taken from `dynaseal/envoy/templates/gateway.yaml.tmpl` as `dynaseal envoy-config` renders it, so
tuning the template shows up here. The listeners:

| name | auth | route | used by |
|---|---|---|---|
| `a_none` | none | `direct_response` 200 | gateway bench A |
| `b_jwt` | Envoy `jwt_authn`: inline JWKS, same key and claims, jwt_cache | `direct_response` 200 | gateway bench B |
| `c_dynaseal` | the gateway's ext_authz filter (dynaseal authz + Redis) | `direct_response` 200 | gateway bench C |
| `s_none` | the gateway listener with ext_authz removed | the upstream mock | streaming bench |
| `s_dynaseal` | the gateway listener exactly as rendered | the upstream mock | streaming bench |

A to C share a minimal chain (auth filter, router) and end in a `direct_response`, so their
difference is the auth filter alone, not the Python mock upstream (which would be the bottleneck).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from bench.fixture import AUDIENCE, TENANT, BenchKeys
from dynaseal.config import DynasealConfig
from dynaseal_launcher import envoy_config

EXT_AUTHZ = "envoy.filters.http.ext_authz"
ROUTER = "envoy.filters.http.router"
DIRECT_BODY = '{"id":"bench","object":"chat.completion","choices":[]}'


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def _filter(hcm: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in hcm["http_filters"] if f["name"] == name)


def jwt_authn_filter(keys: BenchKeys) -> dict[str, Any]:
    """Envoy's native JWT check of the same token: issuer, audience, exp/nbf, EdDSA signature."""
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"bench": {
                "issuer": TENANT,
                "audiences": [AUDIENCE],
                "local_jwks": {"inline_string": keys.jwks()},
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                "forward": False,
                # dynaseal caches verified keys; give Envoy the same advantage.
                "jwt_cache_config": {"jwt_cache_size": 1000},
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
        },
    }


def _bench_listener(template: dict[str, Any], name: str, port: int,
                    auth_filter: dict[str, Any] | None) -> dict[str, Any]:
    listener = copy.deepcopy(template)
    listener["name"] = name
    listener["address"]["socket_address"]["port_value"] = port
    hcm = _hcm(listener)
    hcm["stat_prefix"] = name
    hcm.pop("access_log", None)
    hcm.pop("local_reply_config", None)
    hcm["http_filters"] = [*([auth_filter] if auth_filter else []), _filter(hcm, ROUTER)]
    hcm["route_config"] = {"name": name, "virtual_hosts": [{
        "name": name, "domains": ["*"],
        "routes": [{"match": {"prefix": "/"},
                    "direct_response": {"status": 200, "body": {"inline_string": DIRECT_BODY}}}],
    }]}
    return listener


# ext_authz variants of C (`python -m bench envoy`), each a listener of its own: what each setting
# costs Envoy, measured in one run. name → (what it is, change to the ext_authz filter's typed_config).
AUTHZ_CLUSTER = "dynaseal_authz"
VARIANTS: dict[str, str] = {
    "c_google": "google_grpc (Envoy's gRPC-core client) instead of envoy_grpc",
    "c_nostats": "charge_cluster_response_stats: false",
    "c_skiphdrs": "envoy_grpc.skip_envoy_headers: true (no x-envoy-* on the Check call)",
    "c_fewhdrs": "allowed_headers: only the 5 headers authz reads (measurement only: authz must see every "
                 "header to remove the ones the provider must not get)",
}


def authz_variant(ext_authz: dict[str, Any], name: str, authz_address: tuple[str, int]) -> dict[str, Any]:
    """The gateway's ext_authz filter with one variant's change."""
    variant = copy.deepcopy(ext_authz)
    typed = variant["typed_config"]
    if name == "c_google":
        timeout = typed["grpc_service"].get("timeout")
        typed["grpc_service"] = {"google_grpc": {"target_uri": f"{authz_address[0]}:{authz_address[1]}",
                                                 "stat_prefix": "authz_google"}, "timeout": timeout}
    elif name == "c_nostats":
        typed["charge_cluster_response_stats"] = False
    elif name == "c_skiphdrs":
        typed["grpc_service"]["envoy_grpc"]["skip_envoy_headers"] = True
    elif name == "c_fewhdrs":
        typed["allowed_headers"] = {"patterns": [{"exact": h} for h in (
            "authorization", "dynasealtoken", "content-type", "content-encoding", "x-request-id")]}
    else:
        raise ValueError(f"unknown ext_authz variant {name!r}")
    return variant


def render(cfg: DynasealConfig, keys: BenchKeys, ports: dict[str, int], access_log: Path) -> str:
    """The bench Envoy YAML; `ports` maps each listener name above to its port."""
    gateway = yaml.safe_load(envoy_config.render(cfg, access_log))
    listener = gateway["static_resources"]["listeners"][0]
    ext_authz = copy.deepcopy(_filter(_hcm(listener), EXT_AUTHZ))

    s_none = copy.deepcopy(listener)
    s_none["name"] = "s_none"
    s_none["address"]["socket_address"]["port_value"] = ports["s_none"]
    _hcm(s_none)["stat_prefix"] = "s_none"
    _hcm(s_none)["http_filters"] = [f for f in _hcm(s_none)["http_filters"] if f["name"] != EXT_AUTHZ]
    s_dynaseal = copy.deepcopy(listener)
    s_dynaseal["name"] = "s_dynaseal"
    s_dynaseal["address"]["socket_address"]["port_value"] = ports["s_dynaseal"]

    gateway["static_resources"]["listeners"] = [
        _bench_listener(listener, "a_none", ports["a_none"], None),
        _bench_listener(listener, "b_jwt", ports["b_jwt"], jwt_authn_filter(keys)),
        _bench_listener(listener, "c_dynaseal", ports["c_dynaseal"], ext_authz),
        s_none,
        s_dynaseal,
        *(_bench_listener(listener, name, ports[name],
                          authz_variant(ext_authz, name, (cfg.gateway.host, cfg.gateway.ports.authz)))
          for name in VARIANTS if name in ports),
    ]
    return yaml.safe_dump(gateway, sort_keys=False)
