import { SloBudgetExhaustedError, SloThrottledError } from '../errors.js';
import { assessSlo, SLO_KINDS, type SloAssessment, type SloKind } from './burn.js';
import type { CounterStore } from './counter-store.js';
import { objectiveOf, type SloRouteSpec } from './spec.js';
import { TokenBucket } from './token-bucket.js';
import { BucketCache, readSloWindows } from './windows.js';

/** What the sidecar does about a route's SLOs, mildest first. */
export type SloAction = 'none' | 'alert' | 'throttle' | 'degrade' | 'shed';
const SEVERITY: readonly SloAction[] = ['none', 'alert', 'throttle', 'degrade', 'shed'];
const harsher = (a: SloAction, b: SloAction): SloAction => (SEVERITY.indexOf(b) > SEVERITY.indexOf(a) ? b : a);

/** A route's SLO state after the last evaluation. */
export interface RouteSloState {
  readonly route: string;
  /** Clock time (ms) of the last successful read of the fleet counters; undefined before the first. */
  readonly evaluatedAt: number | undefined;
  /** Undefined before the first successful read. */
  readonly slos: Readonly<Partial<Record<SloKind, SloAssessment>>>;
  /** Some SLO's error budget is spent (≤ 0 left, with at least `minEvents` events in the window). */
  readonly exhausted: boolean;
  /** Some SLO burns faster than 14.4× over both 1 h and 5 min. */
  readonly fastBurn: boolean;
  /** Human-readable causes, e.g. `availability: error budget exhausted (-12.0 % left)`. */
  readonly reasons: readonly string[];
  /** The action the config asks for in this state. */
  readonly configuredAction: SloAction;
  /** The action in force: `none` while suspended by the admin API or when the counters are stale. */
  readonly action: SloAction;
  /** Suspended by the admin API (`resume` lifts it). */
  readonly overridden: boolean;
  /** The last reads failed for longer than `staleAfterMs`: the action is lifted (fail open) until a read succeeds. */
  readonly stale: boolean;
}

/** What the SLO layer does with one call. */
export type Admission =
  | { readonly admit: true; readonly action: SloAction; readonly degradeToStep?: number }
  | { readonly admit: false; readonly action: SloAction; readonly error: SloBudgetExhaustedError | SloThrottledError };

type Log = { warn(obj: object, msg: string): void; info(obj: object, msg: string): void };

export interface SloEvaluatorOptions {
  store: CounterStore;
  routes: readonly SloRouteSpec[];
  now: () => number;
  logger: Log;
  /** How often the fleet counters are read, ms. Default 5000. */
  intervalMs?: number;
  /** After this long without a successful read, actions are lifted, ms. Default 60000. */
  staleAfterMs?: number;
  /** Cache of settled buckets; `false` reads everything every time. */
  cache?: BucketCache | false;
}

const pct = (x: number): string => `${(x * 100).toFixed(1)} %`;

const reasonsOf = (slos: Partial<Record<SloKind, SloAssessment>>): { exhausted: boolean; fastBurn: boolean; reasons: string[] } => {
  let exhausted = false;
  let fastBurn = false;
  const reasons: string[] = [];
  for (const a of Object.values(slos)) {
    if (a.budgetRemaining !== undefined && a.budgetRemaining <= 0) {
      exhausted = true;
      reasons.push(`${a.kind}: error budget exhausted (${pct(a.budgetRemaining)} left)`);
    }
    if (a.alerts.fast === 'firing') {
      fastBurn = true;
      reasons.push(`${a.kind}: fast burn (${a.burnRates['1h']!.toFixed(1)}× over 1 h, ${a.burnRates['5m']!.toFixed(1)}× over 5 min)`);
    }
  }
  return { exhausted, fastBurn, reasons };
};

/**
 * Reads the fleet counters of every route periodically and decides each route's SLO action. Transitions log one
 * line each. The admin API can suspend a route's action (`suspend`) and lift the suspension (`resume`).
 */
export class SloEvaluator {
  private specs: Map<string, SloRouteSpec>;
  private readonly states = new Map<string, RouteSloState>();
  private readonly suspended = new Map<string, number>();
  private readonly buckets = new Map<string, TokenBucket>();
  private readonly lastOk = new Map<string, number>();
  private readonly cache: BucketCache | undefined;
  private readonly startedAt: number;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;

  constructor(private readonly opts: SloEvaluatorOptions) {
    this.specs = new Map(opts.routes.map((s) => [s.route, s]));
    this.cache = opts.cache === false ? undefined : (opts.cache ?? new BucketCache());
    this.startedAt = opts.now();
    for (const s of opts.routes) this.states.set(s.route, SloEvaluator.initial(s.route));
  }

  private static initial(route: string): RouteSloState {
    return { route, evaluatedAt: undefined, slos: {}, exhausted: false, fastBurn: false, reasons: [], configuredAction: 'none', action: 'none', overridden: false, stale: false };
  }

  /**
   * A config reload: evaluate `routes` from now on. A kept route keeps its state and its admin suspension (its new
   * objectives and actions apply from the next evaluation, which starts now); a removed route's state is dropped;
   * an added route starts as before its first read.
   */
  setRoutes(routes: readonly SloRouteSpec[]): void {
    this.specs = new Map(routes.map((s) => [s.route, s]));
    for (const route of [...this.states.keys()]) {
      if (this.specs.has(route)) continue;
      this.states.delete(route);
      this.suspended.delete(route);
      this.buckets.delete(route);
      this.lastOk.delete(route);
    }
    for (const s of routes) if (!this.states.has(s.route)) this.states.set(s.route, SloEvaluator.initial(s.route));
    // A throttle's bucket was sized by the old throttleRps.
    this.buckets.clear();
    if (this.timer) void this.evaluate();
  }

  /** Evaluate now and then every `intervalMs`. The timer does not keep the process alive. */
  start(): void {
    if (this.timer) return;
    void this.evaluate();
    this.timer = setInterval(() => void this.evaluate(), this.opts.intervalMs ?? 5_000);
    this.timer.unref();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One pass over every route. Never throws; a failed read keeps the last state (see `stale`). Concurrent calls share one pass. */
  evaluate(): Promise<void> {
    this.running ??= Promise.all([...this.specs.values()].map((s) => this.evaluateRoute(s))).then(
      () => {
        this.running = undefined;
      },
      () => {
        this.running = undefined;
      },
    );
    return this.running;
  }

  state(route: string): RouteSloState | undefined {
    return this.states.get(route);
  }

  /** Every route's state, in config order (for /admin/slo and the metrics). */
  all(): RouteSloState[] {
    return [...this.specs.keys()].map((r) => this.states.get(r)!);
  }

  /**
   * Lift the route's action (admin API), until `resume` or for `forMs`. Returns false for an unknown route.
   * The counters and alerts go on; only the sidecar's reaction stops.
   */
  suspend(route: string, forMs?: number): boolean {
    if (!this.specs.has(route)) return false;
    this.suspended.set(route, forMs === undefined ? Number.POSITIVE_INFINITY : this.opts.now() + forMs);
    this.update(route, {});
    return true;
  }

  /** Put the route's configured action back in force. Returns false for an unknown route. */
  resume(route: string): boolean {
    if (!this.specs.has(route)) return false;
    this.suspended.delete(route);
    this.update(route, {});
    return true;
  }

  /** Decide one call: pass, pass degraded, or refuse (shed, or throttled beyond `throttleRps`). */
  admit(route: string): Admission {
    const spec = this.specs.get(route);
    const state = this.states.get(route);
    if (!spec || !state) return { admit: true, action: 'none' };
    const action = this.effectiveAction(route, state);
    const details = { route, reasons: state.reasons };
    switch (action) {
      case 'shed':
        return {
          admit: false,
          action,
          error: new SloBudgetExhaustedError(`route "${route}" is shedding calls: ${state.reasons.join('; ') || 'SLO action shed'}`, {
            ...details,
            reason: state.exhausted ? 'budget_exhausted' : 'fast_burn',
          }),
        };
      case 'throttle': {
        const now = this.opts.now();
        let bucket = this.buckets.get(route);
        if (!bucket) this.buckets.set(route, (bucket = new TokenBucket(spec.throttleRps, Math.max(1, spec.throttleRps), now)));
        const taken = bucket.take(now);
        if (taken.ok) return { admit: true, action };
        const retryAfter = Math.max(1, Math.ceil(taken.retryAfterMs / 1000));
        return {
          admit: false,
          action,
          error: new SloThrottledError(`route "${route}" is throttled to ${spec.throttleRps} calls/s: ${state.reasons.join('; ')}`, retryAfter, details),
        };
      }
      case 'degrade':
        return { admit: true, action, degradeToStep: spec.degradeToStep };
      default:
        return { admit: true, action };
    }
  }

  private effectiveAction(route: string, state: RouteSloState): SloAction {
    // Re-check the suspension's end here, so a timed suspension ends on time without waiting for an evaluation.
    const until = this.suspended.get(route);
    if (until !== undefined && until <= this.opts.now()) this.resume(route);
    return this.states.get(route)?.action ?? state.action;
  }

  private async evaluateRoute(spec: SloRouteSpec): Promise<void> {
    const now = this.opts.now();
    try {
      const windows = await readSloWindows(this.opts.store, spec.route, spec.windowDays, now, this.cache);
      const slos: Partial<Record<SloKind, SloAssessment>> = {};
      for (const kind of SLO_KINDS) slos[kind] = assessSlo(windows, objectiveOf(spec, kind));
      this.lastOk.set(spec.route, now);
      this.update(spec.route, { slos, evaluatedAt: now, stale: false });
    } catch (err) {
      const since = this.lastOk.get(spec.route) ?? this.startedAt;
      const stale = now - since > (this.opts.staleAfterMs ?? 60_000);
      const prev = this.states.get(spec.route);
      if (prev === undefined) return;
      if (stale && !prev.stale) {
        this.opts.logger.warn({ route: spec.route, err }, `SLO counters of route "${spec.route}" unreadable for ${Math.round((now - since) / 1000)} s: its SLO action is lifted until they can be read`);
      }
      this.update(spec.route, { stale });
    }
  }

  private update(route: string, change: Partial<Pick<RouteSloState, 'slos' | 'evaluatedAt' | 'stale'>>): void {
    const spec = this.specs.get(route);
    const prev = this.states.get(route);
    // A read that was in flight when a reload removed its route.
    if (spec === undefined || prev === undefined) return;
    const slos = change.slos ?? prev.slos;
    const { exhausted, fastBurn, reasons } = reasonsOf(slos);
    let configuredAction: SloAction = 'none';
    if (exhausted) configuredAction = harsher(configuredAction, spec.onBudgetExhausted);
    if (fastBurn) configuredAction = harsher(configuredAction, spec.onFastBurn);
    const until = this.suspended.get(route);
    const overridden = until !== undefined && until > this.opts.now();
    if (until !== undefined && !overridden) this.suspended.delete(route);
    const stale = change.stale ?? prev.stale;
    const action = overridden || stale ? 'none' : configuredAction;
    const next: RouteSloState = {
      route,
      evaluatedAt: change.evaluatedAt ?? prev.evaluatedAt,
      slos,
      exhausted,
      fastBurn,
      reasons,
      configuredAction,
      action,
      overridden,
      stale,
    };
    this.states.set(route, next);
    if (action !== 'throttle') this.buckets.delete(route);
    if (prev.action !== next.action || prev.exhausted !== next.exhausted || prev.fastBurn !== next.fastBurn || prev.overridden !== next.overridden) {
      this.logTransition(prev, next);
    }
  }

  private logTransition(prev: RouteSloState, next: RouteSloState): void {
    const fields = {
      route: next.route,
      action: next.action,
      previousAction: prev.action,
      configuredAction: next.configuredAction,
      exhausted: next.exhausted,
      fastBurn: next.fastBurn,
      overridden: next.overridden,
      reasons: next.reasons,
      budgetRemaining: Object.fromEntries(Object.values(next.slos).map((a) => [a.kind, a.budgetRemaining ?? null])),
    };
    const what = next.overridden && !prev.overridden
      ? `SLO action of route "${next.route}" suspended by the admin API`
      : !next.overridden && prev.overridden
        ? `SLO action of route "${next.route}" resumed: ${next.action}`
        : next.configuredAction === 'none'
          ? `SLO of route "${next.route}" back within budget: action none`
          : `SLO of route "${next.route}": ${next.reasons.join('; ')}: action ${next.action}`;
    if (next.configuredAction === 'none' || next.overridden) this.opts.logger.info(fields, what);
    else this.opts.logger.warn(fields, what);
  }
}
