"""The laptop stack's own settings (`local:`): ports of the mock upstream, Redis and Kafka that `dynaseal up` starts.

No service listens on these: the launcher starts those servers on them, and `dynaseal.runtime.locations`
(with the implicit upstream) points at them when no URL is configured. A deployment that names its Redis,
Kafka and upstream never reads them. The old spelling, under `gateway.ports`, is still accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from dynaseal.tenant_config import StrictModel

# Old spelling under gateway.ports -> field of `local:`.
LEGACY_PORTS = {"mock_upstream": "mock_upstream_port", "redis": "redis_port", "kafka": "kafka_port"}


class LocalStackConfig(StrictModel):
    """Ports of the servers the local stack starts beside the gateway (dev and tests only)."""

    mock_upstream_port: int = Field(8100, ge=1, le=65535)
    redis_port: int = Field(6379, ge=1, le=65535)
    kafka_port: int = Field(9092, ge=1, le=65535)

    def mock_upstream_url(self, host: str) -> str:
        """The bundled mock OpenAI server's base URL (the implicit upstream when none is configured)."""
        return f"http://{host}:{self.mock_upstream_port}/v1"

    def redis_url(self, host: str) -> str:
        """The local Redis's URL."""
        return f"redis://{host}:{self.redis_port}/0"

    def kafka_bootstrap(self, host: str) -> str:
        """The local broker's bootstrap address."""
        return f"{host}:{self.kafka_port}"


def lift_legacy_ports(data: Any) -> Any:
    """Raw config data with `gateway.ports.{mock_upstream,redis,kafka}` moved into `local:` (input untouched).

    Both spellings of one port with different values is an error: which one was meant cannot be told.
    """
    if not isinstance(data, Mapping):
        return data
    gateway = data.get("gateway")
    ports = gateway.get("ports") if isinstance(gateway, Mapping) else None
    if not isinstance(gateway, Mapping) or not isinstance(ports, Mapping) or not set(LEGACY_PORTS) & set(ports):
        return data
    local_raw = data.get("local")
    if isinstance(local_raw, BaseModel):
        local_raw = local_raw.model_dump(exclude_unset=True)
    if local_raw is not None and not isinstance(local_raw, Mapping):
        return data  # not a mapping: `local`'s own validation reports it
    local = dict(local_raw or {})
    for old, new in LEGACY_PORTS.items():
        if old not in ports:
            continue
        if new in local and local[new] != ports[old]:
            raise ValueError(f"gateway.ports.{old} (the old spelling) and local.{new} disagree: keep one")
        local[new] = ports[old]
    kept_ports = {name: value for name, value in ports.items() if name not in LEGACY_PORTS}
    return {**data, "gateway": {**gateway, "ports": kept_ports}, "local": local}
