/**
 * Heap flags against RSS (issue 15): the caps(memory) Fusebox started once per variant (the image's ENV with the
 * variant's NODE_OPTIONS, under a memory limit in a real cgroup where one can be made), driven by a closed loop of
 * 32 connections for `--calls` calls twice; RSS after each half and CPU µs per call of each half (the second is the
 * warm figure). Counts of calls, not seconds: on a loaded machine a rate is not kept, a number of calls is.
 *
 *   npm run bench:heap -- [--calls=20000] [--memory-limit=MiB|0] [--rounds=1] 'name=flags' ...
 *   npm run bench:heap -- 'pod=' 'semi 16=--max-semi-space-size=16'
 *   npm run bench:heap -- --memory-limit=0 'V8 defaults=' 'image flags=--max-old-space-size=256 --max-semi-space-size=1'
 *
 * Variants run in turns, `--rounds` times, so a disturbance of the machine hits all of them.
 */
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { heapFlagsNodeDerives, IMAGE_ENV, makePodCgroup, POD_LIMIT_MIB } from './pod.js';
import { cpuSeconds, killAll, LOAD_CPU, pinSelf, PROXY_CPU, rssBytes, startServer } from './proc.js';
import { INTERCEPT_BASELINE, PREFIX, TARGETS } from './targets.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    calls: { type: 'string', default: '20000' },
    'memory-limit': { type: 'string', default: String(POD_LIMIT_MIB) },
    rounds: { type: 'string', default: '1' },
  },
});
const calls = Number(values.calls);
const limitMiB = Number(values['memory-limit']);
const rounds = Number(values.rounds);
const variants = positionals.map((p) => {
  const at = p.indexOf('=');
  if (at < 1) throw new Error(`a variant is name=flags (flags may be empty), got "${p}"`);
  return { name: p.slice(0, at), flags: p.slice(at + 1) };
});
if (variants.length === 0 || !(calls > 0) || !(limitMiB >= 0) || !(rounds >= 1)) throw new Error('usage: npm run bench:heap -- [--calls=N] [--memory-limit=MiB] [--rounds=N] name=flags ...');

const BODY = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] });

/** `n` calls over 32 connections; resolves with the count of failed ones. */
const drive = async (url: string, n: number): Promise<number> => {
  const pool = new Pool(url, { connections: 32 });
  let started = 0;
  let errors = 0;
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      while (started++ < n) {
        try {
          const r = await pool.request({ method: 'POST', path: `${PREFIX}/json`, headers: { 'content-type': 'application/json' }, body: BODY });
          await r.body.text();
          if (r.statusCode !== 200) errors++;
        } catch {
          errors++;
        }
      }
    }),
  );
  await pool.close();
  return errors;
};

const main = async () => {
  pinSelf(LOAD_CPU);
  const target = TARGETS.find((t) => t.name === INTERCEPT_BASELINE)!;
  const upstream = await startServer('upstream.ts', LOAD_CPU, {});
  const mb = (pid: number) => (rssBytes(pid) / 2 ** 20).toFixed(0);
  console.log(`caps(memory), ${calls} + ${calls} calls, 32 connections; ${limitMiB > 0 ? `memory limit ${limitMiB} MiB` : 'no memory limit'}; image ENV ${JSON.stringify(IMAGE_ENV)}, NODE_OPTIONS per variant\n`);
  console.log(`| variant | NODE_OPTIONS | how limited | RSS idle MB | RSS after ${calls} MB | CPU µs/call | RSS after ${2 * calls} MB | CPU µs/call (warm) | errors |`);
  console.log('|---|---|---|--:|--:|--:|--:|--:|--:|');
  try {
    for (let round = 0; round < rounds; round++) {
      for (const v of variants) {
        const cgroup = limitMiB > 0 ? makePodCgroup(limitMiB, `fusebox-bench-heap-${process.pid}`) : undefined;
        const limited = cgroup === undefined ? undefined : 'reason' in cgroup ? undefined : cgroup;
        // Where no cgroup can be made, the flags Node would derive from the limit come first; the variant's override them.
        const derived = limitMiB > 0 && limited === undefined ? heapFlagsNodeDerives(limitMiB) : [];
        const env = { ...target.env(upstream.url), NODE_OPTIONS: [...derived, v.flags].join(' ').trim() };
        const server = await startServer(target.script, PROXY_CPU, env, undefined, limited?.wrap);
        try {
          const idle = mb(server.pid);
          const c0 = cpuSeconds(server.pid);
          const e1 = await drive(server.url, calls);
          const c1 = cpuSeconds(server.pid);
          const after1 = mb(server.pid);
          const e2 = await drive(server.url, calls);
          const c2 = cpuSeconds(server.pid);
          const how = limitMiB === 0 ? 'none' : limited !== undefined ? 'cgroup' : `flags (${derived.join(' ')})`;
          console.log(
            `| ${v.name} | ${v.flags || '—'} | ${how} | ${idle} | ${after1} | ${(((c1 - c0) / calls) * 1e6).toFixed(0)} | ${mb(server.pid)} | ${(((c2 - c1) / calls) * 1e6).toFixed(0)} | ${e1 + e2} |`,
          );
        } finally {
          await server.stop();
          limited?.remove();
        }
      }
    }
  } finally {
    await upstream.stop();
  }
};

process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => process.exit(130));
await main();
