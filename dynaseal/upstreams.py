"""Upstreams by name and each tenant's routes to them: the config schema and its cross-checks.

`gateway.upstreams` declares the providers (any OpenAI-compatible server); a tenant's
`upstream.routes` maps each model it serves to an ordered list of them, each with an optional
physical model name. The first upstream that answers serves; the others are fallbacks. Prices
stay attached to the model name the client asked for. Each upstream says which API formats it
speaks; a route serves each format with those of its upstreams that speak it, and no other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The API formats an upstream may speak; each endpoint of the gateway goes only to upstreams speaking its
# format (no translation between formats). count_tokens is part of the messages format.
Format = Literal["chat_completions", "responses", "messages", "embeddings"]
FORMATS: tuple[Format, ...] = ("chat_completions", "responses", "messages", "embeddings")
# An upstream that names none speaks chat completions, what every OpenAI-compatible server serves.
DEFAULT_FORMATS: tuple[str, ...] = ("chat_completions",)
# The upstream that `gateway.upstream.base_url` (or the bundled mock) stands for when routes name it.
IMPLICIT_UPSTREAM = "default"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"


class StrictModel(BaseModel):
    """As `dynaseal.tenant_config.StrictModel` (which imports this module): unknown fields refused, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class UpstreamTls(StrictModel):
    """How Envoy checks an https upstream: never skip verification towards a real provider."""

    verify: bool = True
    ca_file: str = "/etc/ssl/certs/ca-certificates.crt"


class UpstreamTimeouts(StrictModel):
    """Per-upstream deadlines; a try that misses one goes to the next upstream of the route."""

    connect_s: float = Field(2.0, gt=0, le=60)
    # Until the answer's first byte (then the stream may last as long as gateway.limits allow).
    first_byte_s: float = Field(60.0, gt=0, le=3600)


class OutlierDetection(StrictModel):
    """An upstream answering 5xx this many times in a row is left out for a while (then tried again)."""

    consecutive_5xx: int = Field(5, ge=1)
    base_ejection_s: int = Field(30, ge=1)


class UpstreamSpec(StrictModel):
    """One provider endpoint: where it is, what it speaks, the credential(s) the gateway presents."""

    name: str = Field(pattern=NAME_PATTERN)
    base_url: str = Field(pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$")
    # Names are checked against FORMATS with the routes (route_problems), so an error names who routes here.
    formats: tuple[str, ...] = DEFAULT_FORMATS
    # The provider key: one env var, several (balanced per request), or a mounted file with one key a line
    # (re-read when it changes: rotation without a restart).
    api_key_env: str | None = None
    api_key_envs: tuple[str, ...] = ()
    api_key_file: str | None = None
    tls: UpstreamTls = Field(default_factory=UpstreamTls)
    timeouts: UpstreamTimeouts = Field(default_factory=UpstreamTimeouts)
    outlier_detection: OutlierDetection | None = Field(default_factory=OutlierDetection)


class RouteTarget(StrictModel):
    """One step of a route: the upstream, the model name it receives, the tenant's own key for it."""

    upstream: str
    model: str | None = Field(None, min_length=1, max_length=256)
    api_key_env: str | None = None


class ModelRoute(StrictModel):
    """A model a tenant serves (`*` = any other) and the upstreams it goes to, in order of preference."""

    model: str = Field(min_length=1, max_length=256)
    upstreams: tuple[RouteTarget, ...] = Field(min_length=1, max_length=8)
    # None: every format its upstreams speak, each endpoint to those of them that speak its format. A list
    # restricts the route to those formats (each must be spoken by one of its upstreams).
    formats: tuple[str, ...] | None = None

    @field_validator("upstreams", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        # `upstreams: [openai, {upstream: deepseek, model: deepseek-chat}]`: a bare name is a target.
        if isinstance(value, list | tuple):
            return [{"upstream": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _distinct(self) -> ModelRoute:
        names = [t.upstream for t in self.upstreams]
        if len(names) != len(set(names)):
            raise ValueError(f"model {self.model!r}: an upstream appears twice in its route")
        return self


def chain_name(upstreams: Iterable[str]) -> str:
    """The Envoy cluster (and route header value) of an ordered list of upstreams."""
    names = list(upstreams)
    readable = "route-" + "-".join(names)
    # Long chains get a digest: cluster names stay short and still name one list exactly.
    return readable if len(readable) <= 60 else "route-" + hashlib.sha256(readable.encode()).hexdigest()[:16]


# What the functions below read of a config, as protocols: `dynaseal.config.DynasealConfig` is one, and this
# module stays below the config (which imports it) instead of importing it back.
class _GatewayUpstream(Protocol):
    @property
    def base_url(self) -> str | None: ...
    @property
    def api_key_env(self) -> str | None: ...
    @property
    def ca_file(self) -> str: ...


class _Gateway(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def upstream(self) -> _GatewayUpstream: ...
    @property
    def upstreams(self) -> Sequence[UpstreamSpec]: ...


class _LocalStack(Protocol):
    def mock_upstream_url(self, host: str) -> str: ...


class _TenantRoutes(Protocol):
    @property
    def routes(self) -> Sequence[ModelRoute]: ...


class _TenantLimits(Protocol):
    @property
    def models(self) -> Sequence[str]: ...


class _Tenant(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def upstream(self) -> _TenantRoutes | None: ...
    @property
    def limits(self) -> _TenantLimits: ...


class RoutedConfig(Protocol):
    """The parts of a config that name upstreams and route to them (`dynaseal.config.DynasealConfig`)."""

    @property
    def gateway(self) -> _Gateway: ...
    @property
    def local(self) -> _LocalStack: ...
    @property
    def tenants(self) -> Sequence[_Tenant]: ...


def declared_upstreams(cfg: RoutedConfig) -> dict[str, UpstreamSpec]:
    """Every upstream by name: the declared ones and, unless one is called so, the implicit `default`."""
    found = {u.name: u for u in cfg.gateway.upstreams}
    if IMPLICIT_UPSTREAM not in found:
        gw = cfg.gateway
        base_url = gw.upstream.base_url or cfg.local.mock_upstream_url(gw.host)
        # Every endpoint of a tenant without routes goes to this upstream: it is taken to speak every format.
        found[IMPLICIT_UPSTREAM] = UpstreamSpec(name=IMPLICIT_UPSTREAM, base_url=base_url, formats=FORMATS,
                                                api_key_env=gw.upstream.api_key_env,
                                                tls=UpstreamTls(ca_file=gw.upstream.ca_file))
    return found


def targets_by_format(route: ModelRoute, upstreams: Mapping[str, UpstreamSpec]) -> dict[str, tuple[RouteTarget, ...]]:
    """For each format the route serves, its upstreams that speak it, in the route's order.

    A format none of them speaks is absent: a request in it is refused (the gateway never translates).
    """
    served: dict[str, tuple[RouteTarget, ...]] = {}
    for fmt in route.formats if route.formats is not None else FORMATS:
        targets = tuple(t for t in route.upstreams
                        if (spec := upstreams.get(t.upstream)) is not None and fmt in spec.formats)
        if targets:
            served[fmt] = targets
    return served


def _format_problems(formats: Iterable[str] | None) -> list[str]:
    """What is wrong with a list of format names: an unknown name, or no name at all."""
    if formats is None:
        return []
    names = list(formats)
    if not names:
        return [f"lists no formats (known: {', '.join(FORMATS)})"]
    return [f"lists an unknown format {name!r} (known: {', '.join(FORMATS)})" for name in names if name not in FORMATS]


def _route_problems(route: ModelRoute, upstreams: Mapping[str, UpstreamSpec]) -> list[str]:
    """One route's problems (without its tenant and model, which the caller puts first)."""
    problems = [f"its route {problem}" for problem in _format_problems(route.formats)]
    known = [t for t in route.upstreams if t.upstream in upstreams]
    for target in route.upstreams:
        if target.upstream not in upstreams:
            problems.append(f"unknown upstream {target.upstream!r} (declared: {', '.join(sorted(upstreams))})")
        else:
            spoken = upstreams[target.upstream].formats
            problems += [f"upstream {target.upstream!r} {p}" for p in _format_problems(spoken)]
    if problems or route.formats is None:
        return problems
    # An explicit list: each format is spoken by one of the route's upstreams, and each upstream serves one.
    served = targets_by_format(route, upstreams)
    for fmt in route.formats:
        if fmt not in served:
            speaks = "; ".join(f"{t.upstream} speaks {', '.join(upstreams[t.upstream].formats)}" for t in known)
            problems.append(f"no upstream of the route speaks {fmt} ({speaks})")
    used = {t.upstream for targets in served.values() for t in targets}
    for target in known:
        if target.upstream not in used:
            problems.append(f"upstream {target.upstream!r} does not speak {' or '.join(route.formats)} "
                            f"(it speaks {', '.join(upstreams[target.upstream].formats)})")
    return problems


def route_problems(cfg: RoutedConfig) -> list[str]:
    """Every inconsistency between upstreams and routes, each naming its tenant and model."""
    problems: list[str] = []
    names = [u.name for u in cfg.gateway.upstreams]
    problems += [f"gateway.upstreams: the name {n!r} is used twice" for n in sorted({n for n in names
                                                                                    if names.count(n) > 1})]
    upstreams = declared_upstreams(cfg)
    routed_to: set[str] = set()
    for tenant in cfg.tenants:
        routes = tenant.upstream.routes if tenant.upstream else ()
        if not routes:
            continue
        routed = [r.model for r in routes]
        for model in sorted({m for m in routed if routed.count(m) > 1}):
            problems.append(f"tenant {tenant.id} model {model}: more than one route")
        for route in routes:
            routed_to.update(t.upstream for t in route.upstreams)
            problems += [f"tenant {tenant.id} model {route.model}: {p}" for p in _route_problems(route, upstreams)]
        for model in tenant.limits.models:
            if model not in routed and "*" not in routed:
                problems.append(f"tenant {tenant.id} model {model}: no route (route it in upstream.routes, "
                                f"or add a `*` route)")
    # An upstream no route names is still checked (a route may name it after the next edit).
    for spec in cfg.gateway.upstreams:
        if spec.name not in routed_to:
            problems += [f"gateway.upstreams {spec.name}: {p}" for p in _format_problems(spec.formats)]
    return problems
