"""The Lua scripts that make admission and settlement atomic: one round trip, one slot each.

Counters hash fields: `uses` (admitted requests), `reserved` (tokens held by open
reservations), `spent` (tokens settled). Reservations hash: request_id -> tokens held.
An expired reservation is billed in full (never overspend) and remembered in `settled` with
a `p:` (provisional) mark, so a late settlement corrects it to the real usage exactly once.
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
#       deadline_ms (Redis's own clock; 0 = none)
# Returns {status, spent, reserved, retry_after_ms}; status 1 = admitted, -1 revoked, -2 uses spent,
# -3 rpm, -4 budget, -5 request id already known (never admitted twice), -6 past the deadline,
# -7 DPoP proof replayed (see the appended KEYS[7] below).
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
redis.call('HINCRBY', KEYS[2], 'uses', 1)
redis.call('HINCRBY', KEYS[2], 'reserved', reserve)
redis.call('HSET', KEYS[3], rid, reserve)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[7]), rid)
if rpm >= 0 then redis.call('ZADD', KEYS[5], now, rid) end
local ttl = tonumber(ARGV[8])
keep_until(ttl)
return {1, spent, reserved + reserve, 0}
"""

# KEYS: as ADMIT. ARGV: now_ms, request_id, actual_tokens, key_ttl_s
# Returns {outcome, spent}: 1 settled an open reservation, 2 corrected an expired one,
# 3 billed a request with no reservation (e.g. Redis lost it), 0 already settled (idempotent).
SETTLE = _EXPIRE + """
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local actual = tonumber(ARGV[3])
expire_stale(now)
local outcome
local previous = redis.call('HGET', KEYS[6], rid)
if previous and string.sub(previous, 1, 2) ~= 'p:' then
  return {0, tonumber(redis.call('HGET', KEYS[2], 'spent') or '0')}
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
redis.call('HSET', KEYS[6], rid, actual)
local ttl = tonumber(ARGV[4])
keep_until(ttl)
return {outcome, tonumber(redis.call('HGET', KEYS[2], 'spent') or '0')}
"""
