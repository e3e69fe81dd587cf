import { parseArgs } from 'node:util';
import { ConfigError, loadConfigFile } from '../config/load.js';
import { closest } from '../config/problems.js';
import { SloSchema, type Config } from '../config/schema.js';
import { MINUTE_MS, type BucketFields } from '../slo/buckets.js';
import { assessSlo, BURN_WINDOWS, SLO_KINDS, type BurnWindow, type GoodBad, type SloAssessment, type SloKind } from '../slo/burn.js';
import { compareSamples, DEFAULT_COMPARE_THRESHOLDS, sampleOf, type CompareThresholds, type Comparison } from '../slo/compare.js';
import { CounterStoreUnavailableError, RedisCounterStore } from '../slo/counter-store.js';
import { RedisConnection } from '../store/redis-connection.js';
import { readRedisTls, type RedisTlsOptions } from '../store/redis-tls.js';
import { DEFAULT_GATE_THRESHOLDS, GATE_EXIT, judgeSlos, type GateThresholds, type GateVerdict, type SloJudgement } from '../slo/gate.js';
import { objectiveOf, sloSpecOf, type SloRouteSpec } from '../slo/spec.js';
import { readSloWindows, readWindows } from '../slo/windows.js';

export interface GateIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  env?: NodeJS.ProcessEnv;
  /** Clock, ms; tests pass a fixed one. */
  now?: () => number;
}

export const GATE_USAGE = `Usage: fusebox gate --store redis://HOST:6379 --route ROUTE [options]
       fusebox gate --store redis://HOST:6379 --compare canary=ROUTE1,stable=ROUTE2 [options]

The error-budget gatekeeper for CI/CD: reads the fleet's SLO counters from the shared store and answers
PROCEED, HALT or ROLLBACK with the numbers behind the verdict.

  --route ROUTE: ROLLBACK when the error budget is spent or the burn rate over both 1 h and 5 min is above
  --rollback-burn; HALT when the burn over both 6 h and 30 min is above --halt-burn or less than
  --halt-budget-percent of the budget is left. Never PROCEED with fewer than --min-events events over the
  SLO window or the last 6 h.
  --compare canary=R1,stable=R2: compares error rate, p99 latency and cost per call of the two routes over
  the last --compare-minutes, each against a halt and a rollback threshold.
  A route is known from --config, else by its counters in the store: a route with none is a usage error (exit 2)
  listing the routes the store has; give a new route without traffic yet with --config.

Options:
      --store URL                 redis://, rediss:// or redis+cluster://H1:P1,H2:P2 URL of the shared store (default: store.url of --config)
  -c, --config FILE               Fusebox config: SLO objectives, window and min events of the route, the store
      --key-prefix PREFIX         key prefix (default: store.keyPrefix of --config, else fusebox)
      --route ROUTE               the route to judge
      --slo SLO                   availability (default), latency, cost or all
      --objective PERCENT         override the SLO's objective (with one --slo)
      --window-days DAYS          override the SLO window (default: the route's, else 30)
      --min-events N              fewest events to trust a number (default: the route's minEvents, else 10)
      --rollback-burn X           default ${DEFAULT_GATE_THRESHOLDS.rollbackBurn}
      --halt-burn X               default ${DEFAULT_GATE_THRESHOLDS.haltBurn}
      --halt-budget-percent PCT   default ${DEFAULT_GATE_THRESHOLDS.haltBudgetPercent}
      --compare canary=R1,stable=R2
      --compare-minutes N         window of the comparison (default 30)
      --halt-error-delta PTS      canary error rate above stable's by these points (default ${DEFAULT_COMPARE_THRESHOLDS.haltErrorDelta}; rollback ${DEFAULT_COMPARE_THRESHOLDS.rollbackErrorDelta})
      --rollback-error-delta PTS
      --halt-latency-ratio X      canary p99 / stable p99 (default ${DEFAULT_COMPARE_THRESHOLDS.haltLatencyRatio}; rollback ${DEFAULT_COMPARE_THRESHOLDS.rollbackLatencyRatio})
      --rollback-latency-ratio X
      --halt-cost-ratio X         canary cost per call / stable's (default ${DEFAULT_COMPARE_THRESHOLDS.haltCostRatio}; rollback ${DEFAULT_COMPARE_THRESHOLDS.rollbackCostRatio})
      --rollback-cost-ratio X
      --timeout-ms MS             per store command (default 2000)
      --json                      print the verdict and the numbers as JSON
  -h, --help                      this text

Exit status: ${GATE_EXIT.PROCEED} PROCEED, ${GATE_EXIT.HALT} HALT, ${GATE_EXIT.ROLLBACK} ROLLBACK, ${GATE_EXIT.INSUFFICIENT_DATA} not enough data, ${GATE_EXIT.STORE_UNREACHABLE} store unreachable, ${GATE_EXIT.USAGE} usage error (unknown route included) or invalid config.`;

const OPTIONS = {
  store: { type: 'string' },
  config: { type: 'string', short: 'c' },
  'key-prefix': { type: 'string' },
  route: { type: 'string' },
  slo: { type: 'string', default: 'availability' },
  objective: { type: 'string' },
  'window-days': { type: 'string' },
  'min-events': { type: 'string' },
  'rollback-burn': { type: 'string' },
  'halt-burn': { type: 'string' },
  'halt-budget-percent': { type: 'string' },
  compare: { type: 'string' },
  'compare-minutes': { type: 'string' },
  'halt-error-delta': { type: 'string' },
  'rollback-error-delta': { type: 'string' },
  'halt-latency-ratio': { type: 'string' },
  'rollback-latency-ratio': { type: 'string' },
  'halt-cost-ratio': { type: 'string' },
  'rollback-cost-ratio': { type: 'string' },
  'timeout-ms': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS }>>['values'];

class UsageError extends Error {}

const write = (stream: NodeJS.WritableStream, text: string): Promise<void> =>
  new Promise((resolve, reject) => {
    stream.write(text, (err) => (err ? reject(err) : resolve()));
  });

const numberOpt = (values: Values, name: keyof typeof OPTIONS, check: (n: number) => boolean, what: string): number | undefined => {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (typeof raw !== 'string' || raw.trim() === '' || !Number.isFinite(n) || !check(n)) throw new UsageError(`--${name} must be ${what}, got "${String(raw)}"`);
  return n;
};
const positive = (n: number) => n > 0;
const positiveInt = (n: number) => Number.isInteger(n) && n > 0;

/** The URL without its password, for messages. */
const redactUrl = (url: string): string => {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
};

interface Plan {
  url: string;
  tls?: RedisTlsOptions;
  keyPrefix: string;
  timeoutMs: number;
  json: boolean;
  minEvents: number | undefined;
  /** The routes were checked against --config; without one, a route is known only by its counters in the store. */
  routesFromConfig: boolean;
  single?: { spec: SloRouteSpec; kinds: SloKind[]; thresholds: GateThresholds };
  compare?: { canary: string; stable: string; minutes: number; thresholds: CompareThresholds };
}

const DEFAULT_SLO = SloSchema.parse({});

const plan = (values: Values, env: NodeJS.ProcessEnv): Plan => {
  const loaded = values.config ? loadConfigFile(values.config, env) : undefined;
  const config: Config | undefined = loaded?.config;
  const url = values.store ?? (config?.store.kind === 'redis' ? config.store.url : undefined);
  if (!url) throw new UsageError('--store redis://HOST:PORT is required (or a --config whose store is redis): the gate reads the fleet counters there');
  if (!/^rediss?(\+cluster)?:\/\//.test(url)) {
    throw new UsageError(`--store must be a redis://, rediss:// or redis+cluster:// URL, got "${redactUrl(url)}" (a memory store lives inside one sidecar; the gate needs the shared store)`);
  }
  // The config's store.tls goes with a TLS URL, whether the URL came from the config or --store.
  const tls = loaded && /^rediss/.test(url) ? readRedisTls(loaded.config.store.tls, loaded.baseDir) : undefined;
  const common = {
    url,
    ...(tls !== undefined && { tls }),
    keyPrefix: values['key-prefix'] ?? config?.store.keyPrefix ?? 'fusebox',
    timeoutMs: numberOpt(values, 'timeout-ms', positiveInt, 'a whole number of milliseconds') ?? 2000,
    json: values.json ?? false,
    minEvents: numberOpt(values, 'min-events', positiveInt, 'a whole number above 0'),
    routesFromConfig: config !== undefined,
  };
  const routeSpec = (name: string): SloRouteSpec => {
    if (!config) return sloSpecOf(name, DEFAULT_SLO);
    const route = config.routes.find((r) => r.name === name);
    if (!route) throw new UsageError(`no route "${name}" in ${values.config} (routes: ${config.routes.map((r) => r.name).join(', ')})`);
    return sloSpecOf(name, route.slo);
  };

  if (values.compare !== undefined) {
    if (values.route !== undefined) throw new UsageError('give either --route or --compare, not both');
    const pairs = Object.fromEntries(values.compare.split(',').map((p) => p.split('=').map((s) => s.trim())));
    const { canary, stable } = pairs as Record<string, string | undefined>;
    if (!canary || !stable || Object.keys(pairs).length !== 2) throw new UsageError(`--compare wants canary=ROUTE1,stable=ROUTE2, got "${values.compare}"`);
    if (config) {
      routeSpec(canary);
      routeSpec(stable);
    }
    const t = DEFAULT_COMPARE_THRESHOLDS;
    const thresholds: CompareThresholds = {
      haltErrorDelta: numberOpt(values, 'halt-error-delta', positive, 'a number of percentage points above 0') ?? t.haltErrorDelta,
      rollbackErrorDelta: numberOpt(values, 'rollback-error-delta', positive, 'a number of percentage points above 0') ?? t.rollbackErrorDelta,
      haltLatencyRatio: numberOpt(values, 'halt-latency-ratio', positive, 'a ratio above 0') ?? t.haltLatencyRatio,
      rollbackLatencyRatio: numberOpt(values, 'rollback-latency-ratio', positive, 'a ratio above 0') ?? t.rollbackLatencyRatio,
      haltCostRatio: numberOpt(values, 'halt-cost-ratio', positive, 'a ratio above 0') ?? t.haltCostRatio,
      rollbackCostRatio: numberOpt(values, 'rollback-cost-ratio', positive, 'a ratio above 0') ?? t.rollbackCostRatio,
    };
    const minutes = numberOpt(values, 'compare-minutes', (n) => positiveInt(n) && n <= 360, 'a whole number of minutes from 1 to 360') ?? 30;
    return { ...common, minEvents: common.minEvents ?? (config ? routeSpec(canary).minEvents : DEFAULT_SLO.minEvents), compare: { canary, stable, minutes, thresholds } };
  }

  if (!values.route) throw new UsageError('--route ROUTE (or --compare canary=R1,stable=R2) is required');
  const slo = values.slo ?? 'availability';
  if (slo !== 'all' && !(SLO_KINDS as readonly string[]).includes(slo)) throw new UsageError(`--slo must be availability, latency, cost or all, got "${slo}"`);
  const kinds = slo === 'all' ? [...SLO_KINDS] : [slo as SloKind];
  let spec = routeSpec(values.route);
  const objective = numberOpt(values, 'objective', (n) => n > 0 && n < 100, 'a percentage between 0 and 100 (e.g. 99.5)');
  if (objective !== undefined) {
    if (kinds.length !== 1) throw new UsageError('--objective needs a single --slo');
    const key = kinds[0] === 'availability' ? 'availabilityObjectivePercent' : kinds[0] === 'latency' ? 'latencyObjectivePercent' : 'costObjectivePercent';
    spec = { ...spec, [key]: objective };
  }
  const windowDays = numberOpt(values, 'window-days', (n) => positiveInt(n) && n <= 90, 'a whole number of days from 1 to 90');
  if (windowDays !== undefined) spec = { ...spec, windowDays };
  const t = DEFAULT_GATE_THRESHOLDS;
  const thresholds: GateThresholds = {
    rollbackBurn: numberOpt(values, 'rollback-burn', positive, 'a burn rate above 0') ?? t.rollbackBurn,
    haltBurn: numberOpt(values, 'halt-burn', positive, 'a burn rate above 0') ?? t.haltBurn,
    haltBudgetPercent: numberOpt(values, 'halt-budget-percent', (n) => n >= 0 && n <= 100, 'a percentage from 0 to 100') ?? t.haltBudgetPercent,
  };
  return { ...common, minEvents: common.minEvents ?? spec.minEvents, single: { spec, kinds, thresholds } };
};

// ---------- unknown routes ----------

const isEmpty = (fields: Readonly<BucketFields>): boolean => Object.values(fields).every((v) => v === 0);

/**
 * Without --config a route is known by its counters alone. A route with no counters in the windows read is either a
 * typo (a usage error: "not enough data" would let a pipeline wait on a route that never gets any) or a route whose
 * counters are older than the windows: the store's day buckets tell which.
 */
const mustBeInStore = async (store: RedisCounterStore, routes: readonly string[], p: Plan): Promise<void> => {
  if (routes.length === 0) return;
  const known = await store.routes();
  const missing = routes.filter((r) => !known.includes(r));
  if (missing.length === 0) return;
  const names = missing.map((r) => {
    const guess = closest(r, known);
    return `"${r}"${guess === undefined ? '' : ` (did you mean "${guess}"?)`}`;
  });
  const shown = known.length > 30 ? `${known.slice(0, 30).join(', ')} and ${known.length - 30} more` : known.join(', ');
  throw new UsageError(
    `no SLO counters for route ${names.join(' or ')} in ${redactUrl(p.url)} under key prefix "${p.keyPrefix}"; ` +
      (known.length > 0 ? `routes there: ${shown}.` : 'no route has counters under this prefix (check --key-prefix).') +
      ' A route without traffic yet is known from its config: add --config FILE.',
  );
};

// ---------- output ----------

const pad = (s: string, n: number) => s.padStart(n);
const padEnd = (s: string, n: number) => s.padEnd(n);
const fmtPct = (x: number | undefined, digits = 2) => (x === undefined ? 'n/a' : `${(x * 100).toFixed(digits)} %`);
const fmtBurn = (x: number | undefined) => (x === undefined ? 'n/a' : Number.isFinite(x) ? `${x.toFixed(1)}×` : '∞');
const jsonNum = (x: number | undefined, digits = 6): number | null => (x === undefined || !Number.isFinite(x) ? null : Number(x.toFixed(digits)));

const rate = (gb: GoodBad): number | undefined => (gb.good + gb.bad === 0 ? undefined : gb.bad / (gb.good + gb.bad));

const sloTable = (a: SloAssessment, spec: SloRouteSpec): string => {
  const lines = [`  ${a.kind} SLO: ${a.objectivePercent} % over ${spec.windowDays} d (error budget ${fmtPct(1 - a.objectivePercent / 100, 3)} of calls)`];
  lines.push(`    ${padEnd('window', 10)}${pad('good', 10)}${pad('bad', 8)}${pad('error rate', 13)}${pad('burn rate', 11)}`);
  const row = (name: string, gb: GoodBad, burn: number | undefined) =>
    `    ${padEnd(name, 10)}${pad(String(gb.good), 10)}${pad(String(gb.bad), 8)}${pad(fmtPct(rate(gb), 3), 13)}${pad(fmtBurn(burn), 11)}`;
  for (const w of BURN_WINDOWS) lines.push(row(w, a.events[w], a.burnRates[w]));
  const budgetBurn = a.budgetRemaining === undefined ? undefined : 1 - a.budgetRemaining;
  lines.push(row(`${spec.windowDays}d`, a.events.budget, budgetBurn));
  lines.push(`    error budget remaining: ${a.budgetRemaining === undefined ? 'n/a (too few events)' : fmtPct(a.budgetRemaining, 1)}`);
  return lines.join('\n');
};

const verdictLine = (verdict: GateVerdict, exit: number, what: string, reasons: readonly string[]) =>
  [`${verdict} (exit ${exit}): ${what}`, ...reasons.map((r) => `  - ${r}`)].join('\n');

const singleJson = (spec: SloRouteSpec, list: SloAssessment[], judged: SloJudgement & { perSlo: SloJudgement[] }, t: GateThresholds, minEvents: number, now: number) => ({
  verdict: judged.verdict,
  exitCode: GATE_EXIT[judged.verdict],
  route: spec.route,
  evaluatedAt: new Date(now).toISOString(),
  reasons: judged.reasons,
  thresholds: { ...t, minEvents },
  slos: list.map((a, i) => ({
    slo: a.kind,
    objectivePercent: a.objectivePercent,
    windowDays: spec.windowDays,
    verdict: judged.perSlo[i]!.verdict,
    reasons: judged.perSlo[i]!.reasons,
    budgetRemaining: jsonNum(a.budgetRemaining),
    windows: Object.fromEntries(
      [...BURN_WINDOWS, 'budget' as const].map((w) => [
        w === 'budget' ? `${spec.windowDays}d` : w,
        {
          good: a.events[w].good,
          bad: a.events[w].bad,
          errorRate: jsonNum(rate(a.events[w])),
          burnRate: w === 'budget' ? jsonNum(a.budgetRemaining === undefined ? undefined : 1 - a.budgetRemaining) : jsonNum(a.burnRates[w as BurnWindow]),
        },
      ]),
    ),
  })),
});

const compareText = (c: Comparison, minutes: number): string => {
  const money = (m: number | undefined) => (m === undefined ? 'n/a' : `$${(m / 1_000_000).toFixed(4)}`);
  const ms = (m: number | undefined) => (m === undefined ? 'n/a' : `${Math.round(m)} ms`);
  const lines = [
    `  canary ${c.canary.route} vs stable ${c.stable.route}, last ${minutes} min`,
    `    ${padEnd('metric', 15)}${pad('canary', 12)}${pad('stable', 12)}${pad('value', 11)}${pad('halt', 8)}${pad('rollback', 10)}  verdict`,
    `    ${padEnd('calls', 15)}${pad(String(c.canary.events), 12)}${pad(String(c.stable.events), 12)}`,
  ];
  for (const k of c.checks) {
    const [name, fmt, val, unit] =
      k.metric === 'error_rate'
        ? ['error rate', (x: number | undefined) => fmtPct(x), k.value === undefined ? 'n/a' : `${k.value >= 0 ? '+' : ''}${k.value.toFixed(2)} pt`, ' pt']
        : k.metric === 'p99_latency'
          ? ['p99 latency', ms, k.value === undefined ? 'n/a' : `${k.value.toFixed(2)}×`, '×']
          : ['cost per call', money, k.value === undefined ? 'n/a' : `${k.value.toFixed(2)}×`, '×'];
    const verdict = k.value === undefined ? 'n/a' : k.verdict;
    lines.push(`    ${padEnd(name, 15)}${pad(fmt(k.canary), 12)}${pad(fmt(k.stable), 12)}${pad(val, 11)}${pad(`${k.halt}${unit}`, 8)}${pad(`${k.rollback}${unit}`, 10)}  ${verdict}`);
  }
  return lines.join('\n');
};

const compareJson = (c: Comparison, minutes: number, minEvents: number, now: number) => ({
  verdict: c.verdict,
  exitCode: GATE_EXIT[c.verdict],
  mode: 'compare',
  evaluatedAt: new Date(now).toISOString(),
  windowMinutes: minutes,
  reasons: c.reasons,
  minEvents,
  canary: { ...c.canary, errorRate: jsonNum(c.canary.errorRate), p99Ms: jsonNum(c.canary.p99Ms, 1), costPerCallMicros: jsonNum(c.canary.costPerCallMicros, 1) },
  stable: { ...c.stable, errorRate: jsonNum(c.stable.errorRate), p99Ms: jsonNum(c.stable.p99Ms, 1), costPerCallMicros: jsonNum(c.stable.costPerCallMicros, 1) },
  checks: c.checks.map((k) => ({ ...k, canary: jsonNum(k.canary), stable: jsonNum(k.stable), value: jsonNum(k.value) })),
});

/**
 * `fusebox gate`. `argv` is what follows `gate` on the command line. Returns the exit status (GATE_EXIT):
 * 0 PROCEED, 10 HALT, 20 ROLLBACK, 30 not enough data, 31 store unreachable, 2 usage error or invalid config.
 */
export const runGate = async (argv: string[], io: GateIo): Promise<number> => {
  let p: Plan;
  try {
    const { values } = parseArgs({ args: argv, options: OPTIONS, strict: true, allowPositionals: false });
    if (values.help) {
      await write(io.stdout, `${GATE_USAGE}\n`);
      return 0;
    }
    p = plan(values, io.env ?? process.env);
  } catch (err) {
    const known = err instanceof UsageError || err instanceof ConfigError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
    await write(io.stderr, `fusebox gate: ${known ? (err as Error).message : String(err)}\nRun "fusebox gate --help" for the options.\n`);
    return GATE_EXIT.USAGE;
  }
  const now = (io.now ?? Date.now)();
  // One connection attempt: a gate that cannot read the counters says so (exit 31) instead of waiting for Redis.
  const connectTimeoutMs = Math.max(p.timeoutMs, 1_000);
  const redis = new RedisConnection({ url: p.url, ...(p.tls !== undefined && { tls: p.tls }), keyPrefix: p.keyPrefix, timeoutMs: p.timeoutMs, connectTimeoutMs, reconnect: false });
  const store = new RedisCounterStore(redis);
  try {
    let verdict: GateVerdict;
    let text: string;
    let json: unknown;
    try {
      // The attempt ends by itself (ready, or failed within connectTimeoutMs); the bound only backs that up.
      await store.ready(connectTimeoutMs + p.timeoutMs);
      if (p.compare) {
        const { canary, stable, minutes, thresholds } = p.compare;
        const windows = { w: minutes * MINUTE_MS };
        const [c, s] = await Promise.all([readWindows(store, canary, windows, now), readWindows(store, stable, windows, now)]);
        if (!p.routesFromConfig) await mustBeInStore(store, [c, s].flatMap((w, i) => (isEmpty(w.w) ? [i === 0 ? canary : stable] : [])), p);
        const comparison = compareSamples(sampleOf('canary', canary, c.w), sampleOf('stable', stable, s.w), thresholds, p.minEvents!);
        verdict = comparison.verdict;
        text = `${verdictLine(verdict, GATE_EXIT[verdict], `canary "${canary}" vs stable "${stable}"`, comparison.reasons)}\n${compareText(comparison, minutes)}`;
        json = compareJson(comparison, minutes, p.minEvents!, now);
      } else {
        const { spec, kinds, thresholds } = p.single!;
        const windows = await readSloWindows(store, spec.route, spec.windowDays, now);
        if (!p.routesFromConfig && Object.values(windows).every(isEmpty)) await mustBeInStore(store, [spec.route], p);
        const minEvents = p.minEvents!;
        const list = kinds.map((k) => assessSlo(windows, { ...objectiveOf(spec, k), minEvents }));
        const judged = judgeSlos(list, thresholds, minEvents);
        verdict = judged.verdict;
        text = [verdictLine(verdict, GATE_EXIT[verdict], `route "${spec.route}"`, judged.reasons), ...list.map((a) => sloTable(a, spec))].join('\n');
        json = singleJson(spec, list, judged, thresholds, minEvents, now);
      }
    } catch (err) {
      if (err instanceof UsageError) {
        await write(io.stderr, `fusebox gate: ${err.message}\nRun "fusebox gate --help" for the options.\n`);
        return GATE_EXIT.USAGE;
      }
      if (!(err instanceof CounterStoreUnavailableError)) throw err;
      const cause = err.cause instanceof Error ? err.cause.message : err.message;
      const message = `cannot read the SLO counters from ${redactUrl(p.url)}: ${cause}`;
      await write(io.stderr, `fusebox gate: ${message}\n`);
      if (p.json) await write(io.stdout, `${JSON.stringify({ verdict: 'STORE_UNREACHABLE', exitCode: GATE_EXIT.STORE_UNREACHABLE, error: message }, null, 2)}\n`);
      return GATE_EXIT.STORE_UNREACHABLE;
    }
    await write(io.stdout, p.json ? `${JSON.stringify(json, null, 2)}\n` : `${text}\n`);
    return GATE_EXIT[verdict];
  } finally {
    await store.close();
    await redis.close();
  }
};
