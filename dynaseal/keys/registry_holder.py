"""The registry in force: a config's registry with the latest remote JWKS pushed into it.

A `Registry` is a value, built once per config (re)load. The remote JWKS store (dynaseal.keys.remote_jwks)
changes under it, on a schedule or on an unknown `kid`; it pushes each new snapshot to every holder
that follows it, and the holder swaps in the rebuilt registry and a fresh verified-key cache in one
assignment. Whoever decides requests reads `holder.registry` / `holder.keys` and never rebuilds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dynaseal.keys.tenants import Registry, VerificationKey
from dynaseal.keys.verification import VerifiedKeyCache

if TYPE_CHECKING:
    from dynaseal.keys.remote_jwks import RemoteJwks


@dataclass(frozen=True, slots=True)
class JwksSnapshot:
    """Every followed tenant's latest remote keys, at one generation of the store."""

    generation: int
    keys_by_tenant: Mapping[str, tuple[VerificationKey, ...]]


@dataclass(frozen=True, slots=True)
class _InForce:
    registry: Registry
    keys: VerifiedKeyCache


class RegistryHolder:
    """Holds one config's registry and its cache; the remote JWKS store pushes key changes into it."""

    def __init__(self, base: Registry, cache_size: int = 10_000) -> None:
        self.base = base
        self.cache_size = cache_size
        self.store: RemoteJwks | None = base.remote_jwks
        self._in_force = _InForce(base, VerifiedKeyCache(base, cache_size))
        if self.store is not None:
            self.store.subscribe(self)  # weakly: a holder dropped at a reload stops being told
            if self.store.generation != base.remote_generation:
                self.push(self.store.snapshot())

    @property
    def registry(self) -> Registry:
        """The registry in force now."""
        return self._in_force.registry

    @property
    def keys(self) -> VerifiedKeyCache:
        """Verified keys cached against the registry in force (dropped with it: a withdrawn kid stops now)."""
        return self._in_force.keys

    def push(self, snapshot: JwksSnapshot) -> None:
        """A new remote snapshot: the config's registry with exactly these remote keys, and an empty cache."""
        registry = self.base.with_remote_keys(snapshot.keys_by_tenant, snapshot.generation)
        self._in_force = _InForce(registry, VerifiedKeyCache(registry, self.cache_size))

    async def refresh_for_unknown_kid(self, tenant_id: str) -> bool:
        """Ask the store for the tenant's JWKS again (rate-limited there); whether new keys were pushed."""
        tenant = self.registry.get(tenant_id)
        if self.store is None or tenant is None or not tenant.jwks_url:
            return False
        before = self.registry.remote_generation
        await self.store.refresh_for_unknown_kid(tenant_id)
        return self.registry.remote_generation != before
