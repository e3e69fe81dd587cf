/**
 * What the SLO evaluator's tick costs one sidecar alone (memory counter store, issue 15): N routes with SLOs, of which
 * M get calls (50 per tick each, recorded and flushed), on a fake clock stepped 5 s a tick; 24 warm-up ticks, then
 * `--ticks` measured. Prints JS heap KiB allocated per tick (v8.GCProfiler, as bench/servers/footprint.ts counts it)
 * and CPU ms per tick (`process.cpuUsage`, which load moves; read the KiB). No sockets, no Redis.
 *
 *   npm run bench:slo-tick -- [--routes=500] [--active=1] [--ticks=120] [--compare-rev=REV] [--json]
 *
 * `--compare-rev=REV` runs this same file against REV's sources first (a detached worktree, the current
 * node_modules) and prints both rows.
 */
import { parseArgs } from 'node:util';
import { SloSchema } from '../src/config/schema.js';
import { MemoryCounterStore } from '../src/slo/counter-store.js';
import { SloEvaluator } from '../src/slo/evaluator.js';
import { SloRecorder } from '../src/slo/recorder.js';
import { sloSpecOf } from '../src/slo/spec.js';
import { runBenchAtRevision } from './at-revision.js';
import { startFootprint } from './servers/footprint.js';

interface Result {
  rev: string;
  routes: number;
  active: number;
  ticks: number;
  kibPerTick: number;
  cpuMsPerTick: number;
}

const { values } = parseArgs({
  options: {
    routes: { type: 'string', default: '500' },
    active: { type: 'string', default: '1' },
    ticks: { type: 'string', default: '120' },
    'compare-rev': { type: 'string' },
    json: { type: 'boolean', default: false },
    label: { type: 'string', default: 'now' },
  },
});
const routes = Number(values.routes);
const active = Number(values.active);
const ticks = Number(values.ticks);
for (const [name, n, min] of [['routes', routes, 1], ['active', active, 0], ['ticks', ticks, 1]] as const) {
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer ≥ ${min}, got ${String(values[name])}`);
}
if (active > routes) throw new Error(`--active (${active}) cannot exceed --routes (${routes})`);

const measure = async (): Promise<Result> => {
  // Two seconds past a minute, so the measured ticks cross minute boundaries as a running sidecar's do.
  const clock = { t: Date.UTC(2026, 11, 5, 12, 0, 2) };
  const now = () => clock.t;
  const specs = Array.from({ length: routes }, (_, i) => sloSpecOf(`route${i}`, SloSchema.parse({})));
  const store = new MemoryCounterStore({ now });
  const recorder = new SloRecorder({ store, routes: specs, now, flushIntervalMs: 1_000 });
  const evaluator = new SloEvaluator({ store, routes: specs, now, logger: { warn() {}, info() {} } });
  const tick = async () => {
    for (let r = 0; r < active; r++) for (let i = 0; i < 50; i++) recorder.record(`route${r}`, { availability: i % 10 === 0 ? 'bad' : 'good', latencyMs: 20 });
    await recorder.flush();
    await evaluator.evaluate();
    clock.t += 5_000;
  };
  for (let i = 0; i < 24; i++) await tick();
  const stop = startFootprint();
  for (let i = 0; i < ticks; i++) await tick();
  const f = stop();
  return { rev: values.label, routes, active, ticks, kibPerTick: f.allocatedBytes / ticks / 1024, cpuMsPerTick: f.cpuUs / ticks / 1000 };
};

/** This file run against another revision's sources: it is copied into a detached worktree of `rev`. */
const measureRevision = (rev: string): Result =>
  runBenchAtRevision<Result>('slo-tick.ts', rev, (short) => ['--json', `--label=@${short}`, `--routes=${routes}`, `--active=${active}`, `--ticks=${ticks}`], 600_000);

const results: Result[] = [];
if (values['compare-rev'] !== undefined) results.push(measureRevision(values['compare-rev']));
results.push(await measure());

if (values.json) {
  console.log(JSON.stringify(results[results.length - 1]));
} else {
  console.log(`SLO evaluator tick, alone (memory store): ${routes} routes with SLOs, ${active} with 50 calls a tick, ${ticks} ticks of 5 s measured`);
  console.log(['rev'.padEnd(10), 'KiB allocated / tick'.padStart(22), 'CPU ms / tick'.padStart(15)].join(' '));
  for (const r of results) console.log([r.rev.padEnd(10), r.kibPerTick.toFixed(1).padStart(22), r.cpuMsPerTick.toFixed(2).padStart(15)].join(' '));
}
