import { afterEach, describe, expect, it } from 'vitest';
import { LocalFallbackStore, type FallbackEvent, type JournalEntry } from '../../src/budget/local-fallback-store.js';
import { RedisStore } from '../../src/budget/redis-store.js';
import type { BudgetStore, Reservation, ScopeBudget } from '../../src/budget/store.js';
import { StoreUnavailableError } from '../../src/errors.js';
import { RedisConnection } from '../../src/store/redis-connection.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

const usd = (n: number) => Math.round(n * 1_000_000);
const est = (usdMicros: number) => ({ usdMicros, tokens: 0, calls: 1 });
const scopes: ScopeBudget[] = [
  { scope: { kind: 'agent', id: 'a1' }, window: 'day', caps: { usdMicros: usd(10) } },
  { scope: { kind: 'workflow', id: 'w1' }, window: 'workflow', caps: {}, idleTtlMs: 3_600_000 },
  { scope: { kind: 'fleet', id: 'all' }, window: 'day', caps: { usdMicros: usd(4) } },
];

async function waitFor(what: string, cond: () => boolean, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function admit(store: BudgetStore, e: number): Promise<Reservation> {
  const r = await store.reserve({ scopes, estimate: est(e) });
  if (!r.ok) throw new Error(`refused: ${JSON.stringify(r.refusal)}`);
  return r.reservation;
}

describe('LocalFallbackStore over a Redis that goes away', () => {
  let redis: TestRedis | undefined;
  let stores: BudgetStore[] = [];
  let connections: RedisConnection[] = [];
  afterEach(async () => {
    await Promise.all(stores.map((s) => s.close()));
    stores = [];
    await Promise.all(connections.map((c) => c.close()));
    connections = [];
    await redis?.stop();
    redis = undefined;
  });

  const setup = async (opts: { persist?: boolean; timeoutMs?: number; journalMaxEntries?: number } = {}) => {
    redis = await startRedis({ persist: opts.persist ?? true });
    // A frozen clock: windows and hold expiry stay put while real outages come and go.
    const t = Date.now();
    const now = () => t;
    const connection = new RedisConnection({ url: redis.url, keyPrefix: 'fb', timeoutMs: opts.timeoutMs ?? 200 });
    const shared = new RedisStore({ redis: connection, now });
    const events: FallbackEvent[] = [];
    // The fleet share the factory's stack leaves to leases (lease.ts): set here to test the slice rule itself.
    const fb = new LocalFallbackStore({
      shared,
      now,
      replayIntervalMs: 50,
      localShare: { fleet: 0.25 },
      ...(opts.journalMaxEntries !== undefined && { journalMaxEntries: opts.journalMaxEntries }),
      onEvent: (e) => {
        if (e.type !== 'journal') events.push(e);
      },
    });
    // A second sidecar's view of Redis, to read the fleet totals.
    const readerConnection = new RedisConnection({ url: redis.url, keyPrefix: 'fb' });
    const reader = new RedisStore({ redis: readerConnection, now });
    stores.push(fb, reader);
    connections.push(connection, readerConnection);
    await shared.waitReady(2_000);
    await reader.waitReady(2_000);
    return { fb, shared, reader, events, redis };
  };

  it('keeps enforcing a local slice in `local` mode, refuses in `closed` mode, and replays every charge exactly once', async () => {
    const { fb, reader, events, redis } = await setup();
    expect(fb.available()).toBe(true);
    for (let i = 0; i < 3; i++) await fb.commit(await admit(fb, usd(0.5)), { usdMicros: usd(0.4), tokens: 7 });

    redis.kill();
    await waitFor('the outage to be seen', () => !fb.available());
    await expect(fb.reserve({ scopes, estimate: est(1), onUnavailable: 'closed' })).rejects.toMatchObject({
      code: 'BUDGET_STORE_UNAVAILABLE',
      statusCode: 503,
    });
    await expect(fb.reserve({ scopes, estimate: est(1), onUnavailable: 'closed' })).rejects.toBeInstanceOf(StoreUnavailableError);

    // Last known fleet use: 0.8 spent + 0.5 held = 1.3 of 4; a quarter of the 2.7 left is 0.675 for this sidecar.
    const local: Reservation[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await admit(fb, usd(0.2));
      expect(r.local).toBe(true);
      local.push(r);
      await fb.commit(r, { usdMicros: usd(0.15), tokens: 3 });
    }
    const refused = await fb.reserve({ scopes, estimate: est(usd(0.2)) });
    expect(refused.ok || refused.refusal).toMatchObject({ reason: 'BUDGET_EXCEEDED', scope: { kind: 'fleet', id: 'all' }, limit: usd(0.675), spent: usd(0.6) });
    expect(fb.journal().map((e) => e.id)).toEqual(local.map((r) => r.id));
    await expect(fb.setKill({ kind: 'global' })).rejects.toBeInstanceOf(StoreUnavailableError);
    const journal: JournalEntry[] = [...fb.journal()];

    await redis.restart();
    await waitFor('the journal to be replayed', () => fb.available(), 8_000);
    expect(fb.journal()).toEqual([]);
    // The reader is another sidecar's connection: it reconnects on its own schedule.
    await reader.waitReady(8_000);
    const totals = await reader.snapshot(scopes);
    const expected = { usdMicros: 3 * usd(0.4) + 4 * usd(0.15), tokens: 3 * 7 + 4 * 3, calls: 7 };
    for (const u of totals) {
      expect(u.spent).toEqual(expected);
      expect(u.reserved).toEqual({ usdMicros: 0, tokens: 0, calls: 0 });
    }

    // Replaying the same entries again (an interrupted replay retried) changes nothing: local reservations are
    // charged by journal position, which the windows have passed.
    expect(journal.every((e) => e.at !== undefined)).toBe(true);
    for (const e of journal) await (e.at ? reader.commitJournaled(e.reservation, e.actual, e.at) : reader.commit(e.reservation, e.actual));
    expect((await reader.snapshot(scopes)).map((u) => u.spent)).toEqual([expected, expected, expected]);

    // Back on the shared store.
    const after = await admit(fb, usd(0.1));
    expect(after.local).toBeUndefined();
    expect(events.map((e) => e.type)).toEqual(['unavailable', 'recovered']);
  });

  it('hands back a hold released during an outage once Redis is back, instead of leaving it to be presumed spent', async () => {
    const { fb, reader, redis } = await setup();
    const held = await admit(fb, usd(0.5));
    expect(held.local).toBeUndefined();
    const failed = await admit(fb, usd(0.3));
    redis.kill();
    await waitFor('the outage to be seen', () => !fb.available());
    // Both calls end in the outage: one cost nothing (refused upstream), one cost $0.2.
    await fb.release(failed);
    await fb.commit(held, { usdMicros: usd(0.2), tokens: 1 });
    expect(fb.journal().map((e) => [e.id, e.release ?? false])).toEqual([[failed.id, true], [held.id, false]]);

    await redis.restart();
    await waitFor('the journal to be replayed', () => fb.available(), 8_000);
    expect(fb.journal()).toEqual([]);
    await reader.waitReady(8_000);
    for (const u of await reader.snapshot(scopes)) {
      expect(u.reserved).toEqual({ usdMicros: 0, tokens: 0, calls: 0 });
      expect(u.spent).toEqual({ usdMicros: usd(0.2), tokens: 1, calls: 1 });
    }
    // A replay run again (interrupted, retried) hands back nothing twice.
    await reader.release(failed);
    expect((await reader.snapshot(scopes)).map((u) => u.spent.usdMicros)).toEqual([usd(0.2), usd(0.2), usd(0.2)]);
  });

  it('counts a commit that timed out but ran anyway exactly once, when its journal entry is replayed', async () => {
    const { fb, reader, events, redis } = await setup({ persist: false, timeoutMs: 100 });
    const held = await admit(fb, usd(1));
    redis.pause();
    try {
      // Redis hangs: the commit is sent, times out, and is journaled; Redis runs it when it wakes up.
      await fb.commit(held, { usdMicros: usd(1.25), tokens: 0 });
      expect(fb.available()).toBe(false);
      expect(fb.journal()).toHaveLength(1);
      const local = await admit(fb, usd(0.1));
      await fb.commit(local, { usdMicros: usd(0.05), tokens: 0 });
      // Let two replay attempts time out too: each one is queued in the hung Redis.
      await waitFor('two replay attempts to time out', () => events.filter((e) => e.type === 'replayFailed').length >= 2);
    } finally {
      redis.resume();
    }
    await waitFor('the journal to be replayed', () => fb.available());
    const [agent] = await reader.snapshot(scopes);
    expect(agent?.spent).toEqual({ usdMicros: usd(1.3), tokens: 0, calls: 2 });
    expect(agent?.reserved).toEqual({ usdMicros: 0, tokens: 0, calls: 0 });
  });

  it('charges a reservation made locally but committed after Redis is back once, through the journal', async () => {
    const { fb, reader, events, redis } = await setup();
    redis.kill();
    await waitFor('the outage to be seen', () => !fb.available());
    const local = await admit(fb, usd(0.2));
    expect(local.local).toBe(true);
    await redis.restart();
    await waitFor('the store to be back', () => fb.available(), 8_000);
    // It never had a hold in Redis: a hold-based commit would find nothing; its journal position is what charges it.
    await fb.commit(local, { usdMicros: usd(0.15), tokens: 3 });
    expect(fb.journal()).toEqual([]);
    await reader.waitReady(8_000);
    const [agent] = await reader.snapshot(scopes);
    expect(agent?.spent).toEqual({ usdMicros: usd(0.15), tokens: 3, calls: 1 });
    expect(events.map((e) => e.type).filter((t) => t !== 'journal')).toEqual(['unavailable', 'recovered']);
  });

  it('keeps at most journalMaxEntries charges: the oldest go, reported with their count and USD, never silently', async () => {
    const { fb, events, redis } = await setup({ persist: false, journalMaxEntries: 3 });
    redis.kill();
    await waitFor('the outage to be seen', () => !fb.available());
    const made: Reservation[] = [];
    for (let i = 1; i <= 5; i++) {
      const r = await admit(fb, usd(0.1));
      made.push(r);
      await fb.commit(r, { usdMicros: usd(0.01 * i), tokens: 0 });
    }
    expect(fb.journal().map((e) => e.id)).toEqual(made.slice(2).map((r) => r.id));
    const dropped = () => events.filter((e) => e.type === 'journalDropped');
    // The first drop is reported at once; the next, within the same second, waits to be reported with the totals.
    expect(dropped()).toEqual([{ type: 'journalDropped', reason: 'full', entries: 1, usdMicros: usd(0.01) }]);
    await fb.close();
    expect(dropped()).toEqual([
      { type: 'journalDropped', reason: 'full', entries: 1, usdMicros: usd(0.01) },
      { type: 'journalDropped', reason: 'full', entries: 1, usdMicros: usd(0.02) },
      { type: 'journalDropped', reason: 'shutdown', entries: 3, usdMicros: usd(0.03) + usd(0.04) + usd(0.05) },
    ]);
  });

  it('keeps obeying the kills it last read while Redis is away', async () => {
    const { fb, redis } = await setup({ persist: false });
    await fb.setKill({ kind: 'workflow', id: 'w1' }, 'loop');
    expect(await fb.getKills()).toHaveLength(1);
    redis.kill();
    await waitFor('the outage to be seen', () => !fb.available());
    const r = await fb.reserve({ scopes, estimate: est(1) });
    expect(r.ok || r.refusal).toMatchObject({ reason: 'KILLED', scope: { kind: 'workflow', id: 'w1' }, killReason: 'loop' });
    const elsewhere = await fb.reserve({ scopes: [{ scope: { kind: 'workflow', id: 'w2' }, window: 'workflow', caps: {}, idleTtlMs: 60_000 }], estimate: est(1) });
    expect(elsewhere.ok).toBe(true);
    expect(await fb.getKills()).toEqual([expect.objectContaining({ target: { kind: 'workflow', id: 'w1' } })]);
  });
});
