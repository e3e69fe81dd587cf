import { afterEach, describe, expect, it, vi } from 'vitest';
import { SloSchema } from '../../src/config/schema.js';
import { minuteIndex, type BucketFields, type BucketRef } from '../../src/slo/buckets.js';
import { CounterStoreUnavailableError, MemoryCounterStore, type CounterBatch, type CounterStore } from '../../src/slo/counter-store.js';
import { SloRecorder } from '../../src/slo/recorder.js';
import { sloSpecOf } from '../../src/slo/spec.js';

const T = Date.UTC(2025, 0, 15, 12, 30, 30);
const spec = sloSpecOf('chat', SloSchema.parse({}));
const minute = (t: number): BucketRef => ({ route: 'chat', tier: 'm', index: minuteIndex(t) });

/** A store that fails on demand: before applying (Redis down) or after applying (the answer was lost). */
class FlakyStore implements CounterStore {
  mode: 'ok' | 'down' | 'lose-answer' = 'ok';
  calls = 0;
  constructor(readonly inner: MemoryCounterStore) {}
  async write(writerId: string, batches: readonly CounterBatch[]): Promise<void> {
    this.calls++;
    if (this.mode === 'down') throw new CounterStoreUnavailableError('down');
    await this.inner.write(writerId, batches);
    if (this.mode === 'lose-answer') throw new CounterStoreUnavailableError('Command timed out');
  }
  read(refs: readonly BucketRef[]): Promise<BucketFields[]> {
    return this.inner.read(refs);
  }
  async close(): Promise<void> {}
}

const setup = (opts: { maxPendingBatches?: number } = {}) => {
  const clock = { t: T };
  const memory = new MemoryCounterStore({ now: () => clock.t });
  const store = new FlakyStore(memory);
  const logs: Array<{ level: string; msg: string }> = [];
  const logger = {
    warn: (_o: object, msg: string) => logs.push({ level: 'warn', msg }),
    info: (_o: object, msg: string) => logs.push({ level: 'info', msg }),
  };
  const rec = new SloRecorder({ store, routes: [spec], now: () => clock.t, flushIntervalMs: 1000, logger, writerId: 'w1', ...opts });
  const read = async (ref: BucketRef = minute(clock.t)) => (await memory.read([ref]))[0]!;
  return { clock, memory, store, rec, read, logs };
};

afterEach(() => {
  vi.useRealTimers();
});

describe('SloRecorder', () => {
  it('writes nothing until a flush, then the minute, hour and day buckets of every event', async () => {
    const { rec, read, memory } = setup();
    rec.record('chat', { availability: 'good', latencyMs: 120, costUsdMicros: 30_000 });
    rec.record('chat', { availability: 'bad', latencyMs: 6000 });
    expect(memory.size).toBe(0);
    await rec.flush();
    // 120 ms in the ≤ 250 ms histogram bucket (l5), 6 s in the ≤ 10 s one (l10); cost only where known.
    const expected = { ag: 1, ab: 1, lg: 1, lb: 1, cg: 1, cs: 30_000, cn: 1, l5: 1, l10: 1 };
    expect(await read()).toEqual(expected);
    expect(await read({ route: 'chat', tier: 'h', index: Math.floor(T / 3_600_000) })).toEqual(expected);
    expect(await read({ route: 'chat', tier: 'd', index: Math.floor(T / 86_400_000) })).toEqual(expected);
  });

  it('counts refusals and skipped calls apart; they add nothing to any SLO', async () => {
    const { rec, read } = setup();
    rec.record('chat', { availability: 'bad', refused: true, latencyMs: 10 });
    rec.record('chat', { availability: 'skip', latencyMs: 10 });
    await rec.flush();
    expect(await read()).toEqual({ r: 1, s: 1 });
  });

  it('ignores routes that are not configured, so keys stay bounded by the config', async () => {
    const { rec, memory } = setup();
    rec.record('unknown', { availability: 'bad' });
    await rec.flush();
    expect(memory.size).toBe(0);
  });

  it('puts events in the minute they happened, even when flushed later', async () => {
    const { rec, read, clock } = setup();
    rec.record('chat', { availability: 'good' });
    clock.t = T + 60_000;
    rec.record('chat', { availability: 'bad' });
    await rec.flush();
    expect(await read(minute(T))).toEqual({ ag: 1 });
    expect(await read(minute(T + 60_000))).toEqual({ ab: 1 });
  });

  it('keeps the counts of a failed flush and writes them at the next one, once', async () => {
    const { rec, read, store, logs } = setup();
    store.mode = 'down';
    rec.record('chat', { availability: 'good' });
    await rec.flush();
    expect(rec.stats()).toMatchObject({ pendingBatches: 1, lastFlushOk: false });
    rec.record('chat', { availability: 'good' });
    await rec.flush();
    expect(logs.filter((l) => l.level === 'warn')).toHaveLength(1);
    store.mode = 'ok';
    rec.record('chat', { availability: 'bad' });
    await rec.flush();
    expect(await read()).toEqual({ ag: 2, ab: 1 });
    expect(rec.stats()).toMatchObject({ pendingBatches: 0, lastFlushOk: true });
    expect(logs.at(-1)?.msg).toMatch(/work again/);
  });

  it('does not count twice a batch the store applied but whose answer was lost', async () => {
    const { rec, read, store } = setup();
    store.mode = 'lose-answer';
    rec.record('chat', { availability: 'bad' });
    await rec.flush();
    expect(rec.stats().pendingBatches).toBe(1);
    store.mode = 'ok';
    rec.record('chat', { availability: 'good' });
    await rec.flush();
    expect(await read()).toEqual({ ab: 1, ag: 1 });
    expect(store.calls).toBe(2);
  });

  it('keeps at most maxPendingBatches while the store is down, dropping the oldest', async () => {
    const { rec, read, store } = setup({ maxPendingBatches: 3 });
    store.mode = 'down';
    for (let i = 0; i < 5; i++) {
      rec.record('chat', { availability: 'good' });
      rec.record('chat', { availability: 'good' });
      await rec.flush();
    }
    expect(rec.stats()).toMatchObject({ pendingBatches: 3, droppedBatches: 2, droppedEvents: 4 });
    store.mode = 'ok';
    await rec.flush();
    expect(await read()).toEqual({ ag: 6 });
  });

  it('drops batches older than 30 min, which the store could no longer tell from new ones', async () => {
    const { rec, read, store, clock } = setup();
    store.mode = 'down';
    rec.record('chat', { availability: 'bad' });
    await rec.flush();
    clock.t = T + 30 * 60_000;
    rec.record('chat', { availability: 'good' });
    await rec.flush();
    expect(rec.stats()).toMatchObject({ pendingBatches: 2, droppedBatches: 0 });
    clock.t += 1;
    store.mode = 'ok';
    await rec.flush();
    expect(rec.stats()).toMatchObject({ pendingBatches: 0, droppedBatches: 1, droppedEvents: 1 });
    expect(await read(minute(T))).toEqual({});
    expect(await read(minute(T + 30 * 60_000))).toEqual({ ag: 1 });
  });

  it('flushes on its own every flushIntervalMs and once more on close', async () => {
    vi.useFakeTimers();
    const { rec, read } = setup();
    rec.start();
    rec.record('chat', { availability: 'good' });
    await vi.advanceTimersByTimeAsync(999);
    expect(await read()).toEqual({});
    await vi.advanceTimersByTimeAsync(1);
    expect(await read()).toEqual({ ag: 1 });
    rec.record('chat', { availability: 'good' });
    await rec.close();
    expect(await read()).toEqual({ ag: 2 });
    rec.record('chat', { availability: 'good' });
    await vi.advanceTimersByTimeAsync(5000);
    expect(await read()).toEqual({ ag: 2 });
  });

  it('counts events into the local Prometheus counters per SLO', () => {
    const events: string[] = [];
    const refused: string[] = [];
    const rec = new SloRecorder({
      store: new MemoryCounterStore({ now: () => T }),
      routes: [spec],
      now: () => T,
      flushIntervalMs: 1000,
      counters: {
        events: { inc: (l) => events.push(`${l.route}/${l.slo}/${l.kind}`) },
        refused: { inc: (l) => refused.push(l.route) },
      },
    });
    rec.record('chat', { availability: 'good', latencyMs: 9000, costUsdMicros: 1 });
    rec.record('chat', { availability: 'bad' });
    rec.record('chat', { availability: 'skip', refused: true });
    expect(events).toEqual(['chat/availability/good', 'chat/latency/bad', 'chat/cost/good', 'chat/availability/bad']);
    expect(refused).toEqual(['chat']);
  });
});
