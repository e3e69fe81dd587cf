import type { FastifyInstance } from 'fastify';
import type { Config } from '../config/schema.js';
import { METRICS, type BudgetStore, type Metric, type ScopeUsage } from '../budget/store.js';
import type { BuiltRoute } from '../pipeline/build.js';
import type { SloEvaluator } from '../slo/evaluator.js';
import { sloStatusJson, type SloRouteJson } from '../slo/exports.js';
import type { LiveStats } from '../telemetry/live.js';
import type { Metrics } from '../telemetry/metrics.js';
import { redactConfig, redactUrl } from '../telemetry/redact.js';
import { breakerView, type BreakerView } from './admin-breakers.js';
import { budgetView, killView, reportedScopes } from './admin-budgets.js';

/*
 * GET /admin/status: everything an operator looks at first, per sidecar, in one read-only JSON document. The
 * README's "Status" section documents every field (the live page and `fusebox status` read it); change both together.
 */

/** Breaker states that refuse calls (a half-open breaker admits only its probe). */
export const REFUSING_BREAKER_STATES: ReadonlySet<BreakerView['state']> = new Set(['open', 'half_open', 'forced_open']);

export interface StatusRoute {
  name: string;
  provider: Config['routes'][number]['provider'];
  upstream: string;
  inflight: number;
  traffic: {
    seconds: number;
    calls: number;
    callsPerSecond: number;
    errors: number;
    errorRatePercent: number | null;
    outcomes: Record<string, number>;
  };
  latency: { p50Ms: number | null; p99Ms: number | null; samples: number };
  retries: {
    enabled: boolean;
    retried: number;
    budgetExhausted: number;
    budgets: Array<{ upstream: string; available: number; retriesInWindow: number; requestsInWindow: number; refusedTotal: number; windowSeconds: number }>;
  };
  breakers: BreakerView[];
  slo: SloRouteJson | null;
}

export type StatusBudgetScope = ReturnType<typeof budgetView> & { usedPercent: number | null; exhausted: boolean };

export type StatusProblem =
  | { kind: 'breaker_open'; route: string; key: string; state: BreakerView['state']; msUntilProbe: number | null; message: string }
  | { kind: 'budget_spent'; scope: string; id: string; window: string; message: string }
  | { kind: 'killed'; target: string; id: string | null; reason: string; message: string };

export interface StatusDocument {
  generatedAt: string;
  agent: string;
  ready: boolean;
  startedAt: string;
  uptimeSeconds: number;
  windowSeconds: number;
  problems: StatusProblem[];
  routes: StatusRoute[];
  budgets: {
    store: Config['store']['kind'];
    storeAvailable: boolean;
    error: string | null;
    scopes: StatusBudgetScope[];
    kills: Array<ReturnType<typeof killView>>;
  };
  refusals: {
    total: number;
    recent: Array<{ at: string; code: string; status: number; route: string | null; mode: string | null; requestId: string | null; message: string }>;
  };
  config: Record<string, unknown>;
}

export interface StatusDeps {
  config: Config;
  routes: readonly BuiltRoute[];
  store: BudgetStore;
  evaluator: SloEvaluator;
  live: LiveStats;
  metrics: Pick<Metrics, 'inflight'>;
  isReady: () => boolean;
  now: () => number;
  /** Clock time (ms) the sidecar was built. */
  startedAt: number;
}

const round = (x: number, digits: number): number => Number(x.toFixed(digits));
const orNull = (x: number | undefined, digits: number): number | null => (x === undefined ? null : round(x, digits));

const UNIT: Record<Metric, (n: number) => string> = {
  usdMicros: (n) => `$${(n / 1e6).toFixed(4)}`,
  tokens: (n) => `${n} tokens`,
  calls: (n) => `${n} calls`,
};

/** A scope window with its caps judged: how much of the fullest cap is spent, and whether some cap is used up. */
const judgedScope = (u: ScopeUsage): { view: StatusBudgetScope; spentOn: Metric[] } => {
  let used: number | undefined;
  const spentOn: Metric[] = [];
  for (const m of METRICS) {
    const cap = u.caps[m];
    if (cap === undefined) continue;
    // A cap of 0 is "nothing may be spent": full from the start.
    const percent = cap === 0 ? 100 : (u.spent[m] / cap) * 100;
    used = Math.max(used ?? 0, percent);
    if (u.spent[m] >= cap) spentOn.push(m);
  }
  return { view: { ...budgetView(u), usedPercent: orNull(used, 1), exhausted: spentOn.length > 0 }, spentOn };
};

const routeStatus = (built: BuiltRoute, deps: StatusDeps, inflight: ReadonlyMap<string, number>, slo: ReadonlyMap<string, SloRouteJson>): StatusRoute => {
  const { config } = built;
  const w = deps.live.route(config.name);
  return {
    name: config.name,
    provider: config.provider,
    upstream: redactUrl(config.upstream.url),
    inflight: inflight.get(config.name) ?? 0,
    traffic: {
      seconds: w.seconds,
      calls: w.calls,
      callsPerSecond: round(w.calls / w.seconds, 3),
      errors: w.errors,
      errorRatePercent: w.calls === 0 ? null : round((w.errors / w.calls) * 100, 1),
      outcomes: { ...w.outcomes },
    },
    latency: { p50Ms: orNull(w.p50Ms, 1), p99Ms: orNull(w.p99Ms, 1), samples: w.latencySamples },
    retries: {
      enabled: built.retryBudgets.length > 0,
      retried: w.retried,
      budgetExhausted: w.retryBudgetExhausted,
      budgets: built.retryBudgets.map(({ upstream, budget }) => {
        const s = budget.stats();
        return { upstream, available: s.available, retriesInWindow: s.retries, requestsInWindow: s.requests, refusedTotal: s.refused, windowSeconds: s.windowSeconds };
      }),
    },
    breakers: built.breakers.flatMap(({ route, registry }) => registry.list().map((e) => breakerView(route, e.key, e.stats))),
    slo: slo.get(config.name) ?? null,
  };
};

const budgetsStatus = async (deps: StatusDeps): Promise<{ budgets: StatusDocument['budgets']; problems: StatusProblem[] }> => {
  const { config, store } = deps;
  const problems: StatusProblem[] = [];
  const base = { store: config.store.kind, storeAvailable: store.available() };
  let usage: ScopeUsage[];
  let kills;
  try {
    [usage, kills] = await Promise.all([store.snapshot(reportedScopes(config)), store.getKills()]);
  } catch (err) {
    // The store's outage must not cost the rest of the page (breakers matter most then).
    return { budgets: { ...base, storeAvailable: false, error: err instanceof Error ? err.message : String(err), scopes: [], kills: [] }, problems };
  }
  const scopes = usage.map((u) => {
    const { view, spentOn } = judgedScope(u);
    if (spentOn.length > 0) {
      const what = spentOn.map((m) => `${UNIT[m](u.spent[m])} of ${UNIT[m](u.caps[m]!)}`).join(', ');
      problems.push({ kind: 'budget_spent', scope: u.scope.kind, id: u.scope.id, window: u.window, message: `${u.scope.kind} "${u.scope.id}" ${u.window} budget spent: ${what}` });
    }
    return view;
  });
  for (const k of kills) {
    const target = k.target;
    // A workflow kill stops one runaway workflow (normal operation); global or this agent's stops every call here.
    if (target.kind === 'global' || (target.kind === 'agent' && target.id === config.agent.id)) {
      const id = target.kind === 'global' ? null : target.id;
      problems.push({ kind: 'killed', target: target.kind, id, reason: k.reason, message: `kill switch on ${target.kind}${id === null ? '' : ` "${id}"`}: ${k.reason}` });
    }
  }
  return { budgets: { ...base, error: null, scopes, kills: kills.map(killView) }, problems };
};

/** The status document (also what a test or another transport can build without HTTP). */
export const statusDocument = async (deps: StatusDeps): Promise<StatusDocument> => {
  const now = deps.now();
  const inflight = new Map<string, number>();
  for (const v of (await deps.metrics.inflight.get()).values) if (typeof v.labels.route === 'string') inflight.set(v.labels.route, v.value);
  const slo = new Map(sloStatusJson(deps.evaluator.all()).routes.map((r) => [r.route, r]));
  const routes = deps.routes.map((r) => routeStatus(r, deps, inflight, slo));
  const { budgets, problems: budgetProblems } = await budgetsStatus(deps);
  const problems: StatusProblem[] = [];
  for (const r of routes) {
    for (const b of r.breakers) {
      if (!REFUSING_BREAKER_STATES.has(b.state)) continue;
      const probe = b.msUntilProbe === null ? '' : `, next probe in ${(b.msUntilProbe / 1000).toFixed(1)} s`;
      problems.push({ kind: 'breaker_open', route: r.name, key: b.key, state: b.state, msUntilProbe: b.msUntilProbe, message: `breaker "${b.key}" of route "${r.name}" is ${b.state}${probe}` });
    }
  }
  problems.push(...budgetProblems);
  return {
    generatedAt: new Date(now).toISOString(),
    agent: deps.config.agent.id,
    ready: deps.isReady(),
    startedAt: new Date(deps.startedAt).toISOString(),
    uptimeSeconds: Math.max(0, Math.floor((now - deps.startedAt) / 1000)),
    windowSeconds: deps.live.windowSeconds,
    problems,
    routes,
    budgets,
    refusals: {
      total: deps.live.refusalsTotal,
      recent: deps.live.recentRefusals().map((r) => ({
        at: new Date(r.at).toISOString(),
        code: r.code,
        status: r.status,
        route: r.route ?? null,
        mode: r.mode ?? null,
        requestId: r.requestId ?? null,
        message: r.message,
      })),
    },
    config: redactConfig(deps.config),
  };
};

/** `GET /admin/status`: read-only, open like every GET of the admin listener (no token). */
export const registerAdminStatus = (app: FastifyInstance, deps: StatusDeps): void => {
  app.get('/admin/status', async (_req, reply) => {
    // A live page polls this: never a cached copy.
    void reply.header('cache-control', 'no-store');
    return statusDocument(deps);
  });
};
