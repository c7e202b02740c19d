"""Where things are: the URLs of the backing services and the paths under the data directory.

Each is spelled once here. URLs follow one order everywhere: the environment (`REDIS_URL`,
`KAFKA_BOOTSTRAP`: how a deployment points a container elsewhere) beats the config file, which
beats the local service `dynaseal up` starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dynaseal.config import DynasealConfig, config_environment

REDIS_URL_ENV = "REDIS_URL"
KAFKA_BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP"


@dataclass(frozen=True, slots=True)
class Resolved:
    """A resolved address and whether anyone configured it (else it is the local default)."""

    value: str
    configured: bool


def resolve_redis(cfg: DynasealConfig, env: Mapping[str, str] | None = None) -> Resolved:
    """$REDIS_URL, else gateway.redis_url, else the local Redis that `dynaseal up` starts."""
    explicit = (config_environment(cfg) if env is None else env).get(REDIS_URL_ENV) or cfg.gateway.redis_url
    return Resolved(explicit or cfg.local.redis_url(cfg.gateway.host), bool(explicit))


def resolve_kafka(cfg: DynasealConfig, env: Mapping[str, str] | None = None) -> Resolved:
    """$KAFKA_BOOTSTRAP, else gateway.kafka_bootstrap, else the local broker on local.kafka_port."""
    explicit = (config_environment(cfg) if env is None else env).get(KAFKA_BOOTSTRAP_ENV) or cfg.gateway.kafka_bootstrap
    return Resolved(explicit or cfg.local.kafka_bootstrap(cfg.gateway.host), bool(explicit))


def redis_url(cfg: DynasealConfig) -> str:
    """The Redis URL every service uses (see `resolve_redis`)."""
    return resolve_redis(cfg).value


def kafka_bootstrap(cfg: DynasealConfig) -> str:
    """The Kafka bootstrap servers every service uses (see `resolve_kafka`)."""
    return resolve_kafka(cfg).value


@dataclass(frozen=True, slots=True)
class Paths:
    """Every path under the data directory, named once."""

    data_dir: Path

    @property
    def envoy_dir(self) -> Path:
        """Envoy's directory: its rendered config (local stack) and the access log."""
        return self.data_dir / "envoy"

    @property
    def access_log(self) -> Path:
        """Envoy's JSON access log, which the shipper tails."""
        return self.envoy_dir / "access.log"

    @property
    def issuer_dir(self) -> Path:
        """The issuer's signing keys, its JWKS and its SQLite database."""
        return self.data_dir / "issuer"

    @property
    def issuer_db(self) -> Path:
        """The issuer's default SQLite database."""
        return self.issuer_dir / "issuer.db"

    @property
    def shipper_dir(self) -> Path:
        """The shipper's state."""
        return self.data_dir / "shipper"

    @property
    def checkpoint(self) -> Path:
        """The shipper's checkpoint: the last line Kafka acknowledged."""
        return self.shipper_dir / "checkpoint.json"

    @property
    def redis_dir(self) -> Path:
        """The local stack's Redis append-only file."""
        return self.data_dir / "redis"

    @property
    def logs_dir(self) -> Path:
        """The local stack's service logs."""
        return self.data_dir / "logs"


def paths_of(cfg: DynasealConfig) -> Paths:
    """The paths of a config's data directory."""
    return Paths(Path(cfg.gateway.data_dir))


def envoy_admin_url(cfg: DynasealConfig) -> str:
    """Envoy's admin interface (the shipper asks it to reopen the log after a rotation)."""
    return f"http://{cfg.gateway.host}:{cfg.gateway.ports.envoy_admin}"
