/**
 * Lua run by RedisStore, inlined so the compiled dist/ needs no extra files. Every key a script touches is
 * passed in KEYS and carries the same hash tag (`{<keyPrefix>}`), so each script runs on one Redis Cluster
 * slot. Arguments arrive as one JSON document in ARGV[1]. Amounts are integers (µUSD, tokens, calls):
 * Lua numbers are doubles, exact to 2^53, and Redis turns them into integer replies.
 *
 * Data per scope window (KEYS pair h, z):
 *   h  hash  usd tokens calls        settled charges
 *            r_usd r_tokens r_calls  held by unsettled reservations
 *            a_usd a_tokens a_calls  alert already reported in this window
 *            seen                    clock time of the last reserve/commit (workflow idle time)
 *   z  zset  member "<id>|<usd>|<tokens>|<calls>", score = expiry (clock ms)
 *
 * INVARIANT: r_<m> of h equals the sum of <m> over the members of z. Every script keeps it: a hold enters
 * both in one step (reserve); it leaves z only through ZREM/ZREMRANGEBYSCORE, and only the caller that
 * removed it (ZREM returned 1, or the reaper that listed it) subtracts it from r_<m>. So a hold is returned
 * exactly once whether it is committed, released or reaped, and in whatever order those race.
 * Expired holds are reaped before any check, so a crashed sidecar's holds return by themselves.
 * Times come from the caller's clock; key TTLs are only garbage collection.
 */

const COMMON = `
local M = {'usd', 'tokens', 'calls'}

local function num(v)
  return tonumber(v) or 0
end

-- A workflow window unseen for its idle time starts again from zero.
local function idleReset(h, z, idle, now)
  if idle > 0 then
    local seen = redis.call('HGET', h, 'seen')
    if seen and now - tonumber(seen) >= idle then
      redis.call('DEL', h, z)
    end
  end
end

-- Returns the holds that expired by now to the window.
local function reap(h, z, now)
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #gone == 0 then
    return
  end
  local d = {0, 0, 0}
  for _, member in ipairs(gone) do
    local u, t, c = string.match(member, '|(%d+)|(%d+)|(%d+)$')
    d[1] = d[1] + tonumber(u)
    d[2] = d[2] + tonumber(t)
    d[3] = d[3] + tonumber(c)
  end
  for i = 1, 3 do
    if d[i] ~= 0 then
      redis.call('HINCRBY', h, 'r_' .. M[i], -d[i])
    end
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
end

-- spent + held per metric.
local function usedOf(h)
  local v = redis.call('HMGET', h, 'usd', 'tokens', 'calls', 'r_usd', 'r_tokens', 'r_calls')
  return {num(v[1]) + num(v[4]), num(v[2]) + num(v[5]), num(v[3]) + num(v[6])}
end

-- Appends (window, metric, used) for every cap that reached the alert percent for the first time.
local function alerts(h, w, caps, pct, used, out)
  if pct <= 0 then
    return
  end
  for _, cap in ipairs(caps) do
    local m, limit = cap[1], cap[2]
    if used[m] * 100 >= limit * pct and redis.call('HSETNX', h, 'a_' .. M[m], 1) == 1 then
      table.insert(out, w)
      table.insert(out, m)
      table.insert(out, used[m])
    end
  end
end

local function touch(h, z, now, gc)
  redis.call('HSET', h, 'seen', now)
  redis.call('PEXPIRE', h, gc)
  redis.call('PEXPIRE', z, gc)
end
`;

/**
 * KEYS: kills hash, then (h, z) per window. ARGV[1]: {now, m: member, exp, est: [u,t,c], alert, kill: [field],
 * win: [{caps: [[metric, limit]], idle, gc}]}.
 * Reply: {1, (usd, tokens, calls used)* per window, (w, metric, used)* crossings} admitted;
 * {0, 'KILLED', field, value}; {0, 'CAP', w, metric, limit, spent, reserved, seen} refused.
 */
export const RESERVE_LUA = `${COMMON}
local a = cjson.decode(ARGV[1])
local now = a.now
for _, f in ipairs(a.kill) do
  local k = redis.call('HGET', KEYS[1], f)
  if k then
    return {0, 'KILLED', f, k}
  end
end
for w, win in ipairs(a.win) do
  local h, z = KEYS[2 * w], KEYS[2 * w + 1]
  idleReset(h, z, win.idle, now)
  reap(h, z, now)
  if #win.caps > 0 then
    local v = redis.call('HMGET', h, 'usd', 'tokens', 'calls', 'r_usd', 'r_tokens', 'r_calls', 'seen')
    for _, cap in ipairs(win.caps) do
      local m, limit = cap[1], cap[2]
      local spent, held = num(v[m]), num(v[m + 3])
      local used = spent + held
      if used >= limit or used + a.est[m] > limit then
        return {0, 'CAP', w, m, limit, spent, held, v[7] or ''}
      end
    end
  end
end
local out = {1}
local crossed = {}
for w, win in ipairs(a.win) do
  local h, z = KEYS[2 * w], KEYS[2 * w + 1]
  for i = 1, 3 do
    if a.est[i] > 0 then
      redis.call('HINCRBY', h, 'r_' .. M[i], a.est[i])
    end
  end
  redis.call('ZADD', z, a.exp, a.m)
  touch(h, z, now, win.gc)
  local used = usedOf(h)
  for i = 1, 3 do
    table.insert(out, used[i])
  end
  alerts(h, w, win.caps, a.alert, used, crossed)
end
for _, v in ipairs(crossed) do
  table.insert(out, v)
end
return out
`;

/**
 * KEYS: settled marker, then (h, z) per window. ARGV[1]: {now, m, est, act: [u,t,c], alert, ttl, win}.
 * The marker (SET NX with TTL) makes a repeated commit, e.g. a journal replay whose reply was lost, a no-op.
 * Reply: {1, (w, metric, used)*} charged; {0} already settled.
 */
export const COMMIT_LUA = `${COMMON}
local a = cjson.decode(ARGV[1])
local now = a.now
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', a.ttl) then
  return {0}
end
local out = {1}
for w, win in ipairs(a.win) do
  local h, z = KEYS[2 * w], KEYS[2 * w + 1]
  idleReset(h, z, win.idle, now)
  reap(h, z, now)
  if redis.call('ZREM', z, a.m) == 1 then
    for i = 1, 3 do
      if a.est[i] > 0 then
        redis.call('HINCRBY', h, 'r_' .. M[i], -a.est[i])
      end
    end
  end
  for i = 1, 3 do
    if a.act[i] > 0 then
      redis.call('HINCRBY', h, M[i], a.act[i])
    end
  end
  touch(h, z, now, win.gc)
  alerts(h, w, win.caps, a.alert, usedOf(h), out)
end
return out
`;

/** KEYS: (h, z) per window. ARGV[1]: {m, est}. Returns the hold if it is still held. */
export const RELEASE_LUA = `${COMMON}
local a = cjson.decode(ARGV[1])
for w = 1, #KEYS / 2 do
  local h, z = KEYS[2 * w - 1], KEYS[2 * w]
  if redis.call('ZREM', z, a.m) == 1 then
    for i = 1, 3 do
      if a.est[i] > 0 then
        redis.call('HINCRBY', h, 'r_' .. M[i], -a.est[i])
      end
    end
  end
end
return 1
`;

/**
 * KEYS: (h, z) per window. ARGV[1]: {now, win: [{idle}]}. Reaps like reserve, so what it reports is what
 * reserve would check. Reply: per window usd tokens calls r_usd r_tokens r_calls seen (-1: never).
 */
export const SNAPSHOT_LUA = `${COMMON}
local a = cjson.decode(ARGV[1])
local out = {}
for w, win in ipairs(a.win) do
  local h, z = KEYS[2 * w - 1], KEYS[2 * w]
  idleReset(h, z, win.idle, a.now)
  reap(h, z, a.now)
  local v = redis.call('HMGET', h, 'usd', 'tokens', 'calls', 'r_usd', 'r_tokens', 'r_calls', 'seen')
  for i = 1, 6 do
    table.insert(out, num(v[i]))
  end
  table.insert(out, v[7] and tonumber(v[7]) or -1)
end
return out
`;
