import { describe, expect, it } from 'vitest';
import { backoffDelay, retryDelay } from '../../src/policies/backoff.js';
import { seeded } from '../helpers/pipeline.js';

const config = { baseMs: 500, capMs: 30_000, retryAfterMaxMs: 60_000 };
const fixed = (r: number) => () => r;

describe('backoffDelay', () => {
  it('doubles the ceiling per attempt: random 0.5 gives 250, 500, 1000, 2000 ms', () => {
    expect([0, 1, 2, 3].map((a) => backoffDelay(a, config, fixed(0.5)))).toEqual([250, 500, 1_000, 2_000]);
  });

  it('stops growing at capMs', () => {
    // 500 · 2^6 = 32000 > 30000
    expect(backoffDelay(6, config, fixed(0.5))).toBe(15_000);
    expect(backoffDelay(60, config, fixed(0.5))).toBe(15_000);
  });

  it('is full jitter: random 0 waits nothing, random just under 1 waits just under the ceiling', () => {
    expect(backoffDelay(2, config, fixed(0))).toBe(0);
    expect(backoffDelay(2, config, fixed(0.999_999))).toBe(1_999);
  });

  it('rounds down to whole ms', () => {
    expect(backoffDelay(0, { baseMs: 3, capMs: 100 }, fixed(0.5))).toBe(1);
  });

  it('stays finite for huge attempt numbers and zero base', () => {
    expect(backoffDelay(5_000, config, fixed(0.25))).toBe(7_500);
    expect(backoffDelay(5_000, { baseMs: 0, capMs: 30_000 }, fixed(0.5))).toBe(0);
    expect(backoffDelay(3, { baseMs: 500, capMs: 0 }, fixed(0.5))).toBe(0);
  });

  it('treats a negative attempt as the first retry', () => {
    expect(backoffDelay(-1, config, fixed(0.5))).toBe(250);
  });

  it('spreads seeded delays over [0, ceiling) with a mean near half the ceiling', () => {
    const random = seeded(42);
    const delays = Array.from({ length: 2_000 }, () => backoffDelay(3, config, random));
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...delays)).toBeLessThan(4_000);
    const mean = delays.reduce((a, b) => a + b, 0) / delays.length;
    expect(mean).toBeGreaterThan(1_850);
    expect(mean).toBeLessThan(2_150);
  });

  it('is deterministic for a given seed', () => {
    const a = seeded(7);
    const b = seeded(7);
    expect([0, 1, 2, 3].map((n) => backoffDelay(n, config, a))).toEqual([0, 1, 2, 3].map((n) => backoffDelay(n, config, b)));
  });
});

describe('retryDelay', () => {
  it('uses the backoff when the upstream named no wait', () => {
    expect(retryDelay(1, undefined, config, fixed(0.5))).toBe(500);
  });

  it('honours an upstream-requested wait exactly, without jitter', () => {
    expect(retryDelay(0, 12_345, config, fixed(0.9))).toBe(12_345);
    expect(retryDelay(3, 0, config, fixed(0.9))).toBe(0);
  });

  it('accepts a wait equal to retryAfterMaxMs and refuses a longer one', () => {
    expect(retryDelay(0, 60_000, config, fixed(0.5))).toBe(60_000);
    expect(retryDelay(0, 60_001, config, fixed(0.5))).toBeUndefined();
  });
});
