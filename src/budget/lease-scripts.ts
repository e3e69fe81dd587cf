import { defineScript, reply } from '../store/redis-script.js';
import type { LeaseReply } from './lease-source.js';

/**
 * The lease script run by RedisLeaseSource: the Lua twin of MemoryLeaseSource.acquire (read the rules there).
 * It touches two keys of one hash tag, the scope window's lease hash and its expiry set, so it runs on that scope's
 * own Cluster slot:
 * `{<prefix>:f}:lease:...` for the fleet, `{<prefix>:r:<route>}:lease:...` for a route (the tags the sharded
 * per-call scripts use for those scopes).
 *
 * Hash fields:
 *   usd tokens calls   spend reported by the holders, plus presumed spend of lapsed slices (µUSD, tokens, calls)
 *   out                Σ of the slices outstanding, µUSD
 *   alerted            the alert percent was reported in this window
 *   h:<holder>         "<grant>|<expiresAt>|<last seq applied>"
 *   p:<holder>         µUSD of that holder's lapsed slices counted in usd until it reports
 * KEYS[3], agent windows only: the window's counters hash as RedisStore's per-call scripts keep it (same slot). When
 * the lease hash does not exist yet, its settled spend (u, t, c) and alert mark (au) seed it, so leasing an agent's
 * window mid-window (an upgrade, a token cap removed) does not start its count again from zero. The other way (a
 * token cap added mid-window) the per-call scripts start from their own counters: the README says so.
 * KEYS[2], a sorted set: holder → expiry of its slice, for the holders with a slice (grant > 0). Reaping and counting
 * the live holders read only it (O(log N) plus the lapsed ones), never every holder of the day: with a thousand
 * sidecars reporting each second, reading the whole hash per request made the script O(N) and the fleet O(N²).
 *
 * INVARIANT: out = Σ grant over the h: fields; usd + out never grows past the cap except by what holders spent
 * above their slices (calls that cost more than their estimate), because a reported spend is at most the slice
 * it is taken from, and it enters usd in the same step as that slice leaves out.
 *
 * One call carries the requests of several windows of one hash tag (an agent's day and month, the fleet's day and
 * month: RedisLeaseSource batches those made in the same turn), applied in order, each by the same rules as alone.
 * ARGV[i], window i: {k (its key count: 2, or 3 with the counters hash), holder, seq, rep: [usd, tokens, calls],
 * keep: 0|1, want, dem (demand), cap (-1: uncapped), now, ttl, grace, min, whole: 0|1, alert, gc}; its keys follow
 * window i-1's in KEYS. Reply: one entry per window, {grant, expiresAt, spent usd, out, live others, alert 0|1,
 * spent tokens, spent calls}.
 */
const ACQUIRE_LUA = `
local function num(v)
  return tonumber(v) or 0
end

local function entry(v)
  local g, e, q = string.match(v, '^(%d+)|(%d+)|(%d+)$')
  return tonumber(g) or 0, tonumber(e) or 0, tonumber(q) or 0
end

-- One window's request: its lease hash h, expiry set x, and (agent windows) counters hash.
local function acquire(h, x, counters, a)
  local now = a.now
  local me = 'h:' .. a.holder
  -- An agent window's first lease request in a window starts from what the per-call scripts counted there (the
  -- sidecar ran before the agent's windows were leased, or its cap had a token limit since removed).
  if counters and redis.call('EXISTS', h) == 0 then
    local c = redis.call('HMGET', counters, 'u', 't', 'c', 'au')
    if c[1] or c[2] or c[3] then
      redis.call('HSET', h, 'usd', tonumber(c[1]) or 0, 'tokens', tonumber(c[2]) or 0, 'calls', tonumber(c[3]) or 0)
    end
    if c[4] then
      redis.call('HSET', h, 'alerted', 1)
    end
  end

  local function state(live, alert)
    local v = redis.call('HMGET', h, 'usd', 'out', me, 'tokens', 'calls')
    local g, e = 0, 0
    if v[3] then
      g, e = entry(v[3])
    end
    return {g, e, num(v[1]), num(v[2]), live, alert, num(v[4]), num(v[5])}
  end

  -- Reap slices lapsed for longer than the grace; count the live ones of other holders.
  for _, holder in ipairs(redis.call('ZRANGEBYSCORE', x, '-inf', now - a.grace)) do
    if holder ~= a.holder then
      local f = 'h:' .. holder
      local v = redis.call('HGET', h, f)
      if v then
        local g, e, q = entry(v)
        if g > 0 and e + a.grace <= now then
          -- Its holder may have spent all of it before it went silent: spent until it reports.
          redis.call('HINCRBY', h, 'out', -g)
          redis.call('HINCRBY', h, 'usd', g)
          redis.call('HINCRBY', h, 'p:' .. holder, g)
          redis.call('HSET', h, f, string.format('0|%d|%d', e, q))
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
  local mg, me_exp, mq = 0, 0, 0
  if mine then
    mg, me_exp, mq = entry(mine)
  end
  if a.seq <= mq then
    -- A retry of a request already applied, whose answer was lost: answer again, apply nothing.
    return state(live, 0)
  end

  local presumed = num(redis.call('HGET', h, 'p:' .. a.holder))
  local dusd = a.rep[1] - presumed
  if dusd ~= 0 then
    redis.call('HINCRBY', h, 'usd', dusd)
  end
  if a.rep[2] > 0 then
    redis.call('HINCRBY', h, 'tokens', a.rep[2])
  end
  if a.rep[3] > 0 then
    redis.call('HINCRBY', h, 'calls', a.rep[3])
  end
  if presumed > 0 then
    redis.call('HDEL', h, 'p:' .. a.holder)
  end
  if mg > 0 then
    redis.call('HINCRBY', h, 'out', -mg)
  end

  local v = redis.call('HMGET', h, 'usd', 'out', 'alerted')
  local spent, out = num(v[1]), num(v[2])
  local grant, exp = 0, 0
  if a.cap >= 0 and a.keep == 1 then
    local remaining = a.cap - spent - out
    if remaining > 0 then
      local size = remaining
      if a.whole == 0 then
        size = math.min(math.floor(remaining / (live + 1)), math.max(a.dem or 0, a.min))
      end
      grant = math.min(math.max(size, a.want), remaining)
      exp = now + a.ttl
      redis.call('HINCRBY', h, 'out', grant)
    end
  end
  redis.call('HSET', h, me, string.format('%d|%d|%d', grant, exp, a.seq))
  if grant > 0 then
    redis.call('ZADD', x, exp, a.holder)
  else
    redis.call('ZREM', x, a.holder)
  end
  redis.call('PEXPIRE', h, a.gc)
  redis.call('PEXPIRE', x, a.gc)
  local alert = 0
  if a.cap >= 0 and a.alert > 0 and not v[3] and spent * 100 >= a.cap * a.alert then
    redis.call('HSET', h, 'alerted', 1)
    alert = 1
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

const leaseReply = (raw: unknown, what: string): LeaseReply => {
  const [grant, expiresAt, spent, out, live, alert, tokens, calls] = reply.tuple(raw, 8, what);
  return {
    grantUsdMicros: reply.int(grant, `${what} grant`),
    expiresAt: reply.int(expiresAt, `${what} expiresAt`),
    spentUsdMicros: reply.int(spent, `${what} spent`),
    spentTokens: reply.int(tokens, `${what} tokens`),
    spentCalls: reply.int(calls, `${what} calls`),
    outstandingUsdMicros: reply.int(out, `${what} out`),
    liveHolders: reply.int(live, `${what} live`),
    alert: reply.intIn(alert, 0, 1, `${what} alert`) === 1,
  };
};

/** One reply per window of the call, in ARGV order. */
export const LEASE_ACQUIRE = defineScript('fuseboxLeaseAcquire', ACQUIRE_LUA, (raw): LeaseReply[] =>
  reply.array(raw, 'reply').map((r, i) => leaseReply(r, `reply ${i + 1}`)),
);
