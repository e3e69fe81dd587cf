import type { Logger } from 'pino';
import { fallbackStepName, type BudgetsConfig, type RouteConfig } from '../config/schema.js';
import { PriceBook, type PriceTable } from '../budget/prices.js';
import type { BudgetStore } from '../budget/store.js';
import { budgetLayer } from '../policies/budget.js';
import type { SloEvaluator } from '../slo/evaluator.js';
import { sloLayer } from '../slo/layer.js';
import type { SloRecorder } from '../slo/recorder.js';
import type { ProxyError } from '../errors.js';
import { makeBreakers } from '../policies/breaker.js';
import type { BreakerRegistry } from '../policies/breaker-registry.js';
import { fallbackLayer, withModel, type FallbackStepHandler } from '../policies/fallback.js';
import { faultsLayer } from '../policies/faults.js';
import { LastGoodCache, lastGoodRecordLayer, lastGoodStep } from '../policies/last-good.js';
import { retryLayer } from '../policies/retry.js';
import { RetryBudget } from '../policies/retry-budget.js';
import type { LiveStats } from '../telemetry/live.js';
import { counterSeries, type CounterSeries } from '../telemetry/fast-metrics.js';
import { codeClass, type Metrics } from '../telemetry/metrics.js';
import { classifyPolicy } from '../upstream/classify.js';
import type { PoolSet } from '../upstream/pool.js';
import { makeUpstreamHandler, routeUpstreamSpec, type UpstreamSpec } from '../upstream/target.js';
import { compose } from './compose.js';
import type { Handler, Layer, ProxyResponse } from './types.js';
import { budgetEvents } from '../telemetry/budget-events.js';
import { observeLayer } from '../telemetry/observe.js';
import type { Tracing } from '../telemetry/tracing.js';
import { deadlineLayer } from '../policies/deadline.js';
import { requestBodyLayer } from './request-body.js';
import type { PendingWork } from './pending.js';

export interface PipelineDeps {
  pools: PoolSet;
  metrics: Metrics;
  logger: Logger;
  env: NodeJS.ProcessEnv;
  /** Milliseconds clock; injected so tests can use fake time. */
  now: () => number;
  /** [0, 1) random source; injected so tests can fix jitter. */
  random: () => number;
  /** This instance's `Via` token (`1.1 fusebox-<id>`). */
  via: string;
  store: BudgetStore;
  prices: PriceTable;
  budgets: BudgetsConfig;
  slo: { recorder: SloRecorder; evaluator: SloEvaluator };
  /** Work that outlives an answer (budget commits, a call until its access line): `Fusebox.idle()` and shutdown wait for it. */
  pending: PendingWork;
  /** Calls in flight, for the drain. */
  inflight: { count: number };
  /** The access log (the logger without the redaction walk: the line carries only redacted values). */
  accessLog: Logger;
  /** `limits.maxRequestBodyBytes`. */
  maxRequestBodyBytes: number;
  /** The last minute per route and the recent refusals (`/admin/status`). */
  live: LiveStats;
  /** Spans per call, hop and attempt; undefined when tracing is off (then no layer or wrapper is added at all). */
  tracing?: Tracing | undefined;
}

/** A layer that adds nothing: compose returns the next handler itself, so it costs nothing per call. */
const none: Layer = (next) => next;

/** A route's breaker registry, with the route it belongs to (the admin API lists and changes them). */
export interface RouteBreakers {
  route: string;
  registry: BreakerRegistry;
}

/** The retry budget of one chain of a route, for `/admin/status`. */
export interface ChainRetryBudget {
  /** The chain's upstream, as the `upstream` metric label names it: the route name, or `<route>/<step>`. */
  upstream: string;
  budget: RetryBudget;
}

export interface BuiltRoute {
  config: RouteConfig;
  /** The whole pipeline: what the proxy calls. */
  handler: Handler;
  /**
   * The primary chain alone (retries, breaker, faults, send), without the fallback chain: what another route's
   * `route` fallback step calls. Using the other route's full pipeline instead could loop (a → b → a).
   */
  primary: Handler;
  /** Every breaker registry of this route: its primary's first, then one per `upstream` fallback step. */
  breakers: RouteBreakers[];
  /** The retry budgets of the same chains, in the same order; none when the route does not retry. */
  retryBudgets: ChainRetryBudget[];
}

interface Chain {
  handler: Handler;
  registry: BreakerRegistry;
  retryBudget: RetryBudget | undefined;
}

/** What a chain's breakers and retry budget were made from: equal fingerprints, the same settings. */
const chainFingerprint = (route: RouteConfig): string =>
  // The provider decides the default `breaker.keyBy`; `timeouts.totalMs` is the half-open probe's lease.
  JSON.stringify([route.provider, route.breaker, route.retry, route.timeouts.totalMs]);

/**
 * The long-lived state of every route (breaker registries, retry budgets, last-good caches), kept across config
 * reloads. `buildRoutes` takes the previous one and reuses an entry when its route (or fallback step) still
 * exists and the settings it was made from are unchanged; an entry of a removed route is dropped, one whose
 * settings changed starts fresh. Caps, reservations and SLO counters live in the stores, keyed by route name,
 * and need nothing here.
 */
export class RouteState {
  /** By chain: the route name for a primary, `<route>/<step>` for an `upstream` fallback step. */
  readonly chains = new Map<string, { fingerprint: string; registry: BreakerRegistry; retryBudget: RetryBudget | undefined }>();
  readonly lastGood = new Map<string, { fingerprint: string; cache: LastGoodCache }>();
}

/** The terminal handler for one upstream, with the attempts metric and the startup warnings about it. */
const upstreamTerminal = (route: RouteConfig, spec: UpstreamSpec, deps: PipelineDeps): Handler => {
  const attempts = deps.metrics.upstreamAttempts;
  // One series per upstream and result (a status class or an error code: bounded), found on first use.
  const children = new Map<string, Map<string, CounterSeries>>();
  const attemptsOf = (upstream: string, result: string) => {
    let byResult = children.get(upstream);
    if (byResult === undefined) children.set(upstream, (byResult = new Map()));
    let child = byResult.get(result);
    if (child === undefined) byResult.set(result, (child = counterSeries(attempts, route.name, upstream, result)));
    return child;
  };
  const made = makeUpstreamHandler(spec, {
    pools: deps.pools,
    env: deps.env,
    via: deps.via,
    // A fallback upstream is judged by its route's settings, like the primary.
    classifier: { policy: classifyPolicy(route), now: deps.now },
    hooks: {
      onAttempt: (target, result) => attemptsOf(target.name, typeof result === 'number' ? codeClass(result) : (result as ProxyError).code).inc(),
    },
  });
  // Outside the header rules and the credential: the attempt's traceparent is set before them, so a route's
  // `headers.remove` can still drop it, and no credential is ever in reach of the span.
  const handler = deps.tracing ? deps.tracing.attempts(spec, made.handler) : made.handler;
  if (made.credentialMissing !== undefined) {
    deps.logger.warn(
      { route: route.name, upstream: spec.name, env: made.credentialMissing },
      `upstream "${spec.name}" has a credential from $${made.credentialMissing}, which is not set: its calls will answer 503 CREDENTIAL_MISSING`,
    );
  }
  if (!spec.tls.rejectUnauthorized) {
    deps.logger.warn({ route: route.name, upstream: spec.name }, `upstream "${spec.name}" does not verify its TLS certificate`);
  }
  return handler;
};

/**
 * Retries and breaker around one upstream. The order, outermost first:
 * - retry: outside the breaker, so every attempt asks the breaker again and an open breaker ends the retries
 *   (never retry through an open breaker); it peeks at the breaker before backing off, so the attempt that opens
 *   it is answered with its own result, not a CIRCUIT_OPEN after a pointless wait;
 * - breaker: counts each attempt, and refuses without a socket while open;
 * - faults (primary only): per attempt, just above the send, so an injected failure is classified, retried and
 *   counted by the breaker exactly like a real one. Fallback upstreams get none, or a fault meant to test the
 *   fallback chain would break the fallback too.
 */
const resilientChain = (
  route: RouteConfig,
  terminal: Handler,
  deps: PipelineDeps,
  opts: { breakerKey?: string; faults: boolean; name: string; state: { previous: RouteState; next: RouteState } },
): Chain => {
  const fingerprint = chainFingerprint(route);
  const kept = opts.state.previous.chains.get(opts.name);
  const reuse = kept !== undefined && kept.fingerprint === fingerprint ? kept : undefined;
  const breakers = makeBreakers(route, deps, opts.breakerKey, reuse?.registry);
  const faults = opts.faults
    ? faultsLayer(route.faults, { random: deps.random, onFault: (kind) => deps.metrics.faultsInjected.labels(route.name, kind).inc() })
    : (next: Handler) => next;
  // Made here rather than inside the retry layer so that /admin/status can read how many retries are left.
  const retryBudget = route.retry.enabled && route.retry.maxRetries > 0 ? (reuse?.retryBudget ?? new RetryBudget(route.retry, deps.now)) : undefined;
  opts.state.next.chains.set(opts.name, { fingerprint, registry: breakers.registry, retryBudget });
  const handler = compose(
    // Retries outside the breaker: every attempt is judged by it, and one it would refuse ends the retries (no backoff into an open breaker).
    retryLayer(route, { ...deps, breakers, budget: retryBudget }),
    // Per route, model or MCP tool, each attempt counted.
    breakers.layer,
    // Just above the socket: an injected failure is handled exactly as the upstream's own, breaker and retries included.
    faults,
  )(terminal);
  return { handler, registry: breakers.registry, retryBudget };
};

// keyBy `upstream`: the primary has one upstream, so its breaker is the route's; each fallback upstream has its own.
const buildPrimary = (route: RouteConfig, deps: PipelineDeps, state: { previous: RouteState; next: RouteState }): Chain =>
  resilientChain(route, upstreamTerminal(route, routeUpstreamSpec(route), deps), deps, { faults: true, name: route.name, state });

const buildSteps = (
  route: RouteConfig,
  primaries: ReadonlyMap<string, Chain>,
  lastGood: LastGoodCache,
  deps: PipelineDeps,
  state: { previous: RouteState; next: RouteState },
): { steps: FallbackStepHandler[]; chains: Array<{ name: string } & Chain> } => {
  const chains: Array<{ name: string } & Chain> = [];
  const steps = route.fallback.map((step, index): FallbackStepHandler => {
    const name = fallbackStepName(step, index);
    switch (step.type) {
      case 'upstream': {
        const spec: UpstreamSpec = {
          name: `${route.name}/${name}`,
          url: step.url,
          tls: step.tls,
          connections: route.upstream.connections,
          timeouts: route.timeouts,
          credential: step.credential,
          headers: step.headers,
        };
        const chain = resilientChain(route, upstreamTerminal(route, spec, deps), deps, { breakerKey: spec.name, faults: false, name: spec.name, state });
        chains.push({ name: spec.name, ...chain });
        return { name, final: false, sendsBody: true, handler: (req, ctx) => chain.handler(withModel(req, step.model, ctx, name), ctx) };
      }
      case 'route': {
        const other = primaries.get(step.route);
        // The config schema already refused unknown route names; this guards a caller that skipped it.
        if (other === undefined) throw new Error(`route "${route.name}": fallback step "${name}" names unknown route "${step.route}"`);
        return { name, final: false, sendsBody: true, handler: (req, ctx) => other.handler(withModel(req, step.model, ctx, name), ctx) };
      }
      case 'lastGood':
        return { name, final: false, sendsBody: false, handler: lastGoodStep(route, lastGood, deps) };
      case 'static': {
        const body = step.body === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(step.body));
        const headers = { 'content-type': 'application/json', ...step.headers };
        return {
          name,
          final: true,
          sendsBody: false,
          handler: (): Promise<ProxyResponse> => Promise.resolve({ statusCode: step.status, headers: { ...headers }, body, observers: [] }),
        };
      }
    }
  });
  const tracing = deps.tracing;
  if (tracing === undefined) return { steps, chains };
  return { steps: steps.map((s) => ({ ...s, handler: tracing.hop(s.name, false, s.handler) })), chains };
};

const primaryHop =
  (tracing: Tracing): Layer =>
  (next) =>
    tracing.hop('primary', true, next);

/**
 * Route configs → request handlers, built at startup and again on each config reload. This is the ONE place the
 * order of policies is written: the first layer listed is the outermost, the upstream send is the terminal. Built
 * in two passes because a `route` fallback step calls another route's primary chain (sharing its breakers and
 * retry budget). `previous` is the state of the routes being replaced (see `RouteState`); the state of the new
 * routes is returned for the next reload.
 */
export const buildRoutes = (
  routes: readonly RouteConfig[],
  deps: PipelineDeps,
  previous: RouteState = new RouteState(),
): { built: BuiltRoute[]; state: RouteState } => {
  const state = { previous, next: new RouteState() };
  const primaries = new Map(routes.map((r) => [r.name, buildPrimary(r, deps, state)] as const));
  const events = budgetEvents(deps.metrics);
  const built = routes.map((route): BuiltRoute => {
    const primary = primaries.get(route.name)!;
    const lastGoodPrint = JSON.stringify(route.lastGood);
    const keptCache = previous.lastGood.get(route.name);
    const lastGood = keptCache !== undefined && keptCache.fingerprint === lastGoodPrint ? keptCache.cache : new LastGoodCache(route.lastGood, deps.now);
    state.next.lastGood.set(route.name, { fingerprint: lastGoodPrint, cache: lastGood });
    const { steps, chains } = buildSteps(route, primaries, lastGood, deps, state);
    const handler = compose(
      // Outermost: every call is counted and gets its access line, whatever ends it (a 413 or a refusal included).
      observeLayer({ metrics: deps.metrics, accessLog: deps.accessLog, pending: deps.pending, inflight: deps.inflight, live: deps.live }),
      // The call's span, when tracing is on: inside the observer, so a refusal of any layer below is on it too.
      deps.tracing?.callLayer ?? none,
      // The whole call, retries, fallbacks and the streamed answer included, must end within timeouts.totalMs.
      deadlineLayer(),
      // The agent's body, buffered for replay up to retry.bufferBytes, refused past limits.maxRequestBodyBytes.
      requestBodyLayer(deps.maxRequestBodyBytes),
      // SLOs next: they count the call as the agent saw it (a fallback's good answer is good), see the refusals of the
      // layers below apart (they never burn the budget), and shed/throttle before anything else.
      sloLayer({ ...deps.slo, now: deps.now }),
      // Caps next: a call over budget (or killed) is refused before anything can spend money, and the one
      // reservation covers the whole call however many retries and fallback hops it takes.
      budgetLayer(route, { store: deps.store, prices: new PriceBook(deps.prices, route.budget.prices, deps.budgets.defaultPrice), budgets: deps.budgets, now: deps.now, events, pending: deps.pending }),
      // Fallback outside everything that can fail: an open breaker, exhausted retries or a fallbackOn status of the
      // primary all end here, before the commit point.
      fallbackLayer(route, steps, deps),
      // With a fallback chain the primary is the first hop, a span beside the steps' (their wrappers are in buildSteps).
      deps.tracing !== undefined && steps.length > 0 ? primaryHop(deps.tracing) : none,
      // Inside the fallback: only the primary's own good answers are remembered, never a fallback's.
      lastGoodRecordLayer(route, lastGood, deps),
    )(primary.handler);
    return {
      config: route,
      handler,
      primary: primary.handler,
      breakers: [primary, ...chains].map((c) => ({ route: route.name, registry: c.registry })),
      retryBudgets: [{ name: route.name, ...primary }, ...chains].flatMap((c) => (c.retryBudget ? [{ upstream: c.name, budget: c.retryBudget }] : [])),
    };
  });
  return { built, state: state.next };
};
