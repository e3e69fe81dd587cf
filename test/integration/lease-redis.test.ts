import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { LeasedStore, type LeaseEvent } from '../../src/budget/lease.js';
import { MemoryLeaseSource, type LeaseReply, type LeaseRequest } from '../../src/budget/lease-source.js';
import { LocalFallbackStore } from '../../src/budget/local-fallback-store.js';
import { RedisLeaseSource } from '../../src/budget/redis-lease-source.js';
import { MemoryStore } from '../../src/budget/memory-store.js';
import { RedisStore } from '../../src/budget/redis-store.js';
import type { Amounts, ReservedScope, Reservation, ScopeBudget } from '../../src/budget/store.js';
import { dayId } from '../../src/budget/windows.js';
import { StoreUnavailableError } from '../../src/errors.js';
import { RedisConnection } from '../../src/store/redis-connection.js';
import { seeded } from '../helpers/pipeline.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { startRedisCluster, type TestRedisCluster } from '../helpers/redis-cluster.js';

const usd = (n: number) => Math.round(n * 1_000_000);
const SIZING = { ttlMs: 30_000, graceMs: 5_000, minSliceUsdMicros: usd(0.05), alertPercent: 75 };
const CAP = usd(20);

async function waitFor(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Throwaway Redis servers and the sidecar connections to them, opened by `openRedis`: closed after each test. */
const opened: Array<{ redis: TestRedis; connection: RedisConnection }> = [];
afterEach(async () => {
  for (const o of opened.splice(0)) {
    await o.connection.close();
    await o.redis.stop();
  }
});

/** A throwaway Redis (`persist`: its AOF survives a kill) and a sidecar's connection to it, ready. */
const openRedis = async (prefix: string, opts: { persist?: boolean; timeoutMs?: number } = {}) => {
  const redis = await startRedis({ persist: opts.persist ?? false });
  const connection = new RedisConnection({ url: redis.url, keyPrefix: prefix, ...(opts.timeoutMs !== undefined && { timeoutMs: opts.timeoutMs }) });
  opened.push({ redis, connection });
  await connection.ready(2_000);
  return { redis, connection };
};

/** Calls per command a Redis ran since its last RESETSTAT (those run inside scripts included), from INFO commandstats. */
const commandCalls = (commandstats: string): Map<string, number> =>
  new Map([...commandstats.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)].map(([, cmd, n]) => [cmd!, Number(n)]));
const sumOf = (calls: Map<string, number>, which: (cmd: string) => boolean): number =>
  [...calls].reduce((total, [cmd, n]) => total + (which(cmd) ? n : 0), 0);
const isScript = (cmd: string) => cmd === 'evalsha' || cmd === 'eval';
/** The test's own INFO and CONFIG (RESETSTAT) calls. */
const isOwn = (cmd: string) => /^(info|config)\b/.test(cmd);

describe('leased fleet cap over a real Redis that is killed and restarted', () => {
  let redis: TestRedis | undefined;
  const connections: RedisConnection[] = [];
  afterEach(async () => {
    await Promise.all(connections.splice(0).map((c) => c.close()));
    await redis?.stop();
    redis = undefined;
  });

  it('spends at most the slices held when Redis died, refuses with 503 after, and reports every charge exactly once when it is back', async () => {
    redis = await startRedis({ persist: true });
    // A frozen clock: windows and slice expiry stay put while the real outage comes and goes.
    const t = Date.now();
    const now = () => t;
    const fleet: ScopeBudget = { scope: { kind: 'fleet', id: 'all' }, window: 'day', caps: { usdMicros: CAP } };
    const events: LeaseEvent[] = [];
    const sidecar = async (i: number) => {
      const connection = new RedisConnection({ url: redis!.url, keyPrefix: 'ls', timeoutMs: 200 });
      connections.push(connection);
      const shared = new RedisStore({ redis: connection, now });
      await shared.waitReady(2_000);
      const store = new LeasedStore({
        inner: new LocalFallbackStore({ shared, now, replayIntervalMs: 50 }),
        source: new RedisLeaseSource({ redis: connection, ...SIZING }),
        now,
        onEvent: (e) => events.push(e),
      });
      return { store, scopes: [{ scope: { kind: 'agent', id: `pod-${i}` }, window: 'day', caps: {} }, fleet] as ScopeBudget[], charged: 0, calls: 0 };
    };
    const sidecars = await Promise.all(Array.from({ length: 5 }, (_, i) => sidecar(i)));
    const random = seeded(3);
    // Calls cost at most their estimate, so the bound is the cap itself.
    const call = async (s: (typeof sidecars)[number]): Promise<{ r: Reservation; actual: number } | 'refused'> => {
      try {
        const res = await s.store.reserve({ scopes: s.scopes, estimate: { usdMicros: usd(0.05 + random() * 0.25), tokens: 0, calls: 1 } });
        if (!res.ok) throw new Error(`refused: ${JSON.stringify(res.refusal)}`);
        return { r: res.reservation, actual: Math.round(res.reservation.estimate.usdMicros * (0.5 + random() / 2)) };
      } catch (err) {
        if (!(err instanceof StoreUnavailableError)) throw err;
        return 'refused';
      }
    };
    const settle = async (s: (typeof sidecars)[number], c: { r: Reservation; actual: number }) => {
      await s.store.commit(c.r, { usdMicros: c.actual, tokens: 1 });
      s.charged += c.actual;
      s.calls++;
    };

    for (let round = 0; round < 8; round++) {
      for (const s of sidecars) {
        const c = await call(s);
        if (c === 'refused') throw new Error('refused while Redis is up');
        await settle(s, c);
      }
    }
    const leftInSlices = sidecars.reduce((sum, s) => sum + (s.store.leaseViews().find((v) => v.scope.kind === 'fleet')?.remaining.usdMicros ?? 0), 0);
    expect(leftInSlices).toBeGreaterThan(0);

    redis.kill();
    await waitFor('every sidecar to see the outage', () => sidecars.every((s) => !s.store.available()));
    let admittedInOutage = 0;
    let refused = 0;
    for (let round = 0; round < 200 && refused < 5 * 3; round++) {
      for (const s of sidecars) {
        const c = await call(s);
        if (c === 'refused') {
          refused++;
          continue;
        }
        admittedInOutage += c.r.estimate.usdMicros;
        await settle(s, c);
      }
    }
    expect(refused).toBeGreaterThanOrEqual(15);
    expect(admittedInOutage).toBeGreaterThan(0);
    expect(admittedInOutage).toBeLessThanOrEqual(leftInSlices);

    await redis.restart();
    await waitFor('every journal to be replayed', () => sidecars.every((s) => s.store.available()));
    // Closing hands the slices back and reports what the outage kept unreported.
    await Promise.all(sidecars.map((s) => s.store.close()));
    expect(events.filter((e) => e.type === 'unreportedDropped')).toEqual([]);

    const raw = new Redis(redis.url);
    try {
      const day = dayId(t);
      const lease = await raw.hgetall(`{ls:f}:lease:day:${day}`);
      const total = sidecars.reduce((sum, s) => sum + s.charged, 0);
      expect(Number(lease.usd)).toBe(total);
      expect(Number(lease.out)).toBe(0);
      expect(total).toBeLessThanOrEqual(CAP);
      // The agents' own windows (uncapped, so leased and only counted) were reported exactly, each on its agent's slot.
      for (const [i, s] of sidecars.entries()) {
        const agentLease = await raw.hgetall(`{ls:a:pod-${i}}:lease:day:${day}`);
        expect([Number(agentLease.usd), Number(agentLease.calls)]).toEqual([s.charged, s.calls]);
      }
      // No per-call script ran: every window of these calls is leased, so no agent counters were written.
      expect(await raw.keys('{ls:a:*}:day:*')).toEqual([]);
      // No per-call key names the fleet: it lives only in its lease hash, on its own slot.
      expect((await raw.keys('*fleet*')).length).toBe(0);
    } finally {
      raw.disconnect();
    }
  });

  it("sends Redis nothing per call, whatever the call's windows cap: an agent's USD and token caps, route, fleet, a workflow's calls", async () => {
    const { redis, connection } = await openRedis('nc');
    // Frozen: within one kill refresh time and one slice lifetime, so only the calls themselves could reach Redis.
    const t = Date.parse('2026-12-05T10:00:00Z');
    const now = () => t;
    const store = new LeasedStore({
      inner: new LocalFallbackStore({ shared: new RedisStore({ redis: connection, now }), now }),
      source: new RedisLeaseSource({ redis: connection, ...SIZING }),
      now,
    });
    const agent = { kind: 'agent', id: 'pod-1' } as const;
    const leased: ScopeBudget[] = [
      { scope: agent, window: 'day', caps: { usdMicros: usd(100) } },
      { scope: agent, window: 'month', caps: { usdMicros: usd(1_000) } },
      { scope: { kind: 'route', id: 'chat' }, window: 'day', caps: { usdMicros: usd(100) } },
      // Capped: an uncapped window's spend is reported at the first background tick (then every reportIntervalMs).
      { scope: { kind: 'fleet', id: 'all' }, window: 'day', caps: { usdMicros: usd(1_000) } },
    ];
    const withWorkflow: ScopeBudget[] = [
      { scope: agent, window: 'day', caps: { usdMicros: usd(100), tokens: 1_000_000 } },
      ...leased.slice(1),
      { scope: { kind: 'workflow', id: 'w1', agent: 'pod-1' }, window: 'workflow', caps: { usdMicros: usd(50), tokens: 500_000, calls: 1_000 }, idleTtlMs: 600_000 },
    ];
    const calls = async (scopes: ScopeBudget[], n: number) => {
      for (let i = 0; i < n; i++) {
        const r = await store.reserve({ scopes, estimate: { usdMicros: 100, tokens: 10, calls: 1 } });
        if (!r.ok) throw new Error(`refused: ${JSON.stringify(r.refusal)}`);
        await store.commit(r.reservation, { usdMicros: 100, tokens: 10 });
      }
    };
    const raw = new Redis(redis.url);
    try {
      // The first calls lease the slices; token and call slices start at their minimum (10,000 tokens, 10 calls) as the
      // µUSD ones do, then follow the rate reported, so a few renews size them for thousands of calls.
      await calls(withWorkflow, 400);
      await calls(leased, 2);
      /** Commands Redis ran for `n` calls (those inside scripts included), and how many of them were scripts. */
      const counted = async (n: number, scopes: ScopeBudget[]) => {
        await raw.config('RESETSTAT');
        await calls(scopes, n);
        const stats = commandCalls(await raw.info('commandstats'));
        return { commands: sumOf(stats, (cmd) => !isOwn(cmd)), scripts: sumOf(stats, isScript) };
      };
      expect(await counted(300, leased)).toEqual({ commands: 0, scripts: 0 });
      // Before, a workflow window (maxCalls) and a token cap cost a reserve and a commit script per call.
      expect(await counted(300, withWorkflow)).toEqual({ commands: 0, scripts: 0 });
      // The agent's leases live beside its counters, on its own slot, its workflow's too; no per-call counters.
      expect(await raw.exists('{nc:a:pod-1}:lease:day:2026-12-05', '{nc:a:pod-1}:lease:month:2026-12', '{nc:a:pod-1}:lease:wf:w1')).toBe(3);
      expect(await raw.exists('{nc:a:pod-1}:day:2026-12-05', '{nc:a:pod-1}:wf:w1')).toBe(0);
      // The workflow's lease hash lives its idle time past its last request (plus a slice's life and grace), not two days.
      const ttl = await raw.pttl('{nc:a:pod-1}:lease:wf:w1');
      expect(ttl).toBeGreaterThan(600_000);
      expect(ttl).toBeLessThanOrEqual(600_000 + SIZING.ttlMs + SIZING.graceMs);
      await store.close();
    } finally {
      raw.disconnect();
    }
  });

  it("starts an agent's leased window from what the per-call scripts counted in it (an upgrade mid-day, a token cap removed)", async () => {
    const { connection } = await openRedis('up');
    const now = () => Date.parse('2026-12-05T10:00:00Z');
    const shared = new RedisStore({ redis: connection, now });
    // Counted per call: the day window had a token cap (or the sidecar ran a version that leased no agent window).
    const exact: ScopeBudget = { scope: { kind: 'agent', id: 'pod-1' }, window: 'day', caps: { usdMicros: usd(1), tokens: 1_000_000 } };
    const before = await shared.reserve({ scopes: [exact], estimate: { usdMicros: usd(0.8), tokens: 10, calls: 1 } });
    if (!before.ok) throw new Error('refused');
    await shared.commit(before.reservation, { usdMicros: usd(0.8), tokens: 10 });
    const store = new LeasedStore({ inner: new LocalFallbackStore({ shared, now }), source: new RedisLeaseSource({ redis: connection, ...SIZING }), now });
    const leased: ScopeBudget = { ...exact, caps: { usdMicros: usd(1) } };
    // 0.2 is left, not the whole dollar: the spend already counted is the window's.
    const fits = await store.reserve({ scopes: [leased], estimate: { usdMicros: usd(0.15), tokens: 0, calls: 1 } });
    expect(fits.ok && fits.used).toEqual([{ usdMicros: usd(0.95), tokens: 10, calls: 2 }]);
    const refused = await store.reserve({ scopes: [leased], estimate: { usdMicros: usd(0.1), tokens: 0, calls: 1 } });
    expect(refused.ok || refused.refusal).toMatchObject({ reason: 'BUDGET_EXCEEDED', scope: { kind: 'agent', id: 'pod-1' }, limit: usd(1), spent: usd(0.8) });
    await store.close();
  });

  const twins: Array<[string, ReservedScope, (random: () => number) => Amounts]> = [
    ['a route (µUSD)', { scope: { kind: 'route', id: 'openai' }, window: 'day', caps: { usdMicros: usd(10) }, windowId: '2026-12-05' }, () => ({ usdMicros: 0, tokens: 0, calls: 0 })],
    [
      'a workflow (µUSD, tokens, calls; idle 40 s)',
      { scope: { kind: 'workflow', id: 'task-1', agent: 'pod-1' }, window: 'workflow', caps: { usdMicros: usd(10), tokens: 3_000, calls: 120 }, idleTtlMs: 40_000, windowId: 'all' },
      (random) => ({ usdMicros: 0, tokens: Math.floor(random() * 200), calls: 1 + Math.floor(random() * 3) }),
    ],
  ];
  // Seed 7 sends a retry from a holder whose slice an idle reset took: both sources must answer it with no expiry.
  const seeds = [99, 7];
  it.each(twins.flatMap(([name, scope, extra]) => seeds.map((seed) => [name, seed, scope, extra] as const)))(
    'runs the same lease rules in Lua as in memory for %s, seed %i: 300 random requests from 4 holders get the same answers',
    async (name, seed, scope, extra) => {
      const { connection } = await openRedis('twin');
      let t = Date.parse('2026-12-05T10:00:00Z');
      const now = () => t;
      const lua = new RedisLeaseSource({ redis: connection, ...SIZING, minSliceCalls: 2 });
      const memory = new MemoryLeaseSource(new MemoryStore({ now }), { ...SIZING, minSliceCalls: 2 }, { whole: false });
      const random = seeded(seed);
      const seqs = new Map<string, number>();
      const lastUse = new Map<string, number>();
      const answers: [LeaseReply, LeaseReply][] = [];
      let retries = 0;
      let reaped = 0;
      let resets = 0;
      for (let i = 0; i < 300; i++) {
        // Now and then a pause longer than a workflow's idle time.
        t += random() < 0.03 ? 45_000 : Math.floor(random() * 4_000);
        const holder = `h${Math.floor(random() * 4)}`;
        // One request in eight is a retry of that holder's last one (its answer lost): same seq, same report.
        const retry = random() < 0.125 && seqs.has(holder);
        if (retry) retries++;
        const seq = retry ? seqs.get(holder)! : (seqs.get(holder) ?? 0) + 1;
        seqs.set(holder, seq);
        const more = extra(random);
        if (!retry && random() < 0.8) lastUse.set(holder, t - Math.floor(random() * 2_000));
        const req: LeaseRequest = {
          scope,
          holder,
          seq,
          report: retry ? { usdMicros: 0, tokens: 0, calls: 0 } : { usdMicros: Math.floor(random() * usd(0.4)), tokens: 3 + more.tokens, calls: more.calls || 1 },
          keep: random() < 0.9,
          want: { usdMicros: Math.floor(random() * usd(0.3)), tokens: more.tokens, calls: more.calls },
          // Spend rates from none to fast enough that the fair share caps the slice (two 30 s lifetimes at 0.1 $/s = 6 $).
          rate: random() < 0.3 ? { usdMicros: 0, tokens: 0, calls: 0 } : { usdMicros: random() * usd(0.1), tokens: random() * 30, calls: random() * 2 },
          caps: scope.caps,
          usedAt: lastUse.get(holder) ?? 0,
          now: t,
        };
        const pair: [LeaseReply, LeaseReply] = [await lua.acquire(req), await memory.acquire(req)];
        answers.push(pair);
        expect(pair[0], `request ${i}: ${JSON.stringify(req)}`).toEqual(pair[1]);
        const prev = answers[i - 1]?.[0];
        if (prev && pair[0].outstanding.usdMicros < prev.outstanding.usdMicros && pair[0].spent.usdMicros > prev.spent.usdMicros) reaped++;
        if (prev && pair[0].spent.calls < prev.spent.calls) resets++;
      }
      // The sequence went through the interesting cases: retries, grants, a pool used up, an alert, lapsed slices.
      expect(retries).toBeGreaterThan(10);
      expect(answers.some(([a]) => a.grant.usdMicros > 0)).toBe(true);
      expect(answers.some(([a]) => a.alerts.length > 0)).toBe(true);
      expect(reaped).toBeGreaterThan(0);
      if (scope.window === 'workflow') {
        // Workflow windows went idle and started again, and their calls and tokens ran out in between.
        expect(resets, name).toBeGreaterThan(0);
        expect(answers.some(([a]) => a.grant.calls > 0)).toBe(true);
        expect(answers.some(([a]) => a.alerts.includes('calls'))).toBe(true);
      } else {
        expect(answers.at(-1)![0]).toMatchObject({ grant: { usdMicros: 0 } });
        expect(answers.at(-1)![0].spent.usdMicros).toBeGreaterThan(usd(10));
      }
      const [u] = await lua.usage([scope], t);
      expect(u).toEqual((await memory.usage([scope], t))[0]);
    },
  );
});

/** EVALSHA and EVAL calls a Redis ran so far, from INFO commandstats (no MONITOR: it would count itself). */
const scriptCalls = (commandstats: string): number => sumOf(commandCalls(commandstats), isScript);

describe("one lease script call per hash tag for the windows requested in the same turn", () => {
  let cluster: TestRedisCluster | undefined;
  const connections: RedisConnection[] = [];
  afterEach(async () => {
    await Promise.all(connections.splice(0).map((c) => c.close()));
    await cluster?.stop();
    cluster = undefined;
  });

  const t = Date.parse('2026-12-05T10:00:00Z');
  const agentDay: ReservedScope = { scope: { kind: 'agent', id: 'pod-1' }, window: 'day', caps: { usdMicros: usd(5) }, windowId: '2026-12-05' };
  const agentMonth: ReservedScope = { scope: { kind: 'agent', id: 'pod-1' }, window: 'month', caps: { usdMicros: usd(50) }, windowId: '2026-12' };
  const fleetDay: ReservedScope = { scope: { kind: 'fleet', id: 'all' }, window: 'day', caps: { usdMicros: usd(500) }, windowId: '2026-12-05' };
  const request = (scope: ReservedScope, seq: number, spent: number): LeaseRequest => ({
    scope,
    holder: 'h1',
    seq,
    report: { usdMicros: spent, tokens: 7, calls: 2 },
    keep: true,
    want: { usdMicros: usd(0.2), tokens: 0, calls: 0 },
    rate: { usdMicros: usd(0.01), tokens: 0, calls: 0 },
    caps: scope.caps,
    now: t,
  });

  const single = async (prefix: string) => {
    const { redis, connection } = await openRedis(prefix, { persist: true, timeoutMs: 200 });
    return { source: new RedisLeaseSource({ redis: connection, ...SIZING }), connection, raw: new Redis(redis.url), redis };
  };

  it("sends an agent's day and month window in one EVALSHA, each request answered as if alone", async () => {
    const { source, raw } = await single('b1');
    const memory = new MemoryLeaseSource(new MemoryStore({ now: () => t }), SIZING, { whole: false });
    try {
      const reqs = [request(agentDay, 1, 100), request(agentMonth, 2, 300)];
      const before = scriptCalls(await raw.info('commandstats'));
      const replies = await Promise.all(reqs.map((r) => source.acquire(r)));
      expect(scriptCalls(await raw.info('commandstats')) - before).toBe(1);
      expect(replies.map((r) => r.spent.usdMicros)).toEqual([100, 300]);
      for (const [i, r] of reqs.entries()) expect(replies[i]).toEqual(await memory.acquire(r));
      expect(await raw.hmget('{b1:a:pod-1}:lease:day:2026-12-05', 'usd', 'calls')).toEqual(['100', '2']);
      expect(await raw.hmget('{b1:a:pod-1}:lease:month:2026-12', 'usd', 'calls')).toEqual(['300', '2']);
    } finally {
      raw.disconnect();
    }
  });

  it('sends windows of two hash tags in two calls', async () => {
    const { source, raw } = await single('b2');
    try {
      const before = scriptCalls(await raw.info('commandstats'));
      const replies = await Promise.all([source.acquire(request(agentDay, 1, 100)), source.acquire(request(fleetDay, 2, 400)), source.acquire(request(agentMonth, 3, 300))]);
      expect(scriptCalls(await raw.info('commandstats')) - before).toBe(2);
      expect(replies.map((r) => r.spent.usdMicros)).toEqual([100, 400, 300]);
    } finally {
      raw.disconnect();
    }
  });

  it('fails every request of a call Redis never answered; their resends (same seq) apply once', async () => {
    const { source, connection, raw, redis } = await single('b3');
    raw.disconnect();
    await Promise.all([source.acquire(request(agentDay, 1, 100)), source.acquire(request(agentMonth, 2, 300))]);
    redis.kill();
    const lost = await Promise.allSettled([source.acquire(request(agentDay, 3, 10)), source.acquire(request(agentMonth, 4, 30))]);
    expect(lost.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    await redis.restart();
    await connection.ready(10_000);
    const resend = () => Promise.all([source.acquire(request(agentDay, 3, 10)), source.acquire(request(agentMonth, 4, 30))]);
    const first = await resend();
    // A lost answer to a call that did run: the same seq again applies nothing.
    const again = await resend();
    expect(first.map((r) => r.spent.usdMicros)).toEqual([110, 330]);
    expect(again).toEqual(first);
  });

  it("on a cluster, sends an agent's windows (its workflow's too) to its slot in one call, the fleet's to the fleet's, a workflow naming no agent to its own", async () => {
    cluster = await startRedisCluster();
    const fleetNode = await cluster.nodeOfKey('{bc:f}:x');
    let agent = '';
    for (let i = 0; agent === ''; i++) {
      if ((await cluster.nodeOfKey(`{bc:a:pod-${i}}:x`)).address !== fleetNode.address) agent = `pod-${i}`;
    }
    const agentNode = await cluster.nodeOfKey(`{bc:a:${agent}}:x`);
    const connection = new RedisConnection({ url: cluster.url, keyPrefix: 'bc' });
    connections.push(connection);
    await connection.ready(10_000);
    const source = new RedisLeaseSource({ redis: connection, ...SIZING });
    const fleetMonth: ReservedScope = { ...fleetDay, window: 'month', windowId: '2026-12' };
    const mine = (s: ReservedScope): ReservedScope => ({ ...s, scope: { kind: 'agent', id: agent } });
    const workflowOf = (id: string, of?: string): ReservedScope => ({
      scope: { kind: 'workflow', id, ...(of !== undefined && { agent: of }) },
      window: 'workflow',
      caps: { calls: 100 },
      idleTtlMs: 600_000,
      windowId: 'all',
    });
    const soloNode = await cluster.nodeOfKey('{bc:w:solo}:x');
    const calls = () => Promise.all(cluster!.nodes.map(async (n) => scriptCalls(await n.info('commandstats'))));
    const before = await calls();
    const replies = await Promise.all([
      source.acquire(request(mine(agentDay), 1, 100)),
      source.acquire(request(fleetDay, 2, 400)),
      source.acquire(request(mine(agentMonth), 3, 300)),
      source.acquire(request(fleetMonth, 4, 700)),
      source.acquire(request(workflowOf('task-1', agent), 5, 50)),
      source.acquire(request(workflowOf('solo'), 6, 60)),
    ]);
    const after = await calls();
    const delta = cluster.nodes.map((n, i) => [n.address, after[i]! - before[i]!] as const);
    const expected: Record<string, number> = {};
    for (const n of [agentNode, fleetNode, soloNode]) expected[n.address] = (expected[n.address] ?? 0) + 1;
    expect(Object.fromEntries(delta.filter(([, d]) => d !== 0))).toEqual(expected);
    expect(replies.map((r) => r.spent.usdMicros)).toEqual([100, 400, 300, 700, 50, 60]);
    // No call rate known yet: the minimum call slice (10) of the 100.
    expect(replies.slice(4).map((r) => r.grant.calls)).toEqual([10, 10]);
  });
});

describe('the lease script: few commands per window, hashes written by earlier versions still read', () => {
  const t = Date.parse('2026-12-05T10:00:00Z');
  const fleetDay: ReservedScope = { scope: { kind: 'fleet', id: 'all' }, window: 'day', caps: { usdMicros: usd(500) }, windowId: '2026-12-05' };
  const workflow: ReservedScope = { scope: { kind: 'workflow', id: 'task-1', agent: 'pod-1' }, window: 'workflow', caps: { calls: 1_000 }, idleTtlMs: 600_000, windowId: 'task-1' };
  const request = (scope: ReservedScope, holder: string, seq: number, spent: number, now: number): LeaseRequest => ({
    scope,
    holder,
    seq,
    report: { usdMicros: spent, tokens: 0, calls: 1 },
    keep: true,
    want: { usdMicros: 0, tokens: 0, calls: 1 },
    caps: scope.caps,
    usedAt: now,
    now,
  });
  const single = async (prefix: string) => {
    const { redis, connection } = await openRedis(prefix);
    return { source: new RedisLeaseSource({ redis: connection, ...SIZING }), raw: new Redis(redis.url) };
  };
  /** Commands run inside scripts since the last RESETSTAT (EVALSHA itself and the test's own INFO left out). */
  const innerCommands = (commandstats: string): number => sumOf(commandCalls(commandstats), (c) => !isScript(c) && !isOwn(c));

  it("renews a workflow window's slice with 7 Redis commands (it took 19: an HGET or HINCRBY per field)", async () => {
    const { source, raw } = await single('c1');
    try {
      await source.acquire(request(workflow, 'h1', 1, 100, t));
      await raw.config('RESETSTAT');
      const r = await source.acquire(request(workflow, 'h1', 2, 100, t + 1_000));
      // HMGET, ZRANGEBYSCORE, ZCOUNT, HSET, ZADD, PEXPIRE × 2.
      expect(innerCommands(await raw.info('commandstats'))).toBe(7);
      expect(r).toMatchObject({ spent: { usdMicros: 200, calls: 2 }, grant: { calls: 10 }, outstanding: { calls: 10 } });
    } finally {
      raw.disconnect();
    }
  });

  it('reads a holder entry and presumed spend written before slices had a part per metric (an upgrade mid-day)', async () => {
    const { source, raw } = await single('c2');
    try {
      const key = source.keyOf(fleetDay);
      // h1 holds a 5,000 µUSD slice in the old "<grant usd>|<expiresAt>|<seq>"; h2 lapsed with 1,200 presumed spent
      // (a bare µUSD figure).
      await raw.hset(key, 'usd', 10_000, 'out', 5_000, 'h:h1', `5000|${t + 20_000}|3`, 'h:h2', `0|${t - 60_000}|7`, 'p:h2', '1200');
      await raw.zadd(`${key}:x`, t + 20_000, 'h1');
      // A retry of h1's last request answers its old slice; h2 sees it as a live other holder.
      expect(await source.acquire(request(fleetDay, 'h1', 3, 999, t))).toMatchObject({ grant: { usdMicros: 5_000, tokens: 0, calls: 0 }, expiresAt: t + 20_000, spent: { usdMicros: 10_000 } });
      const h2 = await source.acquire({ ...request(fleetDay, 'h2', 8, 2_000, t), keep: false });
      expect(h2).toMatchObject({ spent: { usdMicros: 10_800 }, outstanding: { usdMicros: 5_000 }, liveHolders: 1 });
      expect(await raw.hexists(key, 'p:h2')).toBe(0);
      // h1 reports 3,000 of its old slice and hands it back.
      const h1 = await source.acquire({ ...request(fleetDay, 'h1', 4, 3_000, t + 1_000), keep: false });
      expect(h1).toMatchObject({ grant: { usdMicros: 0 }, spent: { usdMicros: 13_800 }, outstanding: { usdMicros: 0 }, liveHolders: 0 });
      expect(await raw.hmget(key, 'usd', 'out', 'h:h1')).toEqual(['13800', '0', `0|0|0|0|4`]);
      expect(await raw.zscore(`${key}:x`, 'h1')).toBeNull();
    } finally {
      raw.disconnect();
    }
  });
});
