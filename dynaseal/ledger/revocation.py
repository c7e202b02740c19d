"""Revoking a dynamic key: a Redis marker that lives until the key would have expired anyway.

The marker names the tenant and the key id: revoking tenant A's `jti` never touches tenant B's
key that happens to carry the same `jti`. On a Redis Cluster it lives in the key's slot, where
the admit script reads it. One function writes it, on the core's asyncio client: the admin API
and the issuer await it, `dynaseal key revoke` runs it with `asyncio.run`.
"""

from __future__ import annotations

import time

from dynaseal.config import MAX_LEEWAY_S
from dynaseal.ledger import redis_keys
from dynaseal.ledger.redis_async import AsyncLedgerRedis, connect


def _ttl(exp: float, leeway_s: int) -> int:
    # Revocation outlives exp by the verification leeway (gateway.leeway_s) so a key is never valid again.
    return max(1, int(exp - time.time()) + leeway_s)


def marker(tenant: str, jti: str, ancestors: tuple[str, ...] = ()) -> str:
    """The revocation marker of a key; a child key's (`ancestors`: the jtis from the root down to its
    parent, as its callbacks' `chain` lists them) lives under its root's tag."""
    if not ancestors:
        return redis_keys.revoked(tenant, jti)
    return redis_keys.level_keys(tenant, (*ancestors, jti))[0]


async def revoke(redis: AsyncLedgerRedis, tenant: str, jti: str, exp: float, ancestors: tuple[str, ...] = (), *,
                 leeway_s: int = MAX_LEEWAY_S) -> None:
    """Mark tenant's `jti` revoked until its `exp` plus `leeway_s` (the config's gateway.leeway_s; by default
    the largest a config may set); every key below it is refused with it."""
    name = marker(tenant, jti, ancestors)
    await redis.execute_on(name, "SET", name, "1", "EX", _ttl(exp, leeway_s))


async def revoke_at(redis_url: str, timeout_s: float, tenant: str, jti: str, exp: float,
                    ancestors: tuple[str, ...] = (), *, leeway_s: int = MAX_LEEWAY_S) -> None:
    """`revoke` on a client of its own for `redis_url`, closed after: revocations are rare, and a client
    belongs to the event loop that used it first (a service's handlers and a CLI's `asyncio.run` differ)."""
    client = connect(redis_url, timeout_s)
    try:
        await revoke(client, tenant, jti, exp, ancestors, leeway_s=leeway_s)
    finally:
        await client.aclose()
