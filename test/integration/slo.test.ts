import { spawn } from 'node:child_process';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { metricValue, startFusebox, type RunningFusebox } from '../helpers/fusebox.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/** A route whose every call fails upstream: 20 calls burn a 99.5 % availability budget many times over. */
const failing = (up: TestUpstream, slo: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
  name: 'flaky',
  match: { pathPrefix: '/flaky' },
  upstream: { url: up.url },
  retry: { enabled: false },
  breaker: { enabled: false },
  slo,
  ...extra,
});

const burn = async (fb: RunningFusebox, n = 20, code = 503) => {
  for (let i = 0; i < n; i++) await (await request(`${fb.proxyUrl}/flaky/status?code=${code}`)).body.dump();
  await fb.app.slo.recorder.flush();
  await fb.app.slo.evaluator.evaluate();
};

describe('SLO actions, end to end', () => {
  let up: TestUpstream;
  const running: RunningFusebox[] = [];
  const start = async (raw: Record<string, unknown>) => {
    const fb = await startFusebox(raw, { env: { ...process.env, FUSEBOX_ADMIN_TOKEN: 'admin-secret' } });
    running.push(fb);
    return fb;
  };
  beforeAll(async () => {
    up = await startUpstream();
  });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((f) => f.stop()));
  });
  afterAll(async () => up?.close());

  it('shed: once the error budget is spent, calls fail fast with 503 SLO_BUDGET_EXHAUSTED; the admin API lifts it', async () => {
    const fb = await start({ routes: [failing(up, { onBudgetExhausted: 'shed' })] });
    await burn(fb);
    const before = up.seen.length;
    const shed = await request(`${fb.proxyUrl}/flaky/fast`);
    expect(shed.statusCode).toBe(503);
    expect(shed.headers['x-should-retry']).toBe('false');
    expect(await shed.body.json()).toMatchObject({ code: 'SLO_BUDGET_EXHAUSTED' });
    expect(up.seen.length).toBe(before);
    const text = await fb.metricsText();
    expect(metricValue(text, 'fusebox_slo_events_total', { route: 'flaky', slo: 'availability', kind: 'bad' })).toBe(20);
    expect(metricValue(text, 'fusebox_slo_error_budget_remaining', { route: 'flaky', slo: 'availability' })).toBeLessThan(0);
    expect(metricValue(text, 'fusebox_slo_action', { route: 'flaky', action: 'shed' })).toBe(1);
    const slo = (await (await request(`${fb.adminUrl}/admin/slo`)).body.json()) as { routes: Array<{ route: string; action: string; exhausted: boolean }> };
    expect(slo.routes.find((r) => r.route === 'flaky')).toMatchObject({ action: 'shed', exhausted: true });
    const suspend = await request(`${fb.adminUrl}/admin/slo/flaky/suspend`, { method: 'POST', headers: { authorization: 'Bearer admin-secret' } });
    expect(suspend.statusCode).toBe(200);
    await suspend.body.dump();
    expect((await request(`${fb.proxyUrl}/flaky/fast`)).statusCode).toBe(200);
  });

  it('degrade: the fallback chain starts at the configured step', async () => {
    const fb = await start({
      routes: [
        failing(up, { onBudgetExhausted: 'degrade', degradeToStep: 1 }, {
          fallback: [
            { type: 'static', name: 'never', status: 200, body: { from: 'first step' } },
            { type: 'static', name: 'cheap', status: 200, body: { from: 'cheap step' } },
          ],
          fallbackOn: [503],
        }),
      ],
    });
    // While healthy-enough, a 503 falls back to the first step.
    const first = await request(`${fb.proxyUrl}/flaky/status?code=503`);
    expect(first.headers['x-fusebox-fallback']).toBe('never');
    await first.body.dump();
    // 501 is neither retryable nor in fallbackOn: it reaches the agent, and burns the budget.
    await burn(fb, 20, 501);
    const before = up.seen.length;
    const degraded = await request(`${fb.proxyUrl}/flaky/fast`);
    expect(degraded.headers['x-fusebox-fallback']).toBe('cheap');
    expect(await degraded.body.json()).toEqual({ from: 'cheap step' });
    expect(up.seen.length).toBe(before);
  });

  it('throttle: admits only throttleRps while the budget is spent, refusals do not burn it', async () => {
    const fb = await start({ routes: [failing(up, { onBudgetExhausted: 'throttle', throttleRps: 1 })] });
    await burn(fb);
    const a = await request(`${fb.proxyUrl}/flaky/fast`);
    const b = await request(`${fb.proxyUrl}/flaky/fast`);
    await a.body.dump();
    expect([a.statusCode, b.statusCode]).toEqual([200, 429]);
    expect(await b.body.json()).toMatchObject({ code: 'SLO_THROTTLED' });
    await fb.app.slo.recorder.flush();
    const text = await fb.metricsText();
    expect(metricValue(text, 'fusebox_slo_refused_total', { route: 'flaky' })).toBe(1);
    expect(metricValue(text, 'fusebox_slo_events_total', { route: 'flaky', slo: 'availability', kind: 'bad' })).toBe(20);
  });
});

describe('fleet SLO counters and the gate', () => {
  let up: TestUpstream;
  let redis: TestRedis;
  beforeAll(async () => {
    up = await startUpstream();
    redis = await startRedis();
  });
  afterAll(async () => {
    await up?.close();
    await redis?.stop();
  });

  it('two sidecars sharing one Redis add up, and `fusebox gate` reads the fleet verdict', async () => {
    const cfg = { store: { kind: 'redis', url: redis.url, keyPrefix: 'slofleet' }, routes: [failing(up, {})] };
    const a = await startFusebox(cfg);
    const b = await startFusebox(cfg);
    try {
      for (let i = 0; i < 6; i++) await (await request(`${a.proxyUrl}/flaky/fast`)).body.dump();
      for (let i = 0; i < 4; i++) await (await request(`${b.proxyUrl}/flaky/status?code=503`)).body.dump();
      await Promise.all([a.app.slo.recorder.flush(), b.app.slo.recorder.flush()]);
      // One of them leads the route (it took the lease at its first pass, or takes it now): it assesses the
      // counters and publishes; the other reads what it published.
      await Promise.all([a.app.slo.evaluator.evaluate(), b.app.slo.evaluator.evaluate()]);
      const [leader, follower] = a.app.slo.evaluator.leads('flaky') ? [a, b] : [b, a];
      expect(follower.app.slo.evaluator.leads('flaky')).toBe(false);
      await leader.app.slo.evaluator.evaluate();
      await follower.app.slo.evaluator.evaluate();
      for (const sidecar of [leader, follower]) {
        const slo = (await (await request(`${sidecar.adminUrl}/admin/slo`)).body.json()) as {
          routes: Array<{ route: string; slos: { availability: { events: Record<string, { good: number; bad: number }> } } }>;
        };
        expect(slo.routes[0]!.slos.availability.events['5m']).toEqual({ good: 6, bad: 4 });
      }
      expect(metricValue(await leader.metricsText(), 'fusebox_slo_leader', { route: 'flaky' })).toBe(1);
      expect(metricValue(await follower.metricsText(), 'fusebox_slo_leader', { route: 'flaky' })).toBe(0);
      expect(metricValue(await follower.metricsText(), 'fusebox_slo_assessments_total', { route: 'flaky' })).toBe(0);
    } finally {
      await a.stop();
      await b.stop();
    }
    const gate = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'gate', '--store', redis.url, '--key-prefix', 'slofleet', '--route', 'flaky', '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    gate.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const code = await new Promise<number | null>((r) => gate.on('close', r));
    expect(code).toBe(20);
    expect(JSON.parse(out)).toMatchObject({ verdict: 'ROLLBACK' });
  });
});
