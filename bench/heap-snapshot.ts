/**
 * `npm run bench:snapshot`: what Fusebox's heap holds, idle and after a 1,000 req/s run (issue 15's heap snapshot).
 * Starts the `fusebox+caps(memory)` target of `npm run bench` from the compiled dist/ with the image's flags, takes a
 * V8 heap snapshot once it is idle (`--heapsnapshot-signal`), drives `--rate` calls a second for `--seconds`, lets the
 * calls end, takes a second one, and prints both summed by kind and by constructor, with the difference. A snapshot
 * is taken after a full GC, so it shows what is held, not what was allocated: the per-call allocations are
 * `npm run bench:per-call -- --alloc-profile`'s subject. See bench/README.md, "What the heap holds".
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { diagnosticFile } from './diagnostic-file.js';
import { positiveInteger } from './options.js';
import { IMAGE_ENV } from './pod.js';
import { killAll, LOAD_CPU, pinSelf, PROXY_CPU, REPO_ROOT, rssBytes, startServer } from './proc.js';
import { INTERCEPT_BASELINE, PREFIX, TARGETS } from './targets.js';

const USAGE = `npm run bench:snapshot -- [--rate=N] [--seconds=S] [--top=N]
  --rate=N     calls per second, open loop (default 1000)
  --seconds=S  how long (default 10)
  --top=N      constructors listed (default 20)`;

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: { rate: { type: 'string' }, seconds: { type: 'string' }, top: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
  strict: true,
});
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const RATE = positiveInteger('rate', values.rate, 1000, USAGE);
const SECONDS = positiveInteger('seconds', values.seconds, 10, USAGE);
const TOP = positiveInteger('top', values.top, 20, USAGE);

const log = (line: string) => console.error(`[snapshot] ${line}`);

/** Self size and count per group. */
type Tally = Map<string, { bytes: number; count: number }>;

interface Summary {
  total: number;
  byKind: Tally;
  byConstructor: Tally;
}

/**
 * Sums a .heapsnapshot's nodes by kind (V8's node type) and by name for objects and closures (the constructor, or the
 * function). Self sizes only: a retained size needs the dominator tree, and what a kind holds by itself already says
 * where the bytes are.
 */
interface HeapSnapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
  nodes: number[];
  strings: string[];
}

const summarize = (snap: HeapSnapshot): Summary => {
  const fields = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  const [typeAt, nameAt, sizeAt] = ['type', 'name', 'self_size'].map((f) => fields.indexOf(f)) as [number, number, number];
  const out: Summary = { total: 0, byKind: new Map(), byConstructor: new Map() };
  // The large-strings row is a part of the string row: only the other rows add up to the total.
  const add = (t: Tally, key: string, bytes: number) => {
    const e = t.get(key) ?? { bytes: 0, count: 0 };
    e.bytes += bytes;
    e.count += 1;
    t.set(key, e);
  };
  for (let i = 0; i < snap.nodes.length; i += fields.length) {
    const kind = types[snap.nodes[i + typeAt]!]!;
    const bytes = snap.nodes[i + sizeAt]!;
    out.total += bytes;
    add(out.byKind, kind, bytes);
    // Large strings are mostly the source text V8 keeps of every loaded module (for lazy compilation and toString).
    if (kind === 'string' && bytes > 4096) add(out.byKind, 'string over 4 KiB (module sources, mostly)', bytes);
    if (kind === 'object' || kind === 'closure') add(out.byConstructor, `${kind === 'closure' ? 'closure ' : ''}${snap.strings[snap.nodes[i + nameAt]!]!}`, bytes);
  }
  return out;
};

const mib = (b: number) => (b / 2 ** 20).toFixed(2);

const table = (idle: Tally, after: Tally, keys: string[]): string =>
  [
    '| | idle MiB | idle count | after MiB | after count | Δ MiB |',
    '|---|--:|--:|--:|--:|--:|',
    ...keys.map((k) => {
      const a = idle.get(k) ?? { bytes: 0, count: 0 };
      const b = after.get(k) ?? { bytes: 0, count: 0 };
      return `| ${k.replaceAll('|', '\\|')} | ${mib(a.bytes)} | ${a.count.toLocaleString('en-US')} | ${mib(b.bytes)} | ${b.count.toLocaleString('en-US')} | ${mib(b.bytes - a.bytes)} |`;
    }),
  ].join('\n');

const main = async () => {
  pinSelf(LOAD_CPU);
  log('building dist/ (tsc -p tsconfig.build.json)');
  execFileSync(process.execPath, [join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: REPO_ROOT, stdio: 'inherit' });
  const dir = mkdtempSync(join(tmpdir(), 'fusebox-snapshot-'));
  const target = TARGETS.find((t) => t.name === INTERCEPT_BASELINE)!;
  const upstream = await startServer('upstream.ts', LOAD_CPU, {});
  try {
    const env = { ...target.env(upstream.url), NODE_OPTIONS: `${IMAGE_ENV.NODE_OPTIONS ?? ''} --heapsnapshot-signal=SIGUSR2 --diagnostic-dir=${dir}`.trim() };
    const server = await startServer(target.script, PROXY_CPU, env);
    const snapshot = async (n: number): Promise<{ summary: Summary; rssMiB: number }> => {
      const rssMiB = rssBytes(server.pid) / 2 ** 20;
      process.kill(server.pid, 'SIGUSR2');
      const { json } = await diagnosticFile<HeapSnapshot>(dir, (f) => f.endsWith('.heapsnapshot'), n, 120_000);
      return { summary: summarize(json), rssMiB };
    };
    const pool = new Pool(server.url, { connections: 32 });
    try {
      // The JIT and the pools warm up before the idle snapshot, as a sidecar that has served a few calls.
      for (let i = 0; i < 200; i++) await (await pool.request({ method: 'GET', path: `${PREFIX}/json` })).body.text();
      await delay(2_000);
      const idle = await snapshot(1);
      log(`idle snapshot taken (RSS ${idle.rssMiB.toFixed(1)} MiB); ${RATE} calls/s for ${SECONDS} s`);
      const running: Array<Promise<unknown>> = [];
      const start = performance.now();
      let sent = 0;
      let failed = 0;
      while (performance.now() - start < SECONDS * 1000) {
        const due = Math.floor(((performance.now() - start) / 1000) * RATE);
        for (; sent < due; sent++) {
          running.push(
            pool.request({ method: 'GET', path: `${PREFIX}/json` }).then(
              (r) => r.body.text().then(() => (r.statusCode === 200 ? undefined : failed++)),
              () => failed++,
            ),
          );
        }
        await delay(5);
      }
      await Promise.all(running);
      const after = await snapshot(2);
      log(`after-load snapshot taken (RSS ${after.rssMiB.toFixed(1)} MiB); summarizing`);
      const a = idle.summary;
      const b = after.summary;
      const kinds = [...new Set([...a.byKind.keys(), ...b.byKind.keys()])].sort((x, y) => (b.byKind.get(y)?.bytes ?? 0) - (b.byKind.get(x)?.bytes ?? 0));
      const ctors = [...new Set([...a.byConstructor.keys(), ...b.byConstructor.keys()])]
        .sort((x, y) => (b.byConstructor.get(y)?.bytes ?? 0) - (b.byConstructor.get(x)?.bytes ?? 0))
        .slice(0, TOP);
      const grown = [...b.byConstructor.keys()]
        .map((k) => ({ k, d: (b.byConstructor.get(k)?.count ?? 0) - (a.byConstructor.get(k)?.count ?? 0) }))
        .filter((x) => x.d > 0)
        .sort((x, y) => y.d - x.d)
        .slice(0, 10);
      console.log(`Heap snapshots of ${target.name}, ${new Date().toISOString().slice(0, 16)} UTC, Node ${process.version}, NODE_OPTIONS "${env.NODE_OPTIONS}"`);
      console.log(`idle (after 200 calls): ${mib(a.total)} MiB in the snapshot, RSS ${idle.rssMiB.toFixed(1)} MiB; after ${sent.toLocaleString('en-US')} calls at ${RATE}/s (${failed} failed): ${mib(b.total)} MiB, RSS ${after.rssMiB.toFixed(1)} MiB (the first snapshot's own work is in that RSS: \`npm run bench\`'s RSS column is the load's)\n`);
      console.log(`By kind (V8's node type, self sizes):\n\n${table(a.byKind, b.byKind, kinds)}\n`);
      console.log(`Objects and closures by constructor, the ${TOP} largest after the load:\n\n${table(a.byConstructor, b.byConstructor, ctors)}\n`);
      console.log(`Most grown in count (after − idle): ${grown.length === 0 ? 'none' : grown.map((g) => `${g.k} +${g.d}`).join(', ')}`);
    } finally {
      await pool.destroy();
      await server.stop();
    }
  } finally {
    await upstream.stop();
    rmSync(dir, { recursive: true, force: true });
  }
};

process.on('exit', killAll);
try {
  await main();
} catch (err) {
  console.error(`snapshot bench failed: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
} finally {
  killAll();
}
