import { parseArgs } from 'node:util';
import type { StatusBudgetScope, StatusDocument, StatusRoute } from '../http/admin-status.js';
import { usageFailure, writeText, type CliIo } from './io.js';

/** Exit statuses of `fusebox status` (of the last read, with --watch). */
export const STATUS_EXIT = {
  OK: 0,
  USAGE: 2,
  UNREACHABLE: 3,
  BREAKER_OPEN: 10,
  BUDGET_SPENT: 20,
  BOTH: 30,
} as const;

const DEFAULT_ADMIN = 'http://127.0.0.1:9901';
const DEFAULT_WATCH_SECONDS = 2;
const DEFAULT_TIMEOUT_MS = 2000;
/** Rows of the refusals table: the screen is for a glance, the JSON has the whole ring. */
const REFUSAL_ROWS = 10;

export const STATUS_USAGE = `Usage: fusebox status [--admin URL] [--watch [SECONDS]] [--json]

Shows a running sidecar at a glance, read from GET /admin/status on its admin port: per route the calls per
second, error rate, p50/p99 latency and retries of the last minute, the retry budget left, in-flight calls, each
breaker's state and time to its next probe; each cap's spend, holds in flight and limit; each SLO's error budget
left and burn rates; the last refusals with their codes. Read-only: no admin token needed.

Options:
      --admin URL            the sidecar's admin listener (default ${DEFAULT_ADMIN}; HOST:PORT is enough)
  -w, --watch [SECONDS]      redraw every SECONDS (default ${DEFAULT_WATCH_SECONDS}, 0.5 to 3600) until Ctrl-C; on a terminal the
                             screen is cleared before each view
      --json                 print the status document itself (with --watch: one document per line)
      --timeout-ms MS        longest wait for one answer (default ${DEFAULT_TIMEOUT_MS})
  -h, --help                 this text

Exit status (with --watch: of the last view before Ctrl-C), so a script can use it as a probe:
  ${STATUS_EXIT.OK}   every breaker closed, no budget spent
  ${STATUS_EXIT.BREAKER_OPEN}  a breaker is open, half-open or forced open (it refuses calls)
  ${STATUS_EXIT.BUDGET_SPENT}  a budget is spent (a cap of the agent, a route or the fleet is reached) or a kill switch
      stops this agent or everything
  ${STATUS_EXIT.BOTH}  both
  ${STATUS_EXIT.UNREACHABLE}   the sidecar cannot be reached, or the port does not answer as a Fusebox admin listener
  ${STATUS_EXIT.USAGE}   usage error
SLOs are shown but never change the exit status: "fusebox gate" judges them.`;

export interface StatusIo extends CliIo {
  /** Ends --watch (the real command: SIGINT). */
  signal?: AbortSignal;
}

class UsageError extends Error {}

/** The exit status a status document calls for (see STATUS_USAGE). */
export const statusExitCode = (doc: Pick<StatusDocument, 'problems'>): number => {
  const breaker = doc.problems.some((p) => p.kind === 'breaker_open');
  const budget = doc.problems.some((p) => p.kind === 'budget_spent' || p.kind === 'killed');
  return breaker && budget ? STATUS_EXIT.BOTH : breaker ? STATUS_EXIT.BREAKER_OPEN : budget ? STATUS_EXIT.BUDGET_SPENT : STATUS_EXIT.OK;
};

const adminUrl = (raw: string): URL => {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`;
  let u: URL;
  try {
    u = new URL(withScheme);
  } catch {
    throw new UsageError(`--admin must be a URL like ${DEFAULT_ADMIN} or HOST:PORT, got "${raw}"`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new UsageError(`--admin must be an http:// or https:// URL, got "${raw}"`);
  return new URL('/admin/status', u);
};

/** `--watch` takes an optional value, which parseArgs cannot express: `--watch 5` becomes `--watch=5`, a bare one `--watch=`. */
const normalizeWatch = (argv: string[]): string[] => {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      out.push(...argv.slice(i));
      break;
    }
    if (a !== '--watch' && a !== '-w') {
      out.push(a);
      continue;
    }
    const next = argv[i + 1];
    if (next !== undefined && /^\d+(\.\d+)?$/.test(next)) {
      out.push(`--watch=${next}`);
      i++;
    } else out.push('--watch=');
  }
  return out;
};

interface Plan {
  url: URL;
  watchMs: number | undefined;
  json: boolean;
  timeoutMs: number;
}

const plan = (argv: string[]): Plan | 'help' => {
  const { values } = parseArgs({
    args: normalizeWatch(argv),
    options: {
      admin: { type: 'string', default: DEFAULT_ADMIN },
      watch: { type: 'string', short: 'w' },
      json: { type: 'boolean', default: false },
      'timeout-ms': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  let watchMs: number | undefined;
  if (values.watch !== undefined) {
    const seconds = values.watch === '' ? DEFAULT_WATCH_SECONDS : Number(values.watch);
    if (!Number.isFinite(seconds) || seconds < 0.5 || seconds > 3600) throw new UsageError(`--watch takes 0.5 to 3600 seconds, got "${values.watch}"`);
    watchMs = seconds * 1000;
  }
  const rawTimeout = values['timeout-ms'];
  const timeoutMs = rawTimeout === undefined ? DEFAULT_TIMEOUT_MS : Number(rawTimeout);
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) throw new UsageError(`--timeout-ms must be a whole number of milliseconds above 0, got "${rawTimeout}"`);
  return { url: adminUrl(values.admin), watchMs, json: values.json, timeoutMs };
};

class Unreachable extends Error {}

const looksLikeStatus = (doc: unknown): doc is StatusDocument =>
  typeof doc === 'object' && doc !== null && Array.isArray((doc as StatusDocument).routes) && Array.isArray((doc as StatusDocument).problems);

/** One read of the status document. Throws Unreachable with the reason a person can act on. */
const readStatus = async (url: URL, timeoutMs: number, stop: AbortSignal): Promise<StatusDocument> => {
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.any([AbortSignal.timeout(timeoutMs), stop]), headers: { accept: 'application/json' } });
  } catch (err) {
    if (stop.aborted) throw err;
    const e = err as Error & { cause?: { code?: string; message?: string } };
    const why = e.name === 'TimeoutError' ? `no answer within ${timeoutMs} ms` : (e.cause?.message ?? e.cause?.code ?? e.message);
    throw new Unreachable(`cannot reach the sidecar's admin API at ${url.href}: ${why} (is it running, and is this its admin port, listen.admin?)`);
  }
  const text = await res.text();
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    doc = undefined;
  }
  if (res.status !== 200 || !looksLikeStatus(doc)) {
    const code = typeof doc === 'object' && doc !== null && typeof (doc as { code?: unknown }).code === 'string' ? ` ${(doc as { code: string }).code}` : '';
    throw new Unreachable(`${url.href} answered ${res.status}${code}, not a Fusebox status document (is this the admin port, not the proxy port? a sidecar older than this command?)`);
  }
  return doc;
};

// ---- the terminal view ----

const table = (head: string[], rows: string[][], indent = '  '): string => {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => indent + cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(head), ...rows.map(line)].join('\n');
};

const ms = (x: number | null): string => (x === null ? '-' : x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(1)} ms`);
const pct = (x: number | null): string => (x === null ? '-' : `${x.toFixed(1)} %`);
const usd = (x: number | null): string => (x === null ? '-' : `$${x.toFixed(4)}`);
const duration = (seconds: number): string => {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(s).padStart(2, '0')}s` : `${s}s`;
};

const breakerSummary = (r: StatusRoute): string => {
  if (r.breakers.length === 0) return '-';
  const counts = new Map<string, number>();
  for (const b of r.breakers) counts.set(b.state, (counts.get(b.state) ?? 0) + 1);
  return [...counts].map(([state, n]) => `${n} ${state}`).join(', ');
};

const sloSummary = (r: StatusRoute): string => {
  if (r.slo === null) return '-';
  const left = Object.values(r.slo.slos).map((s) => s.budgetRemaining).filter((x): x is number => x !== null);
  const budget = left.length === 0 ? 'no data yet' : `${(Math.min(...left) * 100).toFixed(1)} % left`;
  return r.slo.action === 'none' ? budget : `${budget}, ${r.slo.action}`;
};

const routesTable = (doc: StatusDocument): string =>
  table(
    ['ROUTE', 'CALLS/S', 'ERRORS', 'P50', 'P99', 'RETRIED', 'RETRIES LEFT', 'IN FLIGHT', 'BREAKERS', 'SLO'],
    doc.routes.map((r) => [
      r.name,
      r.traffic.callsPerSecond.toFixed(2),
      pct(r.traffic.errorRatePercent),
      ms(r.latency.p50Ms),
      ms(r.latency.p99Ms),
      String(r.retries.retried),
      r.retries.enabled ? r.retries.budgets.map((b) => String(b.available)).join('/') : 'off',
      String(r.inflight),
      breakerSummary(r),
      sloSummary(r),
    ]),
  );

const breakersTable = (doc: StatusDocument): string | undefined => {
  const rows = doc.routes.flatMap((r) =>
    r.breakers.map((b) => [
      r.name,
      b.key,
      b.state,
      `${b.errorRatePercent.toFixed(1)} %`,
      String(b.calls),
      b.msUntilProbe === null ? '-' : `${(b.msUntilProbe / 1000).toFixed(1)} s`,
      b.lastFailure ?? '-',
    ]),
  );
  return rows.length === 0 ? undefined : table(['ROUTE', 'KEY', 'STATE', 'ERRORS', 'CALLS', 'NEXT PROBE', 'LAST FAILURE'], rows);
};

const METRIC_COLUMNS = [
  { unit: 'usd', spent: (s: StatusBudgetScope) => s.spentUsd, held: (s: StatusBudgetScope) => s.inFlightUsd, limit: (s: StatusBudgetScope) => s.limitUsd, fmt: usd },
  { unit: 'tokens', spent: (s: StatusBudgetScope) => s.spentTokens, held: (s: StatusBudgetScope) => s.inFlightTokens, limit: (s: StatusBudgetScope) => s.limitTokens, fmt: (x: number | null) => (x === null ? '-' : String(x)) },
  { unit: 'calls', spent: (s: StatusBudgetScope) => s.calls, held: (s: StatusBudgetScope) => s.inFlightCalls, limit: (s: StatusBudgetScope) => s.limitCalls, fmt: (x: number | null) => (x === null ? '-' : String(x)) },
] as const;

/** One row per capped metric of each scope window; an uncapped window only when it has spent something. */
const capsTable = (doc: StatusDocument): string => {
  const rows: string[][] = [];
  for (const s of doc.budgets.scopes) {
    const capped = METRIC_COLUMNS.filter((c) => c.limit(s) !== null);
    const shown = capped.length > 0 ? capped : (s.spentUsd ?? 0) > 0 ? [METRIC_COLUMNS[0]] : [];
    for (const c of shown) {
      const limit = c.limit(s);
      const spent = c.spent(s) ?? 0;
      const used = limit === null ? '-' : limit === 0 ? '100 %' : `${Math.round((spent / limit) * 100)} %`;
      rows.push([s.scope, s.id, s.window, c.unit, c.fmt(spent), c.fmt(c.held(s)), c.fmt(limit), used, limit !== null && spent >= limit ? 'SPENT' : '']);
    }
  }
  const kills = doc.budgets.kills.map((k) => `  kill switch: ${k.kind}${'id' in k ? ` "${k.id}"` : ''} since ${k.at}: ${k.reason}`);
  const store = doc.budgets.error !== null ? [`  store unavailable: ${doc.budgets.error}`] : !doc.budgets.storeAvailable ? ['  store unavailable: enforcing a local slice of each cap'] : [];
  const body = rows.length === 0 ? '  no caps configured' : table(['SCOPE', 'ID', 'WINDOW', 'UNIT', 'SPENT', 'IN FLIGHT', 'LIMIT', 'USED', ''], rows);
  return [body, ...kills, ...store].join('\n');
};

const slosTable = (doc: StatusDocument): string | undefined => {
  const rows: string[][] = [];
  for (const r of doc.routes) {
    if (r.slo === null) continue;
    for (const [kind, s] of Object.entries(r.slo.slos)) {
      const burn = (w: string) => {
        const b = s.burnRates[w];
        return b === null || b === undefined ? '-' : `${b.toFixed(1)}x`;
      };
      rows.push([r.name, kind, `${s.objectivePercent} %`, s.budgetRemaining === null ? '-' : `${(s.budgetRemaining * 100).toFixed(1)} %`, burn('5m'), burn('1h'), burn('6h'), r.slo.action]);
    }
  }
  return rows.length === 0 ? undefined : table(['ROUTE', 'SLO', 'OBJECTIVE', 'BUDGET LEFT', 'BURN 5M', '1H', '6H', 'ACTION'], rows);
};

const refusalsTable = (doc: StatusDocument): string => {
  const recent = doc.refusals.recent.slice(0, REFUSAL_ROWS);
  if (recent.length === 0) return '  none';
  const oneLine = (s: string) => (s.length > 100 ? `${s.slice(0, 99)}…` : s);
  return table(
    ['AT', 'ROUTE', 'STATUS', 'CODE', 'MESSAGE'],
    recent.map((r) => [r.at.slice(11, 23), r.route ?? '-', String(r.status), r.code, oneLine(r.message)]),
  );
};

/** The terminal view of one status document. */
export const renderStatus = (doc: StatusDocument, source: string): string => {
  const code = statusExitCode(doc);
  const header = `fusebox status  ${source}  agent ${doc.agent}  ${doc.ready ? 'ready' : 'NOT READY'}  up ${duration(doc.uptimeSeconds)}  at ${doc.generatedAt}`;
  const problems =
    doc.problems.length === 0 ? 'OK: every breaker closed, no budget spent (exit 0)' : [`PROBLEMS (exit ${code})`, ...doc.problems.map((p) => `  - ${p.message}`)].join('\n');
  const sections: Array<[string, string | undefined]> = [
    [`ROUTES (last ${doc.routes[0]?.traffic.seconds ?? doc.windowSeconds} s)`, doc.routes.length === 0 ? '  none' : routesTable(doc)],
    ['BREAKERS', breakersTable(doc) ?? '  none yet (a breaker is made by its first call)'],
    [`CAPS (store: ${doc.budgets.store})`, capsTable(doc)],
    ['SLOS', slosTable(doc)],
    [`LAST REFUSALS (${Math.min(REFUSAL_ROWS, doc.refusals.recent.length)} shown, ${doc.refusals.total} since start)`, refusalsTable(doc)],
  ];
  return [header, problems, ...sections.filter(([, body]) => body !== undefined).map(([title, body]) => `\n${title}\n${body}`)].join('\n');
};

// ---- the command ----

const CLEAR_SCREEN = '\x1b[H\x1b[2J';

const wait = (delayMs: number, stop: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    if (stop.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      stop.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, delayMs);
    stop.addEventListener('abort', done);
  });

/** One read, written out; returns its exit status. */
const showOnce = async (p: Plan, io: StatusIo, stop: AbortSignal, frame: { clear: boolean }): Promise<number> => {
  let doc: StatusDocument;
  try {
    doc = await readStatus(p.url, p.timeoutMs, stop);
  } catch (err) {
    if (!(err instanceof Unreachable)) throw err;
    if (p.json) await writeText(io.stdout, `${JSON.stringify({ error: err.message, exitCode: STATUS_EXIT.UNREACHABLE })}\n`);
    else if (frame.clear) await writeText(io.stdout, `${CLEAR_SCREEN}fusebox status: ${err.message}\n`);
    await writeText(io.stderr, `fusebox status: ${err.message}\n`);
    return STATUS_EXIT.UNREACHABLE;
  }
  const text = p.json ? JSON.stringify(doc, null, p.watchMs === undefined ? 2 : undefined) : renderStatus(doc, p.url.origin);
  await writeText(io.stdout, `${frame.clear ? CLEAR_SCREEN : ''}${text}\n`);
  return statusExitCode(doc);
};

/**
 * `fusebox status`. One read by default; with --watch, one every SECONDS until `io.signal` (SIGINT when the caller
 * gives none) ends it. Returns the exit status of the last read (STATUS_EXIT).
 */
export const runStatus = async (argv: string[], io: StatusIo): Promise<number> => {
  let p: Plan;
  try {
    const parsed = plan(argv);
    if (parsed === 'help') {
      await writeText(io.stdout, `${STATUS_USAGE}\n`);
      return 0;
    }
    p = parsed;
  } catch (err) {
    if (!(err instanceof UsageError) && !(err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) throw err;
    return usageFailure(io, 'status', err);
  }
  if (p.watchMs === undefined) return showOnce(p, io, io.signal ?? new AbortController().signal, { clear: false });

  let stop = io.signal;
  let onSigint: (() => void) | undefined;
  if (stop === undefined) {
    const controller = new AbortController();
    onSigint = () => controller.abort();
    process.once('SIGINT', onSigint);
    stop = controller.signal;
  }
  // Redraw in place only on a terminal: piped, the views follow one another (and JSON stays one document per line).
  const clear = !p.json && (io.stdout as { isTTY?: boolean }).isTTY === true;
  let code: number = STATUS_EXIT.OK;
  try {
    for (let first = true; !stop.aborted; first = false) {
      if (!first && !clear && !p.json) await writeText(io.stdout, '\n');
      try {
        code = await showOnce(p, io, stop, { clear });
      } catch (err) {
        // Ctrl-C during a read: the last complete view's status stands.
        if (stop.aborted) break;
        throw err;
      }
      await wait(p.watchMs, stop);
    }
  } finally {
    if (onSigint) process.off('SIGINT', onSigint);
  }
  return code;
};
