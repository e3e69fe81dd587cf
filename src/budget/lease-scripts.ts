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
 * alone. Window i's arguments are WINDOW_ARGS positional ones (see {@link leaseArgs}: no JSON to decode in Lua); its
 * keys follow window i-1's in KEYS. Reply: one entry per window, {grant usd, tokens, calls, expiresAt, spent usd,
 * tokens, calls, out usd, tokens, calls, live others, alert bits (1 usd, 2 tokens, 4 calls), seen (-1: none)}.
 *
 * Cost: a window reads its hash by one HMGET, works in Lua and writes what changed by one HSET (plus the expiry set's
 * ZRANGEBYSCORE, ZCOUNT, ZADD and two PEXPIREs): ~7 commands where it took ~19 (HGETs, HINCRBYs one by one), each
 * redis.call costing a few µs beyond its command's own work. Figures: bench/README.md, "The lease script's commands".
 */
/** Arguments per window, in the order {@link leaseArgs} writes them. */
export const WINDOW_ARGS = 26;

const ACQUIRE_LUA = `
local SP = {'usd', 'tokens', 'calls'}
local OUT = {'out', 'out_t', 'out_c'}
local AL = {'alerted', 'alerted_t', 'alerted_c'}
-- Arguments per window (WINDOW_ARGS).
local W = ${WINDOW_ARGS}

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

local function three(o)
  return {tonumber(ARGV[o]), tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2])}
end

-- One window's request, its arguments from ARGV[o + 1]: its lease hash h, expiry set x, and (agent and workflow
-- windows) counters hash. The hash is read by one HMGET, worked on in Lua, written by one HSET: each redis.call costs
-- a few µs beyond its command's work, and a window used to take ~19 of them.
local function acquire(h, x, counters, o)
  local holder = ARGV[o + 2]
  local seq = tonumber(ARGV[o + 3])
  local rep, keep, want, dem, cap, min = three(o + 4), tonumber(ARGV[o + 7]), three(o + 8), three(o + 11), three(o + 14), three(o + 17)
  local now, ttl, grace = tonumber(ARGV[o + 20]), tonumber(ARGV[o + 21]), tonumber(ARGV[o + 22])
  local alertp, gc, idle, used = tonumber(ARGV[o + 23]), ARGV[o + 24], tonumber(ARGV[o + 25]), tonumber(ARGV[o + 26])
  local me, pme = 'h:' .. holder, 'p:' .. holder

  local v = redis.call('HMGET', h, 'usd', 'tokens', 'calls', 'out', 'out_t', 'out_c', 'alerted', 'alerted_t', 'alerted_c', 'seen', me, pme)
  -- What the hash holds (a missing counter reads 0, a missing flag false, a missing seen nil), and what was read:
  -- the final HSET writes only what changed.
  local sp, out, al = {num(v[1]), num(v[2]), num(v[3])}, {num(v[4]), num(v[5]), num(v[6])}, {v[7] ~= false, v[8] ~= false, v[9] ~= false}
  local seen = v[10] and num(v[10]) or nil
  local sp0, out0, al0, seen0 = {sp[1], sp[2], sp[3]}, {out[1], out[2], out[3]}, {al[1], al[2], al[3]}, seen
  local mine, presumed = v[11], v[12]

  -- A window's first lease request starts from what the per-call scripts counted there (the sidecar ran before
  -- its windows were leased). None of the fields read: the hash may not exist (EXISTS only then).
  if counters and not (v[1] or v[2] or v[3] or v[4] or v[5] or v[6] or v[7] or v[8] or v[9] or v[10] or mine or presumed)
      and redis.call('EXISTS', h) == 0 then
    local c = redis.call('HMGET', counters, 'u', 't', 'c', 'au', 'at', 'ac', 's')
    if c[1] or c[2] or c[3] then
      sp = {num(c[1]), num(c[2]), num(c[3])}
      -- Written even when 0, as the seeding always did.
      sp0 = {nil, nil, nil}
    end
    for m = 1, 3 do
      if c[3 + m] then
        al[m] = true
      end
    end
    if idle > 0 and c[7] then
      seen = num(c[7])
    end
  end

  -- Reap slices lapsed for longer than the grace; count the live ones of other holders.
  local lapsed = redis.call('ZRANGEBYSCORE', x, '-inf', now - grace)
  local gone = {}
  for _, other in ipairs(lapsed) do
    if other ~= holder then
      local f, pf = 'h:' .. other, 'p:' .. other
      local r = redis.call('HMGET', h, f, pf)
      if r[1] then
        local g, e, q = entry(r[1])
        if any(g) and e + grace <= now then
          -- Its holder may have spent all of it before it went silent: spent until it reports.
          local p = amounts(r[2] or nil)
          for m = 1, 3 do
            if g[m] > 0 then
              out[m] = out[m] - g[m]
              sp[m] = sp[m] + g[m]
              p[m] = p[m] + g[m]
            end
          end
          redis.call('HSET', h, pf, string.format('%d|%d|%d', p[1], p[2], p[3]), f, put({0, 0, 0}, e, q))
        end
      end
      gone[#gone + 1] = other
    end
  end
  -- ZREM in bounded batches: unpack() of a long list would overflow Lua's C stack.
  for i = 1, #gone, 500 do
    redis.call('ZREM', x, unpack(gone, i, math.min(i + 499, #gone)))
  end
  local live = redis.call('ZCOUNT', x, '(' .. now, '+inf')

  local mg, me_exp, mq = {0, 0, 0}, 0, 0
  if mine then
    mg, me_exp, mq = entry(mine)
  end
  -- The set holds this holder's expiry exactly when its entry holds a grant (both written below, reaped together).
  if any(mg) and me_exp > now then
    live = live - 1
  end

  -- Writes the counters and flags that changed, plus extra field/value pairs, in one HSET.
  local function save(extra)
    local w = extra
    for m = 1, 3 do
      if sp[m] ~= sp0[m] then
        w[#w + 1] = SP[m]
        w[#w + 1] = string.format('%d', sp[m])
      end
      if out[m] ~= out0[m] then
        w[#w + 1] = OUT[m]
        w[#w + 1] = string.format('%d', out[m])
      end
      if al[m] and not al0[m] then
        w[#w + 1] = AL[m]
        w[#w + 1] = 1
      end
    end
    if seen and seen ~= seen0 then
      w[#w + 1] = 'seen'
      w[#w + 1] = string.format('%d', seen)
    end
    if #w > 0 then
      redis.call('HSET', h, unpack(w))
    end
  end

  local function state(g, e, alert)
    return {g[1], g[2], g[3], e, sp[1], sp[2], sp[3], out[1], out[2], out[3], live, alert, seen or -1}
  end

  if seq <= mq then
    -- A retry of a request already applied, whose answer was lost: answer again, apply nothing.
    save({})
    return state(mg, me_exp, 0)
  end

  local apply = true
  if idle > 0 then
    local last = seen or 0
    if used > last then
      last = used
    end
    local others = 0
    for m = 1, 3 do
      others = others + out[m] - mg[m]
    end
    if last > 0 and now - last >= idle and others == 0 then
      -- Unseen for its idle time: the window starts again from zero, as the per-call scripts' idle reset does, and
      -- this report (spend of the window gone idle) goes with it. Holders keep their last seq (retries stay retries).
      -- Rare, so field by field. What the reap above changed in the counters goes with the rest.
      local all = redis.call('HGETALL', h)
      for i = 1, #all, 2 do
        local f = all[i]
        if string.sub(f, 1, 2) == 'h:' then
          local _, _, q = entry(all[i + 1])
          redis.call('HSET', h, f, put({0, 0, 0}, 0, q))
        else
          redis.call('HDEL', h, f)
        end
      end
      redis.call('DEL', x)
      sp, out, al, seen = {0, 0, 0}, {0, 0, 0}, {false, false, false}, nil
      sp0, out0, al0, seen0 = {0, 0, 0}, {0, 0, 0}, {false, false, false}, nil
      presumed = false
      mg = {0, 0, 0}
      apply = false
    elseif used > 0 then
      seen = last
    end
  end

  local drop = false
  if apply then
    local p = amounts(presumed or nil)
    for m = 1, 3 do
      sp[m] = sp[m] + rep[m] - p[m]
    end
    drop = any(p)
  end
  for m = 1, 3 do
    out[m] = out[m] - mg[m]
  end

  local grant, exp = {0, 0, 0}, 0
  local capped = cap[1] >= 0 or cap[2] >= 0 or cap[3] >= 0
  if capped and keep == 1 then
    for m = 1, 3 do
      if cap[m] >= 0 then
        local remaining = cap[m] - sp[m] - out[m]
        if remaining > 0 then
          local size = math.min(math.floor(remaining / (live + 1)), math.max(dem[m], min[m]))
          grant[m] = math.min(math.max(size, want[m]), remaining)
          if grant[m] > 0 then
            out[m] = out[m] + grant[m]
          end
        end
      end
    end
    if any(grant) then
      exp = now + ttl
    end
  end
  -- The alert compares the spend before this request's slice (a slice is not spend).
  local alert = 0
  if alertp > 0 then
    for m = 1, 3 do
      if cap[m] >= 0 and not al[m] and sp[m] * 100 >= cap[m] * alertp then
        al[m] = true
        alert = alert + 2 ^ (m - 1)
      end
    end
  end
  save({me, put(grant, exp, seq)})
  if drop then
    redis.call('HDEL', h, pme)
  end
  if any(grant) then
    redis.call('ZADD', x, string.format('%d', exp), holder)
  elseif any(mg) or #lapsed > 0 then
    -- ZREM only when the set may hold this holder: its entry had a grant (or it is in the lapsed list).
    redis.call('ZREM', x, holder)
  end
  redis.call('PEXPIRE', h, gc)
  redis.call('PEXPIRE', x, gc)
  return state(grant, exp, alert)
end

-- Window i's W arguments follow window i-1's in ARGV, its keys window i-1's in KEYS (2, or 3 with counters).
if #ARGV % W ~= 0 then
  return redis.error_reply('fuseboxLeaseAcquire: ' .. #ARGV .. ' arguments, not ' .. W .. ' per window')
end
local replies = {}
local k = 1
for i = 1, #ARGV / W do
  local o = (i - 1) * W
  local n = tonumber(ARGV[o + 1])
  local counters = nil
  if n == 3 then
    counters = KEYS[k + 2]
  end
  replies[i] = acquire(KEYS[k], KEYS[k + 1], counters, o)
  k = k + n
end
return replies
`;

/** One window's request as the script reads it: each amount a list usd, tokens, calls. */
export interface LeaseWindowArgs {
  /** Its key count: 2, or 3 with the counters hash. */
  keys: 2 | 3;
  holder: string;
  seq: number;
  report: readonly number[];
  keep: boolean;
  want: readonly number[];
  demand: readonly number[];
  /** -1: uncapped. */
  caps: readonly number[];
  min: readonly number[];
  now: number;
  ttlMs: number;
  graceMs: number;
  alertPercent: number;
  gcMs: number;
  /** Workflow idle time, 0: a calendar window. */
  idleMs: number;
  /** The holder's usedAt, 0: none. */
  usedAt: number;
}

const three = (xs: readonly number[], what: string): string[] => {
  if (xs.length !== 3) throw new TypeError(`lease ${what}: expected 3 amounts (usd, tokens, calls), got ${xs.length}`);
  return xs.map(String);
};

/** The ARGV of one window, in the order the Lua reads it. */
export const leaseArgs = (a: LeaseWindowArgs): string[] => [
  String(a.keys),
  a.holder,
  String(a.seq),
  ...three(a.report, 'report'),
  a.keep ? '1' : '0',
  ...three(a.want, 'want'),
  ...three(a.demand, 'demand'),
  ...three(a.caps, 'caps'),
  ...three(a.min, 'min'),
  String(a.now),
  String(a.ttlMs),
  String(a.graceMs),
  String(a.alertPercent),
  String(a.gcMs),
  String(a.idleMs),
  String(a.usedAt),
];

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
