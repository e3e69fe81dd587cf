import { defineScript, reply } from '../store/redis-script.js';
import type { LeaseReply } from './lease-source.js';
import { METRICS, type Metric } from './store.js';

/**
 * The lease script run by RedisLeaseSource: the Lua twin of MemoryLeaseSource.acquire (read the rules there).
 * It touches the keys of one hash tag, the scope window's lease hash and its expiry set, so it runs on that scope's
 * own Cluster slot:
 * `{<prefix>:f}:lease:...` for the fleet, `{<prefix>:r:<route>}:lease:...` for a route, `{<prefix>:a:<agent>}:lease:...`
 * for an agent's windows and the workflows it runs (the tags the sharded per-call scripts use for those scopes).
 *
 * Hash fields (per metric: µUSD, tokens, calls):
 *   usd tokens calls          spend reported by the holders, plus presumed spend of lapsed slices
 *   out out_t out_c           Σ of the slices outstanding
 *   alerted alerted_t alerted_c  the alert percent was reported in this window for that metric
 *   seen                      workflow windows: the latest `usedAt` a holder reported (idle reset, see lease-source.ts)
 *   h:<holder>                "<grant usd>|<grant tokens>|<grant calls>|<expiresAt>|<last seq applied>" (a hash
 *                             written before slices had a part per metric holds "<grant usd>|<expiresAt>|<seq>")
 *   p:<holder>                "<usd>|<tokens>|<calls>" of that holder's lapsed slices counted in spend until it
 *                             reports (formerly a bare µUSD figure)
 * KEYS[3], agent and workflow windows: the window's counters hash as RedisStore's per-call scripts keep it (same
 * slot). When the lease hash does not exist yet, its settled spend (u, t, c), alert marks (au, at, ac) and, for a
 * workflow, last use (s) seed it, so leasing a window mid-window (an upgrade) does not start its count again from zero.
 * KEYS[2], a sorted set: holder → expiry of its slice, for the holders with a slice. Reaping and counting the live
 * holders read only it (O(log N) plus the lapsed ones), never every holder of the day: with a thousand sidecars
 * reporting each second, reading the whole hash per request made the script O(N) and the fleet O(N²).
 *
 * INVARIANT, per metric: out = Σ grant over the h: fields; spent + out never grows past the cap except by what holders
 * spent above their slices (calls that cost more than their estimate; never calls, taken from the slice at admission),
 * because a reported spend is at most the slice it is taken from, and it enters spent in the same step as that slice
 * leaves out.
 *
 * One call carries the requests of several windows of one hash tag (an agent's day, month and workflows, the fleet's
 * day and month: RedisLeaseSource batches those made in the same turn), applied in order, each by the same rules as
 * alone. ARGV[i], window i: {k (its key count: 2, or 3 with the counters hash), holder, seq, rep, keep: 0|1, want,
 * dem (demand), cap (-1: uncapped), min (each of those five a list usd, tokens, calls), now, ttl, grace, whole: 0|1,
 * alert, gc, idle (workflow idle time, 0: a calendar window), used (the holder's usedAt, 0: none)}; its keys follow
 * window i-1's in KEYS. Reply: one entry per window, {grant usd, tokens, calls, expiresAt, spent usd, tokens, calls,
 * out usd, tokens, calls, live others, alert bits (1 usd, 2 tokens, 4 calls), seen (-1: none)}.
 */
const ACQUIRE_LUA = `
local SP = {'usd', 'tokens', 'calls'}
local OUT = {'out', 'out_t', 'out_c'}
local AL = {'alerted', 'alerted_t', 'alerted_c'}

local function num(v)
  return tonumber(v) or 0
end

-- A holder's entry: grants per metric, expiry, last seq.
local function entry(v)
  local a, b, c, e, q = string.match(v, '^(%d+)|(%d+)|(%d+)|(%d+)|(%d+)$')
  if a then
    return {tonumber(a), tonumber(b), tonumber(c)}, tonumber(e), tonumber(q)
  end
  local g, e1, q1 = string.match(v, '^(%d+)|(%d+)|(%d+)$')
  return {tonumber(g) or 0, 0, 0}, tonumber(e1) or 0, tonumber(q1) or 0
end

local function amounts(v)
  if not v then
    return {0, 0, 0}
  end
  local a, b, c = string.match(v, '^(%-?%d+)|(%-?%d+)|(%-?%d+)$')
  if a then
    return {tonumber(a), tonumber(b), tonumber(c)}
  end
  return {num(v), 0, 0}
end

local function any(t)
  return t[1] ~= 0 or t[2] ~= 0 or t[3] ~= 0
end

local function put(g, e, q)
  return string.format('%d|%d|%d|%d|%d', g[1], g[2], g[3], e, q)
end

-- One window's request: its lease hash h, expiry set x, and (agent and workflow windows) counters hash.
local function acquire(h, x, counters, a)
  local now = a.now
  local me = 'h:' .. a.holder
  -- A window's first lease request starts from what the per-call scripts counted there (the sidecar ran before
  -- its windows were leased).
  if counters and redis.call('EXISTS', h) == 0 then
    local c = redis.call('HMGET', counters, 'u', 't', 'c', 'au', 'at', 'ac', 's')
    if c[1] or c[2] or c[3] then
      redis.call('HSET', h, 'usd', num(c[1]), 'tokens', num(c[2]), 'calls', num(c[3]))
    end
    for m = 1, 3 do
      if c[3 + m] then
        redis.call('HSET', h, AL[m], 1)
      end
    end
    if a.idle > 0 and c[7] then
      redis.call('HSET', h, 'seen', num(c[7]))
    end
  end

  local function state(live, alert)
    local v = redis.call('HMGET', h, 'usd', 'tokens', 'calls', 'out', 'out_t', 'out_c', me, 'seen')
    local g, e = {0, 0, 0}, 0
    if v[7] then
      g, e = entry(v[7])
    end
    local seen = -1
    if v[8] then
      seen = num(v[8])
    end
    return {g[1], g[2], g[3], e, num(v[1]), num(v[2]), num(v[3]), num(v[4]), num(v[5]), num(v[6]), live, alert, seen}
  end

  -- Reap slices lapsed for longer than the grace; count the live ones of other holders.
  for _, holder in ipairs(redis.call('ZRANGEBYSCORE', x, '-inf', now - a.grace)) do
    if holder ~= a.holder then
      local f = 'h:' .. holder
      local v = redis.call('HGET', h, f)
      if v then
        local g, e, q = entry(v)
        if any(g) and e + a.grace <= now then
          -- Its holder may have spent all of it before it went silent: spent until it reports.
          local p = amounts(redis.call('HGET', h, 'p:' .. holder))
          for m = 1, 3 do
            if g[m] > 0 then
              redis.call('HINCRBY', h, OUT[m], -g[m])
              redis.call('HINCRBY', h, SP[m], g[m])
              p[m] = p[m] + g[m]
            end
          end
          redis.call('HSET', h, 'p:' .. holder, string.format('%d|%d|%d', p[1], p[2], p[3]))
          redis.call('HSET', h, f, put({0, 0, 0}, e, q))
        end
      end
      redis.call('ZREM', x, holder)
    end
  end
  local live = redis.call('ZCOUNT', x, '(' .. now, '+inf')
  local mine_exp = redis.call('ZSCORE', x, a.holder)
  if mine_exp and tonumber(mine_exp) > now then
    live = live - 1
  end

  local mine = redis.call('HGET', h, me)
  local mg, mq = {0, 0, 0}, 0
  if mine then
    local _
    mg, _, mq = entry(mine)
  end
  if a.seq <= mq then
    -- A retry of a request already applied, whose answer was lost: answer again, apply nothing.
    return state(live, 0)
  end

  local apply = true
  if a.idle > 0 then
    local seen = num(redis.call('HGET', h, 'seen'))
    if a.used > seen then
      seen = a.used
    end
    local o = redis.call('HMGET', h, 'out', 'out_t', 'out_c')
    local others = 0
    for m = 1, 3 do
      others = others + num(o[m]) - mg[m]
    end
    if seen > 0 and now - seen >= a.idle and others == 0 then
      -- Unseen for its idle time: the window starts again from zero, as the per-call scripts' idle reset does, and
      -- this report (spend of the window gone idle) goes with it. Holders keep their last seq (retries stay retries).
      local fields = redis.call('HKEYS', h)
      for _, f in ipairs(fields) do
        if string.sub(f, 1, 2) == 'h:' then
          local _, e, q = entry(redis.call('HGET', h, f))
          redis.call('HSET', h, f, put({0, 0, 0}, 0, q))
        else
          redis.call('HDEL', h, f)
        end
      end
      redis.call('DEL', x)
      mg = {0, 0, 0}
      apply = false
    elseif a.used > 0 then
      redis.call('HSET', h, 'seen', seen)
    end
  end

  if apply then
    local presumed = amounts(redis.call('HGET', h, 'p:' .. a.holder))
    for m = 1, 3 do
      local d = a.rep[m] - presumed[m]
      if d ~= 0 then
        redis.call('HINCRBY', h, SP[m], d)
      end
    end
    if any(presumed) then
      redis.call('HDEL', h, 'p:' .. a.holder)
    end
  end
  for m = 1, 3 do
    if mg[m] > 0 then
      redis.call('HINCRBY', h, OUT[m], -mg[m])
    end
  end

  local v = redis.call('HMGET', h, 'usd', 'tokens', 'calls', 'out', 'out_t', 'out_c', 'alerted', 'alerted_t', 'alerted_c')
  local grant, exp = {0, 0, 0}, 0
  local capped = false
  for m = 1, 3 do
    if a.cap[m] >= 0 then
      capped = true
    end
  end
  if capped and a.keep == 1 then
    for m = 1, 3 do
      if a.cap[m] >= 0 then
        local remaining = a.cap[m] - num(v[m]) - num(v[3 + m])
        if remaining > 0 then
          local size = remaining
          if a.whole == 0 then
            size = math.min(math.floor(remaining / (live + 1)), math.max(a.dem[m] or 0, a.min[m]))
          end
          grant[m] = math.min(math.max(size, a.want[m]), remaining)
          if grant[m] > 0 then
            redis.call('HINCRBY', h, OUT[m], grant[m])
          end
        end
      end
    end
    if any(grant) then
      exp = now + a.ttl
    end
  end
  redis.call('HSET', h, me, put(grant, exp, a.seq))
  if any(grant) then
    redis.call('ZADD', x, exp, a.holder)
  else
    redis.call('ZREM', x, a.holder)
  end
  redis.call('PEXPIRE', h, a.gc)
  redis.call('PEXPIRE', x, a.gc)
  local alert = 0
  if a.alert > 0 then
    for m = 1, 3 do
      if a.cap[m] >= 0 and not v[6 + m] and num(v[m]) * 100 >= a.cap[m] * a.alert then
        redis.call('HSET', h, AL[m], 1)
        alert = alert + 2 ^ (m - 1)
      end
    end
  end
  return state(live, alert)
end

-- ARGV[i] is window i's request; its keys follow the previous window's in KEYS (a.k of them: 2, or 3 with counters).
local replies = {}
local k = 1
for i = 1, #ARGV do
  local a = cjson.decode(ARGV[i])
  local counters = nil
  if a.k == 3 then
    counters = KEYS[k + 2]
  end
  replies[i] = acquire(KEYS[k], KEYS[k + 1], counters, a)
  k = k + a.k
end
return replies
`;

const amountsOf = (u: unknown, t: unknown, c: unknown, what: string) => ({
  usdMicros: reply.int(u, `${what} usd`),
  tokens: reply.int(t, `${what} tokens`),
  calls: reply.int(c, `${what} calls`),
});

const leaseReply = (raw: unknown, what: string): LeaseReply => {
  const [gu, gt, gc, expiresAt, su, st, sc, ou, ot, oc, live, alert, seen] = reply.tuple(raw, 13, what);
  const bits = reply.intIn(alert, 0, 7, `${what} alert`);
  const seenAt = reply.int(seen, `${what} seen`);
  return {
    grant: amountsOf(gu, gt, gc, `${what} grant`),
    expiresAt: reply.int(expiresAt, `${what} expiresAt`),
    spent: amountsOf(su, st, sc, `${what} spent`),
    outstanding: amountsOf(ou, ot, oc, `${what} out`),
    liveHolders: reply.int(live, `${what} live`),
    alerts: METRICS.filter((_m: Metric, i) => (bits & (1 << i)) !== 0),
    seenAt: seenAt < 0 ? null : seenAt,
  };
};

/** One reply per window of the call, in ARGV order. */
export const LEASE_ACQUIRE = defineScript('fuseboxLeaseAcquire', ACQUIRE_LUA, (raw): LeaseReply[] =>
  reply.array(raw, 'reply').map((r, i) => leaseReply(r, `reply ${i + 1}`)),
);
