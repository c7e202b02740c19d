"""Giving back what an unserved request took: its use, its rpm slot, its reservation (tokens and money).

A request no provider served (never sent, or refused by every provider with 5xx/429 before any
output) must spend nothing. Envoy asks for the give-back (dynaseal.policy.give_back) before the
client sees the failure, so an SDK's automatic retry finds the use back. The request id is then
marked cancelled (`c`) in the settled hash: its later settlement (the usage event, with no usage) is a
duplicate and bills nothing; a request already settled, or never reserved, gets nothing back.

It is the ledger's one release (quota_scripts.RELEASE), which undoes exactly what admission did —
use, tokens, money, rpm slot — and marks the id cancelled, so its later settlement bills nothing; on
the tenant's slot its twin TENANT_RELEASE does the same (dynaseal.ledger.tenant_scripts).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from dynaseal.ledger import redis_keys, tenant_quota
from dynaseal.ledger.quota_scripts import RELEASE
from dynaseal.ledger.tenant_scripts import TENANT_RELEASE

if TYPE_CHECKING:
    from dynaseal.ledger.quota import RedisQuota
    from dynaseal.tenant_config import Limits

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
                value = await self.quota.run_script(_SHARED_KEY, [shared_key_name()], [secrets.token_hex(32)])
            except RedisError:
                return None
            self.hmac_key = value if isinstance(value, bytes) else str(value).encode()
        return self.hmac_key

    async def run(self, tenant: str, path: tuple[str, ...], request_id: str, limits: Limits | None) -> bool:
        """Give back one request's use, rpm slot and reservation at every level of its key's chain (`path`: the
        jtis from the root down), and its tenant-wide reservation."""
        from dynaseal.ledger.quota import chain_keys

        given = await self.quota.run_script(RELEASE, chain_keys(tenant, path), [request_id, len(path)])
        if given and limits is not None and tenant_quota.has_tenant_limits(limits):
            await self.quota.run_script(TENANT_RELEASE, tenant_quota.tenant_keys(tenant),
                                  tenant_quota.release_args(request_id))
        return bool(given)
