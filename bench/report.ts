import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { ThroughputTool } from './load/max-throughput.js';
import type { MintStats } from './mint.js';
import type { Revision } from './revisions.js';
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
  /** What measured `maxRps`: the run's tool, or our closed loop for a proxy client (wrk cannot be one). */
  maxTool: Pick<ThroughputTool, 'kind' | 'label'>;
  /** Max req/s by the undici closed loop (= `maxRps` when that was the tool), for rows compared with the intercepted one. */
  closedLoopMaxRps?: number;
  /** The intercepted row: what its Fusebox counted during the open-loop phase. */
  intercept?: InterceptPhase;
  /**
   * Connections the load client opened during the open-loop phase (undici's `undici:client:connected`), counted on the
   * intercepted row and its base-URL partner only.
   */
  clientConnections?: number;
  /** CPU of the server under test during the max-throughput phase, % of one core. */
  cpuAtMaxPct?: number;
  /** Busy % of the core the generator and upstream share, during the max-throughput phase. */
  loadCoreAtMaxPct: number;
  /** RSS of the server under test after the open-loop phase, and after the whole run (max throughput last). */
  rssAtRateMb?: number;
  rssMb?: number;
  /** A row of another revision's Fusebox (`--compare-rev`): its short hash, and the current row it stands beside. */
  compared?: { revision: string; of: string };
}

/** TLS handshakes against requests during the intercepted row's open-loop phase (issue 10). */
export interface InterceptPhase {
  /** Handshakes Fusebox completed in intercepted tunnels during the phase. */
  handshakes: number;
  /** Calls it answered inside them during the phase. */
  requests: number;
  /** Leaves this Fusebox minted over its life (warm-up included), and their total time, seconds. */
  mints: number;
  mintSecondsSum: number;
}

/** The interception section's inputs besides the rows: row names and the in-process mint measurement. */
export interface InterceptionInfo {
  intercepted: string;
  baseline: string;
  /** Host the intercepted client calls (`https://<host>/json`). */
  host: string;
  mint?: MintStats;
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
  /** Revisions measured beside the current code (`--compare-rev`), those that could be built. */
  revisions: Revision[];
}

/** The issue's targets, checked on every Fusebox target (issue 15 tightened p50 and throughput, and added CPU at rate). */
export const GOALS = {
  addedP50Ms: 0.3,
  addedP99Ms: 3,
  throughputVsFloor: 1.2,
  /** Issue 15: CPU of the server at the open-loop rate, in cores. */
  cpuAtRateCores: 0.25,
  sseFirstByteMs: 1,
  /** Issue 15: RSS after the open-loop phase (10 s at 1,000 req/s, after the warm-up), and after the run (saturation last). */
  rssAtRateMb: 120,
  rssMb: 160,
  /** Issue 4: the Redis store adds at most this to p99 over the memory store. */
  redisAddedP99Ms: 1,
  /** Issue 10: HTTPS_PROXY with interception adds at most this to p50 over base-URL mode (keep-alive clients). */
  interceptAddedP50Ms: 1,
  /** Issue 10: p99 of minting a new leaf. */
  leafMintP99Ms: 5,
  /**
   * Issue 10, no handshake per request with keep-alive: at most one per connection the client opened, and connections
   * reused (at least this many requests each on average; a server closing after each answer would give ~1).
   */
  requestsPerConnection: 10,
};

const ms = (us: number) => (Number.isFinite(us) ? (us / 1000).toFixed(3) : 'n/a');
const signedMs = (us: number) => (Number.isFinite(us) ? `${us >= 0 ? '+' : '−'}${(Math.abs(us) / 1000).toFixed(3)}` : 'n/a');
const int = (n: number | undefined) => (n === undefined || !Number.isFinite(n) ? '—' : Math.round(n).toLocaleString('en-US'));
const pct = (n: number | undefined) => (n === undefined || !Number.isFinite(n) ? '—' : `${Math.round(n)} %`);
const verdict = (ok: boolean) => (ok ? '**pass**' : '**MISS**');
/** Text that must stay inside one table cell (a compiler's or a schema's message). */
const cell = (text: string) => text.replace(/\|/g, '\\|').replace(/\s*\n\s*/g, '; ');

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

export const renderReport = (info: RunInfo, results: Measured[], skipped: Skipped[], interception?: InterceptionInfo): string => {
  const direct = results.filter((r) => r.role === 'direct');
  const base = baselineOf(direct);
  const floor = results.find((r) => r.role === 'floor');
  const out: string[] = [];
  /** A max req/s is compared with the floor's only when the same kind of generator measured both. */
  const vsFloor = (r: Measured): number | undefined => (floor && r.maxTool.kind === floor.maxTool.kind ? r.maxRps / floor.maxRps : undefined);
  const otherTool = results.filter((r) => r.maxTool.label !== info.throughputTool);

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
      } | ${pct(r.cpuAtRatePct)} | ${int(r.cpuPerRequestUs)} | ${int(r.maxRps)}${otherTool.includes(r) ? ' †' : ''} | ${
        !isDirect && vsFloor(r) !== undefined ? `${vsFloor(r)!.toFixed(2)}×` : '—'
      } | ${pct(r.cpuAtMaxPct)} | ${ms(r.sse.p50)} | ${ms(r.sse.p99)} | ${
        r.rssMb === undefined ? '—' : `${(r.rssAtRateMb ?? NaN).toFixed(0)} / ${r.rssMb.toFixed(0)}`
      } |`,
    );
  }
  for (const s of skipped) out.push(`| ${s.name} | skipped: ${cell(s.reason)} |||||||||||||`);

  // The issue's targets are checked on the code of this run; compared revisions are set against it in their own section.
  const fuseboxes = results.filter((r) => r.role === 'fusebox' && r.compared === undefined);
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
    row(`CPU at ${info.rate.toLocaleString('en-US')} req/s`, `≤ ${GOALS.cpuAtRateCores} core`, (f) =>
      f.cpuAtRatePct === undefined ? 'n/a' : `${(f.cpuAtRatePct / 100).toFixed(2)} core (${int(f.cpuPerRequestUs)} µs/req) ${verdict(f.cpuAtRatePct / 100 <= GOALS.cpuAtRateCores)}`,
    );
    row('max throughput vs floor', `≥ ${GOALS.throughputVsFloor.toFixed(1)}×`, (f) => {
      if (!floor) return 'no floor in this run';
      const x = vsFloor(f);
      if (x === undefined) return `n/a (${f.maxTool.kind} vs the floor's ${floor.maxTool.kind})`;
      return `${x.toFixed(2)}× ${verdict(x >= GOALS.throughputVsFloor)}`;
    });
    row('SSE first byte vs direct (p50)', `≤ +${GOALS.sseFirstByteMs} ms`, (f) => {
      const d = f.sse.p50 - base.sseP50;
      return `${signedMs(d)} ms (p99 ${signedMs(f.sse.p99 - base.sseP99)}) ${verdict(d / 1000 <= GOALS.sseFirstByteMs)}`;
    });
    row(`RSS after ${info.durationS} s at ${info.rate.toLocaleString('en-US')} req/s`, `≤ ${GOALS.rssAtRateMb} MB`, (f) =>
      f.rssAtRateMb === undefined ? 'n/a' : `${f.rssAtRateMb.toFixed(0)} MB ${verdict(f.rssAtRateMb <= GOALS.rssAtRateMb)}`,
    );
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

  if (interception !== undefined) out.push(...interceptionSection(info, results, interception));
  if (results.some((r) => r.compared !== undefined)) out.push(...comparedSection(info, results));

  out.push('', 'Notes:');
  for (const r of otherTool) out.push(`- † ${r.name}: max req/s by \`${r.maxTool.label}\`, not \`${info.throughputTool}\`.`);
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

/**
 * Issue 10: what HTTPS_PROXY with interception adds over base-URL mode for the same Fusebox config (both rows in one
 * run), how long a new leaf takes to mint, and whether a keep-alive client pays a handshake per request.
 */
const interceptionSection = (info: RunInfo, results: Measured[], i: InterceptionInfo): string[] => {
  const ic = results.find((r) => r.name === i.intercepted);
  const bu = results.find((r) => r.name === i.baseline);
  if (ic === undefined && i.mint === undefined) return [];
  const out = ['', `Interception (issue 10): \`${i.intercepted}\` is \`${i.baseline}\`'s Fusebox config reached as an agent with only \`HTTPS_PROXY\` reaches it (undici ProxyAgent: \`CONNECT ${i.host}:443\`, TLS to a leaf of the pod CA, keep-alive), the other row by base URL.`, ''];
  out.push('| check | goal | measured |', '|---|---|---|');
  if (ic !== undefined && bu !== undefined) {
    const d50 = ic.latency.p50 - bu.latency.p50;
    out.push(
      `| added p50 at ${info.rate.toLocaleString('en-US')} req/s, intercepted − base URL | ≤ ${GOALS.interceptAddedP50Ms} ms | ${signedMs(d50)} ms ${verdict(d50 / 1000 <= GOALS.interceptAddedP50Ms)} (p99 ${signedMs(ic.latency.p99 - bu.latency.p99)} ms; Fusebox CPU per request ${int(bu.cpuPerRequestUs)} → ${int(ic.cpuPerRequestUs)} µs; SSE first byte p50 ${signedMs(ic.sse.p50 - bu.sse.p50)} ms) |`,
    );
  } else {
    out.push(`| added p50, intercepted − base URL | ≤ ${GOALS.interceptAddedP50Ms} ms | n/a: run both \`${i.baseline}\` rows (\`--targets=caps(memory)\`) |`);
  }
  const m = i.mint;
  if (m !== undefined) {
    out.push(
      `| new leaf minted, p99 of ${m.count} (one per host, in-process on \`dist/\`) | ≤ ${GOALS.leafMintP99Ms} ms | ${m.p99.toFixed(3)} ms ${verdict(m.p99 <= GOALS.leafMintP99Ms)} (p50 ${m.p50.toFixed(3)}, max ${m.max.toFixed(3)}, first of the process ${m.first.toFixed(3)} ms; CPU per mint p50 ${m.cpuP50.toFixed(3)}, p99 ${m.cpuP99.toFixed(3)} ms) |`,
    );
  }
  const h = ic?.intercept;
  const conns = ic?.clientConnections;
  if (h !== undefined && conns !== undefined) {
    const perRequest = h.requests > 0 ? h.handshakes / h.requests : NaN;
    const ok = h.requests > 0 && h.handshakes <= conns && conns * GOALS.requestsPerConnection <= h.requests;
    out.push(
      `| TLS handshakes during the open-loop phase | ≤ 1 per client connection, none per request (≥ ${GOALS.requestsPerConnection} requests per connection) | ` +
        `${int(h.handshakes)} handshakes for ${int(h.requests)} requests (${Number.isFinite(perRequest) ? perRequest.toFixed(4) : 'n/a'} per request), ` +
        `client connections ${int(conns)} (${(h.requests / Math.max(1, conns)).toFixed(0)} requests each)${bu?.clientConnections !== undefined ? `; the base-URL row's client opened ${int(bu.clientConnections)} in the same phase` : ''} ${verdict(ok)} |`,
    );
  }
  if (ic?.closedLoopMaxRps !== undefined && bu?.closedLoopMaxRps !== undefined) {
    out.push(
      `| max throughput, both by the undici closed loop | — (for scale) | base URL ${int(bu.closedLoopMaxRps)} req/s, intercepted ${int(ic.closedLoopMaxRps)} req/s (${(ic.closedLoopMaxRps / bu.closedLoopMaxRps).toFixed(2)}×) |`,
    );
  }
  out.push('');
  const notes: string[] = [];
  if (m !== undefined) {
    notes.push(
      'Mint time: a PodCa generated in the bench process for that many hosts, each leaf minted once, timed by the CA\'s `onMint` hook (what `fusebox_intercept_leaf_mint_seconds` records). The Fusebox under load mints once per host, so its histogram has one sample: no p99 from it' +
        (h !== undefined && h.mints > 0 ? `; its own mint took ${((h.mintSecondsSum / h.mints) * 1000).toFixed(3)} ms (${h.mints} leaf, from the histogram's sum).` : '.'),
    );
  }
  if (ic !== undefined) {
    notes.push(
      'Handshakes: `fusebox_tunnels_total{mode="intercept",outcome="opened"}` (one per completed TLS handshake) and `fusebox_requests_total{mode="intercept"}` read from the admin port before and after the phase; client connections counted on undici\'s `undici:client:connected` channel. Each phase starts a new client, so its connections handshake at its start; a client opens more connections when answers stall (up to 256), so the count follows the machine\'s noise.',
      `Latency of the intercepted row includes the client's own TLS work on the load core; its max req/s is measured with \`${ic.maxTool.label}\`${ic.maxTool.kind === 'wrk' ? '' : ' (wrk cannot be a proxy client)'}.`,
    );
  }
  if (notes.length > 0) out.push(notes.join(' '));
  return out;
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

/**
 * `--compare-rev`: each row of another revision against the current row it stands beside, measured minutes apart in
 * the same run (issue 12: "the bench shows no regression (same run, before/after rows)").
 */
const comparedSection = (info: RunInfo, results: Measured[]): string[] => {
  const out = ['', 'Before/after (`--compare-rev`): each row of another revision against the same target on the code of this run, measured beside it in this run.', ''];
  for (const r of info.revisions) {
    out.push(
      `- \`@${r.short}\` is ${r.sha.slice(0, 12)} (${r.date}) "${r.subject}": built with its own \`tsconfig.build.json\`, run by the same bench child on the current \`node_modules\`; ` +
        (r.lockDiffers
          ? '**its package-lock.json differs from the current one**: a dependency change between the two is not in these rows.'
          : 'its package-lock.json is the current one (same dependencies).'),
    );
  }
  out.push(
    '',
    `| target | revision → now | p50 ms | p99 ms | CPU µs/req | max req/s | SSE TTFB p50 ms | RSS MB (after rate / end) |`,
    '|---|---|--:|--:|--:|--:|--:|--:|',
  );
  const pair = (a: string, b: string, d: string) => `${a} → ${b} (${d})`;
  const rel = (a: number, b: number) => (a > 0 ? `${b >= a ? '+' : '−'}${Math.abs(((b - a) / a) * 100).toFixed(0)} %` : 'n/a');
  const rss = (m: Measured) => (m.rssMb === undefined ? '—' : `${(m.rssAtRateMb ?? NaN).toFixed(0)} / ${m.rssMb.toFixed(0)}`);
  for (const before of results) {
    if (before.compared === undefined) continue;
    const now = results.find((r) => r.name === before.compared!.of);
    if (now === undefined) {
      out.push(`| ${before.compared.of} | @${before.compared.revision} → now | the current row is missing from this run |||||||`);
      continue;
    }
    const b = before;
    out.push(
      `| ${now.name} | @${b.compared!.revision} → now | ${pair(ms(b.latency.p50), ms(now.latency.p50), signedMs(now.latency.p50 - b.latency.p50))} | ` +
        `${pair(ms(b.latency.p99), ms(now.latency.p99), signedMs(now.latency.p99 - b.latency.p99))} | ` +
        `${pair(int(b.cpuPerRequestUs), int(now.cpuPerRequestUs), rel(b.cpuPerRequestUs ?? NaN, now.cpuPerRequestUs ?? NaN))} | ` +
        `${pair(int(b.maxRps), int(now.maxRps), rel(b.maxRps, now.maxRps))}${b.maxTool.kind !== now.maxTool.kind ? ' (different generators)' : ''} | ` +
        `${pair(ms(b.sse.p50), ms(now.sse.p50), signedMs(now.sse.p50 - b.sse.p50))} | ${rss(b)} → ${rss(now)} |`,
    );
  }
  out.push('', 'Read each difference against the noise band below (direct, start vs end): one smaller than it is not a finding.');
  return out;
};
