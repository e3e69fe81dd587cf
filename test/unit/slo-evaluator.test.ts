import { describe, expect, it } from 'vitest';
import { SloSchema } from '../../src/config/schema.js';
import { SloBudgetExhaustedError, SloThrottledError } from '../../src/errors.js';
import { DAY_MS, MINUTE_MS, type BucketFields, type BucketRef } from '../../src/slo/buckets.js';
import { CounterStoreUnavailableError, MemoryCounterStore, type CounterBatch, type CounterStore } from '../../src/slo/counter-store.js';
import { SloEvaluator } from '../../src/slo/evaluator.js';
import { applySloGauges, sloStatusJson, zeroSloEventSeries } from '../../src/slo/exports.js';
import { SloRecorder } from '../../src/slo/recorder.js';
import { sloSpecOf } from '../../src/slo/spec.js';
import { TokenBucket } from '../../src/slo/token-bucket.js';

const T = Date.UTC(2025, 0, 15, 12, 30, 30);

class SwitchableStore implements CounterStore {
  down = false;
  constructor(readonly inner: CounterStore) {}
  write(id: string, b: readonly CounterBatch[]) {
    return this.inner.write(id, b);
  }
  async read(refs: readonly BucketRef[]): Promise<BucketFields[]> {
    if (this.down) throw new CounterStoreUnavailableError('connection refused');
    return this.inner.read(refs);
  }
  async close() {}
}

const setup = (slo: Record<string, unknown>) => {
  const clock = { t: T };
  const now = () => clock.t;
  const spec = sloSpecOf('chat', SloSchema.parse(slo));
  const store = new SwitchableStore(new MemoryCounterStore({ now }));
  const rec = new SloRecorder({ store, routes: [spec], now, flushIntervalMs: 1000 });
  const logs: Array<{ level: string; msg: string; obj: Record<string, unknown> }> = [];
  const logger = {
    warn: (obj: object, msg: string) => logs.push({ level: 'warn', msg, obj: obj as Record<string, unknown> }),
    info: (obj: object, msg: string) => logs.push({ level: 'info', msg, obj: obj as Record<string, unknown> }),
  };
  const ev = new SloEvaluator({ store, routes: [spec], now, logger, staleAfterMs: 60_000 });
  /** `good` and `bad` calls at `at` (default: now), flushed. */
  const traffic = async (good: number, bad: number, at = clock.t) => {
    const saved = clock.t;
    clock.t = at;
    for (let i = 0; i < good; i++) rec.record('chat', { availability: 'good', latencyMs: 50 });
    for (let i = 0; i < bad; i++) rec.record('chat', { availability: 'bad', latencyMs: 50 });
    await rec.flush();
    clock.t = saved;
  };
  return { clock, store, rec, ev, logs, traffic };
};

describe('SloEvaluator', () => {
  it('after setRoutes (a config reload): a kept route keeps its state and suspension, its new action applies; a removed one is gone; an added one counts', async () => {
    const { ev, rec, traffic, store } = setup({ onFastBurn: 'alert' });
    await traffic(100_000, 0, T - 10 * DAY_MS);
    await traffic(80, 20);
    await ev.evaluate();
    expect(ev.state('chat')).toMatchObject({ fastBurn: true, action: 'alert' });
    ev.suspend('chat');

    const shed = sloSpecOf('chat', SloSchema.parse({ onFastBurn: 'shed' }));
    const added = sloSpecOf('tools', SloSchema.parse({}));
    ev.setRoutes([shed, added]);
    rec.setRoutes([shed, added]);
    await ev.evaluate();
    // The counters are the store's: the kept route's burn carries on, under its new action, still suspended.
    expect(ev.state('chat')).toMatchObject({ fastBurn: true, configuredAction: 'shed', action: 'none', overridden: true });
    ev.resume('chat');
    expect(ev.admit('chat').admit).toBe(false);
    expect(ev.all().map((s) => s.route)).toEqual(['chat', 'tools']);
    rec.record('tools', { availability: 'bad' });
    await rec.flush();
    await ev.evaluate();
    expect(ev.state('tools')?.evaluatedAt).toBe(T);

    ev.setRoutes([added]);
    rec.setRoutes([added]);
    expect(ev.state('chat')).toBeUndefined();
    expect(ev.admit('chat')).toEqual({ admit: true, action: 'none' });
    expect(ev.suspend('chat')).toBe(false);
    // A removed route's calls are no longer counted.
    const before = JSON.stringify(await store.inner.read([{ route: 'chat', tier: 'd', index: Math.floor(T / DAY_MS) }]));
    rec.record('chat', { availability: 'bad' });
    await rec.flush();
    expect(JSON.stringify(await store.inner.read([{ route: 'chat', tier: 'd', index: Math.floor(T / DAY_MS) }]))).toBe(before);
  });

  it('sheds with 503 SLO_BUDGET_EXHAUSTED and x-should-retry: false during a fast burn when onFastBurn is shed', async () => {
    const { ev, traffic, logs } = setup({ onFastBurn: 'shed' });
    await traffic(100_000, 0, T - 10 * DAY_MS);
    await traffic(80, 20);
    await ev.evaluate();
    const s = ev.state('chat')!;
    expect(s).toMatchObject({ fastBurn: true, exhausted: false, action: 'shed' });
    expect(s.reasons[0]).toMatch(/availability: fast burn \(40\.0× over 1 h, 40\.0× over 5 min\)/);
    const a = ev.admit('chat');
    expect(a.admit).toBe(false);
    const err = (a as { error: SloBudgetExhaustedError }).error;
    expect(err).toBeInstanceOf(SloBudgetExhaustedError);
    expect(err.statusCode).toBe(503);
    expect(err.code).toBe('SLO_BUDGET_EXHAUSTED');
    expect(err.headers['x-should-retry']).toBe('false');
    expect(err.details.reason).toBe('fast_burn');
    expect(logs).toHaveLength(1);
    expect(logs[0]).toMatchObject({ level: 'warn', obj: { route: 'chat', action: 'shed', previousAction: 'none' } });
  });

  it('logs each transition once, and lifts the action when the burn stops', async () => {
    const { ev, traffic, logs, clock } = setup({ onFastBurn: 'shed' });
    await traffic(100_000, 0, T - 10 * DAY_MS);
    await traffic(80, 20);
    await ev.evaluate();
    await ev.evaluate();
    expect(logs).toHaveLength(1);
    // 5 min later the 5-minute window holds no calls: the fast-burn pair cannot fire.
    clock.t = T + 5 * MINUTE_MS;
    await ev.evaluate();
    expect(ev.state('chat')).toMatchObject({ fastBurn: false, action: 'none' });
    expect(ev.admit('chat').admit).toBe(true);
    expect(logs).toHaveLength(2);
    expect(logs[1]).toMatchObject({ level: 'info', msg: 'SLO of route "chat" back within budget: action none' });
  });

  it('throttles to throttleRps once the budget is spent when onBudgetExhausted is throttle', async () => {
    const { ev, traffic, clock } = setup({ onBudgetExhausted: 'throttle', throttleRps: 2 });
    await traffic(900, 100, T - 2 * DAY_MS);
    await ev.evaluate();
    expect(ev.state('chat')).toMatchObject({ exhausted: true, fastBurn: false, action: 'throttle' });
    expect(ev.state('chat')!.reasons).toEqual(['availability: error budget exhausted (-1900.0 % left)']);
    expect(ev.admit('chat').admit).toBe(true);
    expect(ev.admit('chat').admit).toBe(true);
    const third = ev.admit('chat');
    expect(third.admit).toBe(false);
    const err = (third as { error: SloThrottledError }).error;
    expect(err).toBeInstanceOf(SloThrottledError);
    expect(err.statusCode).toBe(429);
    expect(err.headers['retry-after']).toBe('1');
    clock.t += 500;
    expect(ev.admit('chat').admit).toBe(true);
    expect(ev.admit('chat').admit).toBe(false);
  });

  it('takes the harsher action when the budget is spent and it burns fast', async () => {
    const { ev, traffic } = setup({ onBudgetExhausted: 'degrade', onFastBurn: 'alert', degradeToStep: 1 });
    await traffic(50, 50);
    await ev.evaluate();
    expect(ev.state('chat')).toMatchObject({ exhausted: true, fastBurn: true, action: 'degrade' });
    expect(ev.admit('chat')).toEqual({ admit: true, action: 'degrade', degradeToStep: 1 });
  });

  it('only alerts by default: calls pass, the state says alert', async () => {
    const { ev, traffic } = setup({});
    await traffic(50, 50);
    await ev.evaluate();
    expect(ev.state('chat')).toMatchObject({ exhausted: true, fastBurn: true, action: 'alert' });
    expect(ev.admit('chat')).toEqual({ admit: true, action: 'alert' });
  });

  it('suspends and resumes a route\'s action through the admin API, logging both', async () => {
    const { ev, traffic, logs, clock } = setup({ onFastBurn: 'shed' });
    await traffic(50, 50);
    await ev.evaluate();
    expect(ev.suspend('chat')).toBe(true);
    expect(ev.state('chat')).toMatchObject({ action: 'none', configuredAction: 'shed', overridden: true });
    expect(ev.admit('chat').admit).toBe(true);
    await ev.evaluate();
    expect(ev.state('chat')!.action).toBe('none');
    expect(ev.resume('chat')).toBe(true);
    expect(ev.admit('chat').admit).toBe(false);
    expect(logs.map((l) => l.msg)).toEqual([
      expect.stringMatching(/action shed$/),
      'SLO action of route "chat" suspended by the admin API',
      'SLO action of route "chat" resumed: shed',
    ]);
    expect(ev.suspend('nope')).toBe(false);
    // A timed suspension ends by itself.
    ev.suspend('chat', 10_000);
    expect(ev.admit('chat').admit).toBe(true);
    clock.t += 10_000;
    expect(ev.admit('chat').admit).toBe(false);
  });

  it('keeps the last state while the store is unreadable, then lifts the action after staleAfterMs', async () => {
    const { ev, traffic, store, clock, logs } = setup({ onFastBurn: 'shed' });
    await traffic(50, 50);
    await ev.evaluate();
    store.down = true;
    clock.t += 30_000;
    await ev.evaluate();
    expect(ev.state('chat')).toMatchObject({ action: 'shed', stale: false });
    clock.t += 31_000;
    await ev.evaluate();
    expect(ev.state('chat')).toMatchObject({ action: 'none', stale: true, configuredAction: 'shed' });
    expect(logs.some((l) => /unreadable for 61 s/.test(l.msg))).toBe(true);
    store.down = false;
    await ev.evaluate();
    expect(ev.state('chat')!.stale).toBe(false);
  });

  it('alone (no shared board) it leads every route: assesses each interval, never reads a published result, leader gauge 1', async () => {
    const clock = { t: T };
    const spec = sloSpecOf('chat', SloSchema.parse({}));
    const leader = new Map<string, number>();
    let assessments = 0;
    const ev = new SloEvaluator({
      store: new MemoryCounterStore({ now: () => clock.t }),
      routes: [spec],
      now: () => clock.t,
      logger: { info() {}, warn() {} },
      metrics: { leader: { set: (l, v) => void leader.set(l.route, v), remove: (l) => void leader.delete(l.route) }, assessments: { inc: (_l, v = 1) => void (assessments += v), remove() {} } },
    });
    expect(ev.leads('chat')).toBe(true);
    expect(leader.get('chat')).toBe(1);
    for (let i = 0; i < 3; i++) {
      clock.t += 5_000;
      await ev.evaluate();
    }
    expect(assessments).toBe(3);
    expect(ev.state('chat')?.evaluatedAt).toBe(clock.t);
    ev.setRoutes([]);
    expect(leader.has('chat')).toBe(false);
  });

  it('exports the state as gauges and JSON, leaving out numbers with too few events', async () => {
    const { ev, traffic } = setup({});
    await traffic(95, 5);
    await ev.evaluate();
    const set: string[] = [];
    const removed: string[] = [];
    const gauge = <L extends string>() => ({
      set: (l: Record<L, string>, v: number) => set.push(`${Object.values(l).join('/')}=${Number(v.toFixed(3))}`),
      remove: (l: Record<L, string>) => removed.push(Object.values(l).join('/')),
    });
    applySloGauges({ budgetRemaining: gauge(), burnRate: gauge(), action: gauge() }, ev.all());
    expect(set).toContain('chat/availability=-9'); // 5 % errors vs 0.5 % allowed: burn 10
    expect(set).toContain('chat/availability/5m=10');
    expect(set).toContain('chat/alert=1');
    expect(removed).not.toContain('chat/availability');
    const json = sloStatusJson(ev.all());
    expect(json.routes[0]).toMatchObject({ route: 'chat', action: 'alert', slos: { availability: { burnRates: { '5m': 10 } } } });
    // 100 calls, no cost recorded: the cost SLO has no numbers.
    expect(removed).toContain('chat/cost');
    expect(json.routes[0]!.slos.cost!.budgetRemaining).toBeNull();
  });
});

describe('SloEvaluator over a store that counts its writes (one sidecar, memory)', () => {
  /** Delegates to the memory store, with or without its write count, and records which routes each read asked for. */
  class Watched implements CounterStore {
    readonly reads: string[] = [];
    writesTo?: (route: string) => number;
    constructor(
      readonly inner: MemoryCounterStore,
      counts: boolean,
    ) {
      if (counts) this.writesTo = (route) => inner.writesTo(route);
    }
    write(id: string, b: readonly CounterBatch[]) {
      return this.inner.write(id, b);
    }
    read(refs: readonly BucketRef[]): Promise<BucketFields[]> {
      for (const route of new Set(refs.map((r) => r.route))) this.reads.push(route);
      return this.inner.read(refs);
    }
    async close() {}
  }

  it('reads again only the routes written to since, or all written ones when the minute turns, and assesses exactly as reading every route', async () => {
    const clock = { t: T };
    const now = () => clock.t;
    const specs = Array.from({ length: 40 }, (_, i) => sloSpecOf(`r${i}`, SloSchema.parse({ onFastBurn: 'shed' })));
    const memory = new MemoryCounterStore({ now });
    const counted = new Watched(memory, true);
    const full = new Watched(memory, false);
    const quiet = { warn: () => {}, info: () => {} };
    const ev = new SloEvaluator({ store: counted, routes: specs, now, logger: quiet });
    const reference = new SloEvaluator({ store: full, routes: specs, now, logger: quiet });
    const rec = new SloRecorder({ store: counted, routes: specs, now, flushIntervalMs: 1000 });
    const traffic = async (route: string, good: number, bad: number) => {
      for (let i = 0; i < good; i++) rec.record(route, { availability: 'good', latencyMs: 50 });
      for (let i = 0; i < bad; i++) rec.record(route, { availability: 'bad', latencyMs: 50 });
      await rec.flush();
    };
    /** One tick of both; the routes the counting one read. */
    const tick = async () => {
      counted.reads.length = 0;
      await Promise.all([ev.evaluate(), reference.evaluate()]);
      expect(ev.all()).toEqual(reference.all());
      expect(full.reads).toHaveLength(specs.length);
      full.reads.length = 0;
      return [...counted.reads].sort();
    };

    expect(await tick()).toEqual([]);
    await traffic('r3', 80, 20);
    expect(await tick()).toEqual(['r3']);
    expect(ev.state('r3')).toMatchObject({ fastBurn: true, action: 'shed' });
    clock.t += 5_000;
    expect(await tick()).toEqual([]);
    await traffic('r7', 100, 0);
    expect(await tick()).toEqual(['r7']);
    // The windows move with the minute: the routes with counts are read again, the others still not.
    clock.t += MINUTE_MS;
    expect(await tick()).toEqual(['r3', 'r7']);
    clock.t += 5 * MINUTE_MS;
    expect(await tick()).toEqual(['r3', 'r7']);
    // 6 min on, the 5-minute window is empty: the fast burn is over (the spent budget stays), as a full read says too.
    expect(ev.state('r3')).toMatchObject({ fastBurn: false, exhausted: true, action: 'alert' });
    // A reload's new spec is assessed afresh, even unchanged counts.
    const reloaded = specs.map((s) => (s.route === 'r3' ? sloSpecOf('r3', SloSchema.parse({ onFastBurn: 'shed', windowDays: 7 })) : s));
    ev.setRoutes(reloaded);
    reference.setRoutes(reloaded);
    expect(await tick()).toEqual(['r3']);
  });
});

describe('zeroSloEventSeries', () => {
  it('creates a good and a bad series at 0 for every route and SLO', () => {
    const seen: string[] = [];
    zeroSloEventSeries({ inc: (l, v) => seen.push(`${l.route}/${l.slo}/${l.kind}=${v}`) }, [sloSpecOf('chat', SloSchema.parse({}))]);
    expect(seen).toEqual([
      'chat/availability/good=0',
      'chat/availability/bad=0',
      'chat/latency/good=0',
      'chat/latency/bad=0',
      'chat/cost/good=0',
      'chat/cost/bad=0',
    ]);
  });
});

describe('TokenBucket', () => {
  it('admits a burst, then one call per 1/rate seconds, and says how long to wait', () => {
    const b = new TokenBucket(2, 2, 0);
    expect(b.take(0).ok).toBe(true);
    expect(b.take(0).ok).toBe(true);
    expect(b.take(0)).toEqual({ ok: false, retryAfterMs: 500 });
    expect(b.take(250)).toEqual({ ok: false, retryAfterMs: 250 });
    expect(b.take(500).ok).toBe(true);
    // A clock stepping back mints nothing.
    expect(b.take(100).ok).toBe(false);
    // Long idle refills only up to the burst.
    expect([b.take(100_000).ok, b.take(100_000).ok, b.take(100_000).ok]).toEqual([true, true, false]);
  });
});
