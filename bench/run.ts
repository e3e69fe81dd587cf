import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { countConnections, viaHttpsProxy, type Via } from './load/client.js';
import { closedLoop, throughputTool, type ThroughputTool } from './load/max-throughput.js';
import { openLoop } from './load/open-loop.js';
import { measureLeafMints, type MintStats } from './mint.js';
import { parseOptions, type BenchOptions } from './options.js';
import {
  canPin,
  coreTimes,
  cpuModel,
  cpuSeconds,
  killAll,
  LOAD_CPU,
  PROXY_CPU,
  REPO_ROOT,
  hasCommand,
  rssBytes,
  startRedis,
  pinSelf,
  startServer,
  type ServerChild,
} from './proc.js';
import { summarizeProfile } from './profile-summary.js';
import { renderReport, writeReadme, type InterceptPhase, type Measured, type RunInfo, type Skipped } from './report.js';
import { configRefusal, prepareRevision, removeRevisions, type Revision } from './revisions.js';
import { interceptCounters } from './scrape.js';
import { heapFlagsNodeDerives, makePodCgroup, type PodCgroup } from './pod.js';
import { atRevision, benchRedis, INTERCEPT_BASELINE, INTERCEPT_HOST, INTERCEPTED, PREFIX, selectTargets, TARGETS, type Role, type Target } from './targets.js';

/**
 * `npm run bench`: direct, then every target (each followed by its rows from `--compare-rev` revisions), then direct
 * again, each measured the same way (see bench/README.md for the method). Every child is pinned, bounded in time, and
 * killed on the way out, and every revision's worktree removed, whatever happens.
 */

const opts = parseOptions(process.argv.slice(2), process.env);
const selected = selectTargets(opts.only);
/** Rows a compared revision adds: one per selected Fusebox target. */
const comparedRows = selected.filter((t) => t.role === 'fusebox').length * opts.compareRevs.length;

// Whatever happens, no child outlives the run and no worktree is left behind.
process.on('exit', () => {
  killAll();
  removeRevisions();
});
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    console.error(`\n${sig}: stopping every child`);
    killAll();
    process.exit(130);
  });
}
// A compared revision adds its rows, and its checkout and build (each bounded: 120 s and 300 s, see revisions.ts).
const watchdogS =
  (opts.quick ? 120 + comparedRows * 20 : 60 + (Math.max(TARGETS.length, selected.length + comparedRows) + 2) * (opts.durationS * 2 + 30)) +
  opts.compareRevs.length * 420;
const watchdog = setTimeout(() => {
  console.error(`bench: still running after ${watchdogS} s; killing every child and giving up`);
  killAll();
  process.exit(1);
}, watchdogS * 1000);

const log = (line: string) => console.error(`[bench] ${line}`);
/** Leaves minted for the mint-time measurement: enough samples for a p99 (the 198th of 200), under a second. */
const MINT_HOSTS = 200;
const slug = (name: string) => name.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '').toLowerCase();

interface Phase {
  name: string;
  role: Role | 'direct';
  /** Origin the requests name: the target's own, or `https://bench.test` through `via`. */
  url: string;
  /** Path prefix the target routes on ('' for the upstream itself, and inside an intercepted tunnel). */
  prefix: string;
  /** A client other than a Pool straight to `url` (HTTPS_PROXY): max throughput then uses our closed loop with it. */
  via?: Via;
  /** With `via`: the Fusebox admin listener, whose counters give the handshakes of the open-loop phase. */
  adminUrl?: string;
  /**
   * The base-URL partner of the intercepted row: max throughput also by the undici closed loop when the run's tool is
   * wrk, and the client's connections counted, as for the intercepted row.
   */
  interceptPartner?: boolean;
  /** Process whose CPU and RSS are measured; undefined for direct. */
  pid?: number;
  upstreamPid: number;
  /** With `--profile`: the server to profile during the open-loop phase, and where the profile goes. */
  profile?: { server: ServerChild; file: string };
}

interface CpuSample {
  /** CPU seconds used by the server under test (0 for direct). */
  server: number;
  /** Busy and total jiffies summed over every core. */
  busy: number;
  total: number;
  /** CPU seconds used by our own processes: this one (all threads), the upstream, the server. */
  ours: number;
  wallS: number;
}

const sampleCpu = (p: Phase): CpuSample => {
  const cores = Array.from({ length: cpus().length }, (_, i) => coreTimes(i));
  const self = process.cpuUsage();
  const server = p.pid !== undefined ? cpuSeconds(p.pid) : 0;
  return {
    server,
    busy: cores.reduce((a, c) => a + c.busy, 0),
    total: cores.reduce((a, c) => a + c.total, 0),
    ours: (self.user + self.system) / 1e6 + cpuSeconds(p.upstreamPid) + server,
    wallS: performance.now() / 1000,
  };
};

/** Server CPU over the interval, and what every other process on the machine used; both in % of one core. */
const cpuBetween = (a: CpuSample, b: CpuSample) => {
  const wallS = b.wallS - a.wallS;
  const jiffiesPerSecond = (b.total - a.total) / Math.max(1e-9, wallS * cpus().length);
  const allBusyS = (b.busy - a.busy) / Math.max(1, jiffiesPerSecond);
  return {
    serverPct: ((b.server - a.server) / wallS) * 100,
    backgroundPct: Math.max(0, ((allBusyS - (b.ours - a.ours)) / wallS) * 100),
  };
};

const mb = (bytes: number) => bytes / (1024 * 1024);

/**
 * A target's pod memory limit: a real cgroup where one can be made, else the heap flags Node would derive from the
 * limit added to the child's NODE_OPTIONS. `how` says which, for the log and the report.
 */
const podFor = (limitMiB: number, env: Record<string, string>): { cgroup?: PodCgroup; env: Record<string, string>; how: string } => {
  const made = makePodCgroup(limitMiB, `fusebox-bench-${process.pid}`);
  if (!('reason' in made)) return { cgroup: made, env, how: `in a memory cgroup limited to ${limitMiB} MiB` };
  const flags = heapFlagsNodeDerives(limitMiB).join(' ');
  return { env: { ...env, NODE_OPTIONS: `${env.NODE_OPTIONS ?? ''} ${flags}`.trim() }, how: `no cgroup (${made.reason}): ${flags}, the heap Node sizes for ${limitMiB} MiB` };
};

const measure = async (p: Phase, o: BenchOptions, runTool: ThroughputTool): Promise<Measured> => {
  const json = `${p.prefix}/json`;
  const sse = `${p.prefix}/sse`;
  // wrk cannot be a proxy client (CONNECT, then TLS inside the tunnel): such a row is measured with our closed loop.
  const tool = p.via !== undefined ? closedLoop(o.connections, p.via) : runTool;
  const client = p.via !== undefined ? { dispatcher: p.via.dispatcher } : {};
  log(`${p.name}: warm-up`);
  await tool.run(`${p.url}${json}`, o.warmupS);
  await openLoop({ origin: p.url, ...client, path: sse, rate: o.sseRate, durationS: Math.min(0.2, o.warmupS), until: 'first-byte' });
  await openLoop({ origin: p.url, ...client, path: json, rate: o.rate, durationS: o.quick ? 0.3 : 1, until: 'response' });

  log(`${p.name}: open loop ${o.rate} req/s × ${o.durationS} s`);
  const counters0 = p.adminUrl !== undefined ? await interceptCounters(p.adminUrl) : undefined;
  const connections = p.via !== undefined || p.interceptPartner === true ? countConnections(new URL(p.url).hostname) : undefined;
  await p.profile?.server.command({ cmd: 'profile-start' });
  const c0 = sampleCpu(p);
  const ol = await openLoop({ origin: p.url, ...client, path: json, rate: o.rate, durationS: o.durationS, until: 'response' });
  const rated = cpuBetween(c0, sampleCpu(p));
  if (p.profile !== undefined) await p.profile.server.command({ cmd: 'profile-stop', file: p.profile.file });
  const clientConnections = connections?.();
  const rssAtRate = p.pid !== undefined ? rssBytes(p.pid) : undefined;
  let intercept: InterceptPhase | undefined;
  if (p.adminUrl !== undefined && counters0 !== undefined) {
    const counters1 = await interceptCounters(p.adminUrl);
    intercept = {
      handshakes: counters1.handshakes - counters0.handshakes,
      requests: counters1.requests - counters0.requests,
      mints: counters1.mints,
      mintSecondsSum: counters1.mintSecondsSum,
    };
  }

  log(`${p.name}: SSE first byte × ${o.sseSamples}`);
  const firstByte = await openLoop({ origin: p.url, ...client, path: sse, rate: o.sseRate, durationS: o.sseSamples / o.sseRate, until: 'first-byte' });

  log(`${p.name}: max throughput (${tool.label}) × ${o.durationS} s`);
  const c1 = sampleCpu(p);
  const k0 = coreTimes(LOAD_CPU);
  const max = await tool.run(`${p.url}${json}`, o.durationS);
  const k1 = coreTimes(LOAD_CPU);
  const atMax = cpuBetween(c1, sampleCpu(p));

  // The intercepted row's max throughput comes from the closed loop: give its base-URL partner the same measurement.
  let closedLoopMaxRps = tool.kind === 'closed-loop' ? max.rps : undefined;
  let closedLoopErrors = 0;
  if (p.interceptPartner === true && closedLoopMaxRps === undefined) {
    const cl = closedLoop(o.connections);
    log(`${p.name}: max throughput (${cl.label}) × ${o.durationS} s, for comparison with the intercepted row`);
    const r = await cl.run(`${p.url}${json}`, o.durationS);
    closedLoopMaxRps = r.rps;
    closedLoopErrors = r.errors;
  }

  const rss = p.pid !== undefined ? rssBytes(p.pid) : undefined;
  const firstError = ol.firstError ?? firstByte.firstError;
  return {
    name: p.name,
    role: p.role,
    latency: ol.latency,
    openLoopErrors: ol.errors,
    ...(firstError !== undefined ? { firstError } : {}),
    latenessP99Us: Math.max(ol.lateness.p99, firstByte.lateness.p99),
    backgroundPct: rated.backgroundPct,
    ...(p.pid !== undefined
      ? { cpuAtRatePct: rated.serverPct, cpuPerRequestUs: ((rated.serverPct / 100) * ol.elapsedS * 1e6) / Math.max(1, ol.ok) }
      : {}),
    sse: firstByte.latency,
    sseErrors: firstByte.errors,
    maxRps: max.rps,
    maxErrors: max.errors + closedLoopErrors,
    maxTool: { kind: tool.kind, label: tool.label },
    ...(closedLoopMaxRps !== undefined ? { closedLoopMaxRps } : {}),
    ...(intercept !== undefined ? { intercept } : {}),
    ...(clientConnections !== undefined ? { clientConnections } : {}),
    ...(p.pid !== undefined ? { cpuAtMaxPct: atMax.serverPct } : {}),
    loadCoreAtMaxPct: ((k1.busy - k0.busy) / Math.max(1, k1.total - k0.total)) * 100,
    ...(rssAtRate !== undefined ? { rssAtRateMb: mb(rssAtRate) } : {}),
    ...(rss !== undefined ? { rssMb: mb(rss) } : {}),
  };
};

const main = async () => {
  const began = performance.now();
  const date = new Date().toISOString();
  const loadAvg = loadavg()
    .map((n) => n.toFixed(2))
    .join(' ');
  pinSelf(LOAD_CPU);
  // Fusebox is measured as production runs it: the compiled dist/, not tsx.
  log('building dist/ (tsc -p tsconfig.build.json)');
  execFileSync(process.execPath, [join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: REPO_ROOT, stdio: 'inherit' });
  const skipped: Skipped[] = [];
  const revisions: Revision[] = [];
  for (const spec of opts.compareRevs) {
    log(`--compare-rev=${spec}: git worktree add --detach, then tsc -p tsconfig.build.json`);
    const prepared = prepareRevision(spec);
    if ('reason' in prepared) {
      log(`--compare-rev=${spec}: skipped (${prepared.reason})`);
      skipped.push({ name: `every row @${spec}`, reason: prepared.reason });
      continue;
    }
    const r = prepared.revision;
    revisions.push(r);
    log(`@${r.short}: ${r.subject} (${r.date}), built in ${r.dist}${r.lockDiffers ? '; its package-lock.json differs from the current one' : ''}`);
  }
  /** Each selected target, followed by the same target from every compared revision (Fusebox targets only). */
  const rows: Array<{ target: Target; compared?: { revision: Revision; of: string } }> = selected.flatMap((t) => [
    { target: t },
    ...(t.role === 'fusebox' ? revisions.map((revision) => ({ target: atRevision(t, revision), compared: { revision, of: t.name } })) : []),
  ]);
  const tool = throughputTool(opts.connections);
  log(
    `${opts.quick ? 'quick mode, ' : ''}${rows.length} targets + direct ×2; ${canPin ? `pinned: server CPU ${PROXY_CPU}, load CPU ${LOAD_CPU}` : 'NOT pinned'}; throughput: ${tool.label}`,
  );

  const intercepting = selected.some((t) => t.via === 'https-proxy');
  let mint: MintStats | undefined;
  if (intercepting) {
    // Before any server starts: the load core is idle, and the figure is the CA code's alone.
    log(`leaf mint time: ${MINT_HOSTS} hosts, one leaf each (dist/src/intercept/ca.js, in this process)`);
    mint = await measureLeafMints(join(REPO_ROOT, 'dist'), MINT_HOSTS);
  }

  const profileDir = opts.profile ? mkdtempSync(join(tmpdir(), 'fusebox-bench-profiles-')) : undefined;
  const profiles: Array<{ name: string; file: string }> = [];
  const upstream = await startServer('upstream.ts', LOAD_CPU, {});
  if (benchRedis.url === undefined && selected.some((t) => t.name.includes('redis')) && hasCommand('redis-server')) {
    benchRedis.url = await startRedis(LOAD_CPU);
    log(`redis-server for the caps(redis) target at ${benchRedis.url}, pinned to CPU ${LOAD_CPU}`);
  }
  const results: Measured[] = [];
  try {
    results.push(await measure({ name: 'direct (start)', role: 'direct', url: upstream.url, prefix: '', upstreamPid: upstream.pid }, opts, tool));
    for (const { target: t, compared } of rows) {
      // Another revision's schema may refuse what the bench asks of the current one: that row is skipped, with why.
      const reason = t.unavailable?.() ?? (compared !== undefined ? configRefusal(t.env(upstream.url)) : undefined);
      if (reason !== undefined) {
        log(`${t.name}: skipped (${reason})`);
        skipped.push({ name: t.name, reason });
        continue;
      }
      let server: ServerChild | undefined;
      let podCgroup: PodCgroup | undefined;
      // Where the intercepted target's Fusebox writes its pod CA certificate, for the client to trust.
      const caDir = t.via === 'https-proxy' ? mkdtempSync(join(tmpdir(), 'fusebox-bench-ca-')) : undefined;
      try {
        let phase: Phase;
        let profile: Phase['profile'];
        try {
          const env = { ...t.env(upstream.url), ...(caDir !== undefined ? { FUSEBOX_CA_DIR: caDir } : {}) };
          const pod = t.memoryLimitMiB !== undefined ? podFor(t.memoryLimitMiB, env) : undefined;
          podCgroup = pod?.cgroup;
          if (pod !== undefined) log(`${t.name}: ${pod.how}`);
          server = await startServer(t.script, PROXY_CPU, pod?.env ?? env, undefined, pod?.cgroup?.wrap);
          // HAProxy is not a Node process: nothing to profile.
          profile = profileDir !== undefined && t.role !== 'reference' ? { server, file: join(profileDir, `${slug(t.name)}.cpuprofile`) } : undefined;
          const common = { name: t.name, role: t.role, pid: server.pid, upstreamPid: upstream.pid, ...(profile ? { profile } : {}) };
          if (caDir !== undefined) {
            if (server.adminUrl === undefined) throw new Error(`${t.name}: the child announced no admin URL`);
            // Written before the proxy port opens (src/app.ts), so it is there once the child says it is ready.
            const caFile = join(caDir, 'ca.crt');
            if (!existsSync(caFile)) throw new Error(`its Fusebox wrote no ca.crt to FUSEBOX_CA_DIR: it does not intercept tunnels to ${INTERCEPT_HOST}`);
            const via = viaHttpsProxy(server.url, readFileSync(caFile, 'utf8'), INTERCEPT_HOST);
            phase = { ...common, url: via.origin, prefix: '', via, adminUrl: server.adminUrl };
          } else {
            phase = { ...common, url: server.url, prefix: PREFIX, interceptPartner: t.name === INTERCEPT_BASELINE && intercepting };
          }
        } catch (err) {
          // The current code failing here is a broken bench; another revision failing is a finding about that revision.
          if (compared === undefined) throw err;
          const reason = (err as Error).message.split('\n').slice(0, 4).join('; ');
          log(`${t.name}: skipped (${reason})`);
          skipped.push({ name: t.name, reason });
          continue;
        }
        const measured = await measure(phase, opts, tool);
        results.push(compared !== undefined ? { ...measured, compared: { revision: compared.revision.short, of: compared.of } } : measured);
        if (profile !== undefined) profiles.push({ name: t.name, file: profile.file });
      } finally {
        await server?.stop();
        podCgroup?.remove();
        if (caDir !== undefined) rmSync(caDir, { recursive: true, force: true });
      }
    }
    results.push(await measure({ name: 'direct (end)', role: 'direct', url: upstream.url, prefix: '', upstreamPid: upstream.pid }, opts, tool));
  } finally {
    await upstream.stop();
  }

  const info: RunInfo = {
    date,
    nproc: cpus().length,
    cpuModel: cpuModel(),
    node: process.version,
    loadAvg,
    pinned: canPin,
    quick: opts.quick,
    rate: opts.rate,
    durationS: opts.durationS,
    warmupS: opts.warmupS,
    throughputTool: tool.label,
    sseSamples: opts.sseSamples,
    sseRate: opts.sseRate,
    elapsedS: (performance.now() - began) / 1000,
    revisions,
  };
  const report = renderReport(info, results, skipped, { ...(mint !== undefined ? { mint } : {}), intercepted: INTERCEPTED, baseline: INTERCEPT_BASELINE, host: INTERCEPT_HOST });
  console.log(report);
  for (const p of profiles) {
    console.log(`\nCPU profile of ${p.name} during the open-loop phase (${p.file}, open it in Chrome DevTools):\n${summarizeProfile(p.file)}`);
  }
  if (opts.writeReadme) {
    writeReadme(join(REPO_ROOT, 'bench', 'README.md'), report);
    log('bench/README.md updated');
  } else {
    log('bench/README.md not updated (quick mode or --no-readme; pass --readme to write it)');
  }
};

try {
  await main();
} catch (err) {
  console.error(`bench failed: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
} finally {
  clearTimeout(watchdog);
  killAll();
  removeRevisions();
}
