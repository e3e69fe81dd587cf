import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Pool, type Dispatcher } from 'undici';
import { CLIENT_TIMEOUTS, viaHttpsProxy } from './load/client.js';
import { hasCommand, killAll, LOAD_CPU, pinSelf, PROXY_CPU, REPO_ROOT, startServer, type ServerChild } from './proc.js';
import { summarizeHeapProfile, summarizeProfile } from './profile-summary.js';
import { configRefusal, prepareRevision, removeRevisions, type Revision } from './revisions.js';
import type { Footprint } from './servers/footprint.js';
import { atRevision, capsMemory, fusebox, fuseboxConfig, INTERCEPT_HOST, manyRoutes, PREFIX, type Target } from './targets.js';
import { positiveInteger } from './options.js';

/**
 * `npm run bench:per-call`: what one call costs Fusebox, in figures a busy machine does not move much — JS heap bytes
 * allocated per call and CPU µs per call of the server process (its own `process.cpuUsage`, so other processes' load
 * shows only through caches and clock speed) — for each kind of call, beside a bare node:http + undici proxy and
 * @fastify/http-proxy measured the same way in the same run. Each row is a child pinned to the proxy core; this process
 * (pinned to the load core, with the upstream) drives a fixed number of calls through it, a fixed number at a time.
 * Each row is measured `--passes` times; the table shows the median pass and the spread. A row `via` HTTPS_PROXY is
 * driven as an agent with only HTTPS_PROXY set drives it (bench/load/client.ts): CONNECT, then TLS to the pod CA's
 * leaf inside the tunnel, keep-alive. `--latency=N` adds N calls one at a time per row, timed by this process, to
 * tell per-call work from waits (Nagle, delayed ACKs) that only a wall clock shows. The last column is this process's
 * own CPU per call: the client's side (its TLS, through HTTPS_PROXY). See bench/README.md.
 */

const USAGE = `npm run bench:per-call -- [--calls=N] [--warmup=N] [--concurrency=N] [--passes=N] [--rows=a,b] [--compare-rev=REV]... [--alloc-profile] [--cpu-profile] [--syscalls] [--latency=N] [--connection-per-call]
  --calls=N        calls per measured pass (default 4000)
  --warmup=N       calls before the first pass, so the JIT has settled (default 2000)
  --concurrency=N  calls in flight at once, one connection each (default 8)
  --passes=N       measured passes per row; the median is shown (default 3)
  --rows=a,b       only rows whose name contains one of these (the floors always run)
  --compare-rev=R  also measure each Fusebox row as built from git revision R (bench/revisions.ts)
  --alloc-profile  one more pass per Fusebox row under V8's sampling heap profiler: who allocates what
  --cpu-profile    one more pass per Fusebox row under the CPU profiler: where the time goes
  --syscalls       one more pass per row (floors included) under \`strace -c\` attached to every thread: system
                   calls per call by name, a count no noise moves (strace slows the pass; its CPU is in no figure)
  --latency=N      N more calls per row one at a time (and straight to the upstream before the first row and after
                   the last): p50/p90/p99 ms as the client sees them, a wall-clock figure (noisy on a busy machine)
  --connection-per-call  every call on a new connection (the client closes it after the answer): what a connection
                   costs on top of a call; through HTTPS_PROXY each is a CONNECT and a TLS handshake (resumed when the
                   client kept a session ticket, as undici does)`;

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    calls: { type: 'string' },
    warmup: { type: 'string' },
    concurrency: { type: 'string' },
    passes: { type: 'string' },
    rows: { type: 'string' },
    'compare-rev': { type: 'string', multiple: true },
    'alloc-profile': { type: 'boolean' },
    'cpu-profile': { type: 'boolean' },
    syscalls: { type: 'boolean' },
    latency: { type: 'string' },
    'connection-per-call': { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  },
  strict: true,
});
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const count = (name: string, v: string | undefined, def: number): number => positiveInteger(name, v, def, USAGE);
const CALLS = count('calls', values.calls, 4000);
const WARMUP = count('warmup', values.warmup, 2000);
const CONCURRENCY = count('concurrency', values.concurrency, 8);
const PASSES = count('passes', values.passes, 3);
const LATENCY_CALLS = values.latency !== undefined ? count('latency', values.latency, 0) : 0;
const CONNECTION_PER_CALL = values['connection-per-call'] === true;
const only = (values.rows ?? '')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
const compareRevs = (values['compare-rev'] ?? []).flatMap((v) => v.split(',')).map((s) => s.trim()).filter(Boolean);

const log = (line: string) => console.error(`[per-call] ${line}`);

/** One kind of call: what the client sends. */
interface CallShape {
  method: 'GET' | 'POST';
  path: string;
  body?: string;
}

interface Row {
  target: Target;
  call: CallShape;
  /** Built from another revision (`--compare-rev`): its schema may refuse the config, which skips the row. */
  compared?: boolean;
}

const chat = (stream: boolean, content = 'Say ok.') =>
  JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content }], max_tokens: 16, ...(stream ? { stream: true } : {}) });
/** An agent's prompt is rarely two words: 16 KiB of text (a document and a question), read by every layer that parses the body. */
const LONG_PROMPT = 'Summarize the following notes in one line. '.repeat(Math.ceil(16384 / 43)).slice(0, 16384);
const GET_JSON: CallShape = { method: 'GET', path: `${PREFIX}/json` };
const CHAT_JSON: CallShape = { method: 'POST', path: `${PREFIX}/v1/chat/completions`, body: chat(false) };
const CHAT_SSE: CallShape = { method: 'POST', path: `${PREFIX}/v1/chat-sse`, body: chat(true) };
const CHAT_JSON_LONG: CallShape = { method: 'POST', path: `${PREFIX}/v1/chat/completions`, body: chat(false, LONG_PROMPT) };

/** Agent, route and fleet caps, high enough that nothing is refused: every call reserves and commits in the store. */
const CAPS = { store: { kind: 'memory' }, budgets: { agent: { dailyUsd: 1e6, dailyTokens: 1e12 }, fleet: { dailyUsd: 1e6 } } };


/**
 * The bare floor's certificate for `bench.test` when it terminates tunnels (bench/servers/bare.ts): self-signed, EC
 * P-256 as Fusebox's leaves are, made once per run with openssl; the client trusts it as it trusts the pod CA.
 */
let floorTlsDir: string | undefined;
const floorTls = (): string => {
  if (floorTlsDir !== undefined) return floorTlsDir;
  const dir = mkdtempSync(join(tmpdir(), 'fusebox-per-call-tls-'));
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-subj', `/CN=${INTERCEPT_HOST}`, '-addext', `subjectAltName=DNS:${INTERCEPT_HOST}`,
    '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'ca.crt'),
  ], { stdio: 'ignore' });
  return (floorTlsDir = dir);
};

const floorRows: Row[] = [
  { target: { name: 'floor: node:http + undici', role: 'floor', script: 'bare.ts', env: (up) => ({ BENCH_UPSTREAM: up }) }, call: GET_JSON },
  { target: { name: 'floor: @fastify/http-proxy', role: 'floor', script: 'floor.ts', env: (up) => ({ BENCH_UPSTREAM: up }) }, call: GET_JSON },
];

/** Runs when an intercepted row does: what CONNECT + TLS termination + node:http + undici cost with nothing of ours. */
const tlsFloorRow: Row = {
  target: { name: 'floor: CONNECT + TLS + node:http + undici', role: 'floor', script: 'bare.ts', env: (up) => ({ BENCH_UPSTREAM: up, BENCH_TLS_DIR: floorTls() }), via: 'https-proxy' },
  call: GET_JSON,
};

const fuseboxRows: Row[] = [
  { target: fusebox('fusebox: plain route', (up) => fuseboxConfig(up)), call: GET_JSON },
  { target: fusebox('fusebox: caps (memory store)', (up) => fuseboxConfig(up, { top: CAPS })), call: GET_JSON },
  // What the access line costs a call: the same with the log at warn (no line per call).
  { target: fusebox('fusebox: caps (memory store), access log off', (up) => fuseboxConfig(up, { top: { ...CAPS, log: { level: 'warn' } } })), call: GET_JSON },
  { target: fusebox('fusebox: openai JSON + caps', (up) => fuseboxConfig(up, { top: CAPS, route: { provider: 'openai' } })), call: CHAT_JSON },
  { target: fusebox('fusebox: openai SSE + caps', (up) => fuseboxConfig(up, { top: CAPS, route: { provider: 'openai' } })), call: CHAT_SSE },
  { target: fusebox('fusebox: openai JSON + caps, 16 KiB prompt', (up) => fuseboxConfig(up, { top: CAPS, route: { provider: 'openai' } })), call: CHAT_JSON_LONG },
  { target: fusebox('fusebox: openai JSON + caps, 500 routes, 200 models', manyRoutes), call: CHAT_JSON },
  // bench:run's caps(memory) pair (issue 10): one config (its route also lists bench.test), reached two ways.
  { target: fusebox('fusebox: caps+openai route, base URL', capsMemory), call: GET_JSON },
  { target: fusebox('fusebox: caps+openai route, via HTTPS_PROXY (intercepted)', capsMemory, undefined, {}, 'https-proxy'), call: GET_JSON },
];

/** How this process reaches a row: a Pool to its port (paths under `PREFIX`), or through it as HTTPS_PROXY. */
interface Client {
  dispatcher: Dispatcher;
  origin: string;
  /** What the row's paths lose: a tunnel to bench.test forwards its path as is. */
  strip: string;
}

const clientFor = (serverUrl: string, caFile: string | undefined, connections: number): Client =>
  caFile === undefined
    ? { dispatcher: new Pool(serverUrl, { connections, ...CLIENT_TIMEOUTS }), origin: serverUrl, strip: '' }
    : (() => {
        // What `npm run bench`'s intercepted row uses: each connection one tunnel and one handshake, then keep-alive.
        const via = viaHttpsProxy(serverUrl, readFileSync(caFile, 'utf8'), INTERCEPT_HOST);
        return { dispatcher: via.dispatcher(connections), origin: via.origin, strip: PREFIX };
      })();

const callOnce = async (client: Client, call: CallShape): Promise<void> => {
  const headers = call.body !== undefined ? { 'content-type': 'application/json' } : {};
  const path = call.path.slice(client.strip.length);
  const res = await client.dispatcher.request({ origin: client.origin, method: call.method, path, headers, body: call.body ?? null, reset: CONNECTION_PER_CALL });
  await res.body.text();
  if (res.statusCode !== 200) throw new Error(`${call.method} ${path} answered ${res.statusCode}`);
};

/** Drive `calls` calls, `CONCURRENCY` at a time, each read to its end; throws on any answer that is not a 200. */
const drive = async (client: Client, call: CallShape, calls: number): Promise<void> => {
  let started = 0;
  const worker = async () => {
    while (started < calls) {
      started += 1;
      await callOnce(client, call);
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
};

/** `n` calls one after the other on one kept-alive connection: each one's wall time, ms. */
const timeOneAtATime = async (client: Client, call: CallShape, n: number): Promise<number[]> => {
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await callOnce(client, call);
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return ms;
};

interface RowResult {
  name: string;
  call: CallShape;
  passes: Footprint[];
  /** This process's CPU time in each pass: the client's side of the calls (its TLS, for a row through HTTPS_PROXY). */
  clientCpuUs?: number[];
  /** `--latency`: wall time of each call made one at a time, ms. */
  latencyMs?: number[];
  skipped?: string;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

const profileDir = values['alloc-profile'] || values['cpu-profile'] || values.syscalls ? mkdtempSync(join(tmpdir(), 'fusebox-per-call-')) : undefined;
const profiles: string[] = [];
const slug = (name: string) => name.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '').toLowerCase();

const measureRow = async (row: Row, upstreamUrl: string): Promise<RowResult> => {
  const env = row.target.env(upstreamUrl);
  // A Fusebox reached through HTTPS_PROXY writes its pod CA's ca.crt here (as bench/run.ts has it do) for the client to trust.
  const caDir = row.target.via === 'https-proxy' && env.BENCH_TLS_DIR === undefined ? mkdtempSync(join(tmpdir(), 'fusebox-per-call-ca-')) : undefined;
  const server: ServerChild = await startServer(row.target.script, PROXY_CPU, { ...env, ...(caDir !== undefined ? { FUSEBOX_CA_DIR: caDir } : {}) });
  const caFile = row.target.via === 'https-proxy' ? join(env.BENCH_TLS_DIR ?? caDir!, 'ca.crt') : undefined;
  const client = clientFor(server.url, caFile, CONCURRENCY);
  try {
    await drive(client, row.call, WARMUP);
    const passes: Footprint[] = [];
    const clientCpuUs: number[] = [];
    for (let i = 0; i < PASSES; i++) {
      await server.command({ cmd: 'measure-start' });
      const mine = process.cpuUsage();
      await drive(client, row.call, CALLS);
      const used = process.cpuUsage(mine);
      const f = await server.command({ cmd: 'measure-stop' });
      if (f === undefined) throw new Error(`${row.target.name}: measure-stop returned no figures`);
      passes.push(f);
      clientCpuUs.push(used.user + used.system);
    }
    const latencyMs = LATENCY_CALLS > 0 ? await timeOneAtATime(client, row.call, LATENCY_CALLS) : undefined;
    // Profiled passes come after the measured ones: a profiler's own cost is in no figure of the table.
    // A profile that cannot be taken (a huge one written too slowly) is reported, and the figures above still stand.
    if (profileDir !== undefined && row.target.role === 'fusebox') {
      if (values['alloc-profile']) {
        const file = join(profileDir, `${slug(row.target.name)}.heapprofile`);
        try {
          await server.command({ cmd: 'alloc-profile-start' });
          await drive(client, row.call, CALLS);
          await server.command({ cmd: 'alloc-profile-stop', file }, 120_000);
          profiles.push(`\nAllocations of ${row.target.name}, ${CALLS} calls (${file}):\n${summarizeHeapProfile(file)}`);
        } catch (err) {
          profiles.push(`\nAllocations of ${row.target.name}: no profile (${(err as Error).message})`);
        }
      }
      if (values['cpu-profile']) {
        const file = join(profileDir, `${slug(row.target.name)}.cpuprofile`);
        try {
          await server.command({ cmd: 'profile-start' });
          await drive(client, row.call, CALLS);
          await server.command({ cmd: 'profile-stop', file }, 120_000);
          profiles.push(`\nCPU profile of ${row.target.name}, ${CALLS} calls (${file}):\n${summarizeProfile(file)}`);
        } catch (err) {
          profiles.push(`\nCPU profile of ${row.target.name}: no profile (${(err as Error).message})`);
        }
      }
    }
    if (profileDir !== undefined && values.syscalls) {
      const file = join(profileDir, `${slug(row.target.name)}.strace`);
      try {
        profiles.push(`\nSystem calls of ${row.target.name}, per call over ${CALLS} calls (strace -c, every thread):\n${await countSyscalls(server.pid, file, () => drive(client, row.call, CALLS))}`);
      } catch (err) {
        profiles.push(`\nSystem calls of ${row.target.name}: not counted (${(err as Error).message})`);
      }
    }
    return { name: row.target.name, call: row.call, passes, clientCpuUs, ...(latencyMs !== undefined ? { latencyMs } : {}) };
  } finally {
    await client.dispatcher.destroy();
    await server.stop();
    if (caDir !== undefined) rmSync(caDir, { recursive: true, force: true });
  }
};

/**
 * `strace -c` attached to every thread of `pid` while `work` runs: calls per call by syscall name, busiest first.
 * Attaching takes a moment, so the pass starts once strace says it is attached to every thread.
 */
const countSyscalls = async (pid: number, file: string, work: () => Promise<void>): Promise<string> => {
  if (!hasCommand('strace')) throw new Error('strace is not installed (apt install strace)');
  const tids = readdirSync(`/proc/${pid}/task`);
  const strace = spawn('strace', ['-c', '-o', file, ...tids.flatMap((t) => ['-p', t])], { stdio: ['ignore', 'ignore', 'pipe'] });
  let attached = 0;
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    strace.once('exit', (code) => reject(new Error(`strace exited (${code}): ${stderr.trim()}`)));
    strace.stderr.on('data', (b: Buffer) => {
      stderr += b.toString('utf8');
      attached = (stderr.match(/Process \d+ attached/g) ?? []).length;
      if (attached >= tids.length) resolve();
    });
  });
  strace.removeAllListeners('exit');
  await work();
  const exited = new Promise<void>((r) => strace.once('exit', () => r()));
  strace.kill('SIGINT');
  await exited;
  const rows = readFileSync(file, 'utf8')
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 5 && /^\d/.test(f[0]!) && f.at(-1) !== 'total')
    // % time, seconds, usecs/call, calls, [errors], syscall
    .map((f) => ({ name: f.at(-1)!, calls: Number(f[3]) }))
    .sort((a, b) => b.calls - a.calls);
  const total = rows.reduce((n, r) => n + r.calls, 0);
  return [`  ${fmt(total / CALLS, 2)} in all`, ...rows.filter((r) => r.calls / CALLS >= 0.01).map((r) => `  ${fmt(r.calls / CALLS, 2).padStart(6)}  ${r.name}`)].join('\n');
};

const fmt = (n: number, digits = 0) => n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

const render = (results: RowResult[]): string => {
  const floor = results.find((r) => r.passes.length > 0 && r.name.startsWith('floor: node:http'));
  const perCall = (r: RowResult, pick: (f: Footprint) => number) => r.passes.map((f) => pick(f) / CALLS);
  const lines = [
    // GC pauses are timed on the wall clock (a preempted pause counts whole): a hint, not a share of the CPU column.
    `| row | call | KiB allocated / call | CPU µs / call (spread) | GC pauses, % of CPU time | GCs / 1k calls | CPU µs over the bare floor | client CPU µs / call |`,
    `|---|---|--:|--:|--:|--:|--:|--:|`,
  ];
  for (const r of results) {
    if (r.skipped !== undefined) {
      lines.push(`| ${r.name} | — | skipped: ${r.skipped} | | | | | |`);
      continue;
    }
    const kib = median(perCall(r, (f) => f.allocatedBytes)) / 1024;
    const cpus = perCall(r, (f) => f.cpuUs);
    const cpu = median(cpus);
    const gcPct = median(r.passes.map((f) => (f.gcUs / f.cpuUs) * 100));
    const gcs = median(perCall(r, (f) => f.gcs)) * 1000;
    const delta = floor !== undefined && r !== floor ? cpu - median(perCall(floor, (f) => f.cpuUs)) : undefined;
    const over = delta === undefined ? '—' : `${delta < 0 ? '−' : '+'}${fmt(Math.abs(delta))}`;
    const client = r.clientCpuUs !== undefined && r.clientCpuUs.length > 0 ? fmt(median(r.clientCpuUs) / CALLS) : '—';
    lines.push(
      `| ${r.name} | ${r.call.method} ${r.call.path.slice(PREFIX.length)} | ${fmt(kib, 1)} | ${fmt(cpu)} (${fmt(Math.min(...cpus))}–${fmt(Math.max(...cpus))}) | ${fmt(gcPct, 1)} | ${fmt(gcs, 1)} | ${over} | ${client} |`,
    );
  }
  return lines.join('\n');
};

const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};

const renderLatency = (results: RowResult[], direct: number[][]): string => {
  const directP50 = direct.length > 0 ? direct.reduce((n, d) => n + quantile(d, 0.5), 0) / direct.length : undefined;
  const lines = [
    `One call at a time (--latency=${LATENCY_CALLS}), as the client sees it, ms; direct = straight to the upstream, before the first row and after the last:`,
    '',
    '| row | p50 | p90 | p99 | p50 over direct |',
    '|---|--:|--:|--:|--:|',
    ...direct.map((d, i) => `| direct (${i === 0 ? 'start' : 'end'}) | ${fmt(quantile(d, 0.5), 3)} | ${fmt(quantile(d, 0.9), 3)} | ${fmt(quantile(d, 0.99), 3)} | — |`),
  ];
  for (const r of results) {
    if (r.latencyMs === undefined) continue;
    const p50 = quantile(r.latencyMs, 0.5);
    const over = directP50 === undefined ? '—' : `+${fmt(p50 - directP50, 3)}`;
    lines.push(`| ${r.name} | ${fmt(p50, 3)} | ${fmt(quantile(r.latencyMs, 0.9), 3)} | ${fmt(quantile(r.latencyMs, 0.99), 3)} | ${over} |`);
  }
  return lines.join('\n');
};

const main = async () => {
  pinSelf(LOAD_CPU);
  const revisions: Revision[] = [];
  const skipped: RowResult[] = [];
  log('building dist/ (tsc -p tsconfig.build.json)');
  execFileSync(process.execPath, [join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: REPO_ROOT, stdio: 'inherit' });
  for (const spec of compareRevs) {
    log(`--compare-rev=${spec}: git worktree add --detach, then tsc -p tsconfig.build.json`);
    const prepared = prepareRevision(spec);
    if ('revision' in prepared) revisions.push(prepared.revision);
    else skipped.push({ name: `@${spec}`, call: GET_JSON, passes: [], skipped: prepared.reason });
  }
  const selected = fuseboxRows.filter((r) => only.length === 0 || only.some((s) => r.target.name.includes(s)));
  const rows: Row[] = [
    ...floorRows,
    ...(selected.some((r) => r.target.via === 'https-proxy') ? [tlsFloorRow] : []),
    ...selected.flatMap((r) => [r, ...revisions.map((rev) => ({ target: atRevision(r.target, rev), call: r.call, compared: true }))]),
  ];
  const upstream = await startServer('upstream.ts', LOAD_CPU, {});
  const results: RowResult[] = [];
  const direct: number[][] = [];
  const timeDirect = async () => {
    if (LATENCY_CALLS === 0) return;
    const client = clientFor(upstream.url, undefined, 1);
    try {
      direct.push(await timeOneAtATime(client, { ...GET_JSON, path: GET_JSON.path.slice(PREFIX.length) }, LATENCY_CALLS));
    } finally {
      await client.dispatcher.destroy();
    }
  };
  try {
    await timeDirect();
    for (const row of rows) {
      const refusal = row.compared === true ? configRefusal(row.target.env(upstream.url)) : undefined;
      if (refusal !== undefined) {
        results.push({ name: row.target.name, call: row.call, passes: [], skipped: refusal });
        continue;
      }
      log(`${row.target.name}: ${WARMUP} warm-up calls, then ${PASSES} × ${CALLS} calls, ${CONCURRENCY} at a time`);
      results.push(await measureRow(row, upstream.url));
    }
    await timeDirect();
  } finally {
    await upstream.stop();
  }
  console.log(
    `Per-call cost, ${new Date().toISOString().slice(0, 16)} UTC, Node ${process.version}: ${PASSES} passes of ${CALLS} calls (${CONCURRENCY} in flight) per row after ${WARMUP} warm-up calls${CONNECTION_PER_CALL ? ', a new connection for every call' : ''}; median pass, CPU spread over the passes.\n`,
  );
  console.log(render([...results, ...skipped]));
  if (LATENCY_CALLS > 0) console.log(`\n${renderLatency(results, direct)}`);
  for (const rev of revisions) console.log(`\n@${rev.short}: ${rev.subject} (${rev.date})${rev.lockDiffers ? '; its package-lock.json differs: measured on the current node_modules' : ''}`);
  for (const p of profiles) console.log(p);
};

process.on('exit', () => {
  killAll();
  if (floorTlsDir !== undefined) rmSync(floorTlsDir, { recursive: true, force: true });
  removeRevisions();
});
try {
  await main();
} catch (err) {
  console.error(`per-call bench failed: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
} finally {
  killAll();
  removeRevisions();
}
