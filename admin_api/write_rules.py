"""Rules the admin API adds to what the config file accepts, for tenants and secrets written through it.

A store tenant's id is a path segment of every `/admin/v1/tenants/{id}` route, a Redis key part, a Kafka
message field and a metric label: an id with `/`, spaces, control or look-alike characters would be stored
and then be impossible to address (to disable, rotate or fix) through this API. A seed-format secret is an
HS256 key anyone holding a key signed with it can try to guess offline: a short one is refused. A callback
is a POST the callback consumer sends from inside the stack: one aimed at the stack's own ports (Envoy's
admin answers `POST /quitquitquit`) or at a link-local address (a cloud's metadata service) is refused.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException

from dynaseal.config import DynasealConfig

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
    ports = cfg.gateway.ports
    # The issuer (the bundled business backend) receives callbacks: the dev tenant's go to it.
    return {ports.envoy, ports.envoy_admin, ports.authz, ports.mock_upstream, ports.redis, ports.kafka,
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
