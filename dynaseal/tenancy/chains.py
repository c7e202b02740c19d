"""The route chains (ordered upstream lists, per format) a config's tenants use.

Envoy has one route per chain and format, rendered from the config file when it starts. A tenant in
the store may only use chains the running Envoy has: a chain it lacks would leave the request to
the gateway's default route, another upstream than the tenant chose.
"""

from __future__ import annotations

from dynaseal.config import DynasealConfig
from dynaseal.upstreams import chain_name, declared_upstreams, targets_by_format


def chains(cfg: DynasealConfig) -> dict[tuple[str, str], tuple[str, ...]]:
    """(chain name, format) -> the chain's upstreams in order, for every route of every tenant."""
    upstreams = declared_upstreams(cfg)
    found: dict[tuple[str, str], tuple[str, ...]] = {}
    for tenant in cfg.tenants:
        for route in tenant.upstream.routes if tenant.upstream else ():
            for fmt, targets in targets_by_format(route, upstreams).items():
                names = tuple(t.upstream for t in targets)
                found[(chain_name(names), fmt)] = names
    return found


def missing_chains(running: DynasealConfig, proposed: DynasealConfig) -> list[str]:
    """A problem line per chain and format `proposed` routes to that Envoy, rendered from `running`, lacks."""
    have = chains(running)
    return [f"route to {' > '.join(names)} for {fmt}: the gateway's Envoy has no route for this chain; "
            f"route the tenant to a chain a config-file tenant uses, or add it to the file and restart Envoy"
            for (name, fmt), names in sorted(chains(proposed).items()) if (name, fmt) not in have]
