"""Lua scripts of the tenant-wide limits (`limits.tenant_budget`, `limits.tenant_rpm`), one slot each.

A tenant's keys live under the hash tag `{tenant}`, a different slot from every one of its
dynamic keys (`{tenant:jti}`): on a Redis Cluster a request touches two slots, possibly two
nodes, so no single script can see both. The protocol (`dynaseal.ledger.tenant_quota`):

  1. ADMIT on the key's slot (quota_scripts.ADMIT): every level of the key's chain — revocation,
     uses, rpm, token and money budgets.
  2. TENANT_ADMIT on the tenant's slot: tenant rpm and the tenant budget of the current window.
  3. If 2 refuses (or fails), quota_scripts.RELEASE gives every level back exactly what 1 took; the
     request is refused (after a failure TENANT_RELEASE runs too: 2 may have run, its reply lost).
  Settlement runs TENANT_SETTLE next to SETTLE; a give-back runs TENANT_RELEASE next to RELEASE.

Both tiers share one state machine per request id: open (reserved) -> settled, open -> expired (billed
in full, provisionally) -> corrected by a settlement, open or expired -> cancelled by a release, which
undoes the reservation or the provisional bill. Settled and cancelled are final: a settlement after a
release, a release after a settlement and a second release or settlement are no-ops, each on its slot.

Every step is atomic on its slot and each slot's sum of reservations is checked against its own
limit, so neither the tenant nor any key can be overspent; between steps a request holds a
reservation it may give back, so a concurrent request can be refused that a serial order would
have admitted (never the reverse).

Tenant budget hash fields: `r:<window>` (tokens held by open reservations), `s:<window>`
(tokens settled), `w` (the current window). Reservations hash: request_id -> `<window>|<tokens>`
(the window a request was reserved in is the one it settles in, even after midnight). Provisional
hash: request_id -> `<window>|<tokens>` billed by expiry, or `c` once released (cancelled); either
mark is dropped a day later (its deadline), so the tenant's slot never grows without bound.
"""

from __future__ import annotations

from dynaseal.ledger.outcomes import LUA_CONSTANTS

# KEYS (all `{tenant}`): budget, reservations, deadlines, provisional, rpm window.
# Stale reservations are billed in full to their own window and kept in `provisional` for a day
# (the deadlines set then holds the day's end), so a late settlement corrects them exactly once;
# after that day the mark is dropped, so nothing of a busy tenant grows without bound.
_TENANT_EXPIRE = LUA_CONSTANTS + """
local CORRECTION_MS = 86400000
local function split(held)
  local bar = string.find(held, '|', 1, true)
  return string.sub(held, 1, bar - 1), tonumber(string.sub(held, bar + 1))
end
local function tenant_expire(now)
  local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
  if #stale == 0 then return end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  for _, rid in ipairs(stale) do
    local held = redis.call('HGET', KEYS[2], rid)
    if held then
      local window, tokens = split(held)
      redis.call('HDEL', KEYS[2], rid)
      redis.call('HINCRBY', KEYS[1], 'r:' .. window, 0 - tokens)
      redis.call('HINCRBY', KEYS[1], 's:' .. window, tokens)
      redis.call('HSET', KEYS[4], rid, held)
      redis.call('ZADD', KEYS[3], now + CORRECTION_MS, rid)
    else
      redis.call('HDEL', KEYS[4], rid)
    end
  end
end
"""

# ARGV: now_ms, request_id, reserve, budget (-1 = none), rpm (-1 = none), reservation_ttl_ms,
#       window (e.g. d20261123 / m202611), ttl_s, deadline_ms (Redis's clock; 0 = none)
# Returns {code, spent, reserved, retry_after_ms}: ADMITTED, TENANT_RATE_LIMITED, TENANT_BUDGET_SPENT,
# DUPLICATE_REQUEST, PAST_DEADLINE (nothing written) — dynaseal.ledger.outcomes.AdmitCode.
TENANT_ADMIT = _TENANT_EXPIRE + """
local deadline = tonumber(ARGV[9] or '0')
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then return {PAST_DEADLINE, 0, 0, 0} end
end
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local reserve = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local rpm = tonumber(ARGV[5])
local window = ARGV[7]
tenant_expire(now)
if redis.call('HEXISTS', KEYS[2], rid) == 1 or redis.call('HEXISTS', KEYS[4], rid) == 1 then
  return {DUPLICATE_REQUEST, 0, 0, 0}
end
if rpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[5]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
    return {TENANT_RATE_LIMITED, 0, 0, tonumber(oldest[2]) + 60000 - now}
  end
end
local c = redis.call('HMGET', KEYS[1], 'r:' .. window, 's:' .. window, 'w')
local reserved = tonumber(c[1] or '0')
local spent = tonumber(c[2] or '0')
if budget >= 0 and spent + reserved + reserve > budget then return {TENANT_BUDGET_SPENT, spent, reserved, 0} end
if c[3] ~= window then
  -- A new window: forget windows before the previous one (a late settlement of those only
  -- recreates a field nobody reads, dropped at the next change).
  local previous = c[3]
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    local w = string.sub(field, 3)
    if field ~= 'w' and w ~= window and w ~= previous then redis.call('HDEL', KEYS[1], field) end
  end
  redis.call('HSET', KEYS[1], 'w', window)
end
redis.call('HINCRBY', KEYS[1], 'r:' .. window, reserve)
redis.call('HSET', KEYS[2], rid, window .. '|' .. reserve)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), rid)
if rpm >= 0 then redis.call('ZADD', KEYS[5], now, rid) end
local ttl = tonumber(ARGV[8])
for i = 1, 5 do redis.call('EXPIRE', KEYS[i], ttl) end
return {ADMITTED, spent, reserved + reserve, 0}
"""

# The tenant's half of the one release (quota_scripts.RELEASE is the chain's; the two run on their own
# slots and follow the same state machine). ARGV: request_id, now_ms, ttl_s. It undoes exactly what
# TENANT_ADMIT wrote — the tokens held and the rpm slot — or, if expiry already billed the reservation in
# full, that bill; then it marks the id cancelled (`c` in `provisional`, dropped after a day like a
# provisional bill): never admitted again here, and a late settlement is a no-op. A request settled,
# already released or never admitted here is left alone (its rpm slot too). Returns the number of tiers
# released: 1, or 0 when nothing was held (idempotent).
TENANT_RELEASE = _TENANT_EXPIRE + """
local rid = ARGV[1]
local now = tonumber(ARGV[2])
local held = redis.call('HGET', KEYS[2], rid)
local billed = redis.call('HGET', KEYS[4], rid)
if not held and (not billed or billed == 'c') then return 0 end
if held then
  local window, tokens = split(held)
  redis.call('HDEL', KEYS[2], rid)
  redis.call('HINCRBY', KEYS[1], 'r:' .. window, 0 - tokens)
else
  local window, tokens = split(billed)
  redis.call('HINCRBY', KEYS[1], 's:' .. window, 0 - tokens)
end
redis.call('ZREM', KEYS[5], rid)
redis.call('HSET', KEYS[4], rid, 'c')
-- The deadline now says when the mark is dropped (tenant_expire drops a deadline holding nothing).
redis.call('ZADD', KEYS[3], now + CORRECTION_MS, rid)
local ttl = tonumber(ARGV[3])
for i = 1, 5 do if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ttl) end end
return 1
"""

# ARGV: now_ms, request_id, actual_tokens, ttl_s.
# Returns {outcome, spent of that window}: SETTLED an open reservation, CORRECTED an expired one,
# ALREADY_SETTLED when there is nothing to do (settled before, released, or never reserved on the tenant).
TENANT_SETTLE = _TENANT_EXPIRE + """
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local actual = tonumber(ARGV[3])
tenant_expire(now)
local outcome = ALREADY_SETTLED
local window
local held = redis.call('HGET', KEYS[2], rid)
if held then
  local tokens
  window, tokens = split(held)
  redis.call('HDEL', KEYS[2], rid)
  redis.call('ZREM', KEYS[3], rid)
  redis.call('HINCRBY', KEYS[1], 'r:' .. window, 0 - tokens)
  redis.call('HINCRBY', KEYS[1], 's:' .. window, actual)
  outcome = SETTLED
else
  local billed = redis.call('HGET', KEYS[4], rid)
  -- Nothing held, or the id was released (cancelled): nothing to settle.
  if not billed or billed == 'c' then return {ALREADY_SETTLED, 0} end
  local tokens
  window, tokens = split(billed)
  redis.call('HDEL', KEYS[4], rid)
  redis.call('ZREM', KEYS[3], rid)
  redis.call('HINCRBY', KEYS[1], 's:' .. window, actual - tokens)
  outcome = CORRECTED
end
local ttl = tonumber(ARGV[4])
for i = 1, 5 do if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ttl) end end
return {outcome, tonumber(redis.call('HGET', KEYS[1], 's:' .. window) or '0')}
"""
