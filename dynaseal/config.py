"""The config file's schema and loader: YAML in, one validated immutable object out.

Secrets never appear in the file: they are named by environment variable (`*_env`) and
resolved by `dynaseal.keys.tenants`. Every validation error is reported at once.
"""

from __future__ import annotations

import ipaddress
import os
import re
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

KID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DEFAULT_CONFIG_NAME = "dynaseal.yaml"


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; the message lists every problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Ports(_Strict):
    """Listening ports of the local stack."""

    envoy: int = 8000
    envoy_admin: int = 9901
    issuer: int = 9000
    authz: int = 9191
    mock_upstream: int = 8100
    redis: int = 6379
    kafka: int = 9092
    authz_metrics: int = 9102
    consumer_metrics: int = 9103
    shipper_metrics: int = 9104


class KeyConfig(_Strict):
    """One verification key of a tenant: an inline public JWK or an HMAC secret from the env."""

    kid: str | None = None
    alg: Literal["EdDSA", "ES256", "HS256"]
    public_jwk: dict[str, Any] | None = None
    secret_env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> KeyConfig:
        if self.kid is not None and not KID_PATTERN.match(self.kid):
            raise ValueError("kid must match [A-Za-z0-9._-]{1,64}")
        if self.alg == "HS256":
            if not self.secret_env or self.public_jwk:
                raise ValueError("HS256 keys take secret_env (and no public_jwk)")
        elif not self.public_jwk or self.secret_env:
            raise ValueError(f"{self.alg} keys take public_jwk (and no secret_env)")
        return self


class ParamLimit(_Strict):
    """Numeric range for one request parameter."""

    min: float | None = None
    max: float | None = None


class TenantBudget(_Strict):
    """Tokens all of a tenant's keys may use together per UTC calendar day or month."""

    tokens: int = Field(ge=1)
    window: Literal["day", "month"] = "day"


class Limits(_Strict):
    """A tenant's ceilings: no key of the tenant may exceed them."""

    models: tuple[str, ...] = ("*",)
    max_tokens: int = Field(4096, ge=1)
    max_ttl: int = Field(86400, ge=1)
    # Per-key ceilings: a key's own `rpm` / `budget` is capped by these, and a key without one gets them.
    rpm: int | None = Field(None, ge=1)
    budget: int | None = Field(None, ge=1)
    params: dict[str, ParamLimit] = Field(default_factory=dict)
    # Refuse requests without a token cap or streams without usage (instead of the gateway adding them).
    strict_requests: bool = False
    # The member the gateway adds when a request sets no cap (o-series models take max_completion_tokens).
    cap_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # Tokens reserved per image/audio/file part (their bytes do not bound their cost); unset = such parts
    # are refused for keys with a budget.
    media_part_tokens: int | None = Field(None, ge=0)
    # Set when the upstream honours both max_tokens and max_completion_tokens (OpenAI): then a client's
    # cap in either is enough; otherwise the gateway adds `cap_field` when the client used the other.
    upstream_reads_both_caps: bool = False
    # Price- or storage-changing provider features a request may use (service_tier, web_search_options,
    # modalities, audio, store, metadata, prediction); none by default.
    provider_features: tuple[str, ...] = ()
    # Every key presented must be sender-constrained (RFC 9449 DPoP: a `cnf` claim and a proof per request).
    require_dpop: bool = False
    # How many levels of narrowed child keys a key of this tenant may have below it (0 = no children).
    max_chain_depth: int = Field(0, ge=0, le=4)
    # Per-key ceiling (and default) of a key's budget in money, in the currency of the tenant's price
    # table (`upstream.currency`); whole micro-units at most (6 decimals).
    budget_cost: Decimal | None = Field(None, gt=0, le=10**9, decimal_places=6)

    @field_validator("budget_cost", mode="before")
    @classmethod
    def _exact_amount(cls, value: Any) -> Any:
        return repr(value) if isinstance(value, float) else value
    # Tenant-wide, over all of the tenant's keys together (rpm and budget above are per key); checked
    # at admit together with the key's own limits (dynaseal.ledger.tenant_quota).
    tenant_budget: TenantBudget | None = None
    tenant_rpm: int | None = Field(None, ge=1)


class UpstreamConfig(_Strict):
    """Where allowed requests go and with which provider credential (named by env var)."""

    base_url: str | None = None
    api_key_env: str | None = None
    # CA bundle Envoy verifies an https upstream against: the provider key must never go to an impostor.
    ca_file: str = "/etc/ssl/certs/ca-certificates.crt"
    # Client headers passed on to the provider beyond the fixed allowlist (content-type, accept, ...);
    # everything else a client sends (OpenAI-Organization, OpenAI-Beta, ...) is removed.
    forward_headers: tuple[str, ...] = ()


class ModelPrice(_Strict):
    """One model's price per million tokens; cached input defaults to input, reasoning to output."""

    input: Decimal = Field(ge=0)
    cached_input: Decimal | None = Field(None, ge=0)
    output: Decimal = Field(ge=0)
    reasoning: Decimal | None = Field(None, ge=0)

    @field_validator("input", "cached_input", "output", "reasoning", mode="before")
    @classmethod
    def _exact(cls, value: Any) -> Any:
        # YAML gives 0.15 as a float; its shortest repr is what the operator wrote, not its binary value.
        if isinstance(value, bool):
            raise ValueError("a price is a number or a decimal string")
        return repr(value) if isinstance(value, float) else value

    @field_validator("input", "cached_input", "output", "reasoning")
    @classmethod
    def _finite(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and not value.is_finite():
            raise ValueError("a price must be a finite number")
        return value


class TenantUpstream(_Strict):
    """A tenant's own provider credential (named by env var), used instead of the gateway's, and the
    price table of what it is billed for the upstream's models."""

    api_key_env: str | None = None
    # ISO 4217 code of every price, cost and money budget of this tenant.
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    # A model without a price: served and flagged (`serve`), or refused (`refuse`).
    unpriced: Literal["serve", "refuse"] = "serve"
    prices: dict[str, ModelPrice] = Field(default_factory=dict)


class CallbackConfig(_Strict):
    """The tenant's usage callback endpoint."""

    url: str
    secret_env: str
    include_content: bool = False
    # Covers a handler that works before it answers (the seed backend's takes 10 s): an attempt that
    # times out is retried although it arrived, and a too-short timeout dead-letters every callback.
    timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(8, ge=1)
    # Callbacks in flight to this tenant at once (null: the consumer's --per-tenant). Throughput to a
    # tenant is at most concurrency / its answer time.
    concurrency: int | None = Field(None, ge=1, le=1024)
    # Fractions of a key's budget (tokens and money) whose crossing sends a `budget_threshold` callback,
    # each at most once per key and budget.
    budget_thresholds: tuple[float, ...] = ()

    @field_validator("budget_thresholds")
    @classmethod
    def _fractions(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        for value in values:
            # Redis compares in basis points: a finer fraction would be a different threshold there.
            if not 0 < value <= 1 or Decimal(repr(float(value))).scaleb(4) % 1 != 0:
                raise ValueError(f"budget threshold {value} must be in (0, 1] with at most 4 decimals")
        if len(set(values)) != len(values):
            raise ValueError("duplicate budget threshold")
        return tuple(sorted(values))


class TenantConfig(_Strict):
    """One tenant: its verification keys, limits, upstream and callback."""

    id: str = Field(min_length=1, max_length=128)
    name: str = ""
    keys: tuple[KeyConfig, ...] = ()
    jwks_file: str | None = None
    jwks_url: str | None = None
    # How often the jwks_url is fetched again (default: gateway.jwks_refresh_s).
    jwks_refresh_s: float | None = Field(None, ge=30, le=86400)
    limits: Limits = Field(default_factory=Limits)
    upstream: TenantUpstream | None = None
    callback: CallbackConfig | None = None

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/?#\s]+(?:[/?#]\S*)?$", url, re.IGNORECASE):
            raise ValueError("jwks_url must be an absolute http:// or https:// URL")
        return url

    @model_validator(mode="after")
    def _has_keys(self) -> TenantConfig:
        if not (self.keys or self.jwks_file or self.jwks_url):
            raise ValueError("a tenant needs keys, jwks_file or jwks_url")
        if sum(1 for k in self.keys if k.kid is None) > 1:
            raise ValueError("at most one key without kid (the seed-format HS256 secret)")
        kids = [k.kid for k in self.keys if k.kid is not None]
        if len(kids) != len(set(kids)):
            raise ValueError("duplicate kid")
        return self


class IssuerConfig(_Strict):
    """The bundled issuer API: which tenant it mints for and its session settings."""

    tenant: str
    session_secret_env: str
    access_token_minutes: int = 30
    refresh_token_minutes: int = 60 * 24 * 7
    key_ttl: int = Field(600, ge=1)
    key_max_tokens: int = Field(256, ge=1)
    key_models: tuple[str, ...] = ()
    demo_users: bool = False
    database_url: str | None = None
    # Addresses or networks of the reverse proxies in front of the issuer. Only their
    # X-Forwarded-For is believed (the login throttle counts per client address); empty = none.
    trusted_proxies: tuple[str, ...] = ()

    @field_validator("trusted_proxies")
    @classmethod
    def _ip_networks(cls, proxies: tuple[str, ...]) -> tuple[str, ...]:
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies entry {proxy!r} is not an IP address or network") from None
        return proxies


class EdgeLimits(_Strict):
    """Envoy's downstream limits: slow or idle clients cannot hold connections; streams end in time."""

    max_connections: int = Field(10_000, ge=1)  # open client connections, all listeners
    request_headers_timeout_s: int = Field(10, ge=1)  # for the request line and headers
    request_timeout_s: int = Field(60, ge=1)  # for the whole request, body included
    idle_timeout_s: int = Field(300, ge=1)  # a connection with no stream open
    stream_idle_timeout_s: int = Field(300, ge=1)  # a stream with no bytes either way
    max_stream_duration_s: int = Field(600, ge=1)  # the longest answer (a long LLM stream)


class GatewayConfig(_Strict):
    """Gateway-wide settings."""

    xff_trusted_hops: int = Field(0, ge=0, le=10)  # proxies in front of Envoy whose X-Forwarded-For counts
    limits: EdgeLimits = Field(default_factory=EdgeLimits)
    audience: str = "dynaseal"
    host: str = "127.0.0.1"
    ports: Ports = Field(default_factory=Ports)
    data_dir: str = ".dynaseal"
    max_body_bytes: int = Field(1 << 20, ge=1024)
    # The log shipper rotates Envoy's access log past this size (0 = never; rotate it yourself).
    access_log_max_bytes: int = Field(64 << 20, ge=0)
    leeway_s: int = Field(30, ge=0, le=30)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    redis_url: str | None = None
    redis_timeout_ms: int = Field(50, ge=1, le=5000)
    kafka_bootstrap: str | None = None
    key_cache_size: int = Field(10_000, ge=0)
    # Remote JWKS (tenants' jwks_url) are fetched again this often; a kid removed there stops verifying.
    jwks_refresh_s: float = Field(300.0, ge=30, le=86400)
    # The origin clients reach the gateway at (e.g. https://llm.example.com, optionally with a path prefix):
    # what DPoP proofs' `htu` must name. Unset = the scheme and :authority Envoy saw, which the client chooses.
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _origin(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", url, re.IGNORECASE):
            raise ValueError("public_url must be http(s)://host[:port][/prefix], without query or fragment")
        return url.rstrip("/") if url is not None else None


class AuthzConfig(_Strict):
    """The authz service's own settings."""

    # The gRPC transport serving the same grpcio servicers: `native` (pygrpc-native: HTTP/2 in Rust,
    # the handlers on the Python event loop) or `grpcio` (grpc.aio), the switch back if native misbehaves.
    server: Literal["native", "grpcio"] = "native"
    # native only: threads doing the HTTP/2 work. 1 costs the least CPU per Check on 2 cores (measured
    # in bench/RESULTS.md); more only help where authz has cores to itself.
    io_threads: int = Field(1, ge=1, le=64)


class DynasealConfig(_Strict):
    """The whole config file."""

    env_file: str | None = None
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    authz: AuthzConfig = Field(default_factory=AuthzConfig)
    tenants: tuple[TenantConfig, ...]
    issuer: IssuerConfig | None = None

    @field_validator("tenants")
    @classmethod
    def _unique_ids(cls, tenants: tuple[TenantConfig, ...]) -> tuple[TenantConfig, ...]:
        ids = [t.id for t in tenants]
        if len(ids) != len(set(ids)):
            raise ValueError("duplicate tenant id")
        return tenants

    @model_validator(mode="after")
    def _issuer_tenant_exists(self) -> DynasealConfig:
        if self.issuer and self.issuer.tenant not in {t.id for t in self.tenants}:
            raise ValueError(f"issuer.tenant {self.issuer.tenant!r} is not a configured tenant")
        return self

    @property
    def data_path(self) -> Path:
        """The data directory as a path."""
        return Path(self.gateway.data_dir)


def bundled_dev_config() -> Path:
    """Path of the dev config shipped with the package (seed demo tenant)."""
    return Path(str(resources.files("dynaseal") / "defaults" / "dev.yaml"))


def resolve_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Explicit path, else $DYNASEAL_CONFIG, else ./dynaseal.yaml, else the bundled dev config."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("DYNASEAL_CONFIG"):
        return Path(env)
    local = Path(DEFAULT_CONFIG_NAME)
    return local if local.exists() else bundled_dev_config()


def load_env_file(path: Path) -> None:
    """Set KEY=VALUE lines from a dev env file, never overriding what the environment has."""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        os.environ.setdefault(name.strip(), value.strip())


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: {err.error_count()} problem(s):"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top)"
        lines.append(f"  - {where}: {e['msg']}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike[str] | None = None, data_dir: str | None = None) -> DynasealConfig:
    """Read, validate and return the config; `data_dir` overrides the file's (tests, CLI)."""
    cfg_path = resolve_config_path(path)
    try:
        raw = yaml.safe_load(cfg_path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {cfg_path}") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {cfg_path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg_path}: top level must be a mapping")
    if data_dir is not None:
        raw.setdefault("gateway", {})["data_dir"] = data_dir
    try:
        cfg = DynasealConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(cfg_path, exc)) from None
    if cfg.env_file:
        env_path = Path(cfg.env_file)
        if not env_path.is_absolute():
            env_path = cfg_path.parent / env_path
        if env_path.exists():
            load_env_file(env_path)
    return cfg


def expand_path(template: str, cfg: DynasealConfig) -> Path:
    """Expand `{data_dir}` in a configured path."""
    return Path(template.replace("{data_dir}", cfg.gateway.data_dir))
