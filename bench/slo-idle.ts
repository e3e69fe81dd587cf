/**
 * Idle SLO traffic (issue 14): N sidecars' SLO recorders and evaluators in one process, with no calls, against a
 * throwaway `redis-server`; Redis's `total_commands_processed` (commands run inside scripts included) is read before
 * and after a measured span. Prints ops/s in total and per idle sidecar, and the projection to 1,000 sidecars.
 *
 *   npm run bench:slo -- [--sidecars=50] [--routes=3] [--seconds=30] [--compare-rev=REV] [--json]
 *
 * `--compare-rev=REV` runs this same file against another revision's sources (a detached worktree, the current
 * node_modules) first, and prints both side by side. Real time: the evaluator's default interval, the bucket cache's
 * one-minute refresh. A span shorter than a minute misses some of the cache refreshes of the old evaluator, so
 * 60 s gives its honest figure.
 */
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { SloSchema } from '../src/config/schema.js';
import { RedisCounterStore } from '../src/slo/counter-store.js';
import { SloEvaluator, type SloEvaluatorOptions } from '../src/slo/evaluator.js';
import { SloRecorder } from '../src/slo/recorder.js';
import { sloSpecOf } from '../src/slo/spec.js';
import { RedisConnection } from '../src/store/redis-connection.js';
import { startRedis } from '../test/helpers/redis.js';
import { runBenchAtRevision } from './at-revision.js';

interface Result {
  rev: string;
  sidecars: number;
  routes: number;
  seconds: number;
  opsPerSecond: number;
  perSidecar: number;
  /** Calls per command name over the span, biggest first. */
  commands: Record<string, number>;
}

const { values } = parseArgs({
  options: {
    sidecars: { type: 'string', default: '50' },
    routes: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '30' },
    'compare-rev': { type: 'string' },
    json: { type: 'boolean', default: false },
    label: { type: 'string', default: 'now' },
  },
});
const sidecars = Number(values.sidecars);
const routeCount = Number(values.routes);
const seconds = Number(values.seconds);
for (const [name, n] of [['sidecars', sidecars], ['routes', routeCount], ['seconds', seconds]] as const) {
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got ${String(values[name])}`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const logger = { warn() {}, info() {} };

const commandStats = async (raw: Redis): Promise<Record<string, number>> => {
  const text = await raw.info('commandstats');
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) out[m[1]!] = Number(m[2]);
  return out;
};

const measure = async (): Promise<Result> => {
  const redis = await startRedis();
  const raw = new Redis(redis.url);
  // The coordination of the current sources, when there is one (an older revision's evaluator works alone).
  const board = (await import('../src/slo/board.js' as string).catch(() => undefined)) as
    | { RedisSloBoard: new (redis: RedisConnection, opts: { sidecarId: string }) => unknown }
    | undefined;
  const specs = Array.from({ length: routeCount }, (_, i) => sloSpecOf(`route${i}`, SloSchema.parse({})));
  const fleet = Array.from({ length: sidecars }, (_, i) => {
    const conn = new RedisConnection({ url: redis.url, keyPrefix: 'bench' });
    const store = new RedisCounterStore(conn);
    const recorder = new SloRecorder({ store, routes: specs, now: Date.now, flushIntervalMs: 1_000 });
    const opts: SloEvaluatorOptions = { store, routes: specs, now: Date.now, logger };
    if (board) Object.assign(opts, { board: new board.RedisSloBoard(conn, { sidecarId: `bench-${i}` }) });
    const evaluator = new SloEvaluator(opts);
    return { conn, recorder, evaluator };
  });
  try {
    await Promise.all(fleet.map((s) => s.conn.ready(5_000)));
    for (const s of fleet) {
      s.recorder.start();
      s.evaluator.start();
    }
    // Past the first evaluation (every sidecar reads everything once, or the leaders take their routes).
    await sleep(6_000);
    const before = await commandStats(raw);
    await sleep(seconds * 1_000);
    const after = await commandStats(raw);
    const delta: Record<string, number> = {};
    for (const [k, v] of Object.entries(after)) {
      const d = v - (before[k] ?? 0) - (k === 'info' ? 1 : 0);
      if (d > 0) delta[k] = d;
    }
    const total = Object.values(delta).reduce((a, b) => a + b, 0);
    const opsPerSecond = total / seconds;
    const commands = Object.fromEntries(Object.entries(delta).sort((a, b) => b[1] - a[1]));
    return { rev: values.label, sidecars, routes: routeCount, seconds, opsPerSecond, perSidecar: opsPerSecond / sidecars, commands };
  } finally {
    for (const s of fleet) {
      await s.recorder.close();
      await s.evaluator.close();
      await s.conn.close();
    }
    raw.disconnect();
    await redis.stop();
  }
};

/** This file run against another revision's sources: it is copied into a detached worktree of `rev`. */
const measureRevision = (rev: string): Result =>
  runBenchAtRevision<Result>(
    'slo-idle.ts',
    rev,
    (short) => ['--json', `--label=@${short}`, `--sidecars=${sidecars}`, `--routes=${routeCount}`, `--seconds=${seconds}`],
    (seconds + 120) * 1_000,
  );

const results: Result[] = [];
if (values['compare-rev'] !== undefined) results.push(measureRevision(values['compare-rev']));
results.push(await measure());

if (values.json) {
  console.log(JSON.stringify(results[results.length - 1]));
} else {
  console.log(`idle SLO traffic: ${sidecars} sidecars, ${routeCount} routes, no calls, ${seconds} s measured (Redis total_commands_processed, script-internal commands included)`);
  // × 1,000 is exact when every sidecar does the same work (each assesses every route), an upper bound when one
  // sidecar per route does it for all: the leaders' share does not grow with the fleet.
  console.log(['rev'.padEnd(10), 'ops/s'.padStart(9), 'ops/s/sidecar'.padStart(14), '× 1,000 (≤)'.padStart(15), '  commands over the span'].join(' '));
  for (const r of results) {
    const top = Object.entries(r.commands)
      .slice(0, 5)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
    console.log([r.rev.padEnd(10), r.opsPerSecond.toFixed(1).padStart(9), r.perSidecar.toFixed(3).padStart(14), `${Math.round(r.perSidecar * 1000)} ops/s`.padStart(15), ` ${top}`].join(' '));
  }
}
