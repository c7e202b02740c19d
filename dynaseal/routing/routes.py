"""The route choice of an allowed request: which upstreams, in which order, with which model and key.

authz decides everything per upstream of the route at once and hands it to Envoy as dynamic
metadata; Envoy's retry across the route's upstreams picks one per try, and the upstream filter
applies that upstream's values (credential, physical model, path, host) to that try only:

  - header `x-dynaseal-route`: the route (an Envoy aggregate cluster of the upstreams, in order);
  - metadata `up_auth.<upstream>`: the credential presented to that upstream, in the header
    `up_auth_header` names (absent: `authorization`), the one the provider of the endpoint's format reads;
  - metadata `up_model.<upstream>`: `<offset> <length> <json string>`: the bytes of the body's model
    value and what replaces them for that upstream (absent: the client's name is the physical one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from dynaseal.contracts.usage_record import ROUTE_HEADER, UP_AUTH_HEADER, UP_AUTH_PREFIX, UP_MODEL_PREFIX
from dynaseal.errors import ErrorCode, Refusal
from dynaseal.routing.model_span import model_value_span
from dynaseal.routing.provider_credentials import CredentialPool
from dynaseal.safe_text import safe_text
from dynaseal.secrets import env_secret
from dynaseal.upstreams import FORMATS, chain_name, declared_upstreams, targets_by_format

if TYPE_CHECKING:
    from dynaseal.config import DynasealConfig

# How a refusal names the API a format is.
API_OF_FORMAT = {"chat_completions": "Chat Completions API (/v1/chat/completions)",
                 "responses": "Responses API (/v1/responses)", "messages": "Messages API (/v1/messages)",
                 "embeddings": "Embeddings API (/v1/embeddings)"}


@dataclass(frozen=True, slots=True)
class Hop:
    """One upstream of a route: its name, the model it receives (None: as asked), its credential."""

    upstream: str
    physical_model: str | None
    credential: CredentialPool


@dataclass(frozen=True, slots=True)
class Route:
    """A model's upstreams in order, and the Envoy cluster that tries them in that order.

    No hops: the model is routed, but none of its upstreams speaks this format (refused).
    """

    chain: str
    hops: tuple[Hop, ...]


# The route of a format no upstream of a model's route speaks: it hides the tenant's `*` route too.
UNSPOKEN = Route("", ())


@dataclass(frozen=True, slots=True)
class RouteChoice:
    """What the allow decision adds for routing: request headers and dynamic metadata."""

    headers: dict[str, str]
    metadata: dict[str, str | int | float | bool]


@dataclass(frozen=True)
class RouteTable:
    """Every routed tenant's routes, by (tenant, format, model); `*` stands for any other model."""

    routes: Mapping[tuple[str, str, str], Route] = field(default_factory=lambda: MappingProxyType({}))
    provider_headers: frozenset[str] = frozenset()
    routed_tenants: frozenset[str] = frozenset()

    def route(self, tenant: str, model: str, fmt: str = "chat_completions") -> Route | None:
        """The route of a model in a format (exact name first, then the tenant's `*`); UNSPOKEN: not in it."""
        return self.routes.get((tenant, fmt, model)) or self.routes.get((tenant, fmt, "*"))

    def for_request(self, tenant: str, model: str, fmt: str) -> Route | None:
        """The route of an allowed request; None: the tenant has no routes (the gateway's upstream serves it).

        A routed tenant's model whose upstreams do not speak the endpoint's format is refused (404, as a
        provider answers for a model it does not serve on that API): the gateway never translates.
        """
        route = self.routes.get((tenant, fmt, model)) or self.routes.get((tenant, fmt, "*"))
        if route is not None and route.hops:
            return route
        if tenant not in self.routed_tenants:
            return None
        api = API_OF_FORMAT.get(fmt, fmt)
        raise Refusal(ErrorCode.MODEL_NOT_FOUND, f"model '{safe_text(model)}' is not served on the {api}: "
                      "none of its upstreams speaks that API (the gateway does not translate between APIs)",
                      "model")


def build_route_table(cfg: DynasealConfig, errors: list[str], env: Mapping[str, str] | None = None) -> RouteTable:
    """Resolve every route's credentials once (env vars now, in `env` (default: the config's environment),
    files on use); problems go to `errors`."""
    from dynaseal.config import config_environment

    env = config_environment(cfg) if env is None else env
    upstreams = declared_upstreams(cfg)
    pools: dict[str, CredentialPool] = {}
    for spec in upstreams.values():
        names = ([spec.api_key_env] if spec.api_key_env else []) + list(spec.api_key_envs)
        secrets = tuple(s for n in names if (s := env_secret(n, f"upstream {spec.name}", errors, env)) is not None)
        pools[spec.name] = CredentialPool(secrets, Path(spec.api_key_file) if spec.api_key_file else None)
    routes: dict[tuple[str, str, str], Route] = {}
    for tenant in cfg.tenants:
        for route in tenant.upstream.routes if tenant.upstream else ():
            hops: dict[str, Hop] = {}
            for target in route.upstreams:
                pool = pools.get(target.upstream, CredentialPool())
                if target.api_key_env:
                    own = env_secret(target.api_key_env, f"tenant {tenant.id} route {route.model}", errors, env)
                    pool = CredentialPool((own,) if own is not None else ())
                physical = target.model if target.model not in (None, route.model) else None
                hops[target.upstream] = Hop(target.upstream, physical, pool)
            served = targets_by_format(route, upstreams)
            # One entry per format, spoken or not: a request looks up its route in one step, and a format
            # the model's upstreams do not speak never falls through to the tenant's `*` route.
            for fmt in FORMATS:
                names = [t.upstream for t in served.get(fmt, ())]
                routes[(tenant.id, fmt, route.model)] = \
                    Route(chain_name(names), tuple(hops[n] for n in names)) if names else UNSPOKEN
    return RouteTable(MappingProxyType(routes),
                      frozenset(t.id for t in cfg.tenants if t.upstream and t.upstream.provider_headers),
                      frozenset(t.id for t in cfg.tenants if t.upstream and t.upstream.routes))


def _bearer(provider_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {provider_key}"}


def choose(route: Route, model: str, body: bytes, body_prefix: str = "",
           credential: Callable[[str], Mapping[str, str]] = _bearer) -> RouteChoice:
    """The headers and metadata that send this request along `route`.

    `body_prefix` is what Envoy inserts right after the body's `{` before the upstream sees it: the
    model value's offset moves by its length in bytes. `credential` puts a provider key in the header
    the provider of the request's format reads (one header).
    """
    metadata: dict[str, str | int | float | bool] = {"route": route.chain}
    span: tuple[int, int] | None = None
    for hop in route.hops:
        key = hop.credential.next_key()
        if key is not None:
            ((header, value),) = credential(key).items()
            metadata[UP_AUTH_PREFIX + hop.upstream] = value
            if header != "authorization":
                metadata[UP_AUTH_HEADER] = header
        if hop.physical_model is not None and hop.physical_model != model:
            if span is None:
                span = model_value_span(body)
                if span is None:  # request_policy requires a model: never reached, kept fail-closed
                    raise ValueError("no model member to rewrite")
            offset = span[0] + len(body_prefix.encode())
            metadata[UP_MODEL_PREFIX + hop.upstream] = f"{offset} {span[1]} {json.dumps(hop.physical_model)}"
    return RouteChoice({ROUTE_HEADER: route.chain}, metadata)
