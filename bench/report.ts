import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { LatencySummary } from './stats.js';
import type { Role } from './targets.js';

export interface Measured {
  name: string;
  role: Role | 'direct';
  /** Open loop at the fixed rate, latency from intended send time. */
  latency: LatencySummary;
  openLoopErrors: number;
  firstError?: string;
  /** p99 of the generator's own send lateness in this run, µs. */
  latenessP99Us: number;
  /** CPU used by processes other than ours (other jobs on the machine) during the open-loop phase, % of one core. */
  backgroundPct: number;
  /** CPU of the server under test during the open-loop phase, % of one core. */
  cpuAtRatePct?: number;
  /** CPU time per request during the open-loop phase, µs. */
  cpuPerRequestUs?: number;
  sse: LatencySummary;
  sseErrors: number;
  maxRps: number;
  maxErrors: number;
  /** CPU of the server under test during the max-throughput phase, % of one core. */
  cpuAtMaxPct?: number;
  /** Busy % of the core the generator and upstream share, during the max-throughput phase. */
  loadCoreAtMaxPct: number;
  /** RSS of the server under test after the open-loop phase, and after the whole run (max throughput last). */
  rssAtRateMb?: number;
  rssMb?: number;
}

export interface Skipped {
  name: string;
  reason: string;
}

export interface RunInfo {
  date: string;
  nproc: number;
  cpuModel: string;
  node: string;
  loadAvg: string;
  pinned: boolean;
  quick: boolean;
  rate: number;
  durationS: number;
  warmupS: number;
  throughputTool: string;
  sseSamples: number;
  sseRate: number;
  elapsedS: number;
}

/** The issue's targets, checked on every Fusebox target. */
export const GOALS = {
  addedP50Ms: 0.5,
  addedP99Ms: 3,
  throughputVsFloor: 1.0,
  sseFirstByteMs: 1,
  rssMb: 150,
  /** Issue 4: the Redis store adds at most this to p99 over the memory store. */
  redisAddedP99Ms: 1,
};

const ms = (us: number) => (Number.isFinite(us) ? (us / 1000).toFixed(3) : 'n/a');
const signedMs = (us: number) => (Number.isFinite(us) ? `${us >= 0 ? '+' : '−'}${(Math.abs(us) / 1000).toFixed(3)}` : 'n/a');
const int = (n: number | undefined) => (n === undefined || !Number.isFinite(n) ? '—' : Math.round(n).toLocaleString('en-US'));
const pct = (n: number | undefined) => (n === undefined || !Number.isFinite(n) ? '—' : `${Math.round(n)} %`);
const verdict = (ok: boolean) => (ok ? '**pass**' : '**MISS**');

interface Baseline {
  p50: number;
  p99: number;
  sseP50: number;
  sseP99: number;
}

/** Direct is measured first and last; the baseline is their mean, and their difference is the noise band. */
const baselineOf = (direct: Measured[]): Baseline => {
  const mean = (f: (m: Measured) => number) => direct.reduce((a, m) => a + f(m), 0) / direct.length;
  return { p50: mean((m) => m.latency.p50), p99: mean((m) => m.latency.p99), sseP50: mean((m) => m.sse.p50), sseP99: mean((m) => m.sse.p99) };
};

export const renderReport = (info: RunInfo, results: Measured[], skipped: Skipped[]): string => {
  const direct = results.filter((r) => r.role === 'direct');
  const base = baselineOf(direct);
  const floor = results.find((r) => r.role === 'floor');
  const out: string[] = [];

  out.push(
    `Run of ${info.date}${info.quick ? ' — **quick mode (smoke test, not a measurement)**' : ''}, ${info.elapsedS.toFixed(0)} s.`,
    '',
    `Machine: ${info.nproc} × ${info.cpuModel}, Node ${info.node}, load average at start ${info.loadAvg}. ` +
      (info.pinned
        ? 'Server under test pinned to CPU 0; load generator and upstream pinned to CPU 1.'
        : '**Not pinned** (needs 2 cores and `taskset`): every process shared the machine, numbers are noisier.'),
    '',
    `Open loop: ${info.rate.toLocaleString('en-US')} req/s for ${info.durationS} s after ${info.warmupS} s of closed-loop warm-up, ` +
      `latency from the intended send time. Max throughput: \`${info.throughputTool}\` for ${info.durationS} s. ` +
      `SSE: ${info.sseSamples} streams started at ${info.sseRate}/s, time to the first event.`,
    '',
    `| target | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU at ${info.rate.toLocaleString('en-US')} req/s | CPU µs/req | max req/s | × floor | CPU at max | SSE TTFB p50 ms | SSE TTFB p99 ms | RSS MB (after rate / end) |`,
    '|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|',
  );
  for (const r of results) {
    const isDirect = r.role === 'direct';
    out.push(
      `| ${r.name} | ${ms(r.latency.p50)} | ${ms(r.latency.p99)} | ${isDirect ? '—' : signedMs(r.latency.p50 - base.p50)} | ${
        isDirect ? '—' : signedMs(r.latency.p99 - base.p99)
      } | ${pct(r.cpuAtRatePct)} | ${int(r.cpuPerRequestUs)} | ${int(r.maxRps)} | ${
        floor && !isDirect ? `${(r.maxRps / floor.maxRps).toFixed(2)}×` : '—'
      } | ${pct(r.cpuAtMaxPct)} | ${ms(r.sse.p50)} | ${ms(r.sse.p99)} | ${
        r.rssMb === undefined ? '—' : `${(r.rssAtRateMb ?? NaN).toFixed(0)} / ${r.rssMb.toFixed(0)}`
      } |`,
    );
  }
  for (const s of skipped) out.push(`| ${s.name} | skipped: ${s.reason} |||||||||||||`);

  const fuseboxes = results.filter((r) => r.role === 'fusebox');
  if (fuseboxes.length > 0) {
    out.push('', `Targets from the issue (baseline: mean of the two direct runs; throughput against the floor measured in this run):`, '');
    out.push(`| check | goal | ${fuseboxes.map((f) => f.name).join(' | ')} |`, `|---|---|${fuseboxes.map(() => '---|').join('')}`);
    const row = (check: string, goal: string, cell: (f: Measured) => string) => out.push(`| ${check} | ${goal} | ${fuseboxes.map(cell).join(' | ')} |`);
    row('added latency p50 at rate', `≤ ${GOALS.addedP50Ms} ms`, (f) => {
      const d = f.latency.p50 - base.p50;
      return `${signedMs(d)} ms ${verdict(d / 1000 <= GOALS.addedP50Ms)}`;
    });
    row('added latency p99 at rate', `≤ ${GOALS.addedP99Ms} ms`, (f) => {
      const d = f.latency.p99 - base.p99;
      return `${signedMs(d)} ms ${verdict(d / 1000 <= GOALS.addedP99Ms)}`;
    });
    row('max throughput vs floor', `≥ ${GOALS.throughputVsFloor.toFixed(1)}×`, (f) => {
      if (!floor) return 'no floor in this run';
      const x = f.maxRps / floor.maxRps;
      return `${x.toFixed(2)}× ${verdict(x >= GOALS.throughputVsFloor)}`;
    });
    row('SSE first byte vs direct (p50)', `≤ +${GOALS.sseFirstByteMs} ms`, (f) => {
      const d = f.sse.p50 - base.sseP50;
      return `${signedMs(d)} ms (p99 ${signedMs(f.sse.p99 - base.sseP99)}) ${verdict(d / 1000 <= GOALS.sseFirstByteMs)}`;
    });
    row('RSS after the run (max throughput last)', `≤ ${GOALS.rssMb} MB`, (f) =>
      f.rssMb === undefined ? 'n/a' : `${f.rssMb.toFixed(0)} MB ${verdict(f.rssMb <= GOALS.rssMb)}`,
    );
  }

  const mem = results.find((r) => r.name === 'fusebox+caps(memory)');
  const redis = results.find((r) => r.name === 'fusebox+caps(redis)');
  if (mem && redis) {
    const d99 = redis.latency.p99 - mem.latency.p99;
    out.push(
      '',
      `Budget store on the hot path (issue 4: Redis adds ≤ ${GOALS.redisAddedP99Ms} ms p99 over memory): ` +
        `p50 ${signedMs(redis.latency.p50 - mem.latency.p50)} ms, p99 ${signedMs(d99)} ms ${verdict(d99 / 1000 <= GOALS.redisAddedP99Ms)}; ` +
        `CPU per request ${int(mem.cpuPerRequestUs)} → ${int(redis.cpuPerRequestUs)} µs.`,
    );
  }

  out.push('', 'Notes:');
  if (direct.length === 2) {
    const [a, b] = direct as [Measured, Measured];
    out.push(
      `- Noise band (direct, start vs end): p50 ${signedMs(b.latency.p50 - a.latency.p50)} ms, p99 ${signedMs(b.latency.p99 - a.latency.p99)} ms, ` +
        `max req/s ${(((b.maxRps - a.maxRps) / a.maxRps) * 100).toFixed(1)} %, SSE p50 ${signedMs(b.sse.p50 - a.sse.p50)} ms. ` +
        'Differences smaller than this are not findings.',
    );
  }
  const worstBg = results.reduce((a, r) => (r.backgroundPct > a.backgroundPct ? r : a));
  const meanBg = results.reduce((a, r) => a + r.backgroundPct, 0) / results.length;
  out.push(
    `- Other processes on the machine used ${meanBg.toFixed(0)} % of a core on average during the open-loop phases ` +
      `(most: ${worstBg.backgroundPct.toFixed(0)} % during ${worstBg.name}).` +
      (worstBg.backgroundPct > 10 ? ' **The machine was not quiet: tails (p99) are disturbed; rerun when it is.**' : ''),
  );
  const lateness = Math.max(...results.map((r) => r.latenessP99Us));
  out.push(`- Load generator's own send lateness, worst p99 over all runs: ${(lateness / 1000).toFixed(3)} ms (included in every latency above).`);
  const loadBound = results.filter((r) => r.role !== 'direct' && (r.cpuAtMaxPct ?? 0) < 90 && r.loadCoreAtMaxPct >= 90);
  for (const r of loadBound) {
    out.push(
      `- ${r.name}: its max req/s is bounded by the load core (generator + upstream at ${pct(r.loadCoreAtMaxPct)}), not by the proxy (${pct(r.cpuAtMaxPct)}): a lower bound.`,
    );
  }
  for (const r of results) {
    const errs = r.openLoopErrors + r.sseErrors + r.maxErrors;
    if (errs > 0) {
      out.push(
        `- ${r.name}: ${errs} errors (open loop ${r.openLoopErrors}, SSE ${r.sseErrors}, max throughput ${r.maxErrors})${r.firstError ? `; first: ${r.firstError}` : ''}.`,
      );
    }
  }
  if (results.every((r) => r.openLoopErrors + r.sseErrors + r.maxErrors === 0)) out.push('- No errors or non-200 answers in any phase.');
  return out.join('\n');
};

const START = '<!-- latest-results:start (written by `npm run bench`; edits here are overwritten) -->';
const END = '<!-- latest-results:end -->';

/** Replace the "Latest results" section of the README, keeping everything else as written. */
export const writeReadme = (file: string, report: string): void => {
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '# Fusebox benchmark\n';
  const section = `${START}\n${report}\n${END}`;
  const a = text.indexOf(START);
  const b = text.indexOf(END);
  const next =
    a >= 0 && b > a ? text.slice(0, a) + section + text.slice(b + END.length) : `${text.trimEnd()}\n\n## Latest results\n\n${section}\n`;
  writeFileSync(file, next);
};
