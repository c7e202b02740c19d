"""Giving back what an unserved request took: its use, its rpm slot, its reservation (tokens and money).

A request no provider served (never sent, or refused by every provider with 5xx/429 before any
output) must spend nothing. Envoy asks for the give-back (dynaseal.policy.give_back) before the
client sees the failure, so an SDK's automatic retry finds the use back. The request id is then
marked `g` in the settled hash: its later settlement (the usage event, with no usage) is a
duplicate and bills nothing; a request already settled, or never reserved, gets nothing back.

Written on the current hash layout (redis_keys, quota_scripts) beside KEY_RELEASE, with the money
fields too, so it can be folded into one release when the ledger's admit/settle/release unify.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from dynaseal.ledger import redis_keys, tenant_quota
from dynaseal.ledger.tenant_scripts import TENANT_RELEASE

if TYPE_CHECKING:
    from dynaseal.ledger.quota import RedisQuota
    from dynaseal.tenant_config import Limits

# KEYS: as ADMIT (revoked, counters, reservations, deadlines, rpm window, settled). ARGV: request_id.
# Returns 1 when an open reservation was given back, 0 when there was none (settled, expired, unknown).
GIVE_BACK = """
local rid = ARGV[1]
local held = redis.call('HGET', KEYS[3], rid)
if not held then return 0 end
redis.call('HDEL', KEYS[3], rid)
redis.call('ZREM', KEYS[4], rid)
redis.call('ZREM', KEYS[5], rid)
redis.call('HINCRBY', KEYS[2], 'uses', -1)
redis.call('HINCRBY', KEYS[2], 'reserved', -tonumber(held))
local held_cost = redis.call('HGET', KEYS[3], rid .. '#c')
if held_cost then
  redis.call('HDEL', KEYS[3], rid .. '#c')
  redis.call('HINCRBY', KEYS[2], 'reserved_cost', -tonumber(held_cost))
end
redis.call('HSET', KEYS[6], rid, 'g')
return 1
"""

# KEYS: the shared key's name. ARGV: a fresh random value. Every authz sharing the Redis uses one key.
_SHARED_KEY = """
local k = redis.call('GET', KEYS[1])
if not k then
  redis.call('SET', KEYS[1], ARGV[1])
  k = ARGV[1]
end
return k
"""


def shared_key_name() -> str:
    """The Redis key holding the HMAC key of give-back tokens (not a tenant's: no tenant can reach it)."""
    return f"{redis_keys.PREFIX}:give-back-hmac"


class GiveBack:
    """Runs give-backs on the quota's Redis and holds the key their tokens are signed with."""

    def __init__(self, quota: RedisQuota) -> None:
        self.quota = quota
        self.hmac_key: bytes | None = None

    async def load_key(self) -> bytes | None:
        """The shared HMAC key (created by the first authz to ask); None while Redis cannot say."""
        if self.hmac_key is None:
            try:
                value = await self.quota._run(_SHARED_KEY, [shared_key_name()], [secrets.token_hex(32)])
            except RedisError:
                return None
            self.hmac_key = value if isinstance(value, bytes) else str(value).encode()
        return self.hmac_key

    async def run(self, tenant: str, jti: str, request_id: str, limits: Limits | None) -> bool:
        """Give back one request's use, rpm slot and reservation (and its tenant-wide reservation)."""
        from dynaseal.ledger.quota import script_keys

        given = await self.quota._run(GIVE_BACK, script_keys(tenant, jti), [request_id])
        if given and limits is not None and tenant_quota.has_tenant_limits(limits):
            await self.quota._run(TENANT_RELEASE, tenant_quota.tenant_keys(tenant), [request_id])
        return bool(given)
