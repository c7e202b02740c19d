"""The Lua scripts of a key chain's ledger: one admission, one settlement, one release, one slot each.

A plain key is a chain of one level; a child key's levels (root first) all live under its root's hash
tag (dynaseal.ledger.redis_keys.level_keys), so one script sees every level. KEYS come 6 per level:
revoked, counters, reservations, deadlines, rpm window, settled.

Counters hash fields: `uses` (admitted requests), `reserved` (tokens held by open reservations),
`spent` (tokens settled); money in integer micro-units of the tenant's currency: `reserved_cost`,
`spent_cost`. Reservations hash: request_id -> tokens held, `<request_id>#c` -> micro-units held (`#`
never occurs in a request id). An expired reservation is billed in full (never overspend) and
remembered in `settled` with a `p:` (provisional) mark, so a late settlement corrects it exactly once.
Budget thresholds: counters field `thr:<tokens|cost>:<basis points>` holds the spend at the crossing
while its callback is pending, -1 once delivered.

Result codes are the enums of dynaseal.ledger.outcomes, written into every script as Lua locals.
"""

from __future__ import annotations

from dynaseal.ledger.outcomes import LUA_CONSTANTS

# Amounts given back are written `0 - x`, never `-x`: Lua makes -0 of a zero, and Redis refuses "-0" as an
# integer (a zero-cost reservation, e.g. a free model, could then never be settled nor expired).
_LEVELS = LUA_CONSTANTS + """
local function key(level, i) return KEYS[(level - 1) * 6 + i] end

-- Expire stale reservations of one level: bill them (tokens and money) provisionally.
local function expire_stale(level, now)
  local stale = redis.call('ZRANGEBYSCORE', key(level, 4), '-inf', now)
  for _, rid in ipairs(stale) do
    local held = tonumber(redis.call('HGET', key(level, 3), rid) or '0')
    redis.call('HDEL', key(level, 3), rid)
    redis.call('HINCRBY', key(level, 2), 'reserved', 0 - held)
    redis.call('HINCRBY', key(level, 2), 'spent', held)
    redis.call('HSET', key(level, 6), rid, 'p:' .. held)
    -- The root's expiries are indexed for their callbacks (dynaseal.ledger.expiry_notices; same slot).
    if level == 1 then redis.call('ZADD', key(1, 4) .. ':expired', now, rid) end
    local held_cost = redis.call('HGET', key(level, 3), rid .. '#c')
    if held_cost then
      redis.call('HDEL', key(level, 3), rid .. '#c')
      redis.call('HINCRBY', key(level, 2), 'reserved_cost', 0 - tonumber(held_cost))
      redis.call('HINCRBY', key(level, 2), 'spent_cost', tonumber(held_cost))
      redis.call('HSET', key(level, 6), rid .. '#c', 'p:' .. held_cost)
    end
  end
  if #stale > 0 then redis.call('ZREMRANGEBYSCORE', key(level, 4), '-inf', now) end
  if #stale > 0 and level == 1 then redis.call('PEXPIRE', key(1, 4) .. ':expired', 604800000) end
end

-- Counters live until the key's expiry (+ a margin) and never less: a settlement that does not
-- know the key's exp must not shorten a long-lived key's counters to a day (fresh limits).
local function keep_until(level, ttl)
  for i = 2, 6 do
    if redis.call('TTL', key(level, i)) < ttl then redis.call('EXPIRE', key(level, i), ttl) end
  end
end
"""

# KEYS: 6 per level (root first), then the family's DPoP proof set when a proof is spent.
# ARGV: now_ms, request_id, reserve (tokens), reserve_cost (micro-units; -1 = unpriced model),
#       reservation_ttl_ms, key_ttl_s, deadline_ms (Redis's own clock; 0 = none), levels,
#       per level: budget, uses, rpm, budget_cost (-1 = no limit), then the proof's id, keep-until (ms), set TTL (ms).
# Returns {code, level, spent, reserved, retry_after_ms}: `level` refused (1 = root), with its counters (the
# money counters for MONEY_SPENT).
#
# Order: the deadline first, in Redis's clock (a script Redis only runs after authz gave up writes
# nothing, so a request answered 503 never spends); the proof next (spent even if the request is refused
# further on: RFC 9449 §11.1); then every level is checked, and only if all pass is anything written,
# at every level alike: a child's spending is charged to each ancestor atomically.
ADMIT = _LEVELS + """
local deadline = tonumber(ARGV[7])
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then
    return {PAST_DEADLINE, 0, 0, 0, 0}
  end
end
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local reserve = tonumber(ARGV[3])
local reserve_cost = tonumber(ARGV[4])
local levels = tonumber(ARGV[8])
local proofs = KEYS[levels * 6 + 1]
if proofs then
  local at = 9 + levels * 4
  redis.call('ZREMRANGEBYSCORE', proofs, '-inf', now)
  if redis.call('ZSCORE', proofs, ARGV[at]) then return {PROOF_REPLAYED, levels, 0, 0, 0} end
  redis.call('ZADD', proofs, ARGV[at + 1], ARGV[at])
  redis.call('PEXPIRE', proofs, ARGV[at + 2])
end
for level = 1, levels do
  if redis.call('EXISTS', key(level, 1)) == 1 then return {REVOKED, level, 0, 0, 0} end
end
for level = 1, levels do
  expire_stale(level, now)
  if redis.call('HEXISTS', key(level, 3), rid) == 1 or redis.call('HEXISTS', key(level, 6), rid) == 1 then
    return {DUPLICATE_REQUEST, level, 0, 0, 0}
  end
end
for level = 1, levels do
  local at = 9 + (level - 1) * 4
  local budget, uses, rpm = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local budget_cost = tonumber(ARGV[at + 3])
  local c = redis.call('HMGET', key(level, 2), 'uses', 'reserved', 'spent', 'reserved_cost', 'spent_cost')
  local used, reserved, spent = tonumber(c[1] or '0'), tonumber(c[2] or '0'), tonumber(c[3] or '0')
  if uses >= 0 and used >= uses then return {USES_SPENT, level, spent, reserved, 0} end
  if rpm >= 0 then
    redis.call('ZREMRANGEBYSCORE', key(level, 5), '-inf', now - 60000)
    if redis.call('ZCARD', key(level, 5)) >= rpm then
      local oldest = redis.call('ZRANGE', key(level, 5), 0, 0, 'WITHSCORES')
      return {RATE_LIMITED, level, spent, reserved, tonumber(oldest[2]) + 60000 - now}
    end
  end
  if budget >= 0 and spent + reserved + reserve > budget then return {BUDGET_SPENT, level, spent, reserved, 0} end
  -- A money budget admits only priced requests.
  if budget_cost >= 0 then
    local reserved_cost, spent_cost = tonumber(c[4] or '0'), tonumber(c[5] or '0')
    if reserve_cost < 0 or spent_cost + reserved_cost + reserve_cost > budget_cost then
      return {MONEY_SPENT, level, spent_cost, reserved_cost, 0}
    end
  end
end
local ttl = tonumber(ARGV[6])
for level = 1, levels do
  redis.call('HINCRBY', key(level, 2), 'uses', 1)
  redis.call('HINCRBY', key(level, 2), 'reserved', reserve)
  redis.call('HSET', key(level, 3), rid, reserve)
  redis.call('ZADD', key(level, 4), now + tonumber(ARGV[5]), rid)
  if tonumber(ARGV[9 + (level - 1) * 4 + 2]) >= 0 then redis.call('ZADD', key(level, 5), now, rid) end
  if reserve_cost >= 0 then
    redis.call('HINCRBY', key(level, 2), 'reserved_cost', reserve_cost)
    redis.call('HSET', key(level, 3), rid .. '#c', reserve_cost)
  end
  keep_until(level, ttl)
end
return {ADMITTED, levels, 0, reserve, 0}
"""

# The one compensation: the tenant's slot refused (or failed) after ADMIT admitted. KEYS: as ADMIT
# (without the proof set). ARGV: request_id, levels. At every level it undoes exactly what ADMIT wrote —
# the use, the tokens, the money, the rpm slot — or, if expiry already billed the reservation, that bill.
# The DPoP proof stays spent. The id is marked cancelled (`c`): never admitted again, nor billed by a
# stray settlement. A level that settled the id (or already cancelled it) is left alone, its rpm slot too.
# Returns the number of levels released (0: nothing was held; idempotent). TENANT_RELEASE is its twin on
# the tenant's slot (dynaseal.ledger.tenant_scripts), with the same state machine.
RELEASE = _LEVELS + """
local rid = ARGV[1]
local levels = tonumber(ARGV[2])
local released = 0
for level = 1, levels do
  local held = redis.call('HGET', key(level, 3), rid)
  local billed = redis.call('HGET', key(level, 6), rid)
  local provisional = billed and string.sub(billed, 1, 2) == 'p:'
  -- Settled or cancelled is final: the rpm slot of a request that was served stays taken.
  if held or provisional then
    redis.call('ZREM', key(level, 5), rid)
    if held then
      redis.call('HDEL', key(level, 3), rid)
      redis.call('ZREM', key(level, 4), rid)
      redis.call('HINCRBY', key(level, 2), 'reserved', 0 - tonumber(held))
    else
      redis.call('HINCRBY', key(level, 2), 'spent', 0 - tonumber(string.sub(billed, 3)))
    end
    local held_cost = redis.call('HGET', key(level, 3), rid .. '#c')
    local billed_cost = redis.call('HGET', key(level, 6), rid .. '#c')
    if held_cost then
      redis.call('HDEL', key(level, 3), rid .. '#c')
      redis.call('HINCRBY', key(level, 2), 'reserved_cost', 0 - tonumber(held_cost))
    elseif billed_cost and string.sub(billed_cost, 1, 2) == 'p:' then
      redis.call('HINCRBY', key(level, 2), 'spent_cost', 0 - tonumber(string.sub(billed_cost, 3)))
    end
    redis.call('HDEL', key(level, 6), rid .. '#c')
    redis.call('HINCRBY', key(level, 2), 'uses', -1)
    redis.call('HSET', key(level, 6), rid, 'c')
    released = released + 1
  end
end
return released
"""

# Settle a request's cost at one level like its tokens (a priced reservation whose cost is unknown is billed
# in full, never under-billed).
_SETTLE_COST = """
local function settle_cost(level, rid, actual_cost)
  local field = rid .. '#c'
  local held = redis.call('HGET', key(level, 3), field)
  local previous = redis.call('HGET', key(level, 6), field)
  if held then
    redis.call('HDEL', key(level, 3), field)
    redis.call('HINCRBY', key(level, 2), 'reserved_cost', 0 - tonumber(held))
    if actual_cost < 0 then actual_cost = tonumber(held) end
    redis.call('HINCRBY', key(level, 2), 'spent_cost', actual_cost)
  elseif previous then
    local billed = tonumber(string.sub(previous, 3))
    if actual_cost < 0 then actual_cost = billed end
    redis.call('HINCRBY', key(level, 2), 'spent_cost', actual_cost - billed)
  elseif actual_cost >= 0 then
    redis.call('HINCRBY', key(level, 2), 'spent_cost', actual_cost)
  else
    return
  end
  redis.call('HSET', key(level, 6), field, actual_cost)
end
"""

# The reply of SETTLE, with the budget thresholds of the requesting key (the deepest level) whose callbacks
# are pending. A threshold is marked (with the spend at its crossing) the first time a settlement finds the
# spend at or past it, and reported by every settlement until MARK_THRESHOLDS says it was delivered, so a
# consumer killed between settling and delivering sends it when the event is read again.
_SETTLED_REPLY = """
local function settled_reply(level, outcome)
  local counters = key(level, 2)
  local c = redis.call('HMGET', counters, 'spent', 'spent_cost')
  local reply = {outcome, tonumber(c[1] or '0'), tonumber(c[2] or '0')}
  local budgets = {{'tokens', c[1] or '0', ARGV[6]}, {'cost', c[2] or '0', ARGV[7]}}
  for bp in string.gmatch(ARGV[8], '%d+') do
    for _, budget in ipairs(budgets) do
      local kind, used, limit = budget[1], budget[2], budget[3]
      if tonumber(limit) > 0 then
        local field = 'thr:' .. kind .. ':' .. bp
        local mark = redis.call('HGET', counters, field)
        if not mark and tonumber(used) * 10000 >= tonumber(bp) * tonumber(limit) then
          mark = used
          redis.call('HSET', counters, field, mark)
        end
        if mark and tonumber(mark) >= 0 then
          table.insert(reply, kind .. ':' .. bp .. ':' .. mark .. ':' .. limit)
        end
      end
    end
  end
  return reply
end
"""

# KEYS: as RELEASE. ARGV: now_ms, request_id, actual_tokens, key_ttl_s,
#       actual_cost (micro-units; -1 = unknown), budget_tokens, budget_cost (-1 = none) of the requesting key,
#       thresholds (basis points, comma-separated; "" = none), levels.
# Each level is settled on its own, idempotently per request id. Returns {outcome, spent, spent_cost,
# pending threshold...} of the deepest level (SettleOutcome); a threshold is "kind:bp:spent_at_crossing:limit".
SETTLE = _LEVELS + _SETTLE_COST + _SETTLED_REPLY + """
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local actual = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local levels = tonumber(ARGV[9])
local outcome = ALREADY_SETTLED
for level = 1, levels do
  expire_stale(level, now)
  local previous = redis.call('HGET', key(level, 6), rid)
  if previous and string.sub(previous, 1, 2) ~= 'p:' then
    outcome = ALREADY_SETTLED
  else
    local held = redis.call('HGET', key(level, 3), rid)
    if held then
      redis.call('HDEL', key(level, 3), rid)
      redis.call('ZREM', key(level, 4), rid)
      redis.call('HINCRBY', key(level, 2), 'reserved', 0 - tonumber(held))
      redis.call('HINCRBY', key(level, 2), 'spent', actual)
      outcome = SETTLED
    elseif previous then
      redis.call('HINCRBY', key(level, 2), 'spent', actual - tonumber(string.sub(previous, 3)))
      outcome = CORRECTED
    else
      redis.call('HINCRBY', key(level, 2), 'spent', actual)
      outcome = UNRESERVED
    end
    settle_cost(level, rid, tonumber(ARGV[5]))
    redis.call('HSET', key(level, 6), rid, actual)
    keep_until(level, ttl)
  end
end
return settled_reply(levels, outcome)
"""

# KEYS: the revocation markers of a chain, root first (one slot). Returns the first revoked level, 0 if none.
# Read-only: for answers that reserve nothing (the model list).
REVOKED_LEVEL = """
for level = 1, #KEYS do
  if redis.call('EXISTS', KEYS[level]) == 1 then return level end
end
return 0
"""

# KEYS: the counters hash of the requesting key. ARGV: threshold fields (`thr:<kind>:<bp>`) whose callbacks
# were delivered (or dead-lettered): they are never reported again.
MARK_THRESHOLDS = """
for i = 1, #ARGV do
  local mark = redis.call('HGET', KEYS[1], ARGV[i])
  if mark and tonumber(mark) >= 0 then redis.call('HSET', KEYS[1], ARGV[i], -1) end
end
return 1
"""
