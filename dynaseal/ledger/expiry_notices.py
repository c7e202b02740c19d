"""Expired reservations the access log never settled: find them, and claim each for its callback once.

An admitted request holds a reservation until its usage event settles it. When the event never
comes (the log line was destroyed), the reservation expires and is billed in full with a `p:`
(provisional) mark in the key's `settled` hash (quota_scripts). The expiry also indexes the request
id in the root key's `…:deadlines:expired` sorted set, so the request can still be reported to its
tenant: `expire_due` makes Redis bill reservations whose deadline passed on keys nobody touches any
more, `claim` moves ids from that index into `…:deadlines:claimed` with a lease — atomically, so of
several consumers exactly one gets each id — and `done` drops a claim once its notice is on Kafka.
A claim whose lease runs out (its consumer died first) is handed out again; an id a real settlement
reached meanwhile is dropped without a notice (its real callback tells the tenant).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dynaseal.ledger import redis_keys
from dynaseal.ledger.quota_scripts import _LEVELS
from dynaseal.ledger.redis_async import AsyncLedgerRedis

EXPIRED_SUFFIX = ":expired"
CLAIMED_SUFFIX = ":claimed"
KEEP_MS = 7 * 24 * 3600 * 1000

# KEYS: one level's six keys (the root's). ARGV: now_ms. Bills the root's stale reservations and indexes them.
EXPIRE_ROOT = _LEVELS + """
expire_stale(1, tonumber(ARGV[1]))
return 1
"""

# KEYS: expired index, claimed index, the root's settled hash. ARGV: now_ms, lease_ms, max.
# Returns rid, tokens, cost micro-units ('' = unpriced) for each id claimed.
CLAIM = """
local now, lease, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out, taken = {}, 0
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, max)
local fresh = redis.call('ZRANGE', KEYS[1], 0, max - 1)
for _, ids in ipairs({lapsed, fresh}) do
  for _, rid in ipairs(ids) do
    if taken < max then
      redis.call('ZREM', KEYS[1], rid)
      local billed = redis.call('HGET', KEYS[3], rid)
      if billed and string.sub(billed, 1, 2) == 'p:' then
        redis.call('ZADD', KEYS[2], now + lease, rid)
        local cost = redis.call('HGET', KEYS[3], rid .. '#c')
        if cost and string.sub(cost, 1, 2) == 'p:' then cost = string.sub(cost, 3) else cost = '' end
        out[#out + 1] = rid
        out[#out + 1] = string.sub(billed, 3)
        out[#out + 1] = cost
        taken = taken + 1
      else
        redis.call('ZREM', KEYS[2], rid)
      end
    end
  end
end
if taken > 0 then redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4])) end
return out
"""


@dataclass(frozen=True, slots=True)
class ExpiredReservation:
    """One expired, unsettled reservation claimed for its callback."""

    tenant: str
    jti: str  # the root key of the chain that made the request
    request_id: str
    tokens: int
    cost_micros: int | None  # None: the model had no price


def _unescape(part: str) -> str:
    return part.replace("%3A", ":").replace("%7B", "{").replace("%7D", "}").replace("%25", "%")


def parse_root(name: str, suffix: str) -> tuple[str, str] | None:
    """(tenant, jti) of a root key's `…{tenant:jti}<suffix>` name; None for other names (child levels)."""
    head = f"{redis_keys.PREFIX}:{{"
    if not name.startswith(head) or not name.endswith(f"}}{suffix}"):
        return None
    tag = name[len(head):-len(suffix) - 1]
    if "}" in tag or tag.count(":") != 1:
        return None
    tenant, jti = tag.split(":")
    return _unescape(tenant), _unescape(jti)


async def _names(client: AsyncLedgerRedis, pattern: str, max_keys: int) -> list[str]:
    names = []
    async for name in client.scan_iter(pattern):
        names.append(name)
        if len(names) >= max_keys:
            break
    return names


async def _due(client: AsyncLedgerRedis, name: str, now: int) -> bool:
    """Whether the sorted set `name` holds an entry scored `now` or earlier."""
    return bool(await client.execute_on(name, "ZRANGEBYSCORE", name, "-inf", now, "LIMIT", 0, 1))


async def expire_due(client: AsyncLedgerRedis, now_ms: int | None = None, max_keys: int = 100_000) -> int:
    """Bill the root reservations whose deadline passed (Redis's expiry is lazy otherwise); keys touched."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    touched = 0
    deadlines = ":" + redis_keys.reservation_deadlines("t", "j").rsplit(":", 1)[1]
    for name in await _names(client, f"{redis_keys.PREFIX}:*{deadlines}", max_keys):
        root = parse_root(name, deadlines)
        if root is None or not await _due(client, name, now):
            continue
        await client.eval_script(EXPIRE_ROOT, redis_keys.level_keys(root[0], (root[1],)), [now])
        touched += 1
    return touched


async def _claim_at(client: AsyncLedgerRedis, tenant: str, jti: str, base: str, now: int, lease_ms: int,
                    room: int) -> list[ExpiredReservation]:
    reply = await client.eval_script(CLAIM, [base + EXPIRED_SUFFIX, base + CLAIMED_SUFFIX,
                                             redis_keys.settled(tenant, jti)], [now, lease_ms, room, KEEP_MS])
    items = [v.decode() if isinstance(v, bytes) else str(v) for v in reply]
    return [ExpiredReservation(tenant, jti, items[i], int(items[i + 1]), int(items[i + 2]) if items[i + 2] else None)
            for i in range(0, len(items), 3)]


async def claim(client: AsyncLedgerRedis, lease_ms: int, max_ids: int = 500, now_ms: int | None = None,
                max_keys: int = 100_000) -> list[ExpiredReservation]:
    """Claim up to `max_ids` expired reservations for their callbacks (each id goes to one caller per lease)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    found: list[ExpiredReservation] = []
    # New expiries, then claims whose lease lapsed (they sit only in the claimed index).
    for suffix, due in ((EXPIRED_SUFFIX, False), (CLAIMED_SUFFIX, True)):
        for name in await _names(client, f"{redis_keys.PREFIX}:*:deadlines{suffix}", max_keys):
            root = parse_root(name, ":deadlines" + suffix)
            if root is None or len(found) >= max_ids:
                continue
            if due and not await _due(client, name, now):
                continue
            found += await _claim_at(client, root[0], root[1], name[:-len(suffix)], now, lease_ms,
                                     max_ids - len(found))
    return found


async def done(client: AsyncLedgerRedis, reservation: ExpiredReservation) -> None:
    """The notice of this reservation is on Kafka: drop its claim."""
    name = redis_keys.reservation_deadlines(reservation.tenant, reservation.jti) + CLAIMED_SUFFIX
    await client.execute_on(name, "ZREM", name, reservation.request_id)
