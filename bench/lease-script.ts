/**
 * `npm run bench:lease -- [--holders=N] [--turns=N] [--rounds=N] [--compare-rev=REV]...`: what the lease script
 * (src/budget/lease-scripts.ts) costs Redis per script call (issue 14). Drives RedisLeaseSource itself, one script call
 * at a time as a fleet sends them, so each revision sends its own arguments to its own script: N holders, each turn
 * every holder in order, for two shapes of call taken from a MONITOR capture of `bench:fleet --workflow=on`:
 * - `workflow`: one workflow window with `maxCalls` (3 keys: lease hash, expiry set, the agent's counters), a holder per
 *   agent, reporting 7 calls' spend and renewing its slice, as the fleet's sidecars do;
 * - `fleet`: the fleet's day and month (a USD cap) in one call, all N holders on the same two windows (a hash of N
 *   holders, the reap and live count over N slices).
 * Figures per script call: time inside it (INFO commandstats, evalsha usec), Redis CPU (INFO cpu user + sys: the
 * whole server, networking included) and the commands it ran. The current tree and each revision (its `src/` taken
 * with `git archive`, run by the same tsx and node_modules) take turns, round by round, on one throwaway
 * `redis-server`, each round on fresh keys; medians over rounds are printed.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import type { LeaseRequest, LeaseSizing } from '../src/budget/lease-source.js';
import type { ReservedScope } from '../src/budget/store.js';
import { startRedis } from '../test/helpers/redis.js';
import { REPO_ROOT } from './proc.js';
import { cpuSeconds, infoSection } from './fleet/redis-info.js';
import { positiveInteger } from './options.js';

const USAGE = `npm run bench:lease -- [--holders=N] [--turns=N] [--rounds=N] [--compare-rev=REV]...
  --holders=N      holders (sidecars), default 100
  --turns=N        turns per round (each: every holder once, one second apart), default 10
  --rounds=N       rounds per variant, taken in turns, default 5
  --compare-rev=R  also measure git revision R's lease script`;

const { values } = parseArgs({
  options: {
    holders: { type: 'string' },
    turns: { type: 'string' },
    rounds: { type: 'string' },
    'compare-rev': { type: 'string', multiple: true },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}

const holders = positiveInteger('holders', values.holders, 100, USAGE);
const turns = positiveInteger('turns', values.turns, 10, USAGE);
const rounds = positiveInteger('rounds', values.rounds, 5, USAGE);

const SIZING: LeaseSizing = { ttlMs: 30_000, graceMs: 5_000, minSliceUsdMicros: 50_000, alertPercent: 75 };
const T0 = Date.parse('2026-12-05T10:00:00Z');

interface Variant {
  label: string;
  /** A tree with `src/`. */
  root: string;
}

interface Figures {
  scriptUs: number;
  cpuUs: number;
  commands: number;
}

type Shape = 'workflow' | 'fleet';


interface LeaseSourceLike {
  acquire(req: LeaseRequest): Promise<unknown>;
}

/** One round: `turns` turns of every holder, one script call at a time; the first turn (new windows) not counted. */
async function round(v: Variant, url: string, raw: Redis, shape: Shape, prefix: string): Promise<Figures> {
  const { RedisConnection } = (await import(pathToFileURL(join(v.root, 'src/store/redis-connection.ts')).href)) as typeof import('../src/store/redis-connection.js');
  const { RedisLeaseSource } = (await import(pathToFileURL(join(v.root, 'src/budget/redis-lease-source.ts')).href)) as typeof import('../src/budget/redis-lease-source.js');
  const connection = new RedisConnection({ url, keyPrefix: prefix, timeoutMs: 2_000 });
  try {
    await connection.ready(2_000);
    const source: LeaseSourceLike = new RedisLeaseSource({ redis: connection, ...SIZING });
    const seq = new Array<number>(holders).fill(0);
    const windows = (h: number): ReservedScope[] =>
      shape === 'workflow'
        ? [{ scope: { kind: 'workflow', id: 'task-1', agent: `agent-${h}` }, window: 'workflow', caps: { calls: 1_000_000 }, windowId: 'task-1', idleTtlMs: 86_400_000 } as ReservedScope]
        : [
            { scope: { kind: 'fleet', id: 'all' }, window: 'day', caps: { usdMicros: 1e12 }, windowId: '2026-12-05' },
            { scope: { kind: 'fleet', id: 'all' }, window: 'month', caps: { usdMicros: 1e13 }, windowId: '2026-12' },
          ];
    const turn = async (t: number) => {
      for (let h = 0; h < holders; h++) {
        const now = T0 + t * 1_000 + h;
        seq[h]! += 1;
        await Promise.all(
          windows(h).map((scope) =>
            source.acquire({
              scope,
              holder: `holder-${h}`,
              seq: seq[h]!,
              report: { usdMicros: 7_000, tokens: 2_800, calls: 7 },
              keep: true,
              want: { usdMicros: 4_000, tokens: 1_000, calls: 2 },
              rate: { usdMicros: 1_000, tokens: 400, calls: 1 },
              caps: scope.caps,
              usedAt: now,
              now,
            }),
          ),
        );
      }
    };
    await turn(0);
    await raw.config('RESETSTAT');
    const cpu0 = await cpuSeconds(raw);
    for (let t = 1; t < turns; t++) await turn(t);
    const cpu1 = await cpuSeconds(raw);
    let scriptUs = 0;
    let scriptCalls = 0;
    let commands = 0;
    for (const [k, s] of await infoSection(raw, 'commandstats')) {
      const n = Number(/calls=(\d+)/.exec(s)?.[1] ?? 0);
      if (k === 'cmdstat_evalsha' || k === 'cmdstat_eval') {
        scriptUs += Number(/usec=(\d+)/.exec(s)?.[1] ?? 0);
        scriptCalls += n;
      } else if (k !== 'cmdstat_config' && k !== 'cmdstat_info') {
        commands += n;
      }
    }
    if (scriptCalls !== holders * (turns - 1)) throw new Error(`${v.label}: ${scriptCalls} script calls, expected ${holders * (turns - 1)}`);
    return { scriptUs: scriptUs / scriptCalls, cpuUs: ((cpu1 - cpu0) * 1e6) / scriptCalls, commands: commands / scriptCalls };
  } finally {
    await connection.close();
  }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

const variants: Variant[] = [{ label: 'this tree', root: REPO_ROOT }];
const temps: string[] = [];
for (const spec of (values['compare-rev'] ?? []).flatMap((r) => r.split(',')).filter(Boolean)) {
  const sha = execFileSync('git', ['-C', REPO_ROOT, 'rev-parse', '--short=7', spec], { encoding: 'utf8' }).trim();
  // Inside the repository, so its imports find the current node_modules by walking up.
  const root = join(REPO_ROOT, 'bench', `.lease-rev-${sha}`);
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  temps.push(root);
  execFileSync('sh', ['-c', `git -C "${REPO_ROOT}" archive ${sha} src | tar -x -C "${root}"`]);
  variants.push({ label: `@${sha}`, root });
}

const server = await startRedis();
const raw = new Redis(server.url);
try {
  const results = new Map<string, Figures[]>();
  let n = 0;
  for (let r = 0; r < rounds; r++) {
    for (const shape of ['workflow', 'fleet'] as const) {
      for (const v of variants) {
        const key = `${shape}|${v.label}`;
        results.set(key, [...(results.get(key) ?? []), await round(v, server.url, raw, shape, `lb${n++}`)]);
      }
    }
  }
  const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  console.log(`lease script, ${holders} holders × ${turns - 1} turns per round, medians of ${rounds} rounds (variants interleaved); load ${load}`);
  console.log(`| shape | variant | µs in script per call | Redis CPU µs per call | commands per call |\n|---|---|---:|---:|---:|`);
  for (const shape of ['workflow', 'fleet'] as const) {
    for (const v of variants) {
      const fs = results.get(`${shape}|${v.label}`)!;
      const f = (g: (x: Figures) => number) => median(fs.map(g)).toFixed(1);
      console.log(`| ${shape} | ${v.label} | ${f((x) => x.scriptUs)} | ${f((x) => x.cpuUs)} | ${f((x) => x.commands)} |`);
    }
  }
} finally {
  raw.disconnect();
  await server.stop();
  for (const t of temps) rmSync(t, { recursive: true, force: true });
}
