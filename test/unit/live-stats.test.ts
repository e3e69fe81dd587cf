import { describe, expect, it } from 'vitest';
import { LiveStats } from '../../src/telemetry/live.js';

const clock = (start = 1_000_000) => {
  const c = { t: start, now: () => c.t };
  return c;
};

const refusal = (code: string) => ({ code, status: 503, route: 'r', message: code, requestId: undefined, mode: 'base-url' as const });

describe('LiveStats: the last minute per route', () => {
  it('counts calls by outcome per second and forgets a second once it is 60 s old', () => {
    const c = clock();
    const live = new LiveStats({ now: c.now });
    live.call('r', 'success', 0.01);
    live.call('r', 'upstream_error', 0.02);
    c.t += 30_000;
    live.call('r', 'refused', 0);
    live.call('r', 'aborted', 0.5);
    live.retry('r', 'retried');
    live.retry('r', 'budget_exhausted');
    expect(live.route('r')).toMatchObject({
      seconds: 30,
      calls: 4,
      // aborted: the agent left; not an error of the path.
      errors: 2,
      outcomes: { success: 1, upstream_error: 1, refused: 1, aborted: 1, failed: 0, stream_broken: 0 },
      retried: 1,
      retryBudgetExhausted: 1,
    });
    c.t += 30_000;
    expect(live.route('r')).toMatchObject({ seconds: 60, calls: 2, errors: 1, outcomes: { success: 0, refused: 1 } });
    c.t += 30_000;
    expect(live.route('r')).toMatchObject({ calls: 0, errors: 0, retried: 0, p50Ms: undefined, p99Ms: undefined, latencySamples: 0 });
    // A route never called reads as zeros, not an error.
    expect(live.route('other').calls).toBe(0);
  });

  it('gives nearest-rank p50 and p99 of the last minute, leaving out refusals', () => {
    const c = clock();
    const live = new LiveStats({ now: c.now });
    for (let ms = 1; ms <= 100; ms++) live.call('r', 'success', ms / 1000);
    live.call('r', 'refused', 0);
    expect(live.route('r')).toMatchObject({ p50Ms: 50, p99Ms: 99, latencySamples: 100 });
    c.t += 59_000;
    live.call('r', 'success', 1);
    c.t += 1_500;
    // The 100 older samples left the window; the 1 s call is all that is left.
    expect(live.route('r')).toMatchObject({ p50Ms: 1000, p99Ms: 1000, latencySamples: 1 });
  });

  it('keeps only the newest latencySamples durations', () => {
    const c = clock();
    const live = new LiveStats({ now: c.now, latencySamples: 10 });
    for (let ms = 1; ms <= 25; ms++) live.call('r', 'success', ms / 1000);
    expect(live.route('r')).toMatchObject({ p50Ms: 20, p99Ms: 25, latencySamples: 10 });
  });

  it('keeps the newest latencySamples durations across the reservoir\'s growth and once it wraps', () => {
    const c = clock();
    const live = new LiveStats({ now: c.now, latencySamples: 100 });
    for (let ms = 1; ms <= 64; ms++) live.call('r', 'success', ms / 1000);
    expect(live.route('r')).toMatchObject({ p50Ms: 32, p99Ms: 64, latencySamples: 64 });
    for (let ms = 65; ms <= 250; ms++) live.call('r', 'success', ms / 1000);
    // 151..250 kept.
    expect(live.route('r')).toMatchObject({ p50Ms: 200, p99Ms: 249, latencySamples: 100 });
  });

  it('keeps the last N refusals, newest first, and counts them all', () => {
    const c = clock();
    const live = new LiveStats({ now: c.now, refusals: 3 });
    for (const code of ['A', 'B', 'C', 'D', 'E']) {
      live.refused(refusal(code));
      c.t += 1;
    }
    expect(live.recentRefusals().map((r) => r.code)).toEqual(['E', 'D', 'C']);
    expect(live.recentRefusals()[0]!.at).toBe(c.t - 1);
    expect(live.refusalsTotal).toBe(5);
  });
});
