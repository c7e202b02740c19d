"""The Lua scripts that make admission and settlement atomic: one round trip, one slot each.

Counters hash fields: `uses` (admitted requests), `reserved` (tokens held by open
reservations), `spent` (tokens settled). Reservations hash: request_id -> tokens held.
An expired reservation is billed in full (never overspend) and remembered in `settled` with
a `p:` (provisional) mark, so a late settlement corrects it to the real usage exactly once.

Money rides along in the same hashes, in integer micro-units of the tenant's currency:
counters `reserved_cost` / `spent_cost`, and `<request_id>#c` fields in the reservations and
settled hashes (`#` never occurs in a request id). Budget thresholds: counters field
`thr:<tokens|cost>:<basis points>` holds the spend at the crossing while its callback is
pending, -1 once delivered. All money lines are marked `-- money` and only ever added.
"""

from __future__ import annotations

# Expire stale reservations of this key: bill them provisionally.
_EXPIRE = """
local function expire_stale(now)
  local stale = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
  for _, rid in ipairs(stale) do
    local held = tonumber(redis.call('HGET', KEYS[3], rid) or '0')
    redis.call('HDEL', KEYS[3], rid)
    redis.call('HINCRBY', KEYS[2], 'reserved', -held)
    redis.call('HINCRBY', KEYS[2], 'spent', held)
    redis.call('HSET', KEYS[6], rid, 'p:' .. held)
    -- money: the reservation's cost is billed in full too, and remembered for a late correction.
    local held_cost = redis.call('HGET', KEYS[3], rid .. '#c')
    if held_cost then
      redis.call('HDEL', KEYS[3], rid .. '#c')
      redis.call('HINCRBY', KEYS[2], 'reserved_cost', -tonumber(held_cost))
      redis.call('HINCRBY', KEYS[2], 'spent_cost', tonumber(held_cost))
      redis.call('HSET', KEYS[6], rid .. '#c', 'p:' .. held_cost)
    end
  end
  if #stale > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now) end
end

-- Counters live until the key's expiry (+ a margin) and never less: a settlement that does not
-- know the key's exp must not shorten a long-lived key's counters to a day (fresh limits).
local function keep_until(ttl)
  for i = 2, 6 do
    if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
  end
end
"""

# KEYS: revoked, counters, reservations, deadlines, rpm window, settled
# ARGV: now_ms, request_id, reserve, budget, uses, rpm, reservation_ttl_ms, key_ttl_s  (-1 = no limit),
#       deadline_ms (Redis's own clock; 0 = none),
#       dpop: proof_jti, forget_at_ms, set_ttl_ms (used only with KEYS[7]),
#       money: reserve_cost (micro-units; -1 = unpriced model), budget_cost (micro-units; -1 = none)
# Returns {status, spent, reserved, retry_after_ms}; status 1 = admitted, -1 revoked, -2 uses spent,
# -3 rpm, -4 budget, -5 request id already known (never admitted twice), -6 past the deadline,
# -7 DPoP proof replayed (see the appended KEYS[7] below), -8 money budget (then spent and reserved are
# the money counters). ARGV[10..12] belong to DPoP (empty strings when the key is not bound), the money
# arguments follow at ARGV[13..14].
#
# The deadline check comes first and uses Redis's clock: a script that Redis only gets to run after
# authz has given up on it (Redis paused, a slow fork) writes nothing, so a refused request never spends.
ADMIT = _EXPIRE + """
local deadline = tonumber(ARGV[9] or '0')
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then return {-6, 0, 0, 0} end
end
-- DPoP replay cache (RFC 9449 §11.1), appended: KEYS[7] the key's proof set, ARGV[10] the proof's id,
-- ARGV[11] when it may be forgotten (ms), ARGV[12] the set's TTL (ms). Only sender-constrained keys pass
-- them. Returns -7 for a proof seen before; a proof is spent even if the request is refused further on.
if KEYS[7] then
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', ARGV[1])
  if redis.call('ZSCORE', KEYS[7], ARGV[10]) then return {-7, 0, 0, 0} end
  redis.call('ZADD', KEYS[7], ARGV[11], ARGV[10])
  redis.call('PEXPIRE', KEYS[7], ARGV[12])
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, 0, 0, 0} end
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local reserve = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local uses = tonumber(ARGV[5])
local rpm = tonumber(ARGV[6])
expire_stale(now)
if redis.call('HEXISTS', KEYS[3], rid) == 1 or redis.call('HEXISTS', KEYS[6], rid) == 1 then
  return {-5, 0, 0, 0}
end
local c = redis.call('HMGET', KEYS[2], 'uses', 'reserved', 'spent')
local used = tonumber(c[1] or '0')
local reserved = tonumber(c[2] or '0')
local spent = tonumber(c[3] or '0')
if uses >= 0 and used >= uses then return {-2, spent, reserved, 0} end
if rpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[5]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
    return {-3, spent, reserved, tonumber(oldest[2]) + 60000 - now}
  end
end
if budget >= 0 and spent + reserved + reserve > budget then return {-4, spent, reserved, 0} end
-- money: the same check in micro-units; a money budget admits only priced requests.
local reserve_cost = tonumber(ARGV[13] or '-1')
local budget_cost = tonumber(ARGV[14] or '-1')
if budget_cost >= 0 then
  local m = redis.call('HMGET', KEYS[2], 'reserved_cost', 'spent_cost')
  local reserved_cost = tonumber(m[1] or '0')
  local spent_cost = tonumber(m[2] or '0')
  if reserve_cost < 0 or spent_cost + reserved_cost + reserve_cost > budget_cost then
    return {-8, spent_cost, reserved_cost, 0}
  end
end
redis.call('HINCRBY', KEYS[2], 'uses', 1)
redis.call('HINCRBY', KEYS[2], 'reserved', reserve)
redis.call('HSET', KEYS[3], rid, reserve)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[7]), rid)
if rpm >= 0 then redis.call('ZADD', KEYS[5], now, rid) end
if reserve_cost >= 0 then  -- money
  redis.call('HINCRBY', KEYS[2], 'reserved_cost', reserve_cost)
  redis.call('HSET', KEYS[3], rid .. '#c', reserve_cost)
end
local ttl = tonumber(ARGV[8])
keep_until(ttl)
return {1, spent, reserved + reserve, 0}
"""

# money: settle a request's cost like its tokens (a priced reservation whose cost is unknown is billed
# in full, never under-billed).
_SETTLE_COST = """
local function settle_cost(rid, actual_cost)
  local field = rid .. '#c'
  local held = redis.call('HGET', KEYS[3], field)
  local previous = redis.call('HGET', KEYS[6], field)
  if held then
    redis.call('HDEL', KEYS[3], field)
    redis.call('HINCRBY', KEYS[2], 'reserved_cost', -tonumber(held))
    if actual_cost < 0 then actual_cost = tonumber(held) end
    redis.call('HINCRBY', KEYS[2], 'spent_cost', actual_cost)
  elseif previous then
    local billed = tonumber(string.sub(previous, 3))
    if actual_cost < 0 then actual_cost = billed end
    redis.call('HINCRBY', KEYS[2], 'spent_cost', actual_cost - billed)
  elseif actual_cost >= 0 then
    redis.call('HINCRBY', KEYS[2], 'spent_cost', actual_cost)
  else
    return
  end
  redis.call('HSET', KEYS[6], field, actual_cost)
end
"""

# money: the reply of SETTLE, with the budget thresholds whose callbacks are pending. A threshold is
# marked (with the spend at its crossing) the first time a settlement finds the spend at or past it,
# and reported by every settlement of the key until MARK_THRESHOLDS says it was delivered, so a
# consumer killed between settling and delivering sends it when the event is read again.
_SETTLED_REPLY = """
local function settled_reply(outcome)
  local c = redis.call('HMGET', KEYS[2], 'spent', 'spent_cost')
  local reply = {outcome, tonumber(c[1] or '0'), tonumber(c[2] or '0')}
  local budgets = {{'tokens', c[1] or '0', ARGV[6] or '-1'}, {'cost', c[2] or '0', ARGV[7] or '-1'}}
  for bp in string.gmatch(ARGV[8] or '', '%d+') do
    for _, budget in ipairs(budgets) do
      local kind, used, limit = budget[1], budget[2], budget[3]
      if tonumber(limit) > 0 then
        local field = 'thr:' .. kind .. ':' .. bp
        local mark = redis.call('HGET', KEYS[2], field)
        if not mark and tonumber(used) * 10000 >= tonumber(bp) * tonumber(limit) then
          mark = used
          redis.call('HSET', KEYS[2], field, mark)
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

# KEYS: as ADMIT. ARGV: now_ms, request_id, actual_tokens, key_ttl_s,
#       money: actual_cost (micro-units; -1 = unknown), budget_tokens, budget_cost (-1 = none),
#       thresholds (basis points, comma-separated; "" = none)
# Returns {outcome, spent, spent_cost, pending threshold...}: outcome 1 settled an open reservation,
# 2 corrected an expired one, 3 billed a request with no reservation (e.g. Redis lost it), 0 already
# settled (idempotent); each pending threshold is "kind:basis_points:spent_at_crossing:limit".
SETTLE = _EXPIRE + _SETTLE_COST + _SETTLED_REPLY + """
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local actual = tonumber(ARGV[3])
expire_stale(now)
local outcome
local previous = redis.call('HGET', KEYS[6], rid)
if previous and string.sub(previous, 1, 2) ~= 'p:' then
  return settled_reply(0)
end
local held = redis.call('HGET', KEYS[3], rid)
if held then
  redis.call('HDEL', KEYS[3], rid)
  redis.call('ZREM', KEYS[4], rid)
  redis.call('HINCRBY', KEYS[2], 'reserved', -tonumber(held))
  redis.call('HINCRBY', KEYS[2], 'spent', actual)
  outcome = 1
elseif previous then
  redis.call('HINCRBY', KEYS[2], 'spent', actual - tonumber(string.sub(previous, 3)))
  outcome = 2
else
  redis.call('HINCRBY', KEYS[2], 'spent', actual)
  outcome = 3
end
settle_cost(rid, tonumber(ARGV[5] or '-1'))
redis.call('HSET', KEYS[6], rid, actual)
local ttl = tonumber(ARGV[4])
keep_until(ttl)
return settled_reply(outcome)
"""

# money. KEYS: the counters hash. ARGV: threshold fields (`thr:<kind>:<bp>`) whose callbacks were
# delivered (or dead-lettered): they are never reported again.
MARK_THRESHOLDS = """
for i = 1, #ARGV do
  local mark = redis.call('HGET', KEYS[1], ARGV[i])
  if mark and tonumber(mark) >= 0 then redis.call('HSET', KEYS[1], ARGV[i], -1) end
end
return 1
"""
