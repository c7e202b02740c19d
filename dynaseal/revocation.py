"""Revoking a dynamic key: a Redis marker that lives until the key would have expired anyway."""

from __future__ import annotations

import time

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from dynaseal import redis_keys

# Revocation outlives exp by the verification leeway so a key is never valid again.
LEEWAY_S = 30


def _ttl(exp: float) -> int:
    return max(1, int(exp - time.time()) + LEEWAY_S)


def revoke(redis: Redis, jti: str, exp: float) -> None:
    """Mark `jti` revoked until its `exp` (plus leeway)."""
    redis.set(redis_keys.revoked(jti), "1", ex=_ttl(exp))


async def revoke_async(redis: AsyncRedis, jti: str, exp: float) -> None:
    """Async form of `revoke`."""
    await redis.set(redis_keys.revoked(jti), "1", ex=_ttl(exp))
