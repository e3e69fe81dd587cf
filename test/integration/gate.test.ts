import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runGate } from '../../src/cli/gate.js';
import { DAY_MS, HOUR_MS, MINUTE_MS } from '../../src/slo/buckets.js';
import { RedisCounterStore } from '../../src/slo/counter-store.js';
import { RedisConnection } from '../../src/store/redis-connection.js';
import type { SloEvent } from '../../src/slo/recorder.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { runCaptured } from '../helpers/cli.js';
import { badCall as bad, goodCall as good, sloRoutes } from '../helpers/slo.js';

// 2025-01-15 12:30:30 UTC
const T = Date.UTC(2025, 0, 15, 12, 30, 30);

let redis: TestRedis;
let seeder: RedisCounterStore;
let dir: string;

beforeAll(async () => {
  redis = await startRedis();
  seeder = new RedisCounterStore(new RedisConnection({ url: redis.url, keyPrefix: 'gate', timeoutMs: 1000 }));
  await seeder.ready(2_000);
  route = sloRoutes(seeder);
  dir = mkdtempSync(join(tmpdir(), 'fusebox-gate-'));
});
afterAll(async () => {
  await seeder?.redis.close();
  await redis?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A fresh route name (the tests share one Redis and prefix) and a way to put traffic on it at any time. */
let route: ReturnType<typeof sloRoutes>;

const gate = async (args: string[], opts: { store?: boolean } = {}) => {
  const storeArgs = opts.store === false ? [] : ['--store', redis.url, '--key-prefix', 'gate'];
  return runCaptured(runGate, [...storeArgs, ...args], { env: {}, now: () => T });
};

describe('fusebox gate on real fleet counters', () => {
  it('PROCEED (exit 0) on a healthy route, with the numbers behind it', async () => {
    const r = route();
    await r.at(T - 10 * DAY_MS, 9990, good);
    await r.at(T - 10 * DAY_MS, 10, bad);
    await r.at(T - 2 * HOUR_MS, 2000, good);
    await r.at(T - 2 * HOUR_MS, 2, bad);
    await r.at(T - 10 * MINUTE_MS, 500, good);
    await r.at(T, 100, good);
    const { code, out } = await gate(['--route', r.name]);
    expect(code).toBe(0);
    expect(out).toMatch(new RegExp(`^PROCEED \\(exit 0\\): route "${r.name}"\n`));
    // 12 bad of 12,602: 0.095 % → burn 0.19 → 81 % of the budget left.
    expect(out).toMatch(/30d\s+12590\s+12\s+0\.095 %\s+0\.2×/);
    expect(out).toContain('error budget remaining: 81.0 %');
    expect(out).toMatch(/6h\s+2600\s+2\s+0\.077 %\s+0\.2×/);
  });

  it('HALT (exit 10) when less than 20 % of the error budget is left; JSON gives the numbers', async () => {
    const r = route();
    await r.at(T - 10 * DAY_MS, 9945, good);
    await r.at(T - 10 * DAY_MS, 55, bad);
    await r.at(T - 30 * MINUTE_MS, 2000, good);
    const { code, out } = await gate(['--route', r.name, '--json']);
    expect(code).toBe(10);
    const j = JSON.parse(out) as { verdict: string; exitCode: number; reasons: string[]; slos: Array<{ budgetRemaining: number; windows: Record<string, { good: number; bad: number; burnRate: number | null }> }> };
    expect(j).toMatchObject({ verdict: 'HALT', exitCode: 10, reasons: ['availability: only 8.3 % of the error budget left (under 20 %)'] });
    // 55 bad of 12,000 = 0.458 % → 91.7 % of the 0.5 % spent.
    expect(j.slos[0]!.budgetRemaining).toBeCloseTo(1 - 55 / 12_000 / 0.005, 5);
    expect(j.slos[0]!.windows['1h']).toEqual({ good: 2000, bad: 0, errorRate: 0, burnRate: 0 });
    expect(j.slos[0]!.windows['5m']!.burnRate).toBeNull();
  });

  it('ROLLBACK (exit 20) on a fast burn over both 1 h and 5 min', async () => {
    const r = route();
    await r.at(T - 10 * DAY_MS, 100_000, good);
    await r.at(T - 2 * MINUTE_MS, 180, good);
    await r.at(T, 20, bad);
    const { code, out } = await gate(['--route', r.name]);
    expect(code).toBe(20);
    expect(out).toContain('availability: burn rate 20.0× over 1h and 20.0× over 5m, above 14.4×');
  });

  it('thresholds are configurable: the same fast burn only HALTs with --rollback-burn 25', async () => {
    const r = route();
    await r.at(T - 10 * DAY_MS, 100_000, good);
    await r.at(T - 2 * MINUTE_MS, 180, good);
    await r.at(T, 20, bad);
    expect((await gate(['--route', r.name, '--rollback-burn', '25'])).code).toBe(10);
  });

  it('not enough data (exit 30) instead of PROCEED', async () => {
    const r = route();
    await r.at(T, 5, good);
    const { code, out } = await gate(['--route', r.name]);
    expect(code).toBe(30);
    expect(out).toMatch(/^INSUFFICIENT_DATA \(exit 30\)/);
    expect(out).toContain('availability: 5 events over the SLO window, fewer than 10');
  });

  it('an unknown route is a usage error (exit 2) naming the routes the store has counters for; one known only by older counters is not enough data', async () => {
    // A prefix of its own, so the list of known routes is exactly what this test wrote.
    const store = new RedisCounterStore(new RedisConnection({ url: redis.url, keyPrefix: 'gate-known', timeoutMs: 1000 }));
    try {
      await store.ready(2_000);
      const svc = sloRoutes(store, 'svc');
      const [a, b] = [svc(), svc()];
      await a.at(T - HOUR_MS, 50, good);
      // Older than the 30-day window, yet its day bucket is kept one more day.
      await b.at(T - 30 * DAY_MS - 12 * HOUR_MS, 50, good);
      const known = (args: string[]) => gate(['--key-prefix', 'gate-known', ...args]);

      const typo = await known(['--route', 'scv0']);
      expect(typo).toMatchObject({ code: 2, out: '' });
      expect(typo.err).toContain(`fusebox gate: no SLO counters for route "scv0" (did you mean "svc0"?) in ${redis.url} under key prefix "gate-known"; routes there: svc0, svc1.`);
      expect(typo.err).toContain('A route without traffic yet is known from its config: add --config FILE.');
      expect((await known(['--route', 'scv0', '--json'])).code).toBe(2);
      expect((await known(['--compare', 'canary=svc-canary,stable=svc0'])).err).toContain('no SLO counters for route "svc-canary"');

      const old = await known(['--route', b.name]);
      expect(old.code).toBe(30);
      expect(old.out).toMatch(/^INSUFFICIENT_DATA \(exit 30\)/);
      expect((await known(['--route', a.name])).code).toBe(0);

      // A wrong prefix: nothing is known there, and the message says where to look.
      expect((await gate(['--key-prefix', 'gate-nothing', '--route', 'svc0'])).err).toContain('no route has counters under this prefix (check --key-prefix)');
    } finally {
      await store.redis.close();
    }
  });

  it('store unreachable (exit 31) with a clear error, fast', async () => {
    const port = await new Promise<number>((resolve) => {
      const srv = createServer().listen(0, '127.0.0.1', () => {
        const p = (srv.address() as { port: number }).port;
        srv.close(() => resolve(p));
      });
    });
    const started = Date.now();
    const { code, err, out } = await gate(['--store', `redis://:secret@127.0.0.1:${port}`, '--route', 'chat', '--json'], { store: false });
    expect(code).toBe(31);
    expect(Date.now() - started).toBeLessThan(3000);
    expect(err).toMatch(new RegExp(`cannot read the SLO counters from redis://:\\*\\*\\*@127\\.0\\.0\\.1:${port}`));
    expect(err).not.toContain('secret');
    expect(JSON.parse(out)).toMatchObject({ verdict: 'STORE_UNREACHABLE', exitCode: 31 });
  });

  it('reads objectives, window and store from --config', async () => {
    const r = route();
    await r.at(T - 10 * DAY_MS, 9945, good);
    await r.at(T - 10 * DAY_MS, 55, bad);
    await r.at(T - HOUR_MS, 2000, good);
    const file = join(dir, `${r.name}.yaml`);
    writeFileSync(
      file,
      `store: { kind: redis, url: "${redis.url}", keyPrefix: gate }
routes:
  - name: ${r.name}
    match: { pathPrefix: /x }
    upstream: { url: http://x }
    slo: { availability: { objectivePercent: 99 } }
`,
    );
    // Against 99 % the same 0.458 % error rate leaves 54 % of the budget.
    const { code, out } = await gate(['--config', file, '--route', r.name], { store: false });
    expect(code).toBe(0);
    expect(out).toContain('error budget remaining: 54.2 %');
    const unknown = await gate(['--config', file, '--route', 'nope'], { store: false });
    expect(unknown.code).toBe(2);
    expect(unknown.err).toContain(`no route "nope" in ${file} (routes: ${r.name})`);
    // A route of the config without traffic yet is known all the same: not enough data, not a usage error.
    const fresh = join(dir, `${r.name}-fresh.yaml`);
    writeFileSync(fresh, `store: { kind: redis, url: "${redis.url}", keyPrefix: gate }\nroutes:\n  - { name: ${r.name}-new, match: { pathPrefix: /x }, upstream: { url: http://x } }\n`);
    expect((await gate(['--config', fresh, '--route', `${r.name}-new`], { store: false })).code).toBe(30);
  });

  it('judges every SLO with --slo all: slow calls make the latency SLO roll back', async () => {
    const r = route();
    await r.at(T - 2 * MINUTE_MS, 900, good);
    await r.at(T, 100, { availability: 'good', latencyMs: 9000 });
    const { code, out } = await gate(['--route', r.name, '--slo', 'all']);
    expect(code).toBe(20);
    expect(out).toContain('latency: error budget exhausted');
    expect(out).toContain('availability SLO: 99.5 %');
    expect(out).toContain('cost SLO: 98 %');
  });

  it('--slo all on a healthy tool route (no priced calls) proceeds: the empty cost SLO is reported, not judged', async () => {
    const r = route();
    const toolCall: SloEvent = { availability: 'good', latencyMs: 120 };
    await r.at(T - 2 * HOUR_MS, 2000, toolCall);
    await r.at(T - 2 * MINUTE_MS, 600, toolCall);
    const { code, out } = await gate(['--route', r.name, '--slo', 'all']);
    expect(code).toBe(0);
    expect(out).toContain('cost: no priced call over the SLO window (calls without LLM usage): not judged');
    // Asked for alone, the same empty cost SLO is still "not enough data": nothing is assumed.
    expect((await gate(['--route', r.name, '--slo', 'cost'])).code).toBe(30);
  });

  it('--compare canary=R1,stable=R2: ROLLBACK when the canary fails more often', async () => {
    const stable = route();
    const canary = route();
    await stable.at(T - 5 * MINUTE_MS, 998, good);
    await stable.at(T - 5 * MINUTE_MS, 2, bad);
    await canary.at(T - MINUTE_MS, 485, good);
    await canary.at(T, 15, bad);
    const { code, out } = await gate(['--compare', `canary=${canary.name},stable=${stable.name}`]);
    expect(code).toBe(20);
    expect(out).toContain('error_rate: canary is 2.80 points worse (rollback above 2)');
    expect(out).toMatch(/calls\s+500\s+1000/);
    expect(out).toMatch(/cost per call\s+\$0\.0400\s+\$0\.0400\s+1\.00×/);
    const json = JSON.parse((await gate(['--compare', `canary=${canary.name},stable=${stable.name}`, '--rollback-error-delta', '5', '--json'])).out);
    expect(json).toMatchObject({ verdict: 'HALT', exitCode: 10, mode: 'compare', canary: { events: 500 }, stable: { events: 1000 } });
  });

  it('usage errors exit 2 and say what is wrong', async () => {
    expect((await gate(['--route', 'x'], { store: false })).err).toMatch(/--store redis:\/\/HOST:PORT is required/);
    expect((await gate(['--store', 'memory', '--route', 'x'], { store: false })).code).toBe(2);
    expect((await gate(['--route', 'x', '--slo', 'speed'])).err).toMatch(/--slo must be availability, latency, cost or all/);
    expect((await gate(['--route', 'x', '--frobnicate'])).code).toBe(2);
    expect((await gate([])).err).toMatch(/--route ROUTE \(or --compare/);
    expect((await gate(['--compare', 'canary=a'])).err).toMatch(/--compare wants canary=ROUTE1,stable=ROUTE2/);
    expect((await gate(['--route', 'x', '--halt-burn', 'fast'])).err).toMatch(/--halt-burn must be a burn rate above 0, got "fast"/);
    const help = await gate(['--help'], { store: false });
    expect(help.code).toBe(0);
    expect(help.out).toContain('Exit status: 0 PROCEED, 10 HALT, 20 ROLLBACK, 30 not enough data, 31 store unreachable');
  });
});
