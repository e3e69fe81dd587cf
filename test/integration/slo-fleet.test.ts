import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SloSchema } from '../../src/config/schema.js';
import { RedisSloBoard } from '../../src/slo/board.js';
import { RedisCounterStore } from '../../src/slo/counter-store.js';
import { SloEvaluator } from '../../src/slo/evaluator.js';
import { SloRecorder } from '../../src/slo/recorder.js';
import { sloSpecOf, type SloRouteSpec } from '../../src/slo/spec.js';
import { RedisConnection } from '../../src/store/redis-connection.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

/**
 * A fleet of SLO evaluators on one Redis (issue 14): one sidecar per route assesses and publishes, the others read.
 * Each sidecar has its own RedisConnection, as a pod has; the clock is fake (evaluations are called by hand, one per
 * interval), Redis is a private `redis-server` so its command statistics are this file's alone.
 */

const T = Date.UTC(2025, 0, 15, 12, 30, 30);
const INTERVAL = 5_000;

let redis: TestRedis;
let raw: Redis;
let prefixSeq = 0;
const opened: RedisConnection[] = [];

beforeAll(async () => {
  redis = await startRedis();
  raw = new Redis(redis.url);
  // Expiry events, so a test waits for a lease to lapse on Redis's own event instead of a timer.
  await raw.config('SET', 'notify-keyspace-events', 'Ex');
});
afterAll(async () => {
  await Promise.all(opened.map((c) => c.close()));
  raw?.disconnect();
  await redis?.stop();
});

interface Sidecar {
  id: string;
  ev: SloEvaluator;
  recorder: SloRecorder;
  board: RedisSloBoard;
  conn: RedisConnection;
  leader: Map<string, number>;
  counts: { assessments: number; publishFailures: number };
  logs: string[];
}

const fleet = async (n: number, opts: { slo?: Record<string, unknown>; intervalMs?: number } = {}) => {
  const prefix = `fleet${prefixSeq++}`;
  const clock = { t: T };
  const now = () => clock.t;
  const spec: SloRouteSpec = sloSpecOf('chat', SloSchema.parse(opts.slo ?? { onBudgetExhausted: 'shed', onFastBurn: 'shed' }));
  const sidecars: Sidecar[] = [];
  for (let i = 0; i < n; i++) {
    const id = `s${i}`;
    const conn = new RedisConnection({ url: redis.url, keyPrefix: prefix, timeoutMs: 1_000 });
    opened.push(conn);
    await conn.ready(5_000);
    const store = new RedisCounterStore(conn);
    const board = new RedisSloBoard(conn, { sidecarId: id });
    const leader = new Map<string, number>();
    const counts = { assessments: 0, publishFailures: 0 };
    const logs: string[] = [];
    const log = (_obj: object, msg: string) => void logs.push(msg);
    const ev = new SloEvaluator({
      store,
      routes: [spec],
      now,
      logger: { info: log, warn: log },
      intervalMs: opts.intervalMs ?? INTERVAL,
      staleAfterMs: 60_000,
      board,
      metrics: {
        leader: { set: (l, v) => void leader.set(l.route, v), remove: (l) => void leader.delete(l.route) },
        assessments: { inc: (_l, v = 1) => void (counts.assessments += v), remove: () => {} },
        publishFailures: { inc: (_l, v = 1) => void (counts.publishFailures += v), remove: () => {} },
      },
    });
    const recorder = new SloRecorder({ store, routes: [spec], now, flushIntervalMs: 1_000, writerId: `${prefix}-${id}` });
    sidecars.push({ id, ev, recorder, board, conn, leader, counts, logs });
  }
  return { prefix, clock, sidecars };
};

/** Calls per command name on the private Redis. `info` (this reading itself) left out. */
const commandStats = async (): Promise<Record<string, number>> => {
  const out: Record<string, number> = {};
  for (const m of (await raw.info('commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) if (m[1] !== 'info') out[m[1]!] = Number(m[2]);
  return out;
};

/** What ran on Redis while `fn` did. */
const commandsDuring = async (fn: () => Promise<unknown>): Promise<Record<string, number>> => {
  const before = await commandStats();
  await fn();
  const after = await commandStats();
  const delta: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) if (v - (before[k] ?? 0) > 0) delta[k] = v - (before[k] ?? 0);
  return delta;
};

const total = (stats: Record<string, number>) => Object.values(stats).reduce((a, b) => a + b, 0);

/** Resolves when `key` expires on the private Redis (its keyspace event). */
const expired = async (key: string): Promise<void> => {
  const sub = new Redis(redis.url);
  try {
    await sub.subscribe('__keyevent@0__:expired');
    await new Promise<void>((resolve) => {
      sub.on('message', (_channel: string, message: string) => {
        if (message === key) resolve();
      });
      // Subscribed only now: it may have lapsed already.
      void raw.exists(key).then((n) => n === 0 && resolve());
    });
  } finally {
    sub.disconnect();
  }
};

describe('SLO assessments shared by a fleet', () => {
  it('three sidecars on one route: exactly one assesses per interval, the others take its result and shed alike', async () => {
    const { clock, sidecars } = await fleet(3);
    const [a, b] = sidecars as [Sidecar, Sidecar, Sidecar];
    for (let i = 0; i < 50; i++) a.recorder.record('chat', { availability: 'good', latencyMs: 50 });
    for (let i = 0; i < 50; i++) b.recorder.record('chat', { availability: 'bad', latencyMs: 50 });
    await Promise.all([a.recorder.flush(), b.recorder.flush()]);

    // The first interval all at once: every one finds the route unassessed and asks for its lease; one gets it.
    await Promise.all(sidecars.map((s) => s.ev.evaluate()));
    const leaders = sidecars.filter((s) => s.ev.leads('chat'));
    expect(leaders).toHaveLength(1);
    const leader = leaders[0]!;
    // The leader first in each interval, so the others read this interval's result (else they are one behind).
    const order = [leader, ...sidecars.filter((s) => s !== leader)];
    for (let step = 1; step <= 4; step++) {
      clock.t = T + step * INTERVAL;
      for (const s of order) await s.ev.evaluate();
    }
    expect(sidecars.filter((s) => s.ev.leads('chat'))).toEqual([leader]);
    expect(sidecars.map((s) => s.counts.assessments)).toEqual(sidecars.map((s) => (s === leader ? 5 : 0)));
    expect(sidecars.map((s) => s.leader.get('chat'))).toEqual(sidecars.map((s) => (s === leader ? 1 : 0)));
    expect(sidecars.flatMap((s) => s.logs.filter((l) => l.startsWith('took the lead of route "chat"')))).toHaveLength(1);
    for (const s of sidecars) {
      const state = s.ev.state('chat')!;
      expect(state).toMatchObject({ evaluatedAt: T + 4 * INTERVAL, exhausted: true, fastBurn: true, action: 'shed', stale: false });
      expect(state.slos).toEqual(leader.ev.state('chat')!.slos);
      expect(state.slos.availability?.events['5m']).toEqual({ good: 50, bad: 50 });
      const admission = s.ev.admit('chat');
      expect(admission.admit).toBe(false);
      if (!admission.admit) expect(admission.error.code).toBe('SLO_BUDGET_EXHAUSTED');
    }
  });

  it('idle, a follower costs Redis one command per interval and a recorder with nothing to flush none; the leader one publish script', async () => {
    const { clock, sidecars } = await fleet(3);
    const [leader, ...followers] = sidecars as [Sidecar, Sidecar, Sidecar];
    await leader.ev.evaluate();
    expect(leader.ev.leads('chat')).toBe(true);

    const intervals = 12;
    const seen = { followers: {} as Record<string, number>, leaderPublish: {} as Record<string, number>, recorders: {} as Record<string, number> };
    const add = (into: Record<string, number>, d: Record<string, number>) => {
      for (const [k, v] of Object.entries(d)) into[k] = (into[k] ?? 0) + v;
    };
    for (let step = 1; step <= intervals; step++) {
      clock.t = T + step * INTERVAL;
      add(seen.recorders, await commandsDuring(() => Promise.all(sidecars.map((s) => s.recorder.flush()))));
      const leaderStep = await commandsDuring(() => leader.ev.evaluate());
      // The publish: EVALSHA and, inside it, GET (the lease), SET (renewed) and HSET; one EXISTS for buckets of the
      // previous layout; the rest are bucket reads.
      expect({ ...leaderStep, hgetall: undefined }).toEqual({ evalsha: 1, get: 1, set: 1, hset: 1, exists: 1, hgetall: undefined });
      add(seen.followers, await commandsDuring(() => Promise.all(followers.map((s) => s.ev.evaluate()))));
    }
    expect(seen.recorders).toEqual({});
    // One HGETALL of every route's published result per follower per interval, nothing else.
    expect(seen.followers).toEqual({ hgetall: followers.length * intervals });
    const perFollowerPerSecond = total(seen.followers) / followers.length / ((intervals * INTERVAL) / 1000);
    expect(perFollowerPerSecond).toBe(0.2);
    // 1,000 idle sidecars: 200 commands/s, plus one leader per route.
    expect(1000 * perFollowerPerSecond).toBeLessThanOrEqual(1000);
    expect(followers.map((s) => s.counts.assessments)).toEqual([0, 0]);
  });

  it('a leader that stops (no release) is replaced once its lease lapses; back, it finds the lease taken and does not publish over the new result', async () => {
    // Real lease time is Redis's: a 100 ms interval makes a 300 ms lease.
    const { clock, sidecars } = await fleet(3, { intervalMs: 100 });
    const [a, b, c] = sidecars as [Sidecar, Sidecar, Sidecar];
    await a.ev.evaluate();
    await Promise.all([b.ev.evaluate(), c.ev.evaluate()]);
    expect(sidecars.map((s) => s.ev.leads('chat'))).toEqual([true, false, false]);

    // `a` stops evaluating (a crash, a partition): nobody renews its lease.
    await expired(a.board.leaseKey('chat'));
    clock.t += 3 * 100;
    await b.ev.evaluate();
    await c.ev.evaluate();
    expect([b.ev.leads('chat'), c.ev.leads('chat')]).toEqual([true, false]);
    expect(b.logs).toContain('took the lead of route "chat": this sidecar now assesses its SLOs for the fleet and publishes them every 100 ms');
    expect(c.ev.state('chat')?.evaluatedAt).toBe(clock.t);
    const published = await raw.hget(b.board.publishedKey, 'chat');
    expect(JSON.parse(published!)).toMatchObject({ at: clock.t, by: 's1' });

    // `a` comes back still believing it leads: it assesses, but its publish finds the lease taken.
    const before = a.counts.assessments;
    await a.ev.evaluate();
    expect(a.counts.assessments).toBe(before + 1);
    expect(a.ev.leads('chat')).toBe(false);
    expect(a.leader.get('chat')).toBe(0);
    expect(a.logs.some((l) => l.startsWith('lost the lead of route "chat" (another sidecar holds its lease)'))).toBe(true);
    expect(await raw.hget(b.board.publishedKey, 'chat')).toBe(published);
  });

  it('a published result older than staleAfterMs (its leader holds the lease but no longer publishes) lifts the action on every follower', async () => {
    const { clock, sidecars } = await fleet(2);
    const [a, b] = sidecars as [Sidecar, Sidecar];
    for (let i = 0; i < 20; i++) a.recorder.record('chat', { availability: 'bad', latencyMs: 50 });
    await a.recorder.flush();
    await a.ev.evaluate();
    await b.ev.evaluate();
    expect(b.ev.state('chat')).toMatchObject({ action: 'shed', stale: false });
    // The lease stays with a sidecar that no longer publishes (it cannot read the buckets, say).
    await raw.set(a.board.leaseKey('chat'), 'stuck', 'PX', 600_000);
    clock.t = T + 30_000;
    await b.ev.evaluate();
    expect(b.ev.state('chat')).toMatchObject({ action: 'shed', stale: false, evaluatedAt: T });
    clock.t = T + 61_000;
    await b.ev.evaluate();
    expect(b.ev.leads('chat')).toBe(false);
    expect(b.ev.state('chat')).toMatchObject({ action: 'none', configuredAction: 'shed', stale: true, evaluatedAt: T });
    expect(b.ev.admit('chat').admit).toBe(true);
    expect(b.logs).toContain('SLO assessment of route "chat" (by s0) not renewed for 61 s: its SLO action is lifted until there is a fresh one');
  });

  it('a publish that fails is counted and logged once per streak, and the recovery; the followers keep the last result meanwhile', async () => {
    const { clock, sidecars } = await fleet(2);
    const [a, b] = sidecars as [Sidecar, Sidecar];
    await a.ev.evaluate();
    await b.ev.evaluate();
    // The published hash replaced by a string: HSET (in the publish script) and HGETALL (the followers' read) fail.
    const saved = await raw.hgetall(a.board.publishedKey);
    await raw.set(a.board.publishedKey, 'not a hash');
    for (let step = 1; step <= 3; step++) {
      clock.t = T + step * INTERVAL;
      await a.ev.evaluate();
      await b.ev.evaluate();
    }
    expect(a.counts).toMatchObject({ assessments: 4, publishFailures: 3 });
    expect(a.logs.filter((l) => l.startsWith('could not publish the SLO assessment of route "chat"'))).toHaveLength(1);
    expect(a.ev.leads('chat')).toBe(true);
    expect(b.ev.state('chat')).toMatchObject({ evaluatedAt: T, stale: false });

    await raw.del(a.board.publishedKey);
    await raw.hset(a.board.publishedKey, saved);
    clock.t = T + 4 * INTERVAL;
    await a.ev.evaluate();
    await b.ev.evaluate();
    expect(a.logs).toContain('SLO assessment of route "chat" published again');
    expect(a.counts.publishFailures).toBe(3);
    expect(b.ev.state('chat')?.evaluatedAt).toBe(T + 4 * INTERVAL);
  });

  it('a leader that closes releases its lease and result: another sidecar takes the route over at its next interval', async () => {
    const { clock, sidecars } = await fleet(2);
    const [a, b] = sidecars as [Sidecar, Sidecar];
    await a.ev.evaluate();
    await b.ev.evaluate();
    expect(b.ev.state('chat')?.evaluatedAt).toBe(T);
    await a.ev.close();
    expect(a.leader.get('chat')).toBe(0);
    expect(await raw.exists(a.board.leaseKey('chat'))).toBe(0);
    clock.t += INTERVAL;
    await b.ev.evaluate();
    expect(b.ev.leads('chat')).toBe(true);
    expect(b.ev.state('chat')?.evaluatedAt).toBe(T + INTERVAL);
  });

  it('a lapsed lease and a newer result published meanwhile: the late publish is refused (superseded)', async () => {
    const { sidecars } = await fleet(2);
    const [a, b] = sidecars as [Sidecar, Sidecar];
    const result = (at: number) => ({ at, spec: '[]', slos: {} });
    expect(await b.board.publish('chat', result(T + 10_000), 60_000)).toBe('published');
    await raw.del(b.board.leaseKey('chat'));
    expect(await a.board.publish('chat', result(T), 60_000)).toBe('superseded');
    expect(JSON.parse((await raw.hget(a.board.publishedKey, 'chat'))!)).toMatchObject({ at: T + 10_000, by: 's1' });
    expect(await raw.exists(a.board.leaseKey('chat'))).toBe(0);
    // Held by another: lost, whatever the times.
    expect(await b.board.lead('chat', 60_000)).toBe(true);
    expect(await a.board.publish('chat', result(T + 20_000), 60_000)).toBe('lost');
    // Its own lease: the holder publishes even behind a predecessor's clock.
    expect(await b.board.publish('chat', result(T + 5_000), 60_000)).toBe('published');
  });

  it('a published result it cannot decode is logged once and treated as missing: the route is taken over and published again', async () => {
    const { sidecars } = await fleet(1);
    const [a] = sidecars as [Sidecar];
    await raw.hset(a.board.publishedKey, 'chat', '{"version":99}');
    await a.ev.evaluate();
    expect(a.logs.filter((l) => l.includes('does not decode'))).toHaveLength(1);
    expect(a.ev.leads('chat')).toBe(true);
    expect(JSON.parse((await raw.hget(a.board.publishedKey, 'chat'))!)).toMatchObject({ at: T, by: 's0' });
  });

  it('publishes an infinite burn rate (a 100 % objective with a bad call) and reads it back as Infinity', async () => {
    const slo = { availability: { objectivePercent: 100 }, minEvents: 1 };
    const { sidecars } = await fleet(2, { slo });
    const [a, b] = sidecars as [Sidecar, Sidecar];
    a.recorder.record('chat', { availability: 'bad', latencyMs: 10 });
    await a.recorder.flush();
    await a.ev.evaluate();
    await b.ev.evaluate();
    expect(b.ev.leads('chat')).toBe(false);
    expect(b.ev.state('chat')?.slos.availability).toMatchObject({ burnRates: { '5m': Number.POSITIVE_INFINITY }, budgetRemaining: Number.NEGATIVE_INFINITY });
    expect(b.logs.filter((l) => l.includes('does not decode'))).toEqual([]);
  });

  it('a sidecar whose objectives differ from the leader\'s (a rolling config change) assesses the route itself, without publishing', async () => {
    const { prefix, clock, sidecars } = await fleet(1);
    const [a] = sidecars as [Sidecar];
    await a.ev.evaluate();
    const conn = new RedisConnection({ url: redis.url, keyPrefix: prefix });
    opened.push(conn);
    await conn.ready(5_000);
    let assessments = 0;
    const other = new SloEvaluator({
      store: new RedisCounterStore(conn),
      routes: [sloSpecOf('chat', SloSchema.parse({ availability: { objectivePercent: 99 } }))],
      now: () => clock.t,
      logger: { info() {}, warn() {} },
      board: new RedisSloBoard(conn, { sidecarId: 'other' }),
      metrics: { assessments: { inc: (_l, v = 1) => void (assessments += v), remove() {} } },
    });
    const published = await raw.hget(a.board.publishedKey, 'chat');
    await other.evaluate();
    expect(assessments).toBe(1);
    expect(other.leads('chat')).toBe(false);
    expect(other.state('chat')?.slos.availability?.objectivePercent).toBe(99);
    expect(await raw.hget(a.board.publishedKey, 'chat')).toBe(published);
  });

  it('every script keeps its keys in one Redis Cluster slot: a flush per route, the publish, the release', async () => {
    const { sidecars } = await fleet(1);
    const [a] = sidecars as [Sidecar];
    const spec2 = sloSpecOf('tools', SloSchema.parse({}));
    const chat = sloSpecOf('chat', SloSchema.parse({}));
    const store = new RedisCounterStore(a.conn);
    const recorder = new SloRecorder({ store, routes: [chat, spec2], now: () => T, flushIntervalMs: 1_000, writerId: 'slots' });
    recorder.record('chat', { availability: 'good', latencyMs: 10 });
    recorder.record('tools', { availability: 'bad', latencyMs: 10 });
    const monitor = await raw.monitor();
    const scripts: string[][] = [];
    monitor.on('monitor', (_time: string, args: string[]) => {
      const command = args[0]?.toLowerCase();
      // EVALSHA, or EVAL when Redis did not know the script yet: KEYS follow the key count.
      if (command === 'evalsha' || command === 'eval') scripts.push(args.slice(3, 3 + Number(args[2])));
    });
    try {
      await recorder.flush();
      await a.ev.evaluate();
      await a.ev.close();
      // MONITOR shows a command after it ran; an ECHO sent after the last one marks the end.
      await new Promise<void>((resolve) => {
        monitor.on('monitor', (_t: string, args: string[]) => args[0]?.toLowerCase() === 'echo' && args[1] === 'slots-done' && resolve());
        void raw.echo('slots-done');
      });
    } finally {
      monitor.disconnect();
    }
    const tag = (key: string) => /\{([^}]+)\}/.exec(key)?.[1];
    for (const keys of scripts) expect(new Set(keys.map(tag)).size).toBe(1);
    // A flush per route under the route's tag; the publish and the release under the board's.
    const p = a.conn.keyPrefix;
    expect([...new Set(scripts.map((keys) => tag(keys[0]!)))].sort()).toEqual([`${p}:slo`, `${p}:slo:chat`, `${p}:slo:tools`]);
  });
});
