"""Revoking a dynamic key: a Redis marker that lives until the key would have expired anyway.

The marker names the tenant and the key id: revoking tenant A's `jti` never touches tenant B's
key that happens to carry the same `jti`. On a Redis Cluster it lives in the key's slot, where
the admit script reads it.
"""

from __future__ import annotations

import time

from dynaseal.config import MAX_LEEWAY_S
from dynaseal.ledger import redis_keys
from dynaseal.ledger.redis_connect import AsyncClient, SyncClient


def _ttl(exp: float, leeway_s: int) -> int:
    # Revocation outlives exp by the verification leeway (gateway.leeway_s) so a key is never valid again.
    return max(1, int(exp - time.time()) + leeway_s)


def marker(tenant: str, jti: str, ancestors: tuple[str, ...] = ()) -> str:
    """The revocation marker of a key; a child key's (`ancestors`: the jtis from the root down to its
    parent, as its callbacks' `chain` lists them) lives under its root's tag."""
    if not ancestors:
        return redis_keys.revoked(tenant, jti)
    return redis_keys.level_keys(tenant, (*ancestors, jti))[0]


def revoke(redis: SyncClient, tenant: str, jti: str, exp: float, ancestors: tuple[str, ...] = (), *,
           leeway_s: int = MAX_LEEWAY_S) -> None:
    """Mark tenant's `jti` revoked until its `exp` plus `leeway_s` (the config's gateway.leeway_s; by default
    the largest a config may set); every key below it is refused with it."""
    redis.set(marker(tenant, jti, ancestors), "1", ex=_ttl(exp, leeway_s))


async def revoke_async(redis: AsyncClient, tenant: str, jti: str, exp: float,
                       ancestors: tuple[str, ...] = (), *, leeway_s: int = MAX_LEEWAY_S) -> None:
    """Async form of `revoke`."""
    await redis.set(marker(tenant, jti, ancestors), "1", ex=_ttl(exp, leeway_s))
