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
  it('allows exactly minRetriesPerSecond × windowSeconds retries with no traffic (3 × 10 = 30)', () => {
    const budget = new RetryBudget(defaults, clock().now);
    expect(grantsUntilRefused(budget)).toBe(30);
    expect(budget.stats()).toEqual({ requests: 0, retries: 30, allowance: 30, refused: 1, windowSeconds: 10 });
  });

  it('adds budgetPercent of recent requests: 100 requests → 20 + 30 = 50 retries', () => {
    const budget = new RetryBudget(defaults, clock().now);
    recordRequests(budget, 100);
    expect(grantsUntilRefused(budget)).toBe(50);
  });

  it('gives exactly 20% of 50 requests (10) when there is no floor', () => {
    const budget = new RetryBudget({ ...defaults, minRetriesPerSecond: 0 }, clock().now);
    recordRequests(budget, 50);
    expect(grantsUntilRefused(budget)).toBe(10);
  });

  it('admits a fractional allowance up to its ceiling: 20% of 7 = 1.4 → 2 retries', () => {
    const budget = new RetryBudget({ ...defaults, minRetriesPerSecond: 0 }, clock().now);
    recordRequests(budget, 7);
    expect(grantsUntilRefused(budget)).toBe(2);
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
    // 20% of 14 = 2.8: one more retry, then spent again.
    expect(grantsUntilRefused(budget)).toBe(1);
  });

  it('forgets a request recorded at t=0 exactly when the 10 s window moves past its second (t=10000)', () => {
    const c = clock();
    const budget = new RetryBudget({ ...defaults, minRetriesPerSecond: 0 }, c.now);
    recordRequests(budget, 10);
    c.t = 9_999;
    expect(budget.stats().requests).toBe(10);
    c.t = 10_000;
    expect(budget.stats().requests).toBe(0);
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

  it('returns retries to the budget when they leave the window', () => {
    const c = clock();
    const budget = new RetryBudget(defaults, c.now);
    expect(grantsUntilRefused(budget)).toBe(30);
    c.t = 5_000;
    expect(budget.tryAcquireRetry()).toBe(false);
    c.t = 10_000;
    expect(grantsUntilRefused(budget)).toBe(30);
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
    expect(budget.stats()).toMatchObject({ requests: 0, retries: 0, allowance: 30 });
  });

  it('rounds a window up to whole seconds and never below one', () => {
    expect(new RetryBudget({ ...defaults, budgetWindowMs: 1_500 }, clock().now).stats().windowSeconds).toBe(2);
    const tiny = new RetryBudget({ ...defaults, budgetWindowMs: 0 }, clock().now);
    expect(tiny.stats().windowSeconds).toBe(1);
    expect(grantsUntilRefused(tiny)).toBe(3);
  });

  it('does not revive expired buckets when the clock steps back', () => {
    const c = clock(20_000);
    const budget = new RetryBudget({ ...defaults, minRetriesPerSecond: 0 }, c.now);
    recordRequests(budget, 10);
    c.t = 5_000;
    budget.recordRequest();
    expect(budget.stats().requests).toBe(11);
    c.t = 30_000;
    expect(budget.stats().requests).toBe(0);
  });
});

describe('RetryBudget against a 100%-failing upstream', () => {
  /**
   * Discrete-event simulation: `rate` new calls per second for `seconds`, every attempt fails, each call retries up
   * to maxRetries times with full-jitter backoff (seeded), asking the budget right before each retry is sent.
   */
  const simulate = (opts: { rate: number; seconds: number; maxRetries: number; budget: boolean }) => {
    const c = clock();
    const budget = new RetryBudget(defaults, c.now);
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
    let attempts = 0;
    let attemptsInRun = 0;
    const attempt = (n: number) => {
      attempts++;
      if (c.t < endMs) attemptsInRun++;
      if (n < opts.maxRetries) schedule(c.t + backoffDelay(n, backoff, random), n);
    };
    const gap = 1_000 / opts.rate;
    const offered = opts.rate * opts.seconds;
    let next = 0;
    while (next < offered || queue.length > 0) {
      const arrival = next < offered ? next * gap : Number.POSITIVE_INFINITY;
      const head = queue[0];
      if (head !== undefined && head.t < arrival) {
        queue.shift();
        c.t = head.t;
        if (!opts.budget || budget.tryAcquireRetry()) attempt(head.n + 1);
      } else {
        c.t = arrival;
        next++;
        budget.recordRequest();
        attempt(0);
      }
    }
    return { offered, attempts, attemptsInRun };
  };

  it('without a budget, 3 retries quadruple the load (the storm the budget prevents)', () => {
    const r = simulate({ rate: 50, seconds: 60, maxRetries: 3, budget: false });
    expect(r.attempts).toBe(4 * r.offered);
  });

  it('at 50 req/s for 60 s with maxRetries 3, attempts stay ≤ 1.2 × offered + 3/s floor × 60 s', () => {
    const r = simulate({ rate: 50, seconds: 60, maxRetries: 3, budget: true });
    // The bound: every aligned 10 s window holds ≤ 20% × (≤ 500 requests in any 10 s) + 3 × 10 = 130 retries,
    // so the 60 s run holds ≤ 6 × 130 = 780 retries = 0.2 × 3000 + 3 × 60.
    const bound = 1.2 * r.offered + 3 * 60;
    expect(r.attemptsInRun).toBeLessThanOrEqual(bound);
    // ...and the budget is used, not merely refusing: within 5% of the bound.
    expect(r.attemptsInRun).toBeGreaterThan(bound - 0.05 * (bound - r.offered));
    // Backed-off retries of the last calls land after the run; they fit in one more window's allowance.
    expect(r.attempts).toBeLessThanOrEqual(bound + (0.2 * 500 + 3 * 10));
  });
});
