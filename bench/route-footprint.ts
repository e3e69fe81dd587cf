/**
 * What a config's routes hold (issue 15): the caps(memory) Fusebox with its one route, and the same route among 499
 * others with 200 priced models (`manyRoutes`, the bench row "fusebox+caps(memory), 500 routes, 200 models"), each
 * started as the bench starts it (the image's ENV, the compiled dist/, no memory limit), read idle, after `--calls`
 * calls on its caps route, then after as many spread over every route. Read at each point: RSS from /proc, V8's heap
 * used and committed from a diagnostic report (taken after RSS is read: writing one costs memory).
 *
 *   npm run bench:routes -- [--runs=2] [--calls=5000] [--compare-rev=REV]...
 *
 * Builds and configs are measured in turns (now, REV, now, REV...), so a disturbance of the machine hits all of them.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { diagnosticFile } from './diagnostic-file.js';
import { IMAGE_ENV } from './pod.js';
import { killAll, LOAD_CPU, pinSelf, PROXY_CPU, rssBytes, startServer } from './proc.js';
import { configRefusal, prepareRevision, removeRevisions, type Revision } from './revisions.js';
import { atRevision, fusebox, INTERCEPT_BASELINE, manyRoutes, PREFIX, TARGETS, type Target } from './targets.js';
import { positiveInteger } from './options.js';

const USAGE = `npm run bench:routes -- [--runs=N] [--calls=N] [--compare-rev=REV]...
  --runs=N          starts per build and config, in turns (default 2)
  --calls=N         calls on the caps route, then as many over every route (default 5000)
  --compare-rev=R   also measure the sidecar built from git revision R`;

const { values } = parseArgs({
  options: {
    runs: { type: 'string' },
    calls: { type: 'string' },
    'compare-rev': { type: 'string', multiple: true },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const RUNS = positiveInteger('runs', values.runs, 2, USAGE);
const CALLS = positiveInteger('calls', values.calls, 5000, USAGE);
const log = (s: string) => process.stderr.write(`[bench:routes] ${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const ONE_ROUTE = TARGETS.find((t) => t.name === INTERCEPT_BASELINE)!;
const MANY_ROUTES = fusebox('fusebox+caps(memory), 500 routes, 200 models', manyRoutes);
/** The 499 other routes' paths (bench/targets.ts `manyRoutes`), and the caps route's. */
const ALL_PATHS = [...Array.from({ length: 499 }, (_, i) => `/other-route-${i}/json`), `${PREFIX}/json`];
const BODY = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] });

interface Reading {
  rssMb: number;
  heapUsedMb: number;
  heapCommittedMb: number;
}
const POINTS = ['idle', 'after calls on one route', 'after calls over every route'] as const;

/** `n` calls over 16 connections, path by path in turn; every answer must be a 200. */
const drive = async (url: string, paths: readonly string[], n: number): Promise<void> => {
  const pool = new Pool(url, { connections: 16 });
  let started = 0;
  try {
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (started < n) {
          const path = paths[started++ % paths.length]!;
          const r = await pool.request({ method: 'POST', path, headers: { 'content-type': 'application/json' }, body: BODY });
          await r.body.text();
          if (r.statusCode !== 200) throw new Error(`${path}: ${r.statusCode}`);
        }
      }),
    );
  } finally {
    await pool.close();
  }
};

/** One start of `target`: its readings at each point. `spread`: the paths of the second phase's calls. */
const measureOnce = async (target: Target, upstream: string, spread: readonly string[]): Promise<Reading[]> => {
  const dir = mkdtempSync(join(tmpdir(), 'fusebox-routes-'));
  const env = target.env(upstream);
  env.NODE_OPTIONS = `${IMAGE_ENV.NODE_OPTIONS ?? ''} --report-on-signal --report-signal=SIGUSR2 --report-directory=${dir}`;
  const child = await startServer('fusebox.ts', PROXY_CPU, env);
  const readings: Reading[] = [];
  const read = async (): Promise<void> => {
    // Let the last calls' work (commits, access lines) end first.
    await sleep(1000);
    const rssMb = rssBytes(child.pid) / 2 ** 20;
    process.kill(child.pid, 'SIGUSR2');
    const report = await diagnosticFile<{ javascriptHeap: { totalMemory: number; usedMemory: number } }>(dir, (f) => f.startsWith('report.'), 1, 10_000);
    // Removed once read: the next reading's report is again the only one.
    rmSync(report.path);
    const heap = report.json.javascriptHeap;
    readings.push({ rssMb, heapUsedMb: heap.usedMemory / 2 ** 20, heapCommittedMb: heap.totalMemory / 2 ** 20 });
  };
  try {
    await read();
    await drive(child.url, [`${PREFIX}/json`], CALLS);
    await read();
    await drive(child.url, spread, CALLS);
    await read();
    return readings;
  } finally {
    await child.stop();
    rmSync(dir, { recursive: true, force: true });
  }
};

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const range = (xs: number[]) => `${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)}`;

const main = async () => {
  pinSelf(LOAD_CPU);
  const revisions: Revision[] = [];
  for (const spec of (values['compare-rev'] ?? []).flatMap((v) => v.split(',')).filter(Boolean)) {
    const prepared = prepareRevision(spec);
    if ('revision' in prepared) revisions.push(prepared.revision);
    else log(`@${spec} skipped: ${prepared.reason}`);
  }
  const upstream = await startServer('upstream.ts', LOAD_CPU, {});
  // The one-route config has only its caps route: the second phase's calls go there again.
  const configs = [
    { target: ONE_ROUTE, spread: [`${PREFIX}/json`] },
    { target: MANY_ROUTES, spread: ALL_PATHS },
  ];
  const targets = configs.flatMap((c) => [c, ...revisions.map((r) => ({ ...c, target: atRevision(c.target, r) }))]);
  const results = new Map<string, Reading[][]>();
  try {
    for (let run = 1; run <= RUNS; run++) {
      for (const { target, spread } of targets) {
        const refusal = target.name.includes(' @') ? configRefusal(target.env(upstream.url)) : undefined;
        if (refusal !== undefined) {
          log(`${target.name}: skipped (${refusal})`);
          continue;
        }
        log(`run ${run}/${RUNS}: ${target.name}`);
        const runs = results.get(target.name) ?? [];
        runs.push(await measureOnce(target, upstream.url, spread));
        results.set(target.name, runs);
      }
    }
  } finally {
    await upstream.stop();
  }
  console.log(`\n${CALLS} calls per phase, 16 at a time; median of ${RUNS} (min–max); MB\n`);
  console.log('| config | point | RSS | V8 heap used | V8 heap committed |');
  console.log('|---|---|--:|--:|--:|');
  for (const { target } of targets) {
    const runs = results.get(target.name);
    if (runs === undefined) continue;
    POINTS.forEach((point, i) => {
      const at = runs.map((r) => r[i]!);
      const cell = (k: keyof Reading) => `${median(at.map((r) => r[k])).toFixed(1)} (${range(at.map((r) => r[k]))})`;
      console.log(`| ${target.name} | ${point} | ${cell('rssMb')} | ${cell('heapUsedMb')} | ${cell('heapCommittedMb')} |`);
    });
  }
};

process.on('exit', () => {
  killAll();
  removeRevisions();
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => process.exit(130));
try {
  await main();
} catch (err) {
  console.error(`route footprint bench failed: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
} finally {
  killAll();
  removeRevisions();
}
