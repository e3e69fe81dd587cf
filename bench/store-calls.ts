/**
 * `npm run bench:store -- [--calls=N] [--call=scripts|agent|workflow] [--compare-rev=REV]...`: what one budgeted call
 * costs the shared Redis (issue 14). Runs N reserve + commit pairs, one at a time, of one kind of call:
 * - `scripts` (default): RedisStore alone, a call counted in an agent's day (USD and token caps) and month windows and
 *   one workflow: what the per-call scripts cost;
 * - `agent`: the sidecar's store stack (LeasedStore over LocalFallbackStore over RedisStore, as factory.ts builds
 *   it), a call with the agent's `dailyUsd` and `monthlyUsd` caps, a route cap and the fleet's day and month windows;
 * - `workflow`: the same stack and call plus a workflow window with `maxCalls` (exact per call: its script runs);
 * against a throwaway
 * `redis-server` with `--appendonly yes --appendfsync everysec`, and prints per call, side by side for the current tree
 * and each `--compare-rev` (its `src/` taken with `git archive`, run by the same tsx on the same node_modules). The
 * current tree runs twice: `rides`, a sequential agent (each commit waits, `commitDelayMs` 1000, and rides the next
 * reserve, as the budget layer's commits do: it does not wait for them), and `alone`, a lone call (its commit is sent
 * alone, as when the delay is over: flush() does it without the wait). A revision from before commits rode runs once (it sends
 * every commit alone whatever it is given):
 * - Redis CPU (INFO cpu, user + sys: everything the server did, networking and AOF included) and the time spent
 *   inside the scripts (INFO commandstats, evalsha usec);
 * - Redis commands run by the scripts (commandstats calls of everything but EVALSHA itself);
 * - keys added and their bytes (SCAN of the variant's prefix and MEMORY USAGE of each key, before and after);
 * - AOF bytes written (INFO persistence aof_current_size).
 * Each variant runs on its own connection and key prefix; the server's stats are reset before each.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import type { BudgetStore, ScopeBudget } from '../src/budget/store.js';
import { canConnect, freePort, REPO_ROOT } from './proc.js';
import { cpuSeconds, infoSection } from './fleet/redis-info.js';
import { positiveInteger } from './options.js';

interface Variant {
  label: string;
  /** A tree with `src/` (the current one, or a revision's). */
  root: string;
  /** How commits go: `rides` (not awaited, commitDelayMs 1000), `alone` (sent alone at once, awaited). */
  commits: 'rides' | 'alone';
}

interface Figures {
  cpuUs: number;
  scriptUs: number;
  scriptCalls: number;
  commands: number;
  keys: number;
  memoryBytes: number;
  aofBytes: number;
}

const { values } = parseArgs({
  options: {
    calls: { type: 'string', default: '1000' },
    rounds: { type: 'string', default: '5' },
    call: { type: 'string', default: 'scripts' },
    'compare-rev': { type: 'string', multiple: true, default: [] },
  },
});
const calls = positiveInteger('calls', values.calls, 1000);
const rounds = positiveInteger('rounds', values.rounds, 5);
const CALLS = ['scripts', 'agent', 'workflow'] as const;
type Call = (typeof CALLS)[number];
const isCall = (v: string): v is Call => (CALLS as readonly string[]).includes(v);
if (!isCall(values.call)) throw new Error(`--call must be one of ${CALLS.join(', ')}, got ${values.call}`);
const call: Call = values.call;

const cleanups: Array<() => void> = [];
process.on('exit', () => cleanups.forEach((c) => c()));

/** The revision's `src/` only: the store needs nothing else, and the current node_modules is found by walking up. */
const checkout = (rev: string): Variant => {
  const sha = execFileSync('git', ['-C', REPO_ROOT, 'rev-parse', '--short', rev], { encoding: 'utf8' }).trim();
  const root = join(REPO_ROOT, 'bench', `.store-rev-${sha}`);
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  cleanups.push(() => rmSync(root, { recursive: true, force: true }));
  execFileSync('sh', ['-c', `git -C "${REPO_ROOT}" archive ${sha} src | tar -x -C "${root}"`]);
  return { label: `@${sha}`, root, commits: 'alone' };
};

const startRedis = async (): Promise<string> => {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'fusebox-bench-store-'));
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'everysec'];
  const proc = spawn('redis-server', args, { stdio: 'ignore' });
  cleanups.push(() => {
    proc.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  const deadline = Date.now() + 10_000;
  while (!canConnect('127.0.0.1', port)) {
    if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not start within 10 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return `redis://127.0.0.1:${port}`;
};

const field = (m: Map<string, string>, k: string): number => Number(m.get(k) ?? NaN);
/** The variant's keys: how many, and their bytes (MEMORY USAGE, which counts a key's whole value). */
const keysOf = async (raw: Redis, prefix: string): Promise<{ count: number; bytes: number }> => {
  let count = 0;
  let bytes = 0;
  for await (const batch of raw.scanStream({ match: `{${prefix}*`, count: 1_000 }) as AsyncIterable<string[]>) {
    count += batch.length;
    for (const k of batch) bytes += Number(await raw.call('MEMORY', 'USAGE', k, 'SAMPLES', '0'));
  }
  return { count, bytes };
};

interface Subject {
  label: string;
  /** Runs `calls` pairs and returns the figures. */
  round(): Promise<Figures>;
  close(): Promise<void>;
}

/** Reads the server's counters around `run`, which makes `calls` calls; `prefix` names the keys it may add. */
async function around(raw: Redis, prefix: string, run: () => Promise<void>): Promise<Figures> {
  const keys0 = await keysOf(raw, prefix);
  await raw.config('RESETSTAT');
  const aof0 = field(await infoSection(raw, 'persistence'), 'aof_current_size');
  const cpu0 = await cpuSeconds(raw);
  await run();
  const cpu1 = await cpuSeconds(raw);
  const aof1 = field(await infoSection(raw, 'persistence'), 'aof_current_size');
  const stats = await infoSection(raw, 'commandstats');
  let commands = 0;
  let scriptUs = 0;
  let scriptCalls = 0;
  for (const [k, v] of stats) {
    const n = Number(/calls=(\d+)/.exec(v)?.[1] ?? 0);
    const usec = Number(/usec=(\d+)/.exec(v)?.[1] ?? 0);
    if (k === 'cmdstat_evalsha' || k === 'cmdstat_eval') {
      scriptUs += usec;
      scriptCalls += n;
    } else if (!['cmdstat_info', 'cmdstat_config', 'cmdstat_ping', 'cmdstat_scan', 'cmdstat_memory|usage'].includes(k)) commands += n;
  }
  return {
    cpuUs: ((cpu1 - cpu0) * 1e6) / calls,
    scriptUs: scriptUs / calls,
    scriptCalls: scriptCalls / calls,
    commands: commands / calls,
    ...(await keysOf(raw, prefix).then((k) => ({ keys: (k.count - keys0.count) / calls, memoryBytes: (k.bytes - keys0.bytes) / calls }))),
    aofBytes: (aof1 - aof0) / calls,
  };
}

/** Two PINGs per call: what the two round trips of a reserve + commit cost the server, whatever the scripts do. */
async function pings(url: string): Promise<Subject> {
  const client = new Redis(url);
  const raw = new Redis(url);
  return {
    label: '2 PINGs',
    round: () =>
      around(raw, 'none', async () => {
        for (let i = 0; i < 2 * calls; i++) await client.ping();
      }),
    close: async () => {
      client.disconnect();
      raw.disconnect();
    },
  };
}

/** The variant's module at `path` (under its `src/`). */
const load = async <M>(v: Variant, path: string): Promise<M> => (await import(pathToFileURL(join(v.root, 'src', path)).href)) as M;

/** The sidecar's stack over `shared`, as factory.ts builds it (default lease sizing). */
async function stack(v: Variant, shared: BudgetStore, connection: unknown, now: () => number): Promise<BudgetStore> {
  const { LeasedStore } = await load<{ LeasedStore: new (o: { inner: BudgetStore; source: unknown; now: () => number }) => BudgetStore }>(v, 'budget/lease.ts');
  const { LocalFallbackStore } = await load<{ LocalFallbackStore: new (o: { shared: BudgetStore; now: () => number }) => BudgetStore }>(
    v,
    'budget/local-fallback-store.ts',
  );
  const { RedisLeaseSource } = await load<{ RedisLeaseSource: new (o: Record<string, unknown>) => unknown }>(v, 'budget/redis-lease-source.ts');
  const source = new RedisLeaseSource({ redis: connection, ttlMs: 30_000, graceMs: 5_000, minSliceUsdMicros: 50_000, alertPercent: 75 });
  return new LeasedStore({ inner: new LocalFallbackStore({ shared, now }), source, now });
}

const agentCall: ScopeBudget[] = [
  { scope: { kind: 'agent', id: 'pod-1' }, window: 'day', caps: { usdMicros: 1e12 } },
  { scope: { kind: 'agent', id: 'pod-1' }, window: 'month', caps: { usdMicros: 1e12 } },
  { scope: { kind: 'route', id: 'chat' }, window: 'day', caps: { usdMicros: 1e12 } },
  { scope: { kind: 'fleet', id: 'all' }, window: 'day', caps: {} },
  { scope: { kind: 'fleet', id: 'all' }, window: 'month', caps: {} },
];
const scopesOf: Record<Call, ScopeBudget[]> = {
  scripts: [
    { scope: { kind: 'agent', id: 'pod-1' }, window: 'day', caps: { usdMicros: 1e12, tokens: 1e12 } },
    { scope: { kind: 'agent', id: 'pod-1' }, window: 'month', caps: { usdMicros: 1e12 } },
    { scope: { kind: 'workflow', id: 'w1', agent: 'pod-1' }, window: 'workflow', caps: { usdMicros: 1e12, calls: 1e9 }, idleTtlMs: 3_600_000 },
  ],
  agent: agentCall,
  workflow: [...agentCall, { scope: { kind: 'workflow', id: 'w1', agent: 'pod-1' }, window: 'workflow', caps: { calls: 1e9 }, idleTtlMs: 3_600_000 }],
};
const callTitle: Record<Call, string> = {
  scripts: 'RedisStore alone; agent day (USD + tokens) + month + workflow',
  agent: 'the sidecar stack (LeasedStore › LocalFallbackStore › RedisStore); agent dailyUsd + monthlyUsd, route cap, fleet day + month',
  workflow: 'the sidecar stack; agent dailyUsd + monthlyUsd, route cap, fleet day + month, workflow maxCalls',
};

async function store(url: string, v: Variant, index: number): Promise<Subject> {
  const { RedisStore } = await load<{ RedisStore: new (o: { redis: unknown; now: () => number; commitDelayMs?: number }) => BudgetStore }>(v, 'budget/redis-store.ts');
  const { RedisConnection } = (await import(pathToFileURL(join(v.root, 'src/store/redis-connection.ts')).href)) as {
    RedisConnection: new (o: { url: string; keyPrefix: string; timeoutMs: number }) => { ready(ms: number): Promise<void>; close(): Promise<void> };
  };
  const prefix = `bench${index}`;
  const connection = new RedisConnection({ url, keyPrefix: prefix, timeoutMs: 5_000 });
  await connection.ready(5_000);
  let t = Date.now();
  const now = () => t;
  const shared = new RedisStore({ redis: connection, now, commitDelayMs: 1_000 });
  const budgetStore = call === 'scripts' ? shared : await stack(v, shared, connection, now);
  const scopes = scopesOf[call];
  // Commits not awaited, as the budget layer's: every one must land all the same.
  let commits: Array<Promise<unknown>> = [];
  const pair = async () => {
    t += 1;
    const r = await budgetStore.reserve({ scopes, estimate: { usdMicros: 12_000, tokens: 900, calls: 1 } });
    if (!r.ok) throw new Error(`${v.label}: refused ${JSON.stringify(r.refusal)}`);
    const committed = budgetStore.commit(r.reservation, { usdMicros: 9_000, tokens: 700 });
    if (v.commits === 'rides') commits.push(committed);
    else {
      // What the delay's timer does, without waiting for it: a machine idle between calls measures colder caches.
      await budgetStore.flush?.();
      await committed;
    }
  };
  /** The last commit of a run waits for no reserve: sent now, so it counts in this run and no other. */
  const settle = async () => {
    await budgetStore.flush?.();
    await Promise.all(commits);
    commits = [];
  };
  const raw = new Redis(url);
  for (let i = 0; i < 50; i++) await pair();
  await settle();
  return {
    label: v.root === REPO_ROOT ? `${v.label} ${v.commits}` : v.label,
    round: () =>
      around(raw, prefix, async () => {
        for (let i = 0; i < calls; i++) await pair();
        await settle();
      }),
    close: async () => {
      raw.disconnect();
      await budgetStore.close();
      await connection.close();
    },
  };
}

const variants: Variant[] = [
  { label: 'now', root: REPO_ROOT, commits: 'rides' },
  { label: 'now', root: REPO_ROOT, commits: 'alone' },
  ...values['compare-rev'].map(checkout),
];
const url = await startRedis();
const subjects = [...(await Promise.all(variants.map((v, i) => store(url, v, i)))), await pings(url)];
// Rounds interleave the subjects, so a neighbour's burst on a shared machine hits them alike; the median is shown.
const figures: Figures[][] = subjects.map(() => []);
for (let r = 0; r < rounds; r++) for (const [i, s] of subjects.entries()) figures[i]!.push(await s.round());
for (const s of subjects) await s.close();
const median = (xs: number[]): number => {
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};
const rows: Array<[string, keyof Figures, number]> = [
  ['Redis CPU per call, µs (INFO cpu)', 'cpuUs', 0],
  ['inside the scripts, µs (evalsha usec)', 'scriptUs', 0],
  ['script calls per call (round trips)', 'scriptCalls', 2],
  ['Redis commands per call', 'commands', 1],
  ['keys added per call', 'keys', 2],
  ['key bytes added per call (MEMORY USAGE)', 'memoryBytes', 0],
  ['AOF bytes per call', 'aofBytes', 0],
];
console.log(`${rounds} rounds × ${calls} reserve + commit pairs, one at a time, medians; redis-server --appendonly yes --appendfsync everysec`);
console.log(`call: ${callTitle[call]}`);
const width = Math.max(...rows.map(([name]) => name.length));
console.log(' '.repeat(width) + subjects.map((s) => s.label.padStart(12)).join(''));
for (const [name, key, digits] of rows) console.log(name.padEnd(width) + figures.map((f) => median(f.map((x) => x[key])).toFixed(digits).padStart(12)).join(''));
console.log('rides: a sequential agent, each commit riding the next reserve (commitDelayMs 1000); alone: each commit sent alone after the delay (a lone call)');
process.exit(0);
