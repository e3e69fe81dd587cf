import { Redis } from 'ioredis';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { LocalFallbackStore } from '../../src/budget/local-fallback-store.js';
import { RedisStore } from '../../src/budget/redis-store.js';
import type { Actual, BudgetStore, CommitResult, Estimate, Reservation, ScopeBudget } from '../../src/budget/store.js';
import { RedisConnection } from '../../src/store/redis-connection.js';
import { sameSlot } from '../../src/store/redis-slots.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { startRedisCluster, type TestRedisCluster } from '../helpers/redis-cluster.js';

// Commits that wait to ride the agent's next reserve (RedisStore's commitDelayMs, issue 14): the same guarantees as a
// commit sent alone, on a real Redis.

const usd = (n: number) => Math.round(n * 1_000_000);
const est = (usdMicros: number, tokens = 0): Estimate => ({ usdMicros, tokens, calls: 1 });
const act = (usdMicros: number, tokens = 0): Actual => ({ usdMicros, tokens });
const agentScopes = (agent: string, dayUsd = 10): ScopeBudget[] => [
  { scope: { kind: 'agent', id: agent }, window: 'day', caps: { usdMicros: usd(dayUsd) } },
  { scope: { kind: 'agent', id: agent }, window: 'month', caps: {} },
  { scope: { kind: 'workflow', id: 'w1', agent }, window: 'workflow', caps: { calls: 100 }, idleTtlMs: 3_600_000 },
];
/** A day far from midnight and the month's end: every call of a test stays in one window. */
const T0 = Date.parse('2026-11-12T12:00:00Z');

async function admit(store: BudgetStore, scopes: ScopeBudget[], e: Estimate): Promise<Reservation> {
  const r = await store.reserve({ scopes, estimate: e });
  if (!r.ok) throw new Error(`refused: ${JSON.stringify(r.refusal)}`);
  return r.reservation;
}

/** Commits as the store sent them, counted by how. */
const counter = () => {
  const sent = { ridden: 0, alone: 0 };
  return { sent, onCommitsSent: (how: 'ridden' | 'alone', n: number) => (sent[how] += n) };
};

/** Settled (and held) µUSD of an agent's day window, read by another client. */
const dayOf = async (raw: Redis, prefix: string, agent: string) => {
  const [u, ru, c] = await raw.hmget(`{${prefix}:a:${agent}}:day:2026-11-12`, 'u', 'ru', 'c');
  return { spent: Number(u ?? 0), held: Number(ru ?? 0), calls: Number(c ?? 0) };
};

/** Calls of `commands` since the last RESETSTAT (INFO commandstats). */
const callsOf = async (raw: Redis, ...commands: string[]): Promise<number> => {
  const stats = await raw.info('commandstats');
  return commands.reduce((sum, c) => sum + Number(new RegExp(`cmdstat_${c}:calls=(\\d+),`).exec(stats)?.[1] ?? 0), 0);
};

describe('commits riding the next reserve (store.commitDelayMs)', () => {
  let redis: TestRedis | undefined;
  let cluster: TestRedisCluster | undefined;
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    vi.useRealTimers();
    for (const c of cleanups.splice(0).reverse()) await c();
    await redis?.stop();
    await cluster?.stop();
    redis = undefined;
    cluster = undefined;
  });

  const setup = async (opts: { commitDelayMs?: number; timeoutMs?: number; persist?: boolean; url?: string } = {}) => {
    redis ??= opts.url ? undefined : await startRedis({ persist: opts.persist ?? false });
    const url = opts.url ?? redis!.url;
    let t = T0;
    const clock = { now: () => t, advance: (ms: number) => (t += ms) };
    const connection = new RedisConnection({ url, keyPrefix: 'cr', timeoutMs: opts.timeoutMs ?? 2_000 });
    const count = counter();
    const store = new RedisStore({ redis: connection, now: clock.now, commitDelayMs: opts.commitDelayMs ?? 1_000, onCommitsSent: count.onCommitsSent });
    const raw = url.startsWith('redis+cluster') ? undefined : new Redis(url);
    // A killed server makes this reader's reconnects fail too; it reads again once the server is back.
    raw?.on('error', () => {});
    cleanups.push(
      () => connection.close(),
      () => raw?.disconnect(),
    );
    await store.waitReady(5_000);
    return { store, connection, clock, sent: count.sent, raw: raw!, redis };
  };

  it('runs a commit inside the next reserve of its agent: one script call for both, charged once, its hold gone', async () => {
    const { store, sent, raw } = await setup();
    const scopes = agentScopes('a1');
    const first = await admit(store, scopes, est(usd(0.5), 100));
    const committed = store.commit(first, act(usd(0.3), 80));
    expect(await dayOf(raw, 'cr', 'a1')).toEqual({ spent: 0, held: usd(0.5), calls: 0 });
    await raw.config('RESETSTAT');
    const second = await admit(store, scopes, est(usd(0.5), 100));
    await expect(committed).resolves.toEqual({ crossed: [] });
    expect(sent).toEqual({ ridden: 1, alone: 0 });
    expect(await callsOf(raw, 'eval', 'evalsha')).toBe(1);
    expect(await callsOf(raw, 'hmget', 'hset')).toBe(6);
    // The first hold settled, the second held: in every window of the call.
    expect(await dayOf(raw, 'cr', 'a1')).toEqual({ spent: usd(0.3), held: usd(0.5), calls: 1 });
    const [wf] = await store.snapshot([scopes[2]!]);
    expect(wf).toMatchObject({ spent: { usdMicros: usd(0.3), tokens: 80, calls: 1 }, reserved: { usdMicros: usd(0.5), tokens: 100, calls: 1 } });
    // Committed again (a replay): nothing more.
    await store.commitNow(first, act(usd(0.3), 80));
    await store.commit(second, act(usd(0.2)));
    await store.flush();
    expect(await dayOf(raw, 'cr', 'a1')).toEqual({ spent: usd(0.5), held: 0, calls: 2 });
  });

  it('sends a commit no reserve came for alone, exactly commitDelayMs after it was queued, with the others of its agent in one call', async () => {
    const { store, sent, raw } = await setup({ commitDelayMs: 1_000 });
    const scopes = agentScopes('a1');
    const held = await Promise.all([1, 2, 3].map(() => admit(store, scopes, est(usd(0.5)))));
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const first = store.commit(held[0]!, act(usd(0.1)));
    await vi.advanceTimersByTimeAsync(400);
    const later = held.slice(1).map((r) => store.commit(r, act(usd(0.1))));
    await vi.advanceTimersByTimeAsync(599);
    expect(sent).toEqual({ ridden: 0, alone: 0 });
    expect(await dayOf(raw, 'cr', 'a1')).toEqual({ spent: 0, held: usd(1.5), calls: 0 });
    await raw.config('RESETSTAT');
    await vi.advanceTimersByTimeAsync(1);
    await Promise.all([first, ...later]);
    // The oldest commit waited its delay; the two behind it went with it.
    expect(sent).toEqual({ ridden: 0, alone: 3 });
    expect(await callsOf(raw, 'eval', 'evalsha')).toBe(1);
    // One read per window for the three commits: the script reads each window once, whatever touches it.
    expect(await callsOf(raw, 'hmget')).toBe(3);
    expect(await dayOf(raw, 'cr', 'a1')).toEqual({ spent: usd(0.3), held: 0, calls: 3 });
  });

  it('lands a commit that rides a refused reserve, and the refusal already counts it', async () => {
    const { store, sent, raw } = await setup();
    const scopes = agentScopes('a1', 1);
    const r = await admit(store, scopes, est(usd(0.6)));
    const committed = store.commit(r, act(usd(0.2)));
    const refused = await store.reserve({ scopes, estimate: est(usd(0.9)) });
    expect(refused.ok || refused.refusal).toMatchObject({ reason: 'BUDGET_EXCEEDED', spent: usd(0.2), reserved: 0, limit: usd(1) });
    await expect(committed).resolves.toEqual({ crossed: [] });
    expect(sent).toEqual({ ridden: 1, alone: 0 });
    expect(await dayOf(raw, 'cr', 'a1')).toEqual({ spent: usd(0.2), held: 0, calls: 1 });
  });

  it("reports a ridden commit's alert crossing with the commit, not the reserve it rode", async () => {
    const { store } = await setup();
    const scopes = agentScopes('a1', 1);
    const r = await admit(store, scopes, est(usd(0.5)));
    // 0.8 of a $1 cap: past the 75 % alert once it lands.
    const committed = store.commit(r, act(usd(0.8)));
    const next = await store.reserve({ scopes, estimate: est(usd(0.1)) });
    expect(next.ok && next.crossed).toEqual([]);
    const result: CommitResult = await committed;
    expect(result.crossed).toEqual([
      { scope: { kind: 'agent', id: 'a1' }, window: 'day', windowId: '2026-11-12', metric: 'usdMicros', percent: 75, used: usd(0.8), limit: usd(1) },
    ]);
  });

  it('commits at once a hold that would expire while it waits, so no reaper returns an estimate still spent', async () => {
    const { store, sent, raw } = await setup({ commitDelayMs: 1_000 });
    const scopes = agentScopes('a1');
    const r = await store.reserve({ scopes, estimate: est(usd(0.5)), ttlMs: 1_000 });
    if (!r.ok) throw new Error('refused');
    await store.commit(r.reservation, act(usd(0.4)));
    expect(sent).toEqual({ ridden: 0, alone: 1 });
    expect(await dayOf(raw, 'cr', 'a1')).toEqual({ spent: usd(0.4), held: 0, calls: 1 });
  });

  it('charges a ridden commit exactly once when the answer of the reserve it rode is lost: journaled, then replayed for nothing', async () => {
    const { store: shared, raw } = await setup({ timeoutMs: 150 });
    const fb = new LocalFallbackStore({ shared, now: () => T0, replayIntervalMs: 3_600_000 });
    cleanups.push(() => fb.close());
    const scopes = agentScopes('a1');
    const r = await admit(fb, scopes, est(usd(0.5)));
    const committed = fb.commit(r, act(usd(0.3)));
    // Redis holds writes past the client's timeout, then runs them: the reserve's script ran, its answer came too late.
    await raw.call('CLIENT', 'PAUSE', '600', 'WRITE');
    const next = await fb.reserve({ scopes, estimate: est(usd(0.1)) });
    expect(next.ok && next.reservation.local).toBe(true);
    await committed;
    expect(fb.journal().map((e) => e.id)).toEqual([r.id]);
    await vi.waitFor(async () => expect((await dayOf(raw, 'cr', 'a1')).spent).toBe(usd(0.3)), { timeout: 10_000, interval: 20 });
    // Back: the journal is replayed, and the replay finds the hold gone (the lost ride removed it): nothing charged twice.
    await vi.waitFor(async () => expect(await fb.replayJournal().then(() => fb.available())).toBe(true), { timeout: 10_000, interval: 20 });
    expect(fb.journal()).toEqual([]);
    expect(await dayOf(raw, 'cr', 'a1')).toMatchObject({ spent: usd(0.3), calls: 1 });
  });

  // Bounds for a Redis restart and reconnects on a loaded 2-core machine (one run failed at 12 s under load ~20, output
  // not kept); each wait ends on the state it waits for.
  it('journals a queued commit whose send fails when Redis is killed, and replays it once Redis is back', async () => {
    const { store: shared, raw, redis: server } = await setup({ persist: true, timeoutMs: 200 });
    const fb = new LocalFallbackStore({ shared, now: () => T0, replayIntervalMs: 50 });
    cleanups.push(() => fb.close());
    const scopes = agentScopes('a1');
    const r = await admit(fb, scopes, est(usd(0.5)));
    const committed = fb.commit(r, act(usd(0.3)));
    server!.kill();
    await vi.waitFor(() => expect(shared.available()).toBe(false), { timeout: 30_000, interval: 20 });
    // The delay runs out (flush sends at once what the timer would): the send fails, the commit is journaled.
    await fb.flush();
    await expect(committed).resolves.toEqual({ crossed: [] });
    expect(fb.journal().map((e) => e.id)).toEqual([r.id]);
    expect(fb.available()).toBe(false);
    await server!.restart();
    await vi.waitFor(() => expect(fb.available()).toBe(true), { timeout: 30_000, interval: 20 });
    expect(fb.journal()).toEqual([]);
    await vi.waitFor(async () => expect(await dayOf(raw, 'cr', 'a1')).toEqual({ spent: usd(0.3), held: 0, calls: 1 }), { timeout: 30_000, interval: 20 });
  }, 120_000);

  it('sends queued commits at close, and every commit after it at once', async () => {
    // A delay no test waits out: only close() can have sent the commit.
    const { store, sent, raw } = await setup({ commitDelayMs: 30_000 });
    const scopes = agentScopes('a1');
    const [a, b] = await Promise.all([admit(store, scopes, est(usd(0.5))), admit(store, scopes, est(usd(0.5)))]);
    const committed = store.commit(a!, act(usd(0.25)));
    await store.close();
    await expect(committed).resolves.toEqual({ crossed: [] });
    await store.commit(b!, act(usd(0.25)));
    expect(sent).toEqual({ ridden: 0, alone: 2 });
    expect(await dayOf(raw, 'cr', 'a1')).toEqual({ spent: usd(0.5), held: 0, calls: 2 });
  });

  it('on a 3-master cluster, rides a commit only on its own agent: two agents on different slots each carry their own', async () => {
    cluster = await startRedisCluster();
    const { store, sent } = await setup({ url: cluster.url });
    const a1 = agentScopes('a1');
    const a2 = agentScopes('a2-on-another-slot');
    expect(sameSlot(['{cr:a:a1}', '{cr:a:a2-on-another-slot}'])).toBe(false);
    const [r1, r2] = [await admit(store, a1, est(usd(0.5))), await admit(store, a2, est(usd(0.5)))];
    const c1 = store.commit(r1, act(usd(0.1)));
    const c2 = store.commit(r2, act(usd(0.2)));
    // a2's reserve carries a2's commit only: a1's keys would make it a cross-slot script.
    await admit(store, a2, est(usd(0.5)));
    await expect(c2).resolves.toEqual({ crossed: [] });
    expect(sent).toEqual({ ridden: 1, alone: 0 });
    await admit(store, a1, est(usd(0.5)));
    await expect(c1).resolves.toEqual({ crossed: [] });
    expect(sent).toEqual({ ridden: 2, alone: 0 });
    const [u1] = await store.snapshot([a1[0]!]);
    const [u2] = await store.snapshot([a2[0]!]);
    expect(u1).toMatchObject({ spent: { usdMicros: usd(0.1), calls: 1 }, reserved: { usdMicros: usd(0.5), calls: 1 } });
    expect(u2).toMatchObject({ spent: { usdMicros: usd(0.2), calls: 1 }, reserved: { usdMicros: usd(0.5), calls: 1 } });
  });
});
