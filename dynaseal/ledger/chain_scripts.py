"""The admit and settle scripts of a key chain (a child key and every key above it), one slot each.

Every level of a family lives under its root's hash tag (dynaseal.ledger.redis_keys.level_keys), so one
script checks every level — revoked, uses, rpm, budget — and only then writes the reservation at
every level: a child's spending is charged to each ancestor atomically, and revoking any ancestor
refuses the whole subtree from the next request on. Per level the rules are those of
quota_scripts.ADMIT / SETTLE (same counters, same provisional billing of expired reservations),
kept in a script of their own so that file's single-key scripts stay as they are.
"""

from __future__ import annotations

# Levels are groups of 6 KEYS, root first: revoked, counters, reservations, deadlines, rpm window, settled.
_LEVELS = """
local function key(level, i) return KEYS[(level - 1) * 6 + i] end

local function expire_stale(level, now)
  local stale = redis.call('ZRANGEBYSCORE', key(level, 4), '-inf', now)
  for _, rid in ipairs(stale) do
    local held = tonumber(redis.call('HGET', key(level, 3), rid) or '0')
    redis.call('HDEL', key(level, 3), rid)
    redis.call('HINCRBY', key(level, 2), 'reserved', -held)
    redis.call('HINCRBY', key(level, 2), 'spent', held)
    redis.call('HSET', key(level, 6), rid, 'p:' .. held)
  end
  if #stale > 0 then redis.call('ZREMRANGEBYSCORE', key(level, 4), '-inf', now) end
end

local function touch(level, ttl)
  for i = 2, 6 do redis.call('EXPIRE', key(level, i), ttl) end
end
"""

# KEYS: 6 per level (root first), then optionally the family's DPoP proof set.
# ARGV: now_ms, request_id, reserve, reservation_ttl_ms, key_ttl_s, deadline_ms (Redis's clock; 0 = none),
#       levels, then per level budget, uses, rpm (-1 = no limit at that level),
#       then optionally the proof's id, its keep-until (ms) and the set's TTL (ms).
# Returns {status, spent, reserved, retry_after_ms, level}: status as quota_scripts.ADMIT (1 admitted,
# -1 revoked, -2 uses, -3 rpm, -4 budget, -5 request id known, -6 past the deadline, -7 proof replayed);
# `level` (1 = root) is the level that refused.
ADMIT_CHAIN = _LEVELS + """
local deadline = tonumber(ARGV[6])
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then return {-6, 0, 0, 0, 0} end
end
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local reserve = tonumber(ARGV[3])
local levels = tonumber(ARGV[7])
local proofs = KEYS[levels * 6 + 1]
if proofs then
  local at = 8 + levels * 3
  redis.call('ZREMRANGEBYSCORE', proofs, '-inf', now)
  if redis.call('ZSCORE', proofs, ARGV[at]) then return {-7, 0, 0, 0, levels} end
  redis.call('ZADD', proofs, ARGV[at + 1], ARGV[at])
  redis.call('PEXPIRE', proofs, ARGV[at + 2])
end
for level = 1, levels do
  if redis.call('EXISTS', key(level, 1)) == 1 then return {-1, 0, 0, 0, level} end
end
for level = 1, levels do
  expire_stale(level, now)
  if redis.call('HEXISTS', key(level, 3), rid) == 1 or redis.call('HEXISTS', key(level, 6), rid) == 1 then
    return {-5, 0, 0, 0, level}
  end
end
for level = 1, levels do
  local at = 8 + (level - 1) * 3
  local budget, uses, rpm = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local c = redis.call('HMGET', key(level, 2), 'uses', 'reserved', 'spent')
  local used, reserved, spent = tonumber(c[1] or '0'), tonumber(c[2] or '0'), tonumber(c[3] or '0')
  if uses >= 0 and used >= uses then return {-2, spent, reserved, 0, level} end
  if rpm >= 0 then
    redis.call('ZREMRANGEBYSCORE', key(level, 5), '-inf', now - 60000)
    if redis.call('ZCARD', key(level, 5)) >= rpm then
      local oldest = redis.call('ZRANGE', key(level, 5), 0, 0, 'WITHSCORES')
      return {-3, spent, reserved, tonumber(oldest[2]) + 60000 - now, level}
    end
  end
  if budget >= 0 and spent + reserved + reserve > budget then return {-4, spent, reserved, 0, level} end
end
-- Every level passed: only now is anything written, at every level alike.
local ttl = tonumber(ARGV[5])
for level = 1, levels do
  local at = 8 + (level - 1) * 3
  redis.call('HINCRBY', key(level, 2), 'uses', 1)
  redis.call('HINCRBY', key(level, 2), 'reserved', reserve)
  redis.call('HSET', key(level, 3), rid, reserve)
  redis.call('ZADD', key(level, 4), now + tonumber(ARGV[4]), rid)
  if tonumber(ARGV[at + 2]) >= 0 then redis.call('ZADD', key(level, 5), now, rid) end
  touch(level, ttl)
end
return {1, 0, reserve, 0, levels}
"""

# KEYS: as ADMIT_CHAIN (without the proof set). ARGV: now_ms, request_id, actual_tokens, key_ttl_s, levels.
# Each level is settled as quota_scripts.SETTLE settles one key (idempotent per request id at each level).
# Returns {outcome, spent} of the deepest level (the key that made the request).
SETTLE_CHAIN = _LEVELS + """
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local actual = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local levels = tonumber(ARGV[5])
local outcome = 0
for level = 1, levels do
  expire_stale(level, now)
  local previous = redis.call('HGET', key(level, 6), rid)
  if previous and string.sub(previous, 1, 2) ~= 'p:' then
    outcome = 0
  else
    local held = redis.call('HGET', key(level, 3), rid)
    if held then
      redis.call('HDEL', key(level, 3), rid)
      redis.call('ZREM', key(level, 4), rid)
      redis.call('HINCRBY', key(level, 2), 'reserved', -tonumber(held))
      redis.call('HINCRBY', key(level, 2), 'spent', actual)
      outcome = 1
    elseif previous then
      redis.call('HINCRBY', key(level, 2), 'spent', actual - tonumber(string.sub(previous, 3)))
      outcome = 2
    else
      redis.call('HINCRBY', key(level, 2), 'spent', actual)
      outcome = 3
    end
    redis.call('HSET', key(level, 6), rid, actual)
    touch(level, ttl)
  end
end
return {outcome, tonumber(redis.call('HGET', key(levels, 2), 'spent') or '0')}
"""
