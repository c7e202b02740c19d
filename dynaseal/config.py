"""The config file's schema and loader: YAML in, one validated immutable object out.

Secrets never appear in the file: they are named by environment variable (`*_env`) and resolved,
by each service for what it uses, in `config_environment(cfg)`: the process environment, then the
config's `env_file` for names it lacks. Loading never changes the process environment. Every
validation error is reported at once.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections import ChainMap
from collections.abc import Mapping, MutableMapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from dynaseal.edge_tls import EdgeTls
from dynaseal.local_stack import LocalStackConfig, lift_legacy_ports
from dynaseal.redaction import remember_secrets
from dynaseal.tenant_config import StrictModel, TenantConfig
from dynaseal.upstreams import UpstreamSpec, route_problems

DEFAULT_CONFIG_NAME = "dynaseal.yaml"
# The largest clock leeway gateway.leeway_s may set: what must outlive a key (revocations, DPoP replay ids).
MAX_LEEWAY_S = 30


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; the message lists every problem."""


class Ports(StrictModel):
    """Listening ports of the gateway's services (the laptop stack's mock, Redis and Kafka: `local:`)."""

    envoy: int = 8000
    envoy_admin: int = 9901
    issuer: int = 9000
    authz: int = 9191
    authz_metrics: int = 9102
    consumer_metrics: int = 9103
    shipper_metrics: int = 9104
    admin: int = 9300


class UpstreamConfig(StrictModel):
    """Where allowed requests go and with which provider credential (named by env var)."""

    base_url: str | None = None
    api_key_env: str | None = None
    # CA bundle Envoy verifies an https upstream against: the provider key must never go to an impostor.
    ca_file: str = "/etc/ssl/certs/ca-certificates.crt"
    # Client headers passed on to the provider beyond the fixed allowlist (content-type, accept, ...);
    # everything else a client sends (OpenAI-Organization, OpenAI-Beta, ...) is removed.
    forward_headers: tuple[str, ...] = ()


class IssuerConfig(StrictModel):
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
    # Ceilings on what one user may mint: uses per key (above: 400), keys per minute (above: 429).
    key_max_uses: int = Field(100_000, ge=1, le=10**9)
    mint_rate_per_minute: int = Field(60, ge=1, le=10_000)
    # SQLite only: `normal` syncs the write-ahead log at checkpoints, not at every commit (a crash of the
    # process loses nothing; an OS crash or power loss may lose the last commits); `full` syncs every one.
    sqlite_synchronous: Literal["normal", "full"] = "normal"

    @field_validator("trusted_proxies")
    @classmethod
    def _ip_networks(cls, proxies: tuple[str, ...]) -> tuple[str, ...]:
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies entry {proxy!r} is not an IP address or network") from None
        return proxies


class EdgeLimits(StrictModel):
    """Envoy's downstream limits: slow or idle clients cannot hold connections; streams end in time."""

    max_connections: int = Field(10_000, ge=1)  # open client connections, all listeners
    request_headers_timeout_s: int = Field(10, ge=1)  # for the request line and headers
    request_timeout_s: int = Field(60, ge=1)  # for the whole request, body included
    idle_timeout_s: int = Field(300, ge=1)  # a connection with no stream open
    stream_idle_timeout_s: int = Field(300, ge=1)  # a stream with no bytes either way
    max_stream_duration_s: int = Field(600, ge=1)  # the longest answer (a long LLM stream)


class GatewayConfig(StrictModel):
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
    leeway_s: int = Field(30, ge=0, le=MAX_LEEWAY_S)
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
    # An admitted request's reservation is billed in full (provisionally) when no usage event settled it by
    # then, and its tenant gets a `usage_source: reservation` callback (dynaseal.ledger.expiry_notices).
    reservation_ttl_s: float = Field(900.0, ge=1, le=86400)
    # Callback consumers `dynaseal up` starts (one consumer group; more than the usage topic's partitions idle).
    consumers: int = Field(2, ge=1, le=16)

    @field_validator("public_url")
    @classmethod
    def _origin(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", url, re.IGNORECASE):
            raise ValueError("public_url must be http(s)://host[:port][/prefix], without query or fragment")
        return url.rstrip("/") if url is not None else None

    # Providers by name, which tenants' routes send models to (dynaseal.upstreams).
    upstreams: tuple[UpstreamSpec, ...] = ()
    # The environment variable holding public_url, for configs shipped to many deployments: the
    # process refuses to start when it is unset (deploy/compose.yaml and deploy/k8s name one).
    public_url_env: str | None = None
    # TLS on the client listener (HTTP/2 and HTTP/1.1 by ALPN); unset = plain HTTP.
    tls: EdgeTls | None = None


class AuthzConfig(StrictModel):
    """The authz service's own settings."""

    # The gRPC transport serving the same grpcio servicers: `native` (pygrpc-native: HTTP/2 in Rust,
    # the handlers on the Python event loop) or `grpcio` (grpc.aio), the switch back if native misbehaves.
    server: Literal["native", "grpcio"] = "native"
    # native only: threads doing the HTTP/2 work. 1 costs the least CPU per Check on 2 cores (measured
    # in bench/RESULTS.md); more only help where authz has cores to itself.
    io_threads: int = Field(1, ge=1, le=64)


class AdminConfig(StrictModel):
    """The operator's admin API and console: who may call it and where it keeps tenants and usage."""

    # The bearer token operators present (named by env var or read from a mounted file).
    token_env: str | None = "DYNASEAL_ADMIN_TOKEN"
    token_file: str | None = None
    # SQLAlchemy URL of the admin store (tenants as data, usage); unset = SQLite in {data_dir}/admin.
    database_url: str | None = None
    # The seed's backend account user1@example.com / user1 for `issuer.tenant` (dev only).
    demo_accounts: bool = False
    # The store's URL from this environment variable instead (it carries the database password, so a
    # deployment takes it from a Secret); it and `database_url` exclude each other.
    database_url_env: str | None = None
    # Where Envoy reaches the admin service for the seed's registration routes (a compose service or a
    # Kubernetes Service name, or an IP); unset = the gateway's own address, as `dynaseal up` runs it.
    service_host: str | None = Field(None, max_length=253)

    @field_validator("service_host")
    @classmethod
    def _a_host(cls, value: str | None) -> str | None:
        # Written into Envoy's YAML as it is: a DNS name or an IP address, nothing else.
        label = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
        if value is None or re.fullmatch(rf"{label}(?:\.{label})*", value):
            return value
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError("must be a host name or an IP address") from None

    @model_validator(mode="after")
    def _one_database_url(self) -> AdminConfig:
        if self.database_url and self.database_url_env:
            raise ValueError("set admin.database_url or admin.database_url_env, not both")
        return self


class DynasealConfig(StrictModel):
    """The whole config file."""

    env_file: str | None = None
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    authz: AuthzConfig = Field(default_factory=AuthzConfig)
    tenants: tuple[TenantConfig, ...]
    issuer: IssuerConfig | None = None
    admin: AdminConfig | None = None

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

    @model_validator(mode="after")
    def _routes_consistent(self) -> DynasealConfig:
        if problems := route_problems(self):
            raise ValueError("; ".join(problems))
        return self

    @property
    def data_path(self) -> Path:
        """The data directory as a path."""
        return Path(self.gateway.data_dir)

    # The laptop stack's mock upstream, Redis and Kafka ports (once gateway.ports.{mock_upstream,redis,kafka}).
    local: LocalStackConfig = Field(default_factory=LocalStackConfig)

    @model_validator(mode="before")
    @classmethod
    def _old_local_ports(cls, data: Any) -> Any:
        return lift_legacy_ports(data)


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


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of a dev env file (blank lines and `#` comments skipped); nothing is set."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        values.setdefault(name.strip(), value.strip())
    return values


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
    if cfg.env_file and not Path(cfg.env_file).is_absolute():
        # Relative to the config file; kept absolute so every service reads the same file, whatever its cwd.
        cfg = cfg.model_copy(update={"env_file": str((cfg_path.parent / cfg.env_file).absolute())})
    return _public_url_from_env(cfg, cfg_path)


def _public_url_from_env(cfg: DynasealConfig, cfg_path: Path) -> DynasealConfig:
    """gateway.public_url read from gateway.public_url_env: unset or invalid refuses the config."""
    name = cfg.gateway.public_url_env
    if name is None:
        return cfg
    value = config_environment(cfg).get(name, "").strip()
    if not value:
        raise ConfigError(f"{cfg_path}: gateway.public_url_env names {name}, which is not set "
                          "(the origin clients reach the gateway at, e.g. https://llm.example.com)")
    try:
        gateway = GatewayConfig.model_validate({**cfg.gateway.model_dump(), "public_url": value})
    except ValidationError as exc:
        raise ConfigError(f"{cfg_path}: {name}: {exc.errors()[0]['msg']}") from None
    return cfg.model_copy(update={"gateway": gateway})


def expand_path(template: str, cfg: DynasealConfig) -> Path:
    """Expand `{data_dir}` in a configured path."""
    return Path(template.replace("{data_dir}", cfg.gateway.data_dir))


def config_environment(cfg: DynasealConfig, env: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """Where a config's `*_env` names are looked up: `env` (default: the process environment), then the
    config's `env_file` for names it lacks (a variable set in the environment always wins).

    Read, never written: loading a config leaves the process environment as it was.
    """
    path = Path(cfg.env_file) if cfg.env_file else None
    if path is None or not path.is_file():
        return os.environ if env is None else env
    # The live environment (a variable set later is seen), never copied into.
    first: MutableMapping[str, str] = os.environ if env is None else dict(env)
    return ChainMap(first, read_env_file(path))


def admin_database_url(cfg: DynasealConfig) -> str | None:
    """The admin stores' SQLAlchemy URL: `admin.database_url`, else the variable `admin.database_url_env`
    names (ConfigError while it is unset); None = the SQLite default in {data_dir}/admin."""
    if cfg.admin is None:
        return None
    if cfg.admin.database_url:
        return cfg.admin.database_url
    name = cfg.admin.database_url_env
    if name is None:
        return None
    value = config_environment(cfg).get(name, "").strip()
    if not value:
        # Fail closed: without it each service would open a SQLite store of its own and never see the others.
        raise ConfigError(f"admin.database_url_env names {name}, which is not set (the tenant and usage "
                          "stores' SQLAlchemy URL, e.g. postgresql+psycopg://user:password@host/dynaseal)")
    try:
        password = urlsplit(value).password
    except ValueError:  # not a URL SQLAlchemy would take either: its own error names it
        password = None
    remember_secrets([value, password])  # a log line that quotes it shows neither
    return value
