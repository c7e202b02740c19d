"""The config resolved once into a `Runtime`, and one view per service holding only what it needs.

A service builds its own view and nothing else, so it starts with only its own mounts and
environment: authz needs no callback secret, the consumer no tenant's `jwks_file` and no provider
key, the shipper no secret at all, the issuer only its own tenant's secrets. Secrets are looked up
in the runtime's `env` (the process environment, then the config's `env_file`), which nothing
writes. Each view checks everything it needs at once and raises one `ConfigError` listing every problem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from pydantic import SecretStr

from dynaseal.config import ConfigError, DynasealConfig, IssuerConfig, config_environment, load_config
from dynaseal.runtime.locations import Paths, Resolved, envoy_admin_url, paths_of, resolve_kafka, resolve_redis
from dynaseal.secrets import SecretResolver
from dynaseal.tenant_config import CallbackConfig, Limits

if TYPE_CHECKING:
    from dynaseal.keys.remote_jwks import RemoteJwks
    from dynaseal.keys.tenants import Registry


def _raise_if(errors: list[str], what: str) -> None:
    if errors:
        raise ConfigError(f"invalid {what} configuration:\n  - " + "\n  - ".join(errors))


@dataclass(frozen=True)
class AuthzView:
    """authz: every tenant's verification keys and limits (the registry), and its Redis (URL and deadline)."""

    registry: Registry
    redis_url: str
    redis_timeout_s: float
    key_cache_size: int


@dataclass(frozen=True, slots=True)
class CallbackTarget:
    """One tenant as the consumer sees it: where its callbacks go and the secret that signs them."""

    id: str
    callback: CallbackConfig | None
    callback_secret: SecretStr | None
    # Only to know whether settlement also runs on the tenant's slot (tenant-wide limits).
    limits: Limits = field(default_factory=Limits)
    # Secrets that also sign during a webhook secret's rotation (callback.previous_secret_envs).
    previous_secrets: tuple[SecretStr, ...] = ()


@dataclass(frozen=True)
class ConsumerView:
    """callback_consumer: every tenant's callback target, its Redis and its broker."""

    targets: Mapping[str, CallbackTarget]
    redis_url: str
    kafka_bootstrap: str

    def get(self, tenant_id: str) -> CallbackTarget | None:
        """The tenant with this id (None: not configured, its events are dead-lettered)."""
        return self.targets.get(tenant_id)


@dataclass(frozen=True)
class ShipperView:
    """log_shipper: the access log it tails, its checkpoint, its broker, Envoy's admin for rotation."""

    access_log: Path
    checkpoint: Path
    kafka_bootstrap: str
    envoy_admin: str
    max_log_bytes: int


@dataclass(frozen=True)
class IssuerView:
    """issuer_api: its one tenant's limits and secrets, its directory and database, the gateway's Redis."""

    tenant_id: str
    issuer: IssuerConfig
    limits: Limits
    audience: str
    session_secret: SecretStr
    callback_secret: SecretStr | None
    # None: no gateway Redis configured, so revocations are not pushed to the gateway.
    redis_url: str | None
    issuer_dir: Path
    database_url: str | None


@dataclass(frozen=True)
class Runtime:
    """One loaded config with its locations resolved; `authz()`, `consumer()`, ... resolve the rest."""

    cfg: DynasealConfig
    paths: Paths
    redis: Resolved
    kafka: Resolved
    env: Mapping[str, str] = field(repr=False)

    @classmethod
    def from_config(cls, cfg: DynasealConfig, env: Mapping[str, str] | None = None) -> Runtime:
        """Resolve a config's locations in `env` (default: the process environment), then its env_file."""
        env = config_environment(cfg, env)
        return cls(cfg, paths_of(cfg), resolve_redis(cfg, env), resolve_kafka(cfg, env), env)

    def authz(self, remote_jwks: RemoteJwks | None = None, *, fetch_new_jwks: bool = True) -> AuthzView:
        """Every tenant's keys (inline, jwks_file, jwks_url), the secrets authz uses (HS secrets, provider
        keys) and limits: authz's whole config. No tenant's callback secret is resolved."""
        from dynaseal.keys.tenants import build_registry

        registry = build_registry(self.cfg, remote_jwks, fetch_new_jwks=fetch_new_jwks, env=self.env)
        gw = self.cfg.gateway
        return AuthzView(registry, self.redis.value, gw.redis_timeout_ms / 1000, gw.key_cache_size)

    def consumer(self) -> ConsumerView:
        """Each tenant's callback and signing secret; no verification key, no provider key."""
        secrets = SecretResolver(self.env)
        targets = {tc.id: CallbackTarget(tc.id, tc.callback, secrets.reference(
            tc.callback.secret_env if tc.callback else None, tc.callback.secret_file if tc.callback else None,
            f"tenant {tc.id} callback"), tc.limits, _previous_secrets(secrets, tc.id, tc.callback))
            for tc in self.cfg.tenants}
        _raise_if(secrets.errors, "consumer")
        return ConsumerView(MappingProxyType(targets), self.redis.value, self.kafka.value)

    def shipper(self) -> ShipperView:
        """Paths and addresses only: the shipper holds no secret."""
        return ShipperView(self.paths.access_log, self.paths.checkpoint, self.kafka.value,
                           envoy_admin_url(self.cfg), self.cfg.gateway.access_log_max_bytes)

    def issuer(self) -> IssuerView:
        """The issuer's tenant: limits, session secret and callback secret; no other tenant is read."""
        issuer = self.cfg.issuer
        if issuer is None:
            raise ConfigError("the config has no `issuer` section: the issuer API has nothing to mint for")
        tenant = next(t for t in self.cfg.tenants if t.id == issuer.tenant)  # the validator checked it exists
        secrets = SecretResolver(self.env)
        session = secrets.optional(issuer.session_secret_env, "issuer.session_secret_env")
        callback = secrets.reference(tenant.callback.secret_env if tenant.callback else None,
                                     tenant.callback.secret_file if tenant.callback else None,
                                     f"tenant {tenant.id} callback")
        _raise_if(secrets.errors, "issuer")
        assert session is not None  # session_secret_env is required, so a missing one is an error above
        return IssuerView(tenant.id, issuer, tenant.limits, self.cfg.gateway.audience, session, callback,
                          self.redis.value if self.redis.configured else None, self.paths.issuer_dir,
                          issuer.database_url)


def load_runtime(path: str | os.PathLike[str] | None = None, data_dir: str | None = None,
                 env: Mapping[str, str] | None = None) -> Runtime:
    """Load the config (see `load_config`) and resolve its locations."""
    return Runtime.from_config(load_config(path, data_dir), env)


def _previous_secrets(secrets: SecretResolver, tenant_id: str,
                      callback: CallbackConfig | None) -> tuple[SecretStr, ...]:
    """The secrets that still sign a tenant's callbacks during a webhook secret's rotation."""
    found = (secrets.optional(name, f"tenant {tenant_id} callback previous secret")
             for name in (callback.previous_secret_envs if callback else ()))
    return tuple(secret for secret in found if secret is not None)
