import { describe, expect, it } from 'vitest';
import { backoffDelay } from '../../src/policies/backoff.js';
import { RetryBudget } from '../../src/policies/retry-budget.js';
import { seeded } from '../helpers/pipeline.js';

const clock = (start = 0) => {
  const c = { t: start, now: () => c.t };
  return c;
};

const defaults = { budgetPercent: 20, minRetriesPerSecond: 3, budgetWindowMs: 10_000 };

const grantsUntilRefused = (budget: RetryBudget, limit = 10_000): number => {
  let n = 0;
  while (n < limit && budget.tryAcquireRetry()) n++;
  return n;
};

const recordRequests = (budget: RetryBudget, n: number) => {
  for (let i = 0; i < n; i++) budget.recordRequest();
};

describe('RetryBudget arithmetic', () => {
  it('gives a quiet route a burst of minRetriesPerSecond at once, then one retry every 1/floor s — not the whole window’s floor as a lump', () => {
    const c = clock();
    const budget = new RetryBudget({ ...defaults, minRetriesPerSecond: 10 }, c.now);
    expect(grantsUntilRefused(budget)).toBe(10);
    c.t = 99;
    expect(budget.tryAcquireRetry()).toBe(false);
    c.t = 100;
    expect(grantsUntilRefused(budget)).toBe(1);
    c.t = 1_000;
    expect(grantsUntilRefused(budget)).toBe(9);
    expect(budget.stats()).toEqual({ requests: 0, retries: 20, available: 0, refused: 4, windowSeconds: 10 });
  });

  it('never holds more than one second of floor, however long the route was idle', () => {
    const c = clock();
    const budget = new RetryBudget(defaults, c.now);
    c.t = 3_600_000;
    expect(grantsUntilRefused(budget)).toBe(3);
  });

  it('holds one whole retry for a floor below 1/s, and refills it at the floor’s pace', () => {
    const c = clock();
    const budget = new RetryBudget({ ...defaults, budgetPercent: 0, minRetriesPerSecond: 0.5 }, c.now);
    expect(grantsUntilRefused(budget)).toBe(1);
    c.t = 1_999;
    expect(budget.tryAcquireRetry()).toBe(false);
    c.t = 2_000;
    expect(grantsUntilRefused(budget)).toBe(1);
  });

  it('adds budgetPercent of each call as a deposit, spent before the floor: 100 calls → 20 + 3 = 23 retries', () => {
    const budget = new RetryBudget(defaults, clock().now);
    recordRequests(budget, 100);
    expect(budget.stats().available).toBe(23);
    expect(grantsUntilRefused(budget)).toBe(23);
  });

  it('gives exactly 20% of 50 requests (10) when there is no floor', () => {
    const budget = new RetryBudget({ ...defaults, minRetriesPerSecond: 0 }, clock().now);
    recordRequests(budget, 50);
    expect(grantsUntilRefused(budget)).toBe(10);
  });

  it('pays only with whole retries: 20% of 7 calls = 1.4 → 1 retry', () => {
    const budget = new RetryBudget({ ...defaults, minRetriesPerSecond: 0 }, clock().now);
    recordRequests(budget, 7);
    expect(grantsUntilRefused(budget)).toBe(1);
  });

  it('refuses every retry with a 0% budget and no floor', () => {
    const budget = new RetryBudget({ ...defaults, budgetPercent: 0, minRetriesPerSecond: 0 }, clock().now);
    recordRequests(budget, 1_000);
    expect(budget.tryAcquireRetry()).toBe(false);
    expect(budget.stats().refused).toBe(1);
  });

  it('re-opens as new requests arrive after it was spent', () => {
    const budget = new RetryBudget({ ...defaults, minRetriesPerSecond: 0 }, clock().now);
    recordRequests(budget, 10);
    expect(grantsUntilRefused(budget)).toBe(2);
    recordRequests(budget, 4);
    expect(budget.tryAcquireRetry()).toBe(false);
    // 0.8 left over from the 4, plus 0.2: one whole retry.
    budget.recordRequest();
    expect(grantsUntilRefused(budget)).toBe(1);
  });

  it('forgets a request recorded at t=0 exactly when the 10 s window moves past its second (t=10000)', () => {
    const c = clock();
    const budget = new RetryBudget({ ...defaults, minRetriesPerSecond: 0 }, c.now);
    recordRequests(budget, 10);
    c.t = 9_999;
    expect(budget.stats()).toMatchObject({ requests: 10, available: 2 });
    c.t = 10_000;
    expect(budget.stats()).toMatchObject({ requests: 0, available: 0 });
  });

  it('keeps whole seconds: a request at t=999 also leaves at t=10000', () => {
    const c = clock(999);
    const budget = new RetryBudget(defaults, c.now);
    budget.recordRequest();
    c.t = 9_999;
    expect(budget.stats().requests).toBe(1);
    c.t = 10_000;
    expect(budget.stats().requests).toBe(0);
  });

  it('spends the oldest deposits first, so the fresher ones outlive the retry', () => {
    const c = clock();
    const budget = new RetryBudget({ ...defaults, minRetriesPerSecond: 0 }, c.now);
    recordRequests(budget, 5);
    c.t = 5_000;
    recordRequests(budget, 5);
    c.t = 6_000;
    expect(grantsUntilRefused(budget, 1)).toBe(1);
    c.t = 10_000;
    // The t=0 deposit paid for the retry and has expired; the t=5000 one is still there.
    expect(budget.stats()).toMatchObject({ requests: 5, retries: 1, available: 1 });
    c.t = 16_000;
    expect(budget.stats()).toMatchObject({ requests: 0, retries: 0, available: 0 });
  });

  it('banks nothing past the window: a healthy hour leaves only the last 10 s of deposits and the floor', () => {
    const c = clock();
    const budget = new RetryBudget(defaults, c.now);
    for (let s = 0; s < 3_600; s++) {
      c.t = s * 1_000;
      recordRequests(budget, 100);
    }
    // 100 calls/s × 10 s × 20% + 3.
    expect(budget.stats().available).toBe(203);
  });

  it('slides second by second: only the expired second is dropped', () => {
    const c = clock();
    const budget = new RetryBudget({ ...defaults, minRetriesPerSecond: 0 }, c.now);
    for (let s = 0; s < 10; s++) {
      c.t = s * 1_000;
      recordRequests(budget, s + 1); // 1 at second 0, 2 at second 1, ..., 10 at second 9
    }
    expect(budget.stats().requests).toBe(55);
    c.t = 10_000;
    expect(budget.stats().requests).toBe(54);
    c.t = 12_500;
    expect(budget.stats().requests).toBe(55 - 1 - 2 - 3);
  });

  it('clears everything after an idle gap longer than the window', () => {
    const c = clock();
    const budget = new RetryBudget(defaults, c.now);
    recordRequests(budget, 500);
    grantsUntilRefused(budget);
    c.t = 3_600_000;
    expect(budget.stats()).toMatchObject({ requests: 0, retries: 0, available: 3 });
  });

  it('rounds a window up to whole seconds and never below one', () => {
    expect(new RetryBudget({ ...defaults, budgetWindowMs: 1_500 }, clock().now).stats().windowSeconds).toBe(2);
    const tiny = new RetryBudget({ ...defaults, budgetWindowMs: 0, minRetriesPerSecond: 0 }, clock().now);
    expect(tiny.stats().windowSeconds).toBe(1);
    recordRequests(tiny, 10);
    expect(grantsUntilRefused(tiny)).toBe(2);
  });

  it('does not revive expired buckets, nor accrue floor, when the clock steps back', () => {
    const c = clock(20_000);
    const budget = new RetryBudget({ ...defaults, minRetriesPerSecond: 1 }, c.now);
    recordRequests(budget, 10);
    expect(grantsUntilRefused(budget)).toBe(3);
    c.t = 5_000;
    budget.recordRequest();
    expect(budget.stats().requests).toBe(11);
    c.t = 19_000;
    expect(budget.tryAcquireRetry()).toBe(false);
    c.t = 30_000;
    expect(budget.stats()).toMatchObject({ requests: 0, available: 1 });
  });
});

describe('RetryBudget against a 100%-failing upstream', () => {
  /**
   * Discrete-event simulation: `rate` new calls per second for `seconds`, every attempt fails, each call retries up
   * to maxRetries times with full-jitter backoff (seeded), asking the budget right before each retry is sent.
   * After every attempt it notes how far the retries so far are from the bound 0.2 × calls + floor × t + burst.
   */
  const simulate = (opts: { rate: number; seconds: number; maxRetries: number; budget: boolean; floor?: number }) => {
    const c = clock();
    const floor = opts.floor ?? defaults.minRetriesPerSecond;
    const budget = new RetryBudget({ ...defaults, minRetriesPerSecond: floor }, c.now);
    const random = seeded(1234);
    const backoff = { baseMs: 500, capMs: 30_000 };
    // Events sorted by time; each is a retry `n` (0-based) of some call.
    const queue: { t: number; n: number }[] = [];
    const schedule = (t: number, n: number) => {
      let i = queue.length;
      while (i > 0 && (queue[i - 1]?.t ?? 0) > t) i--;
      queue.splice(i, 0, { t, n });
    };
    const endMs = opts.seconds * 1_000;
    let calls = 0;
    let attempts = 0;
    let attemptsInRun = 0;
    let retriesInFirstSecond = 0;
    /** Smallest slack seen: bound − retries so far (negative means the bound was broken). */
    let slack = Number.POSITIVE_INFINITY;
    const attempt = (n: number) => {
      attempts++;
      if (c.t < endMs) attemptsInRun++;
      if (n > 0 && c.t < 1_000) retriesInFirstSecond++;
      slack = Math.min(slack, 0.2 * calls + (floor * c.t) / 1_000 + Math.max(1, floor) - (attempts - calls));
      if (n < opts.maxRetries) schedule(c.t + backoffDelay(n, backoff, random), n);
    };
    const gap = 1_000 / opts.rate;
    const offered = opts.rate * opts.seconds;
    while (calls < offered || queue.length > 0) {
      const arrival = calls < offered ? calls * gap : Number.POSITIVE_INFINITY;
      const head = queue[0];
      if (head !== undefined && head.t < arrival) {
        queue.shift();
        c.t = head.t;
        if (!opts.budget || budget.tryAcquireRetry()) attempt(head.n + 1);
      } else {
        c.t = arrival;
        calls++;
        budget.recordRequest();
        attempt(0);
      }
    }
    return { offered, attempts, attemptsInRun, retriesInFirstSecond, slack };
  };

  it('without a budget, 3 retries quadruple the load (the storm the budget prevents)', () => {
    const r = simulate({ rate: 50, seconds: 60, maxRetries: 3, budget: false });
    expect(r.attempts).toBe(4 * r.offered);
  });

  it('floor 10/s over a 10 s window: at most 0.2 × calls + 10 + 10 retries in the first second (not 101), and the bound holds at every instant', () => {
    const r = simulate({ rate: 50, seconds: 60, maxRetries: 3, budget: true, floor: 10 });
    expect(r.retriesInFirstSecond).toBeLessThanOrEqual(0.2 * 50 + 10 + 10);
    expect(r.slack).toBeGreaterThanOrEqual(0);
  });

  it('at 50 req/s for 60 s with maxRetries 3 and the default floor, attempts stay ≤ 1.2 × offered + 3/s × 60 s + 3 at every instant, and the budget is used', () => {
    const r = simulate({ rate: 50, seconds: 60, maxRetries: 3, budget: true });
    expect(r.slack).toBeGreaterThanOrEqual(0);
    const bound = 1.2 * r.offered + 3 * 60 + 3;
    expect(r.attemptsInRun).toBeLessThanOrEqual(bound);
    // ...and the budget is used, not merely refusing: within 5% of the bound.
    expect(r.attemptsInRun).toBeGreaterThan(bound - 0.05 * (bound - r.offered));
  });

  it('a quiet route (1 call/s, 2 retries each) gets every retry: the floor pays what its deposits cannot', () => {
    const r = simulate({ rate: 1, seconds: 60, maxRetries: 2, budget: true });
    expect(r.slack).toBeGreaterThanOrEqual(0);
    expect(r.attempts).toBe(3 * r.offered);
  });
});
