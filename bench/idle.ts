/**
 * Idle footprint (issue 15): the sidecar as the image starts it (`node dist/src/main.js --config config/example.yaml`,
 * the image's ENV, under `fusebox inject`'s memory limit in a real cgroup where one can be made), read once `/readyz`
 * answers and it has sat idle for `--settle` seconds: RSS and its parts (anonymous, file-backed: mostly the node
 * binary's own pages), and V8's heap from a diagnostic report taken after the figures are read.
 *
 *   npm run bench:idle -- [--runs=3] [--settle=3] [--memory-limit=MiB|0] [--compare-rev=REV]... [--config=FILE] [--deps]
 *
 * `--config=FILE` starts another config (a variant without a feature, to see what that feature costs at idle).
 * Builds are measured in turns (now, REV, now, REV...) so a disturbance hits both. `--deps` adds what each dependency
 * costs when imported alone into a bare Node process (RSS, anonymous, V8 heap used, after two GCs): a guide to what is
 * worth loading lazily, not additive (they share Node's own modules).
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { heapFlagsNodeDerives, IMAGE_ENV, makePodCgroup, POD_LIMIT_MIB, type PodCgroup } from './pod.js';
import { freePort, killAll, REPO_ROOT } from './proc.js';
import { prepareRevision, removeRevisions } from './revisions.js';

const USAGE = `npm run bench:idle -- [--runs=N] [--settle=S] [--memory-limit=MiB] [--compare-rev=REV]... [--config=FILE] [--deps]
  --runs=N          starts per build, in turns (default 3)
  --settle=S        idle seconds after /readyz before reading (default 3)
  --memory-limit=M  cgroup memory limit, MiB (default ${POD_LIMIT_MIB}, fusebox inject's; 0: none, the host's RAM sizes the heap)
  --compare-rev=R   also measure the sidecar built from git revision R
  --config=FILE     the config to start (default config/example.yaml; its ports 4000 and 9901 are moved)
  --deps            also: each dependency imported alone into a bare process`;

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    settle: { type: 'string', default: '3' },
    'memory-limit': { type: 'string', default: String(POD_LIMIT_MIB) },
    'compare-rev': { type: 'string', multiple: true },
    config: { type: 'string', default: join(REPO_ROOT, 'config', 'example.yaml') },
    deps: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const runs = Number(values.runs);
const settleS = Number(values.settle);
const limitMiB = Number(values['memory-limit']);
if (!Number.isInteger(runs) || runs < 1 || !(settleS >= 0) || !Number.isInteger(limitMiB) || limitMiB < 0) throw new Error(USAGE);

const log = (s: string) => process.stderr.write(`[bench:idle] ${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const node = process.execPath;
const mb = (kib: number) => kib / 1024;

interface Sample {
  rssMb: number;
  /** What the memory cgroup is charged (NaN without one): RSS less the page cache other processes already hold. */
  chargedMb: number;
  anonMb: number;
  fileMb: number;
  heapCommittedMb: number;
  heapUsedMb: number;
  /** Committed size per V8 space, MiB (new, old, code, trusted, large objects...). */
  spaces: Record<string, number>;
}

const status = (pid: number) => {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(text)?.[1] ?? NaN);
  return { rssMb: mb(kib('VmRSS')), anonMb: mb(kib('RssAnon')), fileMb: mb(kib('RssFile')) };
};

const readyz = async (url: string, deadline: number): Promise<void> => {
  for (;;) {
    try {
      if ((await fetch(url)).ok) return;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) throw new Error(`${url} not ready within 30 s`);
    await sleep(50);
  }
};

/** One start of the sidecar from `root` (a checkout with its dist/ built), measured idle. */
const measureOnce = async (root: string, cgroup: PodCgroup | undefined, heapFlags: string[]): Promise<Sample> => {
  const dir = mkdtempSync(join(tmpdir(), 'fusebox-idle-'));
  try {
    const [proxyPort, adminPort] = [await freePort(), await freePort()];
    const config = readFileSync(values.config, 'utf8').replace('port: 4000', `port: ${proxyPort}`).replace('port: 9901', `port: ${adminPort}`);
    writeFileSync(join(dir, 'config.yaml'), config);
    const args = [...heapFlags, '--report-on-signal', '--report-signal=SIGUSR2', `--report-directory=${dir}`, join(root, 'dist', 'src', 'main.js'), '--config', join(dir, 'config.yaml')];
    const [cmd, argv] = cgroup?.wrap(node, args) ?? [node, args];
    // The image's environment only (plus PATH): nothing of this shell's NODE_OPTIONS or a TTY's pretty logs.
    const child = spawn(cmd, argv, { cwd: root, env: { PATH: process.env.PATH ?? '', ...IMAGE_ENV, FUSEBOX_LOG_FORMAT: 'json' }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr = (stderr + b.toString()).slice(-2000)));
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    try {
      await Promise.race([readyz(`http://127.0.0.1:${adminPort}/readyz`, Date.now() + 30_000), exited.then(() => Promise.reject(new Error(`exited before ready: ${stderr}`)))]);
      await sleep(settleS * 1000);
      const pid = child.pid!;
      const proc = { ...status(pid), chargedMb: cgroup?.chargedMiB() ?? NaN };
      child.kill('SIGUSR2');
      // The report is written after the signal, in pieces: read until it parses (bounded).
      type Report = { javascriptHeap: { totalMemory: number; usedMemory: number; heapSpaces: Record<string, { memorySize: number }> } };
      let parsed: Report | undefined;
      for (let i = 0; i < 200 && parsed === undefined; i++) {
        const file = readdirSync(dir).find((f) => f.startsWith('report.') && f.endsWith('.json'));
        try {
          if (file !== undefined) parsed = JSON.parse(readFileSync(join(dir, file), 'utf8')) as Report;
        } catch {
          // Not all written yet.
        }
        if (parsed === undefined) await sleep(50);
      }
      if (parsed === undefined) throw new Error('no complete diagnostic report within 10 s');
      const heap = parsed.javascriptHeap;
      const spaces = Object.fromEntries(Object.entries(heap.heapSpaces).map(([k, v]) => [k.replace(/_space$/, ''), v.memorySize / 2 ** 20]).filter(([, v]) => (v as number) >= 0.05));
      return { ...proc, heapCommittedMb: heap.totalMemory / 2 ** 20, heapUsedMb: heap.usedMemory / 2 ** 20, spaces };
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
};

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** What importing `specifiers` (in order) costs a bare Node process. */
const depCost = (specifiers: string[]) => {
  const script = `
    import { readFileSync } from 'node:fs';
    const st = () => { const s = readFileSync('/proc/self/status', 'utf8'); const k = (n) => Number(new RegExp(n + ':\\\\s+(\\\\d+)').exec(s)[1]) / 1024; return [k('VmRSS'), k('RssAnon')]; };
    gc(); gc(); const a = st(); const h0 = process.memoryUsage().heapUsed;
    for (const s of ${JSON.stringify(specifiers)}) await import(s);
    gc(); gc(); const b = st(); const h1 = process.memoryUsage().heapUsed;
    console.log(JSON.stringify({ base: a[0], rss: b[0] - a[0], anon: b[1] - a[1], heap: (h1 - h0) / 2 ** 20 }));`;
  return JSON.parse(execFileSync(node, ['--expose-gc', '--input-type=module', '-e', script], { cwd: REPO_ROOT, encoding: 'utf8' })) as { base: number; rss: number; anon: number; heap: number };
};

const DEPS: Array<[string, string[]]> = [
  ['node:http', ['node:http']],
  ['undici (index: fetch, WebSocket, cache, mocks...)', ['undici']],
  ['undici Pool and the dispatcher API alone (what src/upstream/pool.ts loads)', ['undici/lib/dispatcher/pool.js', 'undici/lib/api/index.js']],
  ['fastify', ['fastify']],
  ['ajv + fast-json-stringify (fastify\'s default schema compilers)', ['@fastify/ajv-compiler', '@fastify/fast-json-stringify-compiler']],
  ['prom-client', ['prom-client']],
  ['zod', ['zod']],
  ['pino', ['pino']],
  ['yaml', ['yaml']],
  ['@peculiar/x509 (the pod CA until issue 15; no longer loaded)', ['reflect-metadata', '@peculiar/x509']],
  ['dist/src/intercept/ca.js (the pod CA now: node:crypto and der.ts)', [join(REPO_ROOT, 'dist', 'src', 'intercept', 'ca.js')]],
  ['@opentelemetry/api (what prom-client\'s index loads for exemplars)', ['@opentelemetry/api']],
  ['ioredis (Redis store only)', ['ioredis']],
  ['gpt-tokenizer o200k (budget.tokenizer: o200k only)', ['gpt-tokenizer/encoding/o200k_base']],
  ['dist/src/config/load.js (zod + yaml + the schema)', [join(REPO_ROOT, 'dist', 'src', 'config', 'load.js')]],
  ['dist/src/app.js (everything a sidecar loads)', [join(REPO_ROOT, 'dist', 'src', 'app.js')]],
];

const main = async () => {
  log('building dist/ (tsc -p tsconfig.build.json)');
  execFileSync(node, [join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: REPO_ROOT, stdio: 'inherit' });
  const builds: Array<{ name: string; root: string }> = [{ name: 'now', root: REPO_ROOT }];
  for (const spec of (values['compare-rev'] ?? []).flatMap((v) => v.split(',')).filter(Boolean)) {
    log(`--compare-rev=${spec}: git worktree add --detach, then tsc`);
    const prepared = prepareRevision(spec);
    if ('reason' in prepared) {
      log(`--compare-rev=${spec}: skipped (${prepared.reason})`);
      continue;
    }
    builds.push({ name: `@${prepared.revision.short}`, root: join(prepared.revision.dist, '..') });
  }
  let cgroup: PodCgroup | undefined;
  let heapFlags: string[] = [];
  let how = 'no memory limit: V8 sizes its heap from the host RAM';
  if (limitMiB > 0) {
    const made = makePodCgroup(limitMiB, `fusebox-bench-idle-${process.pid}`);
    if ('reason' in made) {
      heapFlags = heapFlagsNodeDerives(limitMiB);
      how = `no cgroup (${made.reason}): the heap flags Node derives from ${limitMiB} MiB, ${heapFlags.join(' ')}`;
    } else {
      cgroup = made;
      how = `in a memory cgroup limited to ${limitMiB} MiB (${made.dir})`;
    }
  }
  log(`${runs} runs per build, ${settleS} s idle after /readyz, ${how}; image ENV ${JSON.stringify(IMAGE_ENV)}`);
  const samples = new Map<string, Sample[]>(builds.map((b) => [b.name, []]));
  try {
    for (let i = 0; i < runs; i++) {
      for (const b of builds) {
        const s = await measureOnce(b.root, cgroup, heapFlags);
        log(`${b.name} run ${i + 1}: RSS ${s.rssMb.toFixed(1)} MB (cgroup charged ${s.chargedMb.toFixed(1)}, anon ${s.anonMb.toFixed(1)}, file ${s.fileMb.toFixed(1)}), V8 heap ${s.heapCommittedMb.toFixed(1)} committed / ${s.heapUsedMb.toFixed(1)} used`);
        samples.get(b.name)!.push(s);
      }
    }
  } finally {
    cgroup?.remove();
  }
  console.log(`\nIdle, config/example.yaml, ${how}; median of ${runs} (min–max RSS):\n`);
  console.log('| build | RSS MB | cgroup charged MB | anonymous MB | file-backed MB | V8 heap committed MB | V8 heap used MB | anonymous outside the V8 heap MB | V8 spaces committed MB |');
  console.log('|---|--:|--:|--:|--:|--:|--:|--:|---|');
  for (const b of builds) {
    const ss = samples.get(b.name)!;
    const m = (f: (s: Sample) => number) => median(ss.map(f));
    const rss = ss.map((s) => s.rssMb);
    const mid = ss.find((s) => s.rssMb === m((x) => x.rssMb))!;
    const spaces = Object.entries(mid.spaces).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ');
    console.log(
      `| ${b.name} | ${m((s) => s.rssMb).toFixed(1)} (${Math.min(...rss).toFixed(1)}–${Math.max(...rss).toFixed(1)}) | ${m((s) => s.chargedMb).toFixed(1)} | ${m((s) => s.anonMb).toFixed(1)} | ${m((s) => s.fileMb).toFixed(1)} | ${m((s) => s.heapCommittedMb).toFixed(1)} | ${m((s) => s.heapUsedMb).toFixed(1)} | ${m((s) => s.anonMb - s.heapCommittedMb).toFixed(1)} | ${spaces} |`,
    );
  }
  if (values.deps) {
    console.log('\nEach imported alone into a bare Node process (after two GCs; not additive: they share Node\'s own modules):\n');
    console.log('| import | RSS MB | anonymous MB | V8 heap used MB |');
    console.log('|---|--:|--:|--:|');
    let base = NaN;
    for (const [name, specs] of DEPS) {
      const c = depCost(specs);
      base = c.base;
      console.log(`| ${name} | +${c.rss.toFixed(1)} | +${c.anon.toFixed(1)} | +${c.heap.toFixed(1)} |`);
    }
    console.log(`\n(a bare process: ${base.toFixed(1)} MB RSS before any import)`);
  }
};

process.on('exit', () => {
  killAll();
  removeRevisions();
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => process.exit(130));
await main();
