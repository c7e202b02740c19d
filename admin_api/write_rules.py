"""Rules the admin API adds to what the config file accepts, for tenants and secrets written through it.

A store tenant's id is a path segment of every `/admin/v1/tenants/{id}` route, a Redis key part, a Kafka
message field and a metric label: an id with `/`, spaces, control or look-alike characters would be stored
and then be impossible to address (to disable, rotate or fix) through this API. A seed-format secret is an
HS256 key anyone holding a key signed with it can try to guess offline: a short one is refused. A callback
is a POST the callback consumer sends from inside the stack: one aimed at the stack's own ports (Envoy's
admin answers `POST /quitquitquit`) or at a link-local address (a cloud's metadata service) is refused.
A store tenant names its secrets by environment variable: never one the gateway or another tenant holds
(the admin token sent upstream as a provider key, another tenant's webhook secret signing callbacks to
this tenant's receiver — which could then replay them, validly signed, to the other tenant).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException

from dynaseal.config import DynasealConfig
from dynaseal.secrets import STORED_PREFIX
from dynaseal.tenant_config import TenantConfig

# ASCII letters and digits, then also `.`, `_`, `-`: what an id in a URL path needs no escaping for.
STORE_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MIN_SEED_SECRET_CHARS = 16


def check_store_tenant_id(tenant_id: str) -> None:
    """422 unless `tenant_id` is one the admin API can address later."""
    if STORE_TENANT_ID.fullmatch(tenant_id) is None:
        raise HTTPException(422, {"message": "invalid tenant", "problems": [
            "tenant.id: 1-128 ASCII letters, digits, `.`, `_` or `-`, starting with a letter or digit"]})


def check_seed_secret(value: str, where: str) -> None:
    """422 when a seed-format signing secret is too short to resist guessing (never echoing it)."""
    if len(value) < MIN_SEED_SECRET_CHARS or not value.strip():
        raise HTTPException(422, {"message": "invalid signing secret", "problems": [
            f"{where}: at least {MIN_SEED_SECRET_CHARS} characters"]})


_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _own_ports(cfg: DynasealConfig) -> set[int]:
    ports, local = cfg.gateway.ports, cfg.local
    # The issuer (the bundled business backend) receives callbacks: the dev tenant's go to it.
    return {ports.envoy, ports.envoy_admin, ports.authz, local.mock_upstream_port, local.redis_port, local.kafka_port,
            ports.authz_metrics, ports.consumer_metrics, ports.shipper_metrics, ports.admin}


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address


def _is_local(host: str, cfg: DynasealConfig) -> bool:
    if host.rstrip(".") in _LOCAL_NAMES | {cfg.gateway.host.lower()}:
        return True
    address = _address(host)
    return address is not None and (address.is_loopback or address.is_unspecified)


def check_callback_target(document: dict[str, Any], cfg: DynasealConfig) -> None:
    """422 when the tenant's callback URL points at the stack's own services or a link-local address."""
    callback = document.get("callback")
    if not isinstance(callback, dict) or not isinstance(callback.get("url"), str):
        return
    parts = urlsplit(callback["url"])
    host = parts.hostname or ""  # lowercased, without an IPv6 literal's brackets
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return  # not a port: the config's own URL check names it
    address = _address(host)
    if (address is not None and address.is_link_local) or (_is_local(host, cfg) and port in _own_ports(cfg)):
        raise HTTPException(422, {"message": "invalid tenant", "problems": [
            "callback.url: points at a link-local address or one of the gateway's own services"]})


def _secret_envs(tc: TenantConfig) -> tuple[set[str], set[str]]:
    """The env names a tenant's signing and webhook secrets come from, and those of its provider keys."""
    signing = {k.secret_env for k in tc.keys if k.secret_env}
    if tc.callback is not None:
        signing |= {name for name in (tc.callback.secret_env, *tc.callback.previous_secret_envs) if name}
    provider: set[str] = set()
    if tc.upstream is not None:
        provider |= {tc.upstream.api_key_env} if tc.upstream.api_key_env else set()
        provider |= {t.api_key_env for route in tc.upstream.routes for t in route.upstreams if t.api_key_env}
    return signing, provider


def check_env_references(document: dict[str, Any], running: DynasealConfig) -> None:
    """422 when a store tenant names an env variable holding the admin token, the issuer's session secret or
    another tenant's secret; or uses one of the gateway's provider keys as a signing or webhook secret."""
    tc = TenantConfig.model_validate(document)
    gw = running.gateway
    providers = {name for name in (gw.upstream.api_key_env, *(u.api_key_env for u in gw.upstreams)) if name}
    providers |= {name for u in gw.upstreams for name in u.api_key_envs}
    held = {name for name in (running.admin.token_env if running.admin else None,
                              running.issuer.session_secret_env if running.issuer else None) if name}
    for other in running.tenants:
        if other.id != tc.id:
            held |= set().union(*_secret_envs(other))
    signing, provider = _secret_envs(tc)
    foreign = {name for name in signing | provider if name in held - providers} | (signing & providers)
    foreign = {name for name in foreign if not name.startswith(STORED_PREFIX)}
    if foreign:
        raise HTTPException(422, {"message": "invalid tenant", "problems": [
            f"{name}: holds a secret of the gateway or of another tenant; give this tenant its own"
            for name in sorted(foreign)]})
