import { defineScript, reply } from '../store/redis-script.js';
import { METRICS, type Amounts, type Metric } from './store.js';

/**
 * Lua run by RedisStore, inlined so the compiled dist/ needs no extra files. Every key a script touches is passed in
 * KEYS; which hash tags they carry is RedisStore's business (one agent's windows share one tag, so on a cluster the
 * per-call scripts run on one slot). Arguments are positional ARGV strings (cheaper than a cjson document, and the
 * layout is written once here). Amounts are integers (µUSD, tokens, calls): Lua numbers are doubles, exact to 2^53,
 * and Redis turns them into integer replies.
 *
 * Data per scope window (KEYS triple h, z, e):
 *   h  hash  u t c       spent (µUSD, tokens, calls): settled charges and presumed spend of expired holds (e)
 *            ru rt rc    held by unsettled reservations
 *            au at ac    alert already reported in this window
 *            s           workflow windows: clock time of the last reserve/commit (idle time); calendar windows
 *                        reset by their id, so they do not write it
 *            x           a lower bound of the earliest hold expiry in z (0: none); reaping is skipped while x > now
 *            g           when h expires (caller's clock); z expires with it
 *            z           1 once z exists (made with its sentinel and TTL)
 *            j:<journal> last journal sequence number applied (commits of reservations made locally in an outage)
 *   z  zset  member "<id>|<usd>|<tokens>|<calls>", score = expiry (clock ms); plus a sentinel "~" scored +inf, so
 *            z never empties and keeps the TTL it was given once (no PEXPIRE per call)
 *   e  zset  holds reaped before they were settled. Score = reap time (> 0): PRESUMED SPEND OF EXPIRED HOLDS, the
 *            reaper moved the estimate from r<m> to <m> (the sidecar may have died after the upstream answered: a
 *            crash over-counts the calls in flight by their estimate, never under-counts), so a late commit charges
 *            actual − estimate (negative brings spent down to the true figure) and a late release refunds the
 *            estimate. Score 0: moved by an idle reset, whose new counters never held it: a late commit charges
 *            its actual cost, a release nothing. Rare (a sidecar that died mid-call, an outage longer than a hold);
 *            it expires with the window
 *
 * INVARIANT: r<m> of h equals the sum of <m> over the holds in z, and <m> includes the sum over the members of e
 * scored > 0. A hold enters z and r<m> in one step (reserve); it leaves z only by ZREM (commit, release) or the
 * reaper (to e, r<m> to <m>: spent + held unchanged, so a reap crosses no alert), and only the script that removed
 * it from z or e adjusts the counters. EXACTLY ONCE: a commit charges iff its ZREM removed the hold from z, or else
 * from e; a hold gone from both was
 * settled before, and the commit is a replay (no key per call remembers settled ids). A commit of a reservation made
 * locally during an outage (it never had a hold here) charges iff its journal sequence number is above the window's
 * j:<journal> mark; journals replay in order, so the mark only grows.
 * Cost per call (reserve + commit) and window: HMGET, ZADD, HSET; HMGET, ZREM, HSET. A commit that rides the next
 * reserve of its agent (RedisStore's commitDelayMs) runs first in that reserve's script, on the same window state
 * (WINDOW_CACHE): HMGET, ZREM, ZADD, HSET, and one script call and round trip instead of two. Everything else (reap,
 * idle reset, TTLs) runs only when x, s or g say it is due; a late commit or release of a reaped hold adds a ZSCORE.
 * Times come from the caller's clock (one per script call: a ridden commit lands at the reserve's time); TTLs are
 * only GC.
 *
 * MEASURED (bench/store-calls.ts): one hash per hash tag holding all of an agent's windows, its holds and reaped holds
 * cut a call to 5 commands and 1,111 AOF bytes (from 18 and ~1,560) but cost ~30 % more Redis CPU: field names built
 * per call (`<window>.<field>`) and the longer HMGET/HSET of one big hash outweigh the commands saved. Constant field
 * names in small per-window hashes are cheaper; that layout stays. A commit riding the next reserve (same bench, same
 * run): 113 µs of Redis CPU per call, 12 commands, 1,226 AOF bytes, against 198 µs, 18 and 1,564 sent alone before.
 */

const COMMON = `
local unpack = unpack or table.unpack
local A = {'u', 't', 'c'}
local R = {'ru', 'rt', 'rc'}
local AL = {'au', 'at', 'ac'}

local function num(v)
  return tonumber(v) or 0
end

-- Reads a window; mark: the journal field to read too (or nil).
local function load(h, mark)
  local v
  if mark then
    v = redis.call('HMGET', h, 'u', 't', 'c', 'ru', 'rt', 'rc', 's', 'x', 'g', 'z', 'au', 'at', 'ac', mark)
  else
    v = redis.call('HMGET', h, 'u', 't', 'c', 'ru', 'rt', 'rc', 's', 'x', 'g', 'z', 'au', 'at', 'ac')
  end
  return {
    spent = {num(v[1]), num(v[2]), num(v[3])},
    held = {num(v[4]), num(v[5]), num(v[6])},
    seen = v[7],
    x = num(v[8]),
    g = v[9] and tonumber(v[9]),
    z = v[10],
    alerted = {v[11], v[12], v[13]},
    mark = num(v[14]),
    out = {},
    at = {},
  }
end

-- Sets a field to write; a field set twice (a commit, then a reserve, on one window) is written once.
local function put(w, field, value)
  local at = w.at[field]
  if at then
    w.out[at] = value
  else
    table.insert(w.out, field)
    table.insert(w.out, value)
    w.at[field] = #w.out
  end
end

-- Writes the fields changed so far, in one HSET.
local function flush(w, h)
  if #w.out > 0 then
    redis.call('HSET', h, unpack(w.out))
    w.out = {}
    w.at = {}
  end
end

-- Adds sign * d to the counters c of w (w.spent or w.held; their fields F), metric by metric.
local function add(w, c, F, d, sign)
  for mi = 1, 3 do
    if d[mi] > 0 then
      c[mi] = c[mi] + sign * d[mi]
      put(w, F[mi], c[mi])
    end
  end
end

-- A workflow window unseen for its idle time starts again from zero. Its holds go to e scored 0, and so do the
-- holds reaped before (their presumed spend went with the old counters): a late commit charges the new window its
-- actual cost, once.
local function idleReset(w, h, z, e, idle, now, ttl, mark)
  if idle <= 0 or not w.seen then
    return w
  end
  local seen = tonumber(w.seen)
  if not seen or now - seen < idle then
    return w
  end
  if w.z then
    redis.call('ZUNIONSTORE', e, 2, e, z, 'WEIGHTS', 0, 0)
    redis.call('ZREM', e, '~')
    redis.call('PEXPIRE', e, ttl)
  end
  redis.call('DEL', h, z)
  return load(h, mark)
end

-- Presumed spend of expired holds: a hold that expired by now is charged to the window as spent (its sidecar may
-- have died after the upstream answered: counted, never lost) and kept in e, scored by the reap time, for a late
-- commit to correct (actual - estimate) or a late release to refund. spent + held is unchanged, so no alert crosses.
local function reap(w, z, e, now, ttl)
  if w.x == 0 or w.x > now then
    return
  end
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #gone > 0 then
    local d = {0, 0, 0}
    local moved = {}
    for _, member in ipairs(gone) do
      local u, t, c = string.match(member, '|(%d+)|(%d+)|(%d+)$')
      d[1] = d[1] + tonumber(u)
      d[2] = d[2] + tonumber(t)
      d[3] = d[3] + tonumber(c)
      table.insert(moved, now)
      table.insert(moved, member)
      -- Bounded batches: unpack of a very long table overflows the Lua stack.
      if #moved >= 1000 then
        redis.call('ZADD', e, unpack(moved))
        moved = {}
      end
    end
    if #moved > 0 then
      redis.call('ZADD', e, unpack(moved))
    end
    redis.call('PEXPIRE', e, ttl)
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
    add(w, w.held, R, d, -1)
    add(w, w.spent, A, d, 1)
  end
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  w.x = (first[1] and first[1] ~= '~') and tonumber(first[2]) or 0
  put(w, 'x', w.x)
end

-- Keeps h (and z) alive gc ms past now: set when h is new, refreshed only once less than gc is left (slack > 0:
-- a workflow window, whose idle time restarts with every call; calendar windows expire at a fixed time). Returns
-- the TTL to set once h is written (PEXPIRE of a key not yet made does nothing), or nil.
local function keepAlive(w, now, gc, slack)
  if w.g and w.g - now >= gc then
    return nil
  end
  w.g = now + gc + slack
  put(w, 'g', w.g)
  return gc + slack
end

-- Appends {window, metric, used} for every cap that reached the alert percent for the first time.
local function alerts(w, i, caps, pct, out)
  if pct <= 0 then
    return
  end
  for m = 1, 3 do
    local limit = caps[m]
    local used = w.spent[m] + w.held[m]
    if limit >= 0 and not w.alerted[m] and used * 100 >= limit * pct then
      w.alerted[m] = '1'
      put(w, AL[m], 1)
      table.insert(out, {i, m, used})
    end
  end
end

local function used(w)
  return {w.spent[1] + w.held[1], w.spent[2] + w.held[2], w.spent[3] + w.held[3]}
end

-- A workflow window's idle time starts again from now (calendar windows have none).
local function touch(w, idle, now)
  if idle > 0 then
    w.seen = now
    put(w, 's', now)
  end
end
`;

/** Per window, from ARGV position `base`: idle (ms, 0: calendar window), gc (ms), slack (ms), then caps usd, tokens, calls (-1: none). */
const WINDOW_ARGS = `
local function windowArgs(base, i)
  local o = base + (i - 1) * 6
  return tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]),
    {tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5]), tonumber(ARGV[o + 6])}
end
`;

/**
 * The windows one script call touches, each read once (HMGET, idle reset, reap) and written once (finish), however
 * many operations of the call use it: commits riding a reserve settle in the same window state the reserve then
 * checks, so a call costs the window one HMGET and one HSET, not one per operation. One clock time per call.
 */
const WINDOW_CACHE = `
local cache, opened = {}, {}

-- mark: the journal field the operation needs (nil: none).
local function open(h, z, e, idle, now, ttl, mark)
  local w = cache[h]
  if w then
    if mark and w.markField ~= mark then
      w.mark = num(redis.call('HGET', h, mark))
      w.markField = mark
    end
    return w
  end
  w = idleReset(load(h, mark), h, z, e, idle, now, ttl, mark)
  reap(w, z, e, now, ttl)
  w.markField = mark
  w.h, w.zk = h, z
  cache[h] = w
  table.insert(opened, w)
  return w
end

-- Keeps h and z alive (see keepAlive) once they are written.
local function extend(w, now, gc, slack)
  if keepAlive(w, now, gc, slack) then
    w.extend = true
  end
end

-- Writes every opened window; a TTL is set after the HSET, since PEXPIRE of a key not yet made does nothing.
local function finish(now)
  for _, w in ipairs(opened) do
    flush(w, w.h)
    if w.extend then
      redis.call('PEXPIRE', w.h, w.g - now)
    end
    if w.z and (w.extend or w.made) then
      redis.call('PEXPIRE', w.zk, w.g - now)
    end
  end
end
`;

/**
 * The commit, shared by the commit script and the reserve script (where queued commits ride: RedisStore). One
 * commit from KEYS position kc and ARGV position ac: member, estimate usd, tokens, calls, actual usd, tokens, calls,
 * journal id ('' for a reservation held here), journal sequence number, window count, then per window the WINDOW_ARGS;
 * KEYS (h, z, e) per window. Charges a window iff its hold left z or e by this ZREM, or (journal) iff the sequence
 * number is above the mark. Returns {1, {{w, metric, used} per crossing}} charged or {0} settled before (a replay),
 * and the KEYS and ARGV positions past it.
 */
const COMMIT_ONE = `
local function commitOne(kc, ac, now, pct)
  local m = ARGV[ac + 1]
  local est = {tonumber(ARGV[ac + 2]), tonumber(ARGV[ac + 3]), tonumber(ARGV[ac + 4])}
  local act = {tonumber(ARGV[ac + 5]), tonumber(ARGV[ac + 6]), tonumber(ARGV[ac + 7])}
  local mark = ARGV[ac + 8] ~= '' and ('j:' .. ARGV[ac + 8]) or nil
  local seq = tonumber(ARGV[ac + 9])
  local n = tonumber(ARGV[ac + 10])
  local charged = false
  local crossed = {}
  for i = 1, n do
    local k = kc + 3 * (i - 1)
    local h, z, e = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
    local idle, gc, slack, caps = windowArgs(ac + 10, i)
    local w = open(h, z, e, idle, now, gc + slack, mark)
    local charge = false
    if mark then
      if seq > w.mark then
        charge = true
        w.mark = seq
        put(w, mark, seq)
      end
    elseif redis.call('ZREM', z, m) == 1 then
      charge = true
      add(w, w.held, R, est, -1)
    else
      -- Reaped (score > 0: its estimate is presumed spent here) or moved by an idle reset (score 0: nothing here).
      local reaped = redis.call('ZSCORE', e, m)
      if reaped and redis.call('ZREM', e, m) == 1 then
        charge = true
        if tonumber(reaped) > 0 then
          add(w, w.spent, A, est, -1)
        end
      end
    end
    if charge then
      charged = true
      add(w, w.spent, A, act, 1)
      touch(w, idle, now)
      extend(w, now, gc, slack)
      alerts(w, i, caps, pct, crossed)
    end
  end
  return charged and {1, crossed} or {0}, kc + 3 * n, ac + 10 + 6 * n
end

-- The commits at the front of KEYS and ARGV (their count in ARGV[3]); returns their replies and the positions past them.
local function commitAll(now, pct)
  local kc, ac = 0, 3
  local settled = {}
  for c = 1, tonumber(ARGV[3]) do
    settled[c], kc, ac = commitOne(kc, ac, now, pct)
  end
  return settled, kc, ac
end
`;

const PIECES = `${COMMON}${WINDOW_ARGS}${WINDOW_CACHE}${COMMIT_ONE}`;

/**
 * ARGV: now, alert percent, number of commits riding, the commits (COMMIT_ONE), then this reservation's member,
 * expiry, estimate usd, tokens, calls, and per window the WINDOW_ARGS. KEYS: the commits' windows, then this
 * reservation's (h, z, e) per window. The commits settle first, so what they return is there for the reserve; they
 * land whatever the reserve's answer. Kills are not checked here: RedisStore keeps a copy (see redis-store.ts).
 * Reply: {1, {{usd, tokens, calls used} per window}, {{w, metric, used} per crossing}, commits} admitted;
 * {0, 'CAP', w, metric, limit, spent, reserved, seen, commits} refused. Decoded by RESERVE.
 */
const RESERVE_LUA = `${PIECES}
local now, pct = tonumber(ARGV[1]), tonumber(ARGV[2])
local settled, kc, ac = commitAll(now, pct)
local m, exp = ARGV[ac + 1], tonumber(ARGV[ac + 2])
local est = {tonumber(ARGV[ac + 3]), tonumber(ARGV[ac + 4]), tonumber(ARGV[ac + 5])}
local base = ac + 5
local n = (#KEYS - kc) / 3
local ws = {}
for i = 1, n do
  local k = kc + 3 * (i - 1)
  local h, z, e = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local idle, gc, slack, caps = windowArgs(base, i)
  local w = open(h, z, e, idle, now, gc + slack)
  ws[i] = w
  for mi = 1, 3 do
    local limit = caps[mi]
    local spent, held = w.spent[mi], w.held[mi]
    if limit >= 0 and (spent + held >= limit or spent + held + est[mi] > limit) then
      -- What the reaper returned stays returned, and the commits stay settled.
      finish(now)
      return {0, 'CAP', i, mi, limit, spent, held, w.seen or '', settled}
    end
  end
end
local usedOut, crossed = {}, {}
for i = 1, n do
  local idle, gc, slack, caps = windowArgs(base, i)
  local w = ws[i]
  add(w, w.held, R, est, 1)
  touch(w, idle, now)
  if w.x == 0 or exp < w.x then
    w.x = exp
    put(w, 'x', exp)
  end
  extend(w, now, gc, slack)
  if not w.z then
    redis.call('ZADD', w.zk, exp, m, '+inf', '~')
    w.z = '1'
    w.made = true
    put(w, 'z', 1)
  else
    redis.call('ZADD', w.zk, exp, m)
  end
  alerts(w, i, caps, pct, crossed)
  usedOut[i] = used(w)
end
finish(now)
return {1, usedOut, crossed, settled}
`;

/**
 * ARGV: now, alert percent, number of commits, the commits (COMMIT_ONE); KEYS: their windows. Several commits of one
 * hash tag go in one call (RedisStore's queue). Reply: one {1, crossings} or {0} per commit. Decoded by COMMIT.
 */
const COMMIT_LUA = `${PIECES}
local now, pct = tonumber(ARGV[1]), tonumber(ARGV[2])
local settled = commitAll(now, pct)
finish(now)
return settled
`;

/** KEYS: (h, z, e) per window. ARGV: member, estimate usd, tokens, calls. Returns the hold if it is still held. Reply: 1. */
const RELEASE_LUA = `${COMMON}
local m = ARGV[1]
local est = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])}
-- Takes the estimate off the fields F (held: R, or spent: A) of h.
local function subtract(h, F)
  local v = redis.call('HMGET', h, F[1], F[2], F[3])
  local out = {}
  for mi = 1, 3 do
    if est[mi] > 0 then
      table.insert(out, F[mi])
      table.insert(out, num(v[mi]) - est[mi])
    end
  end
  if #out > 0 then
    redis.call('HSET', h, unpack(out))
  end
end
for i = 1, #KEYS / 3 do
  local h, z, e = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  if redis.call('ZREM', z, m) == 1 then
    subtract(h, R)
  else
    -- Reaped already: its estimate, presumed spent then (score > 0), is refunded; forgotten so nothing charges it later.
    local reaped = redis.call('ZSCORE', e, m)
    if reaped and redis.call('ZREM', e, m) == 1 and tonumber(reaped) > 0 then
      subtract(h, A)
    end
  end
end
return 1
`;

/**
 * KEYS: (h, z, e) per window. ARGV: now, then per window idle, gc, slack. Reaps like reserve, so what it reports is
 * what reserve would check. Reply: per window {usd, tokens, calls, r_usd, r_tokens, r_calls, seen (-1: never)}.
 * Decoded by SNAPSHOT.
 */
const SNAPSHOT_LUA = `${COMMON}
local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 3 do
  local h, z, e = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local o = 1 + (i - 1) * 3
  local idle, ttl = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]) + tonumber(ARGV[o + 3])
  local w = idleReset(load(h), h, z, e, idle, now, ttl)
  reap(w, z, e, now, ttl)
  flush(w, h)
  table.insert(out, {w.spent[1], w.spent[2], w.spent[3], w.held[1], w.held[2], w.held[3], w.seen and tonumber(w.seen) or -1})
end
return out
`;

/** A cap that reached the alert percent for the first time in its window. */
export interface CrossingReply {
  /** Index (from 0) into the windows the script was given. */
  readonly window: number;
  readonly metric: Metric;
  /** spent + reserved after the operation. */
  readonly used: number;
}

export type ReserveReply = (
  | {
      readonly admitted: true;
      /** spent + reserved per window after the hold, in the order given. */
      readonly used: readonly Amounts[];
      readonly crossed: readonly CrossingReply[];
    }
  | {
      readonly admitted: false;
      readonly refusal: 'CAP';
      /** Index (from 0) into the windows the script was given. */
      readonly window: number;
      readonly metric: Metric;
      readonly limit: number;
      readonly spent: number;
      readonly reserved: number;
      /** Clock time of the window's last reserve or commit; null if never. */
      readonly lastSeen: number | null;
    }
) & {
  /** One per commit that rode the reserve, in the order given: settled whether or not the reserve was admitted. */
  readonly settled: readonly CommitReply[];
};

export interface CommitReply {
  /** False: this reservation was settled before (a replay), nothing was charged. */
  readonly charged: boolean;
  readonly crossed: readonly CrossingReply[];
}

export interface WindowReply {
  readonly spent: Amounts;
  readonly reserved: Amounts;
  /** Clock time of the window's last reserve or commit; null if never. */
  readonly lastSeen: number | null;
}

const windowIndex = (raw: unknown, what: string): number => reply.intIn(raw, 1, Number.MAX_SAFE_INTEGER, what) - 1;
const metric = (raw: unknown, what: string): Metric => METRICS[reply.intIn(raw, 1, METRICS.length, what) - 1]!;
/** {usd, tokens, calls}. */
const amounts = (v: readonly unknown[], what: string): Amounts => ({
  usdMicros: reply.int(v[0], `${what}.usd`),
  tokens: reply.int(v[1], `${what}.tokens`),
  calls: reply.int(v[2], `${what}.calls`),
});
const crossings = (raw: unknown): CrossingReply[] =>
  reply.array(raw, 'crossings').map((c, i) => {
    const [w, m, used] = reply.tuple(c, 3, `crossings[${i}]`);
    return { window: windowIndex(w, `crossings[${i}].window`), metric: metric(m, `crossings[${i}].metric`), used: reply.int(used, `crossings[${i}].used`) };
  });

/** One reply per commit ({1, crossings} charged, {0} settled before). */
const commitReplies = (raw: unknown, what: string): CommitReply[] =>
  reply.array(raw, what).map((c, i) => {
    const [flag, crossed] = reply.array(c, `${what}[${i}]`);
    if (flag === 0) {
      reply.tuple(c, 1, `${what}[${i}] settled before`);
      return { charged: false, crossed: [] };
    }
    reply.tuple(c, 2, `${what}[${i}] charged`);
    reply.intIn(flag, 1, 1, `${what}[${i}].flag`);
    return { charged: true, crossed: crossings(crossed) };
  });

export const RESERVE = defineScript('fuseboxReserve', RESERVE_LUA, (raw): ReserveReply => {
  const [flag, kind] = reply.array(raw, 'reply');
  if (flag === 1) {
    const [, used, crossed, settled] = reply.tuple(raw, 4, 'admitted');
    return {
      admitted: true,
      used: reply.array(used, 'used').map((u, i) => amounts(reply.tuple(u, 3, `used[${i}]`), `used[${i}]`)),
      crossed: crossings(crossed),
      settled: commitReplies(settled, 'commits'),
    };
  }
  if (flag === 0 && kind === 'CAP') {
    const [, , w, m, limit, spent, held, seen, settled] = reply.tuple(raw, 9, 'cap');
    return {
      admitted: false,
      refusal: 'CAP',
      window: windowIndex(w, 'window'),
      metric: metric(m, 'metric'),
      limit: reply.int(limit, 'limit'),
      spent: reply.int(spent, 'spent'),
      reserved: reply.int(held, 'reserved'),
      lastSeen: seen === '' ? null : reply.number(seen, 'seen'),
      settled: commitReplies(settled, 'commits'),
    };
  }
  throw new Error(`expected {1, used, crossed, commits} or {0, 'CAP', ..., commits}, got flag ${String(flag)} and ${String(kind)}`);
});

export const COMMIT = defineScript('fuseboxCommit', COMMIT_LUA, (raw): CommitReply[] => commitReplies(raw, 'commits'));

export const RELEASE = defineScript('fuseboxRelease', RELEASE_LUA, (raw): void => {
  reply.intIn(raw, 1, 1, 'reply');
});

export const SNAPSHOT = defineScript('fuseboxSnapshot', SNAPSHOT_LUA, (raw): WindowReply[] =>
  reply.array(raw, 'reply').map((w, i) => {
    const v = reply.tuple(w, 7, `windows[${i}]`);
    const lastSeen = reply.number(v[6], `windows[${i}].seen`);
    return {
      spent: amounts(v.slice(0, 3), `windows[${i}].spent`),
      reserved: amounts(v.slice(3, 6), `windows[${i}].reserved`),
      lastSeen: lastSeen < 0 ? null : lastSeen,
    };
  }),
);
