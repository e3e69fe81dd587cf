import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { LeasedStore, type LeaseEvent } from '../../src/budget/lease.js';
import { demandOf, MemoryLeaseSource, sliceSize, type LeaseReply, type LeaseRequest, type LeaseSource, type LeaseUsage } from '../../src/budget/lease-source.js';
import { MemoryStore } from '../../src/budget/memory-store.js';
import type { Actual, CommitResult, Reservation, ReservedScope, ReserveRequest, ReserveResult, ScopeBudget } from '../../src/budget/store.js';
import { StoreUnavailableError } from '../../src/errors.js';
import { seeded } from '../helpers/pipeline.js';

const usd = (n: number) => Math.round(n * 1_000_000);
const est = (usdMicros: number) => ({ usdMicros, tokens: 0, calls: 1 });
const fleetDay = (cap?: number): ScopeBudget => ({ scope: { kind: 'fleet', id: 'all' }, window: 'day', caps: cap === undefined ? {} : { usdMicros: cap } });
const agentDay = (id: string): ScopeBudget => ({ scope: { kind: 'agent', id }, window: 'day', caps: {} });
const agentDayUsd = (id: string, cap: number): ScopeBudget => ({ scope: { kind: 'agent', id }, window: 'day', caps: { usdMicros: cap } });
const agentMonth = (id: string, cap: number): ScopeBudget => ({ scope: { kind: 'agent', id }, window: 'month', caps: { usdMicros: cap } });
const workflow = (id: string, agent: string, calls?: number): ScopeBudget => ({
  scope: { kind: 'workflow', id, agent },
  window: 'workflow',
  caps: calls === undefined ? {} : { calls },
  idleTtlMs: 600_000,
});
const SIZING = { ttlMs: 30_000, graceMs: 5_000, minSliceUsdMicros: usd(0.01), alertPercent: 75 };
const START = Date.parse('2026-12-05T12:00:00Z');

/**
 * The lease source as the network makes it: `cut` is an outage (every call fails, as a Redis that is away fails fast),
 * `loseNextReply` applies a request and then fails (the answer lost on the way back). Counts the requests sent.
 */
class Network implements LeaseSource {
  cut = false;
  loseNextReply = false;
  sent: LeaseRequest[] = [];
  constructor(private readonly inner: LeaseSource) {}
  async acquire(req: LeaseRequest): Promise<LeaseReply> {
    this.sent.push(req);
    if (this.cut) throw new Error('connection refused');
    const r = await this.inner.acquire(req);
    if (this.loseNextReply) {
      this.loseNextReply = false;
      throw new Error('command timed out');
    }
    return r;
  }
  usage(scopes: readonly ReservedScope[], now: number): Promise<LeaseUsage[]> {
    if (this.cut) return Promise.reject(new Error('connection refused'));
    return this.inner.usage(scopes, now);
  }
}

/** Lets pending promise chains (background renews on the in-memory source) run to completion. */
const settle = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

describe('slice size', () => {
  it('is two lifetimes of the holder’s recent spend (at least the minimum), at most a fair share of what is left, and at least the estimate at hand', () => {
    // No spend known yet: the minimum, unless a fair share is smaller; never less than what the call needs.
    expect(sliceSize(1_000, 0, 10, 50, false)).toBe(50);
    expect(sliceSize(1_000, 0, 80, 50, false)).toBe(80);
    expect(sliceSize(1_000, 99, 0, 50, false)).toBe(10);
    expect(sliceSize(1_000, 99, 30, 50, false)).toBe(30);
    // A holder spending fast gets its demand, capped by its fair share: remaining / (live holders + 1).
    expect(sliceSize(1_000, 0, 10, 50, false, 600)).toBe(600);
    expect(sliceSize(1_000, 4, 10, 50, false, 600)).toBe(200);
    expect(sliceSize(1_000, 4, 300, 50, false, 100)).toBe(300);
    // Never more than is left; a source with one holder grants all of it.
    expect(sliceSize(40, 0, 0, 50, false)).toBe(40);
    expect(sliceSize(40, 99, 0, 50, false)).toBe(0);
    expect(sliceSize(1_000, 4, 10, 1, true)).toBe(1_000);
    expect(sliceSize(0, 0, 10, 1, false)).toBe(0);
    expect(sliceSize(-5, 0, 10, 1, false)).toBe(0);
  });

  it('sizes demand as two slice lifetimes at the rate', () => {
    expect(demandOf(0, 30_000)).toBe(0);
    // 1,000 µUSD/s for two 30 s lifetimes.
    expect(demandOf(1_000, 30_000)).toBe(60_000);
  });
});

describe('LeasedStore', () => {
  let t: number;
  const now = () => t;
  beforeEach(() => {
    t = START;
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
  });
  // The tests close the stores whose final report they check; the others' ticks stop with the fake timers.
  afterEach(() => {
    vi.useRealTimers();
  });

  /** Moves the clock and runs the background ticks that fall due. */
  const advance = async (ms: number) => {
    t += ms;
    vi.advanceTimersByTime(ms);
    await settle();
  };

  const fleet = (opts: { whole?: boolean } = {}) => {
    const counters = new MemoryStore({ now });
    const net = new Network(new MemoryLeaseSource(counters, SIZING, opts));
    return { counters, net };
  };
  const sidecar = (inner: MemoryStore, net: Network, extra: { allowanceUsdMicros?: number; events?: LeaseEvent[] } = {}) => {
    const s = new LeasedStore({
      inner,
      source: net,
      now,
      ...(extra.allowanceUsdMicros !== undefined && { allowanceUsdMicros: extra.allowanceUsdMicros }),
      onEvent: (e) => extra.events?.push(e),
    });
    return s;
  };

  it('one sidecar on the memory source is exact: admits until the cap and refuses with the cap\'s figures', async () => {
    const { counters, net } = fleet();
    const store = sidecar(counters, net);
    const scopes = [agentDay('a1'), fleetDay(usd(1))];
    let admitted = 0;
    for (;;) {
      const r = await store.reserve({ scopes, estimate: est(usd(0.07)) });
      if (!r.ok) {
        expect(r.refusal).toMatchObject({ reason: 'BUDGET_EXCEEDED', scope: { kind: 'fleet', id: 'all' }, window: 'day', limit: usd(1), requested: usd(0.07) });
        expect(r.refusal.spent + r.refusal.reserved).toBe(14 * usd(0.07));
        expect(r.refusal.resetAt).toBe(Date.parse('2026-12-06T00:00:00Z'));
        break;
      }
      admitted++;
      await store.commit(r.reservation, { usdMicros: usd(0.07), tokens: 5 });
    }
    expect(admitted).toBe(14);
    // Refused again within a tick of finding the pool empty: no second lease request for it.
    const sent = net.sent.length;
    expect((await store.reserve({ scopes, estimate: est(usd(0.07)) })).ok).toBe(false);
    expect(net.sent.length).toBe(sent);
    // The spend is in the MemoryStore's counters (its snapshot file), reported by the lease.
    const [agent, f] = await store.snapshot(scopes);
    expect(agent?.spent.usdMicros).toBe(14 * usd(0.07));
    expect(f?.spent).toEqual({ usdMicros: 14 * usd(0.07), tokens: 70, calls: 14 });
    await store.close();
    expect(counters.spentIn({ ...fleetDay(usd(1)), windowId: '2026-12-05' })).toEqual({ usdMicros: 14 * usd(0.07), tokens: 70, calls: 14 });
  });

  it('leases a slice sized by demand within a fair share, renews in the background while spending, and an idle sidecar does no lease traffic', async () => {
    const { counters, net } = fleet({ whole: false });
    const a = sidecar(counters, net);
    const b = sidecar(counters, net);
    const scopes = [fleetDay(usd(100))];
    const ra = await a.reserve({ scopes, estimate: est(usd(0.1)) });
    // No spend known yet: the minimum (0.01), or what the call needs if more, not half of the 100 left. The slice
    // then renewed ahead of need holds the call in flight and one more like it.
    await settle();
    expect(net.sent[0]?.rate?.usdMicros).toBe(0);
    expect(a.leaseViews()[0]?.remaining.usdMicros).toBe(usd(0.1));
    await b.reserve({ scopes, estimate: est(usd(0.1)) });
    await settle();
    expect(b.leaseViews()[0]?.remaining.usdMicros).toBe(usd(0.1));
    if (!ra.ok) throw new Error('refused');
    await a.commit(ra.reservation, { usdMicros: usd(0.1), tokens: 0 });

    // A spends fast: its next slices follow its rate, capped by a fair share of what is left (one other live
    // holder: half). Below 25 % left, a renew goes out in the background; only a few are needed for 40 calls.
    const before = net.sent.length;
    for (let i = 0; i < 40; i++) {
      const r = await a.reserve({ scopes, estimate: est(usd(1)) });
      if (!r.ok) throw new Error('refused');
      await a.commit(r.reservation, { usdMicros: usd(1), tokens: 0 });
      await settle();
    }
    const renews = net.sent.slice(before);
    expect(renews.length).toBeGreaterThanOrEqual(1);
    expect(renews.length).toBeLessThanOrEqual(4);
    // Each renew reports the spend since the last, once: nothing is lost or counted twice.
    const [u] = await a.snapshot(scopes);
    expect(u?.spent.usdMicros).toBe(usd(40.1) + 0);

    // Idle: the slice is handed back once, as it is about to lapse, and then nothing at all.
    const idleFrom = net.sent.length;
    await advance(60_000);
    const idle = net.sent.slice(idleFrom).filter((r) => r.holder === net.sent[0]!.holder);
    expect(idle.map((r) => r.keep)).toEqual([false]);
    await advance(600_000);
    expect(net.sent.slice(idleFrom).filter((r) => r.holder === net.sent[0]!.holder)).toHaveLength(1);
    expect(a.leaseViews()).toEqual([]);
    // Back from idle: the window's state was dropped, yet its lease requests are new ones, not taken for retries.
    const again = await a.reserve({ scopes, estimate: est(usd(1)) });
    expect(again.ok).toBe(true);
    expect(a.leaseViews()[0]?.remaining.usdMicros).toBeGreaterThan(0);
  });

  it('counts a report whose answer was lost once: the retry carries the same sequence number', async () => {
    const { counters, net } = fleet();
    const store = sidecar(counters, net);
    const scopes = [fleetDay(usd(1))];
    const r = await store.reserve({ scopes, estimate: est(usd(0.6)) });
    if (!r.ok) throw new Error('refused');
    await store.commit(r.reservation, { usdMicros: usd(0.5), tokens: 0 });
    net.loseNextReply = true;
    // Needs a renew (0.5 + 0.6 > the slice of 1): it is applied, but its answer lost. The store is still connected,
    // so the call asks once more: the same request (seq 2, applied once), then a new one; 0.5 is left, so it is refused.
    const second = await store.reserve({ scopes, estimate: est(usd(0.6)) });
    expect(second.ok).toBe(false);
    expect(net.sent.map((x) => [x.seq, x.report.usdMicros])).toEqual([
      [1, 0],
      [2, usd(0.5)],
      [2, usd(0.5)],
      [3, 0],
    ]);
    expect(counters.spentIn({ ...scopes[0]!, windowId: '2026-12-05' }).usdMicros).toBe(usd(0.5));
    expect(second.ok || second.refusal).toMatchObject({ limit: usd(1), spent: usd(0.5), requested: usd(0.6) });
  });

  // An agent's money cap is leased like the fleet's; 20 replicas sharing one agent id make it as shared as the fleet's.
  it.each([
    ['the fleet day cap', (cap: number) => fleetDay(cap)],
    ['an agent day cap (USD only)', (cap: number) => agentDayUsd('replicas', cap)],
  ])('during an outage admits on %s only what is left of the slices held when it began, then answers 503 BUDGET_STORE_UNAVAILABLE', async (_, capped) => {
    const { counters, net } = fleet({ whole: false });
    const random = seeded(14);
    const N = 20;
    const cap = usd(50);
    const sidecars = Array.from({ length: N }, () => sidecar(counters, net));
    const scopes = [capped(cap)];
    let spent = 0;
    // Traffic before the outage: every sidecar holds a slice and has spent some of it.
    for (let round = 0; round < 5; round++) {
      for (const s of sidecars) {
        const r = await s.reserve({ scopes, estimate: est(usd(0.05 + random() * 0.2)) });
        if (!r.ok) throw new Error(`refused before the outage: ${JSON.stringify(r.refusal)}`);
        await s.commit(r.reservation, { usdMicros: r.reservation.estimate.usdMicros, tokens: 0 });
        spent += r.reservation.estimate.usdMicros;
      }
      // Time passes: slices are renewed (resized to the live holders) or handed back.
      await advance(8_000);
    }
    const leftInSlices = sidecars.reduce((sum, s) => sum + (s.leaseViews()[0]?.remaining.usdMicros ?? 0), 0);
    expect(leftInSlices).toBeGreaterThan(0);

    net.cut = true;
    let admittedInOutage = 0;
    let refusedWith503 = 0;
    const inFlight: { s: LeasedStore; r: Reservation }[] = [];
    for (let round = 0; round < 200; round++) {
      for (const s of sidecars) {
        try {
          const r = await s.reserve({ scopes, estimate: est(usd(0.05 + random() * 0.2)) });
          if (!r.ok) throw new Error(`an outage refusal is a 503, not ${r.refusal.reason}`);
          admittedInOutage += r.reservation.estimate.usdMicros;
          inFlight.push({ s, r: r.reservation });
        } catch (err) {
          expect(err).toBeInstanceOf(StoreUnavailableError);
          refusedWith503++;
        }
      }
      // Half the calls finish each round; what they spend is kept for later.
      for (const f of inFlight.splice(0, Math.ceil(inFlight.length / 2))) await f.s.commit(f.r, { usdMicros: f.r.estimate.usdMicros, tokens: 0 });
    }
    for (const f of inFlight.splice(0)) await f.s.commit(f.r, { usdMicros: f.r.estimate.usdMicros, tokens: 0 });
    expect(refusedWith503).toBeGreaterThan(0);
    // The bound: no more than the slices held when the outage began had left. (Issue 14 measured 6.6× what was left.)
    expect(admittedInOutage).toBeLessThanOrEqual(leftInSlices);
    expect(admittedInOutage).toBeGreaterThan(leftInSlices * 0.8);

    // Back: every sidecar reports what it spent in the outage, exactly once; the fleet total is within the cap.
    net.cut = false;
    await Promise.all(sidecars.map((s) => s.close()));
    const total = counters.spentIn({ ...scopes[0]!, windowId: '2026-12-05' }).usdMicros;
    expect(total).toBe(spent + admittedInOutage);
    expect(total).toBeLessThanOrEqual(cap);
  });

  it('stops admitting on a slice at its expiry, even with budget left in it, and hands it back unspent afterwards', async () => {
    const { counters, net } = fleet({ whole: false });
    const store = sidecar(counters, net);
    const scopes = [fleetDay(usd(10))];
    const r = await store.reserve({ scopes, estimate: est(usd(0.1)) });
    if (!r.ok) throw new Error('refused');
    net.cut = true;
    // Calls keep coming (not idle): the slice is used until its expiry, not a millisecond after.
    await advance(29_999);
    expect((await store.reserve({ scopes, estimate: est(usd(0.1)) })).ok).toBe(true);
    t += 1;
    await expect(store.reserve({ scopes, estimate: est(usd(0.1)) })).rejects.toMatchObject({ code: 'BUDGET_STORE_UNAVAILABLE', statusCode: 503 });
    net.cut = false;
    await store.commit(r.reservation, { usdMicros: usd(0.1), tokens: 0 });
    const back = await store.reserve({ scopes, estimate: est(usd(0.1)) });
    expect(back.ok).toBe(true);
    // The lapsed slice was replaced, not added to: one slice outstanding.
    const [u] = await new MemoryLeaseSource(counters, SIZING).usage([{ ...scopes[0]!, windowId: '2026-12-05' }], t);
    expect(u?.spent.usdMicros).toBe(usd(0.1));
  });

  it('a sidecar started during an outage admits nothing on a cap it never leased, or only its allowance', async () => {
    const { counters, net } = fleet();
    net.cut = true;
    const events: LeaseEvent[] = [];
    const fresh = sidecar(counters, net, { events });
    const scopes = [agentDay('a9'), fleetDay(usd(1_000))];
    await expect(fresh.reserve({ scopes, estimate: est(usd(0.01)) })).rejects.toBeInstanceOf(StoreUnavailableError);
    await expect(fresh.reserve({ scopes, estimate: est(0) })).rejects.toBeInstanceOf(StoreUnavailableError);
    expect(events.map((e) => e.type)).toEqual(['sourceDown', 'refused', 'refused']);
    // The agent scope's hold was never taken: the inner store was not asked.
    expect((await counters.snapshot([agentDay('a9')]))[0]?.reserved.calls).toBe(0);

    const allowed = sidecar(counters, net, { allowanceUsdMicros: usd(0.5) });
    let admitted = 0;
    for (let i = 0; i < 20; i++) {
      try {
        const r = await allowed.reserve({ scopes, estimate: est(usd(0.12)) });
        if (r.ok) admitted += r.reservation.estimate.usdMicros;
      } catch (err) {
        expect(err).toBeInstanceOf(StoreUnavailableError);
      }
    }
    expect(admitted).toBe(4 * usd(0.12));
  });

  // One agent id in one pod (the usual case): the only holder of its window. A Redis outage longer than a slice's life
  // must not stop it (a 503 for every capped agent of the fleet), nor let it pass its cap: it spends what was left.
  it('keeps an agent that was its window\'s only holder within what was left of its cap through an outage longer than a slice, then refuses with BUDGET_EXCEEDED', async () => {
    const { counters, net } = fleet({ whole: false });
    const store = sidecar(counters, net);
    const scopes = [agentDayUsd('solo', usd(2))];
    const first = await store.reserve({ scopes, estimate: est(usd(0.5)) });
    if (!first.ok) throw new Error('refused');
    await store.commit(first.reservation, { usdMicros: usd(0.5), tokens: 0 });
    await settle();
    net.cut = true;
    // Past the slice's life and grace: no slice left, the source still unreachable.
    await advance(60_000);
    let admitted = 0;
    let refusal: unknown;
    for (let i = 0; i < 10 && refusal === undefined; i++) {
      const r = await store.reserve({ scopes, estimate: est(usd(0.4)) });
      if (!r.ok) refusal = r.refusal;
      else {
        admitted += usd(0.4);
        await store.commit(r.reservation, { usdMicros: usd(0.4), tokens: 0 });
      }
    }
    // 2 − 0.5 = 1.5 was left: three calls of 0.4 fit, the fourth does not.
    expect(admitted).toBe(usd(1.2));
    expect(refusal).toMatchObject({ reason: 'BUDGET_EXCEEDED', limit: usd(2), requested: usd(0.4) });
    net.cut = false;
    await store.close();
    expect(counters.spentIn({ ...scopes[0]!, windowId: '2026-12-05' }).usdMicros).toBe(usd(1.7));
  });

  it('refuses even a call estimated at zero (a tool call) in an outage once an agent alone on its window spent the cap', async () => {
    const { counters, net } = fleet({ whole: false });
    const store = sidecar(counters, net);
    const scopes = [agentDayUsd('spent', usd(1))];
    const r = await store.reserve({ scopes, estimate: est(usd(1)) });
    if (!r.ok) throw new Error('refused');
    await store.commit(r.reservation, { usdMicros: usd(1), tokens: 0 });
    await settle();
    net.cut = true;
    await advance(60_000);
    // The store's rule (store.ts): a cap used up refuses every request, so a runaway loop of free calls stops too.
    const tool = await store.reserve({ scopes, estimate: est(0) });
    expect(tool.ok || tool.refusal).toMatchObject({ reason: 'BUDGET_EXCEEDED', limit: usd(1), requested: 0 });
    net.cut = false;
    await store.close();
  });

  it('counts a silent holder\'s lapsed slice as spent until it reports, then charges what it really spent', async () => {
    const counters = new MemoryStore({ now });
    const source = new MemoryLeaseSource(counters, SIZING, { whole: false });
    const silentNet = new Network(source);
    const silent = sidecar(counters, silentNet);
    const other = sidecar(counters, new Network(source));
    const scopes = [fleetDay(usd(10))];
    const r = await silent.reserve({ scopes, estimate: est(usd(1)) });
    if (!r.ok) throw new Error('refused');
    await silent.commit(r.reservation, { usdMicros: usd(1), tokens: 0 });
    // No spend known yet: its slice holds its call and one more like it (renewed ahead of need), not half the cap.
    await settle();
    const slice = usd(2);
    expect(silent.leaseViews()[0]?.remaining.usdMicros).toBe(slice - usd(1));
    silentNet.cut = true;
    // Past expiry + grace the other sidecar's request reaps it: the whole slice counts as spent meanwhile.
    t += SIZING.ttlMs + SIZING.graceMs;
    const o = await other.reserve({ scopes, estimate: est(usd(0.1)) });
    expect(o.ok && o.used[0]?.usdMicros).toBe(slice + usd(0.1));
    // The silent one comes back and reports the 1 USD it spent: its presumed spend is replaced by the real one.
    silentNet.cut = false;
    await silent.close();
    const [u] = await source.usage([{ ...scopes[0]!, windowId: '2026-12-05' }], t);
    expect(u?.spent.usdMicros).toBe(usd(1));
  });

  it('keeps a call in flight across a lapsed slice covered: the report made after the outage asks for a slice that holds it', async () => {
    const counters = new MemoryStore({ now });
    const source = new MemoryLeaseSource(counters, SIZING, { whole: false });
    const aNet = new Network(source);
    const a = sidecar(counters, aNet);
    const bNet = new Network(source);
    const b = sidecar(counters, bNet);
    const cap = usd(10);
    const scopes = [fleetDay(cap)];
    const settled = await a.reserve({ scopes, estimate: est(usd(0.5)) });
    const inFlight = await a.reserve({ scopes, estimate: est(usd(2)) });
    if (!settled.ok || !inFlight.ok) throw new Error('refused');
    await a.commit(settled.reservation, { usdMicros: usd(0.5), tokens: 0 });
    // B spends the whole pool but A's slice; A is cut off longer than its slice lives, one call still in flight.
    const drain = async () => {
      let spent = 0;
      for (;;) {
        const r = await b.reserve({ scopes, estimate: est(usd(0.25)) });
        if (!r.ok) return spent;
        await b.commit(r.reservation, { usdMicros: usd(0.25), tokens: 0 });
        spent += usd(0.25);
      }
    };
    let bSpent = await drain();
    aNet.cut = true;
    await advance(SIZING.ttlMs + SIZING.graceMs);
    // B's next renew reaps A's lapsed slice, counted as spent: nothing more for B.
    bSpent += await drain();
    aNet.cut = false;
    // A's background report: its call is still in flight, so it asks for a slice covering the 2 USD it holds.
    await advance(1_000);
    const reports = aNet.sent.filter((r) => r.report.usdMicros > 0);
    expect(reports.map((r) => [r.report.usdMicros, r.keep, r.want.usdMicros >= usd(2)])).toEqual(reports.map(() => [usd(0.5), true, true]));
    expect(reports.length).toBeGreaterThan(0);
    bSpent += await drain();
    await a.commit(inFlight.reservation, { usdMicros: usd(2), tokens: 0 });
    await Promise.all([a.close(), b.close()]);
    const total = counters.spentIn({ ...scopes[0]!, windowId: '2026-12-05' }).usdMicros;
    expect(total).toBe(usd(2.5) + bSpent);
    expect(total).toBeLessThanOrEqual(cap);
  });

  it('returns the holds taken on the windows before one that refuses, and all of them when the inner store refuses (a kill)', async () => {
    const { counters, net } = fleet();
    const store = sidecar(counters, net);
    const wf = workflow('w1', 'a2');
    const refusedByLease = await store.reserve({ scopes: [agentDay('a2'), wf, fleetDay(usd(1))], estimate: est(usd(1.5)) });
    expect(refusedByLease.ok || refusedByLease.refusal.scope).toEqual({ kind: 'fleet', id: 'all' });
    // Neither the workflow's hold nor the agent's (leased, uncapped) is left behind.
    const held = async () => (await store.snapshot([agentDay('a2'), wf])).map((u) => u.reserved.calls);
    expect(await held()).toEqual([0, 0]);
    // Every window fits; the inner store (kill copy) refuses: the leased holds go back.
    await store.setKill({ kind: 'workflow', id: 'w1' }, 'loop');
    const killed = await store.reserve({ scopes: [agentDay('a2'), wf, fleetDay(usd(1))], estimate: est(usd(0.1)) });
    expect(killed.ok || killed.refusal.reason).toBe('KILLED');
    expect(await held()).toEqual([0, 0]);
    expect(store.leaseViews().find((v) => v.scope.kind === 'fleet')?.remaining.usdMicros).toBe(usd(1));
  });

  it("leases every window: an agent's day and month caps (USD, tokens), its uncapped windows, a workflow's; the inner store checks kills only", async () => {
    const counters = new RecordingStore({ now });
    const net = new Network(new MemoryLeaseSource(counters, SIZING));
    const store = sidecar(counters, net);
    const usdOnly = [agentDayUsd('a1', usd(1)), agentMonth('a1', usd(5)), fleetDay()];
    let admitted = 0;
    for (;;) {
      const r = await store.reserve({ scopes: usdOnly, estimate: est(usd(0.3)) });
      if (!r.ok) {
        expect(r.refusal).toMatchObject({ reason: 'BUDGET_EXCEEDED', scope: { kind: 'agent', id: 'a1' }, window: 'day', limit: usd(1), spent: usd(0.9), requested: usd(0.3) });
        break;
      }
      admitted++;
      await store.commit(r.reservation, { usdMicros: usd(0.3), tokens: 7 });
    }
    expect(admitted).toBe(3);
    // The inner store was asked with an empty list each time (its kill copy only), and never to commit.
    expect(counters.reserved).toEqual([[], [], [], []]);
    expect(counters.commits).toBe(0);
    expect(new Set(net.sent.map((x) => `${x.scope.scope.kind} ${x.scope.window}`))).toEqual(new Set(['agent day', 'agent month']));
    const [day, month, f] = await store.snapshot(usdOnly);
    expect([day?.spent, month?.spent.usdMicros, f?.spent.usdMicros]).toEqual([{ usdMicros: usd(0.9), tokens: 21, calls: 3 }, usd(0.9), usd(0.9)]);

    // A token cap is leased too: 1,000 tokens, calls estimated at 400 each, the third refused naming the tokens.
    const withTokens = { ...agentDayUsd('a2', usd(1)), caps: { usdMicros: usd(1), tokens: 1_000 } };
    const wf = workflow('w1', 'a2', 3);
    const tokenEst = { usdMicros: usd(0.1), tokens: 400, calls: 1 };
    for (let i = 0; i < 2; i++) {
      const r = await store.reserve({ scopes: [withTokens, agentMonth('a2', usd(5)), wf], estimate: tokenEst });
      if (!r.ok) throw new Error('refused');
      expect(counters.reserved.at(-1)).toEqual([]);
      await store.commit(r.reservation, { usdMicros: usd(0.1), tokens: 400 });
    }
    const third = await store.reserve({ scopes: [withTokens, agentMonth('a2', usd(5)), wf], estimate: tokenEst });
    expect(third.ok || third.refusal).toMatchObject({ reason: 'BUDGET_EXCEEDED', scope: { kind: 'agent', id: 'a2' }, metric: 'tokens', limit: 1_000, spent: 800, requested: 400 });
    expect(counters.commits).toBe(0);
  });

  it('grants token and call slices beside the µUSD one, each sized by the same rules (minimum, demand, fair share, all that is left for one holder)', async () => {
    const shared = fleet({ whole: false });
    const a = sidecar(shared.counters, shared.net);
    const scopes = [{ ...agentDayUsd('a1', usd(100)), caps: { usdMicros: usd(100), tokens: 100_000, calls: 1_000 } }];
    const call = { usdMicros: usd(0.1), tokens: 500, calls: 1 };
    const first = await a.reserve({ scopes, estimate: call });
    if (!first.ok) throw new Error('refused');
    // No rate known: the µUSD minimum (0.01, so the estimate), and for tokens and calls (minimum 0) what the call needs.
    expect(shared.net.sent[0]).toMatchObject({ caps: scopes[0]!.caps, want: call });
    await a.commit(first.reservation, { usdMicros: usd(0.1), tokens: 400 });
    // A second sidecar spending 500 tokens and a call a second for 10 s: its next slices follow that rate, per metric
    // (two 30 s lifetimes: 30,000 tokens, 60 calls), within a fair share of what is left.
    const b = sidecar(shared.counters, shared.net);
    for (let i = 0; i < 10; i++) {
      const r = await b.reserve({ scopes, estimate: call });
      if (!r.ok) throw new Error(`refused: ${JSON.stringify(r.refusal)}`);
      await b.commit(r.reservation, { usdMicros: usd(0.1), tokens: 500 });
      await advance(1_000);
    }
    expect(shared.net.sent.some((x) => x.keep && x.rate!.tokens > 0 && x.rate!.calls > 0)).toBe(true);
    const [u] = await shared.net.usage([{ ...scopes[0]!, windowId: '2026-12-05' }], t);
    expect(u!.outstanding.tokens).toBeGreaterThan(500);
    expect(u!.outstanding.calls).toBeGreaterThan(1);
    expect(u!.outstanding.tokens).toBeLessThanOrEqual(100_000 - u!.spent.tokens);

    // One holder on the memory source (the memory stack): all that is left, per metric.
    const solo = fleet();
    const s = sidecar(solo.counters, solo.net);
    expect((await s.reserve({ scopes, estimate: call })).ok).toBe(true);
    const [v] = await solo.net.usage([{ ...scopes[0]!, windowId: '2026-12-05' }], t);
    expect(v!.outstanding).toEqual({ usdMicros: usd(100), tokens: 100_000, calls: 1_000 });
  });

  it('stops a workflow loop run by two sidecars at exactly maxCalls, never one call over, from slices of calls', async () => {
    const { counters, net } = fleet({ whole: false });
    const inner = new RecordingStore({ now });
    const a = new LeasedStore({ inner, source: net, now });
    const b = new LeasedStore({ inner, source: net, now });
    const maxCalls = 37;
    const scopes = [agentDay('loop'), workflow('task-1', 'loop', maxCalls), fleetDay(usd(1_000))];
    let admitted = 0;
    const refusals: unknown[] = [];
    // The loop: each sidecar calls on as long as it is let, tool calls (estimate 0) and model calls alike; time passes
    // between rounds, so slices lapse, are given back and are taken again.
    for (let round = 0; round < 200 && refusals.length < 20; round++) {
      for (const s of [a, b, a, b, a]) {
        const r = await s.reserve({ scopes, estimate: { usdMicros: round % 3 === 0 ? 0 : usd(0.01), tokens: 10, calls: 1 } });
        if (r.ok) {
          admitted++;
          await s.commit(r.reservation, { usdMicros: r.reservation.estimate.usdMicros, tokens: 10 });
        } else refusals.push(r.refusal);
        expect(admitted).toBeLessThanOrEqual(maxCalls);
      }
      await advance(round % 5 === 0 ? 40_000 : 500);
    }
    expect(admitted).toBe(maxCalls);
    expect(refusals[0]).toMatchObject({ reason: 'CALL_LIMIT', scope: { kind: 'workflow', id: 'task-1' }, metric: 'calls', limit: maxCalls });
    // Served from slices: the inner store's per-call path saw empty scope lists only (kill checks).
    expect(inner.reserved.every((list) => list.length === 0)).toBe(true);
    expect(net.sent.some((x) => x.scope.window === 'workflow')).toBe(true);
    await Promise.all([a.close(), b.close()]);
    expect(counters.spentIn({ ...workflow('task-1', 'loop', maxCalls), windowId: 'all', idleTtlMs: undefined } as never).calls).toBe(maxCalls);
  });

  it('starts a leased workflow window again from zero once unseen for its idle time, counted from its last call', async () => {
    const { counters, net } = fleet();
    const store = sidecar(counters, net);
    const wf = { ...workflow('w1', 'a1', 2), idleTtlMs: 60_000 };
    const scopes = [wf];
    const call = { usdMicros: 0, tokens: 0, calls: 1 };
    for (let i = 0; i < 2; i++) {
      const r = await store.reserve({ scopes, estimate: call });
      if (!r.ok) throw new Error('refused');
      await store.commit(r.reservation, { usdMicros: 0, tokens: 0 });
      if (i === 0) await advance(30_000);
    }
    const lastSeen = t;
    await advance(59_999);
    const refused = await store.reserve({ scopes, estimate: call });
    expect(refused.ok || refused.refusal).toMatchObject({ reason: 'CALL_LIMIT', metric: 'calls', resetAt: lastSeen + 60_000 });
    await advance(1);
    const fresh = await store.reserve({ scopes, estimate: call });
    expect(fresh.ok).toBe(true);
    const [u] = await store.snapshot(scopes);
    expect([u?.spent.calls, u?.reserved.calls]).toEqual([0, 1]);
    // A second sidecar whose slice is outstanding keeps the window from resetting under it.
    const other = sidecar(counters, net);
    expect((await other.reserve({ scopes, estimate: call })).ok).toBe(false);
  });

  it('in an outage, a workflow the sidecar alone was running admits only what was left of each cap (calls and tokens too)', async () => {
    const { counters, net } = fleet({ whole: false });
    const store = sidecar(counters, net);
    const wf = { ...workflow('w1', 'a1'), caps: { calls: 10, tokens: 1_000 } };
    const scopes = [wf];
    for (let i = 0; i < 3; i++) {
      const r = await store.reserve({ scopes, estimate: { usdMicros: 0, tokens: 100, calls: 1 } });
      if (!r.ok) throw new Error('refused');
      await store.commit(r.reservation, { usdMicros: 0, tokens: 100 });
    }
    await advance(SIZING.ttlMs);
    net.cut = true;
    // Past its slice, alone on the window at the last answer: the calls and tokens left (7 calls, 700 tokens), no more.
    let admitted = 0;
    for (let i = 0; i < 20; i++) {
      const r = await store.reserve({ scopes, estimate: { usdMicros: 0, tokens: 50, calls: 1 } });
      if (!r.ok) {
        expect(r.refusal).toMatchObject({ reason: 'CALL_LIMIT', metric: 'calls' });
        break;
      }
      admitted++;
      await store.commit(r.reservation, { usdMicros: 0, tokens: 50 });
    }
    expect(admitted).toBe(7);
    // Tokens run out first when calls cost more of them.
    const tokensWf = { ...workflow('w2', 'a1'), caps: { calls: 100, tokens: 1_000 } };
    net.cut = false;
    const first = await store.reserve({ scopes: [tokensWf], estimate: { usdMicros: 0, tokens: 300, calls: 1 } });
    if (!first.ok) throw new Error('refused');
    await store.commit(first.reservation, { usdMicros: 0, tokens: 300 });
    await advance(SIZING.ttlMs);
    net.cut = true;
    const results = [];
    for (let i = 0; i < 4; i++) {
      const r = await store.reserve({ scopes: [tokensWf], estimate: { usdMicros: 0, tokens: 300, calls: 1 } });
      results.push(r.ok || r.refusal.metric);
      if (r.ok) await store.commit(r.reservation, { usdMicros: 0, tokens: 300 });
    }
    expect(results).toEqual([true, true, 'tokens', 'tokens']);
    // All of it from the lease layer: the workflow windows were leased, not counted per call by the inner store.
    expect(net.sent.filter((x) => x.scope.window === 'workflow').length).toBeGreaterThan(0);
  });

  it('in an outage, a workflow started then gets its whole caps (as the local fallback gave it), one paused before only what was left', async () => {
    const { counters, net } = fleet({ whole: false });
    const store = sidecar(counters, net);
    const call = { usdMicros: 0, tokens: 10, calls: 1 };
    const loop = async (wf: ScopeBudget) => {
      let admitted = 0;
      for (let i = 0; i < 20; i++) {
        const r = await store.reserve({ scopes: [agentDay('a1'), wf], estimate: call });
        if (!r.ok) {
          expect(r.refusal).toMatchObject({ reason: 'CALL_LIMIT', scope: { kind: 'workflow', id: wf.scope.id } });
          break;
        }
        admitted++;
        await store.commit(r.reservation, { usdMicros: 0, tokens: 10 });
      }
      return admitted;
    };
    // A workflow run before the outage, 4 of its 6 calls, then paused: its slice given back, its lease dropped.
    const paused = workflow('paused', 'a1', 6);
    for (let i = 0; i < 4; i++) {
      const r = await store.reserve({ scopes: [agentDay('a1'), paused], estimate: call });
      if (!r.ok) throw new Error('refused');
      await store.commit(r.reservation, { usdMicros: 0, tokens: 10 });
    }
    await advance(120_000);
    // Ticks: the slice given back (with the spend), then the idle lease dropped.
    await advance(1_000);
    await advance(1_000);
    expect(store.leaseViews().some((v) => v.scope.kind === 'workflow')).toBe(false);
    net.cut = true;
    expect(await loop(paused)).toBe(2);
    expect(await loop(workflow('new-in-outage', 'a1', 5))).toBe(5);
    // A workflow naming no agent may be anyone's: nothing admitted without a slice.
    await expect(store.reserve({ scopes: [{ ...workflow('anon', 'x', 5), scope: { kind: 'workflow', id: 'anon' } }], estimate: call })).rejects.toBeInstanceOf(StoreUnavailableError);
    net.cut = false;
    await store.close();
    expect(counters.spentIn({ scope: paused.scope, window: 'workflow', caps: {}, windowId: 'all' }).calls).toBe(6);
  });

  it('reports an alert crossing per metric, once per window, as an event when the report that crossed it is answered, with no call to carry it', async () => {
    const { counters, net } = fleet();
    const events: LeaseEvent[] = [];
    const store = sidecar(counters, net, { events });
    const wf = { ...workflow('w1', 'a1'), caps: { usdMicros: usd(1), tokens: 1_000, calls: 100 } };
    const alerts = () => events.flatMap((e) => (e.type === 'alert' ? [`${e.crossing.metric} ${e.crossing.used}/${e.crossing.limit}`] : []));
    const call = async () => {
      const r = await store.reserve({ scopes: [wf], estimate: { usdMicros: usd(0.01), tokens: 100, calls: 1 } });
      if (!r.ok) throw new Error('refused');
      const c = await store.commit(r.reservation, { usdMicros: usd(0.01), tokens: 100 });
      // Never handed to a call: the call that happens to follow a report is not the one that crossed.
      expect([...r.crossed, ...c.crossed]).toEqual([]);
    };
    for (let i = 0; i < 8; i++) {
      await call();
      expect(alerts()).toEqual([]);
      // Each call's spend is reported at the next tick past reportIntervalMs (20 s).
      await advance(20_000);
    }
    expect(alerts()).toEqual(['tokens 800/1000']);
    await call();
    await advance(20_000);
    expect(alerts()).toEqual(['tokens 800/1000']);
    expect(net.sent.filter((x) => x.scope.window === 'workflow').length).toBeGreaterThan(0);
  });

  it('answers KILLED, not BUDGET_EXCEEDED, to a killed agent whose leased cap is spent, and not 503 in an outage', async () => {
    const { counters, net } = fleet();
    const store = sidecar(counters, net);
    const scopes = [agentDayUsd('a1', usd(1)), agentMonth('a1', usd(5))];
    const r = await store.reserve({ scopes, estimate: est(usd(1)) });
    if (!r.ok) throw new Error('refused');
    await store.commit(r.reservation, { usdMicros: usd(1), tokens: 0 });
    expect((await store.reserve({ scopes, estimate: est(usd(0.1)) })).ok || 'refused').toBe('refused');
    await store.setKill({ kind: 'agent', id: 'a1' }, 'runaway loop');
    const killed = { ok: false, refusal: { reason: 'KILLED', scope: { kind: 'agent', id: 'a1' }, killReason: 'runaway loop', resetAt: null } };
    expect(await store.reserve({ scopes, estimate: est(usd(0.1)) })).toMatchObject(killed);
    // A sidecar started during an outage holds no slice: the call would be a 503, but the kill is known here.
    net.cut = true;
    const fresh = sidecar(counters, net);
    expect(await fresh.reserve({ scopes, estimate: est(usd(0.1)) })).toMatchObject(killed);
    await expect(fresh.reserve({ scopes: [agentDayUsd('a2', usd(1))], estimate: est(usd(0.1)) })).rejects.toBeInstanceOf(StoreUnavailableError);
  });
});

/** A real MemoryStore that notes the scope lists it is asked to reserve and how many reservations it settles. */
class RecordingStore extends MemoryStore {
  readonly reserved: (readonly ScopeBudget[])[] = [];
  commits = 0;
  override reserve(req: ReserveRequest): Promise<ReserveResult> {
    this.reserved.push(req.scopes);
    return super.reserve(req);
  }
  override commit(r: Reservation, actual: Actual): Promise<CommitResult> {
    this.commits++;
    return super.commit(r, actual);
  }
}

describe('MemoryLeaseSource sweep', () => {
  it('keeps a workflow window whose id reads like a calendar window ("x:day:2020-01-01") until its own gc', async () => {
    let t = START;
    const counters = new MemoryStore({ now: () => t });
    const source = new MemoryLeaseSource(counters, SIZING);
    const ask = (scope: ReservedScope, seq: number) =>
      source.acquire({ scope, holder: 'h', seq, report: { usdMicros: 0, tokens: 0, calls: 0 }, keep: true, want: { usdMicros: 0, tokens: 0, calls: 1 }, caps: scope.caps, usedAt: t, now: t });
    // The workflow id is the agent's x-fusebox-workflow header as sent: it may hold colons.
    const odd: ReservedScope = { ...workflow('x:day:2020-01-01', 'a1', 5), windowId: 'all' };
    expect((await ask(odd, 1)).grant.calls).toBe(5);
    // A minute later another window's request runs the sweep: the workflow's slice is still out, not dropped as a
    // day that ended in 2020.
    t += 61_000;
    await ask({ ...fleetDay(usd(1)), windowId: '2026-12-05' }, 2);
    const [u] = await source.usage([odd], t);
    expect(u?.outstanding.calls).toBe(5);
  });
});
