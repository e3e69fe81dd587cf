import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { metricValue, startFusebox, type RunningFusebox } from '../helpers/fusebox.js';
import { json, startUpstream, type TestUpstream } from '../helpers/upstream.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('resilience under load and rate limits (real time)', () => {
  let up: TestUpstream;
  let fb: RunningFusebox;
  const client = new Agent({ connections: 256 });

  beforeAll(async () => {
    up = await startUpstream();
    up.on('/always503', (_req, res) => json(res, 503, { error: 'overloaded' }));
    fb = await startFusebox({
      routes: [
        {
          name: 'load',
          match: { pathPrefix: '/load' },
          upstream: { url: up.url },
          // The breaker would stop the storm by itself; this test is about the retry budget alone.
          breaker: { enabled: false },
          retry: { maxRetries: 3, baseMs: 10, capMs: 100, budgetPercent: 20, minRetriesPerSecond: 1, budgetWindowMs: 10_000 },
        },
        { name: 'ratelimited', match: { pathPrefix: '/rl' }, upstream: { url: up.url } },
      ],
    });
  });
  afterAll(async () => {
    await fb?.stop();
    await up?.close();
    await client.close();
  });

  it('keeps a 100 %-failing upstream at most ~1.2× the offered load (plus the per-second floor), never 4×', async () => {
    const offered = 200;
    const everyMs = 20; // 50 calls/s for 4 s
    const calls: Array<Promise<number>> = [];
    const started = performance.now();
    for (let i = 0; i < offered; i++) {
      const due = started + i * everyMs;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      calls.push(
        request(`${fb.proxyUrl}/load/always503`, { dispatcher: client }).then(async (r) => {
          await r.body.dump();
          return r.statusCode;
        }),
      );
    }
    const statuses = await Promise.all(calls);
    expect(statuses.every((s) => s === 503)).toBe(true);

    const seen = up.count('/always503');
    // Floor 1/s accrued over the elapsed seconds, plus its burst of one (src/policies/retry-budget.ts). Rounded up:
    // the budget's clock (Date.now) and this one (performance.now) may disagree by a millisecond.
    const elapsedSeconds = Math.ceil((performance.now() - started) / 1000);
    const bound = 1.2 * offered + 1 * elapsedSeconds + 1;
    console.log(
      `retry budget: ${offered} calls offered over ${((performance.now() - started) / 1000).toFixed(1)} s, upstream saw ${seen} ` +
        `(${(seen / offered).toFixed(3)}× offered; bound ${bound}; without a budget it would be ${offered * 4})`,
    );
    expect(seen).toBeLessThanOrEqual(bound);
    expect(seen).toBeGreaterThan(offered);
    const text = await fb.metricsText();
    expect(metricValue(text, 'fusebox_retries_total', { route: 'load', outcome: 'budget_exhausted' })).toBeGreaterThan(0);
    expect(metricValue(text, 'fusebox_retries_total', { route: 'load', outcome: 'retried' })).toBe(seen - offered);
  });

  it('honours Retry-After: 2 on a 429 — the retry arrives no earlier than 2 s later', async () => {
    const arrivals: number[] = [];
    up.on('/limited', (_req, res) => {
      arrivals.push(performance.now());
      if (arrivals.length === 1) json(res, 429, { error: 'rate limited' }, { 'retry-after': '2' });
      else json(res, 200, { ok: true });
    });
    const res = await request(`${fb.proxyUrl}/rl/limited`, { dispatcher: client });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(arrivals).toHaveLength(2);
    const waited = arrivals[1]! - arrivals[0]!;
    console.log(`Retry-After: 2 → retry arrived ${waited.toFixed(0)} ms after the 429`);
    expect(waited).toBeGreaterThanOrEqual(2000);
    expect(metricValue(await fb.metricsText(), 'fusebox_retries_total', { route: 'ratelimited', reason: 'status_429', outcome: 'retried' })).toBe(1);
  });
});
