import { describe, expect, it } from 'vitest';
import { SloSchema } from '../../src/config/schema.js';
import { DAY_MS, MINUTE_MS } from '../../src/slo/buckets.js';
import { alertState, allowedErrorRate, assessSlo, budgetRemaining, burnRate } from '../../src/slo/burn.js';
import { MemoryCounterStore } from '../../src/slo/counter-store.js';
import { SloRecorder } from '../../src/slo/recorder.js';
import { objectiveOf, sloSpecOf } from '../../src/slo/spec.js';
import { readSloWindows } from '../../src/slo/windows.js';

// 2025-01-15 12:30:30 UTC
const T = Date.UTC(2025, 0, 15, 12, 30, 30);

describe('burn-rate arithmetic', () => {
  it('computes burn = error rate / allowed error rate', () => {
    expect(allowedErrorRate(99.5)).toBe(0.005);
    expect(allowedErrorRate(99.9)).toBe(0.001);
    expect(burnRate({ good: 90, bad: 10 }, 99.5, 10)).toBeCloseTo(20, 10);
    expect(burnRate({ good: 999, bad: 1 }, 99.9, 10)).toBeCloseTo(1, 10);
    expect(burnRate({ good: 100, bad: 0 }, 99.5, 10)).toBe(0);
  });

  it('has no burn rate or budget below minEvents', () => {
    expect(burnRate({ good: 5, bad: 4 }, 99.5, 10)).toBeUndefined();
    expect(budgetRemaining({ good: 5, bad: 4 }, 99.5, 10)).toBeUndefined();
    expect(burnRate({ good: 0, bad: 0 }, 99.5, 1)).toBeUndefined();
  });

  it('budget remaining is 1 − burn over the SLO window, negative when overspent', () => {
    expect(budgetRemaining({ good: 9990, bad: 10 }, 99.5, 10)).toBeCloseTo(0.8, 10);
    expect(budgetRemaining({ good: 9950, bad: 50 }, 99.5, 10)).toBeCloseTo(0, 10);
    expect(budgetRemaining({ good: 9900, bad: 100 }, 99.5, 10)).toBeCloseTo(-1, 10);
  });

  it('a 100 % objective makes any bad event an infinite burn', () => {
    expect(burnRate({ good: 10, bad: 1 }, 100, 10)).toBe(Number.POSITIVE_INFINITY);
    expect(burnRate({ good: 10, bad: 0 }, 100, 10)).toBe(0);
  });

  it('fires a multi-window alert only when both windows burn above the factor', () => {
    const alert = { long: '1h', short: '5m' } as const;
    expect(alertState({ '1h': 15, '5m': 20 }, alert, 14.4)).toBe('firing');
    expect(alertState({ '1h': 2, '5m': 20 }, alert, 14.4)).toBe('ok');
    expect(alertState({ '1h': 20, '5m': 2 }, alert, 14.4)).toBe('ok');
    expect(alertState({ '1h': 14.4, '5m': 20 }, alert, 14.4)).toBe('ok');
    expect(alertState({ '1h': 20 }, alert, 14.4)).toBe('insufficient');
  });
});

describe('burn rates from recorded buckets, on fake time', () => {
  const spec = sloSpecOf('chat', SloSchema.parse({}));

  /** Record `good` and `bad` calls as if they happened at `at`, and flush. */
  const seed = async (at: number, good: number, bad: number, ctx: { t: number; rec: SloRecorder }) => {
    ctx.t = at;
    for (let i = 0; i < good; i++) ctx.rec.record('chat', { availability: 'good', latencyMs: 100 });
    for (let i = 0; i < bad; i++) ctx.rec.record('chat', { availability: 'bad', latencyMs: 100 });
    await ctx.rec.flush();
  };

  it('matches the hand-computed burn rates of every window and the budget', async () => {
    const ctx = { t: T, rec: undefined as unknown as SloRecorder };
    const store = new MemoryCounterStore({ now: () => ctx.t });
    ctx.rec = new SloRecorder({ store, routes: [spec], now: () => ctx.t, flushIntervalMs: 1000 });
    await seed(T - 31 * DAY_MS, 0, 5000, ctx); // outside the 30-day window
    await seed(T - 10 * DAY_MS, 9960, 40, ctx);
    await seed(T - 2 * DAY_MS, 8000, 0, ctx);
    await seed(T - 150 * MINUTE_MS, 900, 100, ctx); // 10:00:30
    await seed(T - 30 * MINUTE_MS, 900, 0, ctx); // 12:00:30: in 1 h, not in 30 min
    await seed(T - 4 * MINUTE_MS, 45, 5, ctx); // 12:26:30: in 5 min
    await seed(T - 5 * MINUTE_MS, 1000, 0, ctx); // 12:25:30: in 30 min, not in 5 min
    await seed(T, 45, 5, ctx);

    const windows = await readSloWindows(store, 'chat', 30, T);
    const a = assessSlo(windows, objectiveOf(spec, 'availability'));
    // 5m: 100 calls, 10 bad → 10 % / 0.5 % = 20×
    expect(a.events['5m']).toEqual({ good: 90, bad: 10 });
    expect(a.burnRates['5m']).toBeCloseTo(20, 9);
    // 30m: 1100 calls, 10 bad → 0.909 % → 1.818×
    expect(a.events['30m']).toEqual({ good: 1090, bad: 10 });
    expect(a.burnRates['30m']).toBeCloseTo(10 / 1100 / 0.005, 9);
    // 1h: + 900 → 2000 calls, 10 bad → 1×
    expect(a.burnRates['1h']).toBeCloseTo(1, 9);
    // 6h: + 1000 (100 bad) → 3000 calls, 110 bad → 7.333×
    expect(a.events['6h']).toEqual({ good: 2890, bad: 110 });
    expect(a.burnRates['6h']).toBeCloseTo(110 / 3000 / 0.005, 9);
    // 3d: + 8000 → 11000 calls, 110 bad → 2×
    expect(a.burnRates['3d']).toBeCloseTo(2, 9);
    // 30d: + 10000 (40 bad) → 21000 calls, 150 bad → burn 1.4286, 42.9 % overspent
    expect(a.events.budget).toEqual({ good: 20850, bad: 150 });
    expect(a.budgetRemaining).toBeCloseTo(1 - 150 / 21000 / 0.005, 9);
    expect(a.alerts).toEqual({ fast: 'ok', medium: 'ok', slow: 'firing' });
  });

  it('counts latency over the threshold and cost over the threshold as their SLOs\' bad events', async () => {
    const t = T;
    const store = new MemoryCounterStore({ now: () => t });
    const rec = new SloRecorder({ store, routes: [spec], now: () => t, flushIntervalMs: 1000 });
    for (let i = 0; i < 98; i++) rec.record('chat', { availability: 'good', latencyMs: 1200, costUsdMicros: 20_000 });
    rec.record('chat', { availability: 'good', latencyMs: 5001, costUsdMicros: 150_001 });
    rec.record('chat', { availability: 'bad', latencyMs: 5000, costUsdMicros: 150_000 });
    await rec.flush();
    const windows = await readSloWindows(store, 'chat', 30, t);
    const latency = assessSlo(windows, objectiveOf(spec, 'latency'));
    const cost = assessSlo(windows, objectiveOf(spec, 'cost'));
    expect(latency.events['5m']).toEqual({ good: 99, bad: 1 });
    expect(latency.burnRates['5m']).toBeCloseTo(0.01 / 0.01, 9);
    expect(cost.events['5m']).toEqual({ good: 99, bad: 1 });
    expect(cost.burnRates['5m']).toBeCloseTo(0.01 / 0.02, 9);
  });
});
