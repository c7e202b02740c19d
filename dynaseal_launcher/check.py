"""`dynaseal check`: everything each service will need from a config, checked at once, every problem named.

The config file and the tenant store over it (models, routes, callback URLs), then each service's own
view as that service builds it at start: secrets present (env, mounted files, the store), files
readable (JWKS, secret files), the issuer's session secret, the admin token.
"""

from __future__ import annotations

from collections.abc import Callable

from dynaseal.config import ConfigError, DynasealConfig
from dynaseal.runtime.views import Runtime
from dynaseal.tenancy.source import TenancySource


def _admin(cfg: DynasealConfig) -> None:
    from admin_api.service import admin_token

    admin_token(cfg)


def problems(config_path: str | None) -> tuple[list[str], int | None]:
    """Every problem a service would refuse to start with (empty: fine), and the generation checked."""
    try:
        tenancy = TenancySource(config_path).load()
    except ConfigError as exc:
        return str(exc).splitlines(), None
    runtime = Runtime.from_config(tenancy.cfg)
    checks: dict[str, Callable[[], object]] = {
        "authz": lambda: runtime.authz(fetch_new_jwks=False),
        "consumer": runtime.consumer,
        "shipper": runtime.shipper,
    }
    if tenancy.cfg.issuer is not None:
        checks["issuer"] = runtime.issuer
    if tenancy.cfg.admin is not None:
        checks["admin"] = lambda: _admin(tenancy.cfg)
    # Served without them, but each is a tenant whose keys are refused until it is fixed or disabled.
    found: list[str] = [f"store: {problem} (left out; the other tenants are served)"
                        for _, problem in sorted(tenancy.quarantined.items())]
    for service, check in checks.items():
        try:
            check()
        except ConfigError as exc:
            lines = str(exc).splitlines()
            found += [f"{service}: {line.strip().removeprefix('- ')}" for line in lines[1:] or lines]
    # One problem the file shares with several services is named once.
    return list(dict.fromkeys(found)), tenancy.generation
