"""Telling the gateway a key is revoked: the Redis marker authz checks on every request."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from dynaseal.config import MAX_LEEWAY_S
from dynaseal.ledger.revocation import revoke_at
from issuer_api.errors import ApiError, IssuerError

log = logging.getLogger("issuer_api.revocation")
TIMEOUT_S = 3.0


async def notify_revoked(redis_url: str, tenant: str, jti: str, exp: float, leeway_s: int = MAX_LEEWAY_S) -> None:
    """Write the revocation marker (kept `leeway_s` past `exp`); raise a 503 ApiError if Redis cannot be reached."""
    try:  # one server or a redis+cluster:// URL, on a client of its own (revocations are rare)
        await revoke_at(redis_url, TIMEOUT_S, tenant, jti, exp, leeway_s=leeway_s)
    except (RedisError, OSError) as exc:
        log.warning("gateway revocation failed", extra={"jti": jti, "error": type(exc).__name__})
        raise ApiError(503, IssuerError.GATEWAY_UNAVAILABLE, "could not reach the gateway's revocation store; "
                       "the key is not revoked yet, retry") from None
