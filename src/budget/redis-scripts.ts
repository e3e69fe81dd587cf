import { defineScript, reply } from '../store/redis-script.js';
import { METRICS, type Amounts, type Metric } from './store.js';

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

-- Returns a hold to the window, if it is still held: only the caller whose ZREM removed it subtracts it.
local function unhold(h, z, member, est)
  if redis.call('ZREM', z, member) == 1 then
    for i = 1, 3 do
      if est[i] > 0 then
        redis.call('HINCRBY', h, 'r_' .. M[i], -est[i])
      end
    end
  end
end

-- spent + held per metric.
local function usedOf(h)
  local v = redis.call('HMGET', h, 'usd', 'tokens', 'calls', 'r_usd', 'r_tokens', 'r_calls')
  return {num(v[1]) + num(v[4]), num(v[2]) + num(v[5]), num(v[3]) + num(v[6])}
end

-- Appends {window, metric, used} for every cap that reached the alert percent for the first time.
local function alerts(h, w, caps, pct, used, out)
  if pct <= 0 then
    return
  end
  for _, cap in ipairs(caps) do
    local m, limit = cap[1], cap[2]
    if used[m] * 100 >= limit * pct and redis.call('HSETNX', h, 'a_' .. M[m], 1) == 1 then
      table.insert(out, {w, m, used[m]})
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
 * Reply: {1, {{usd, tokens, calls used} per window}, {{w, metric, used} per crossing}} admitted;
 * {0, 'KILLED', field, value}; {0, 'CAP', w, metric, limit, spent, reserved, seen} refused. Decoded by RESERVE.
 */
const RESERVE_LUA = `${COMMON}
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
local used = {}
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
  used[w] = usedOf(h)
  alerts(h, w, win.caps, a.alert, used[w], crossed)
end
return {1, used, crossed}
`;

/**
 * KEYS: settled marker, then (h, z) per window. ARGV[1]: {now, m, est, act: [u,t,c], alert, ttl, win}.
 * The marker (SET NX with TTL) makes a repeated commit, e.g. a journal replay whose reply was lost, a no-op.
 * Reply: {1, {{w, metric, used} per crossing}} charged; {0} already settled. Decoded by COMMIT.
 */
const COMMIT_LUA = `${COMMON}
local a = cjson.decode(ARGV[1])
local now = a.now
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', a.ttl) then
  return {0}
end
local crossed = {}
for w, win in ipairs(a.win) do
  local h, z = KEYS[2 * w], KEYS[2 * w + 1]
  idleReset(h, z, win.idle, now)
  reap(h, z, now)
  unhold(h, z, a.m, a.est)
  for i = 1, 3 do
    if a.act[i] > 0 then
      redis.call('HINCRBY', h, M[i], a.act[i])
    end
  end
  touch(h, z, now, win.gc)
  alerts(h, w, win.caps, a.alert, usedOf(h), crossed)
end
return {1, crossed}
`;

/** KEYS: (h, z) per window. ARGV[1]: {m, est}. Returns the hold if it is still held. Reply: 1. */
const RELEASE_LUA = `${COMMON}
local a = cjson.decode(ARGV[1])
for w = 1, #KEYS / 2 do
  local h, z = KEYS[2 * w - 1], KEYS[2 * w]
  unhold(h, z, a.m, a.est)
end
return 1
`;

/**
 * KEYS: (h, z) per window. ARGV[1]: {now, win: [{idle}]}. Reaps like reserve, so what it reports is what
 * reserve would check. Reply: per window {usd, tokens, calls, r_usd, r_tokens, r_calls, seen (-1: never)}.
 * Decoded by SNAPSHOT.
 */
const SNAPSHOT_LUA = `${COMMON}
local a = cjson.decode(ARGV[1])
local out = {}
for w, win in ipairs(a.win) do
  local h, z = KEYS[2 * w - 1], KEYS[2 * w]
  idleReset(h, z, win.idle, a.now)
  reap(h, z, a.now)
  local v = redis.call('HMGET', h, 'usd', 'tokens', 'calls', 'r_usd', 'r_tokens', 'r_calls', 'seen')
  table.insert(out, {num(v[1]), num(v[2]), num(v[3]), num(v[4]), num(v[5]), num(v[6]), v[7] and tonumber(v[7]) or -1})
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

export type ReserveReply =
  | {
      readonly admitted: true;
      /** spent + reserved per window after the hold, in the order given. */
      readonly used: readonly Amounts[];
      readonly crossed: readonly CrossingReply[];
    }
  | { readonly admitted: false; readonly refusal: 'KILLED'; readonly killField: string; readonly killValue: string }
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

export const RESERVE = defineScript('fuseboxReserve', RESERVE_LUA, (raw): ReserveReply => {
  const [flag, kind] = reply.array(raw, 'reply');
  if (flag === 1) {
    const [, used, crossed] = reply.tuple(raw, 3, 'admitted');
    return {
      admitted: true,
      used: reply.array(used, 'used').map((u, i) => amounts(reply.tuple(u, 3, `used[${i}]`), `used[${i}]`)),
      crossed: crossings(crossed),
    };
  }
  if (flag === 0 && kind === 'KILLED') {
    const [, , field, value] = reply.tuple(raw, 4, 'killed');
    return { admitted: false, refusal: 'KILLED', killField: reply.string(field, 'kill field'), killValue: reply.string(value, 'kill value') };
  }
  if (flag === 0 && kind === 'CAP') {
    const [, , w, m, limit, spent, held, seen] = reply.tuple(raw, 8, 'cap');
    return {
      admitted: false,
      refusal: 'CAP',
      window: windowIndex(w, 'window'),
      metric: metric(m, 'metric'),
      limit: reply.int(limit, 'limit'),
      spent: reply.int(spent, 'spent'),
      reserved: reply.int(held, 'reserved'),
      lastSeen: seen === '' ? null : reply.number(seen, 'seen'),
    };
  }
  throw new Error(`expected {1, used, crossed}, {0, 'KILLED', ...} or {0, 'CAP', ...}, got flag ${String(flag)} and ${String(kind)}`);
});

export const COMMIT = defineScript('fuseboxCommit', COMMIT_LUA, (raw): CommitReply => {
  const [flag, crossed] = reply.array(raw, 'reply');
  if (flag === 0) {
    reply.tuple(raw, 1, 'settled before');
    return { charged: false, crossed: [] };
  }
  reply.tuple(raw, 2, 'charged');
  reply.intIn(flag, 1, 1, 'flag');
  return { charged: true, crossed: crossings(crossed) };
});

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
