import { SloBudgetExhaustedError, SloThrottledError } from '../errors.js';
import { assessmentSpecKey, LocalSloBoard, type PublishedRead, type PublishedSlo, type SloBoard } from './board.js';
import { minuteIndex } from './buckets.js';
import { assessSlo, BURN_WINDOWS, SLO_KINDS, type SloAssessment, type SloKind, type WindowFields } from './burn.js';
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
  /**
   * Clock time (ms) the fleet counters were read for the assessment in force (by this sidecar, or by the route's
   * leader when taken from the board); undefined before the first.
   */
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
  /** The assessment in force is older than `staleAfterMs` (reads failing, no leader): the action is lifted (fail open) until a fresh one. */
  readonly stale: boolean;
}

/** What the SLO layer does with one call. */
export type Admission =
  | { readonly admit: true; readonly action: SloAction; readonly degradeToStep?: number }
  | { readonly admit: false; readonly action: SloAction; readonly error: SloBudgetExhaustedError | SloThrottledError };

type Log = { warn(obj: object, msg: string): void; info(obj: object, msg: string): void };

type RouteLabel = { route: string };

/** prom-client shapes; see telemetry/metrics.ts. */
export interface SloLeadMetrics {
  /** `fusebox_slo_leader{route}`: 1 while this sidecar assesses the route for the fleet. */
  leader?: { set(labels: RouteLabel, value: number): void; remove(labels: RouteLabel): void };
  /** `fusebox_slo_assessments_total{route}`: assessments this sidecar computed from the buckets. */
  assessments?: { inc(labels: RouteLabel, value?: number): void; remove(labels: RouteLabel): void };
  /** `fusebox_slo_publish_failures_total{route}`: assessments this sidecar computed but could not publish. */
  publishFailures?: { inc(labels: RouteLabel, value?: number): void; remove(labels: RouteLabel): void };
}

export interface SloEvaluatorOptions {
  store: CounterStore;
  routes: readonly SloRouteSpec[];
  now: () => number;
  logger: Log;
  /**
   * How often each route is assessed (by its leader) and the published assessments read (by the others), ms.
   * Default 5000: an idle sidecar costs Redis 0.2 commands/s. A route's lease lasts 3 intervals; a sidecar tries to
   * take a route over when its published assessment is older than 2.
   */
  intervalMs?: number;
  /** Shares assessments across a fleet (Redis); default one process that assesses every route itself. */
  board?: SloBoard;
  metrics?: SloLeadMetrics;
  /** After this long without a successful read, actions are lifted, ms. Default 60000. */
  staleAfterMs?: number;
  /** Cache of settled buckets; `false` reads everything every time. */
  cache?: BucketCache | false;
}

/** The windows of a route no call was ever counted for: every sum empty, whatever the time. */
const NO_COUNTS: WindowFields = Object.freeze(Object.fromEntries([...BURN_WINDOWS, 'budget'].map((w) => [w, Object.freeze({})])) as unknown as WindowFields);

/**
 * A route's last assessment from the buckets, and what it was made from: the same spec, the store's write count of
 * the route (`CounterStore.writesTo`) and the minute (the windows' buckets move with it). While all three hold, a
 * new read would sum the very same buckets.
 */
interface Assessed {
  readonly spec: SloRouteSpec;
  readonly writes: number;
  readonly minute: number;
  readonly slos: Partial<Record<SloKind, SloAssessment>>;
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
 * Keeps every route's SLO assessment fresh and decides each route's SLO action. Transitions log one line each. The
 * admin API can suspend a route's action (`suspend`) and lift the suspension (`resume`).
 *
 * In a fleet (a shared board), each interval a sidecar reads every route's published assessment in one command; a
 * route whose assessment is missing or older than 2 intervals is taken over (`SET NX` on its lease); the holder of a
 * route's lease reads its buckets, assesses it, publishes the result and renews the lease. So the buckets are read
 * once per route per interval, not once per sidecar. Alone (the default board), a sidecar assesses every route itself.
 */
export class SloEvaluator {
  private specs: Map<string, SloRouteSpec>;
  private readonly states = new Map<string, RouteSloState>();
  private readonly suspended = new Map<string, number>();
  private readonly buckets = new Map<string, TokenBucket>();
  private readonly assessed = new Map<string, Assessed>();
  private readonly cache: BucketCache | undefined;
  private readonly board: SloBoard;
  /** Routes whose lease this sidecar holds (a shared board). */
  private readonly leading = new Set<string>();
  /** Routes whose last publish failed: the failure is logged once, and the recovery. */
  private readonly publishFailing = new Set<string>();
  /** Routes whose published value did not decode, logged once until it does. */
  private readonly undecodable = new Set<string>();
  private readonly startedAt: number;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;

  constructor(private readonly opts: SloEvaluatorOptions) {
    this.specs = new Map(opts.routes.map((s) => [s.route, s]));
    this.cache = opts.cache === false ? undefined : (opts.cache ?? new BucketCache());
    this.board = opts.board ?? new LocalSloBoard();
    this.startedAt = opts.now();
    for (const s of opts.routes) this.addRoute(s.route);
  }

  private addRoute(route: string): void {
    this.states.set(route, SloEvaluator.initial(route));
    const m = this.opts.metrics;
    m?.leader?.set({ route }, this.board.shared ? 0 : 1);
    // Present from the first scrape, so rate() and increase() see the first one.
    m?.assessments?.inc({ route }, 0);
    m?.publishFailures?.inc({ route }, 0);
  }

  private get intervalMs(): number {
    return this.opts.intervalMs ?? 5_000;
  }

  private get leaseMs(): number {
    return 3 * this.intervalMs;
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
      this.assessed.delete(route);
      this.publishFailing.delete(route);
      this.undecodable.delete(route);
      for (const series of [this.opts.metrics?.leader, this.opts.metrics?.assessments, this.opts.metrics?.publishFailures]) series?.remove({ route });
      if (this.leading.delete(route)) void this.release(route);
    }
    for (const s of routes) if (!this.states.has(s.route)) this.addRoute(s.route);
    // A throttle's bucket was sized by the old throttleRps.
    this.buckets.clear();
    if (this.timer) void this.evaluate();
  }

  /** Evaluate now and then every `intervalMs`. The timer does not keep the process alive. */
  start(): void {
    if (this.timer) return;
    void this.evaluate();
    this.timer = setInterval(() => void this.evaluate(), this.intervalMs);
    this.timer.unref();
  }

  /** Stop, and give up the leases held, so other sidecars take the routes over at their next interval. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
    const held = [...this.leading];
    this.leading.clear();
    for (const route of held) this.opts.metrics?.leader?.set({ route }, 0);
    await Promise.all(held.map((route) => this.release(route)));
  }

  /** Whether this sidecar assesses the route for the fleet (always, alone). */
  leads(route: string): boolean {
    return this.specs.has(route) && (!this.board.shared || this.leading.has(route));
  }

  /** One pass over every route. Never throws; a failed read keeps the last state (see `stale`). Concurrent calls share one pass. */
  evaluate(): Promise<void> {
    this.running ??= this.pass().then(
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

  private async pass(): Promise<void> {
    const now = this.opts.now();
    if (!this.board.shared) {
      // Alone: a route whose buckets have not changed is settled here, without a read or a promise of its own.
      const reads: Array<Promise<void>> = [];
      for (const spec of this.specs.values()) {
        const slos = this.remembered(spec, now);
        if (slos !== undefined) this.took(spec.route, slos, now);
        else reads.push(this.assessAndPublish(spec, now, false));
      }
      await Promise.all(reads);
      return;
    }
    const specs = [...this.specs.values()];
    let board: PublishedRead | undefined;
    let readError: unknown;
    // A sidecar leading every route has nothing to read: its own assessments are the newest.
    if (specs.some((s) => !this.leading.has(s.route))) {
      try {
        board = await this.board.read();
        this.noteUndecodable(board.unreadable);
      } catch (err) {
        readError = err;
      }
    }
    await Promise.all(specs.map((s) => this.evaluateRoute(s, now, board, readError)));
  }

  /** A shared board's route: lead it, or adopt what its leader published. */
  private async evaluateRoute(spec: SloRouteSpec, now: number, board: PublishedRead | undefined, readError: unknown): Promise<void> {
    const route = spec.route;
    const published = board?.results.get(route);
    // Only after a successful read: with the board unreachable, taking leases would only add failing commands.
    if (board !== undefined && !this.leading.has(route) && (published === undefined || now - published.at > 2 * this.intervalMs)) {
      await this.tryLead(route);
    }
    if (this.leading.has(route)) return this.assessAndPublish(spec, now, true);
    // A leader with other objectives (a rolling config change): its assessment is not this sidecar's; assess alone.
    if (published !== undefined && published.spec !== assessmentSpecKey(spec)) return this.assessAndPublish(spec, now, false);
    if (published !== undefined) return this.adopt(route, published, now);
    this.keepLast(route, now, `no published SLO assessment of route "${route}"`, readError);
  }

  private async tryLead(route: string): Promise<void> {
    let took: boolean;
    try {
      took = await this.board.lead(route, this.leaseMs);
    } catch {
      // The board answered the read just before: a blip. The next interval tries again, and staleness covers a longer outage.
      return;
    }
    // A reload may have removed the route meanwhile.
    if (!took || !this.specs.has(route)) return;
    this.leading.add(route);
    this.opts.metrics?.leader?.set({ route }, 1);
    this.opts.logger.info({ route }, `took the lead of route "${route}": this sidecar now assesses its SLOs for the fleet and publishes them every ${this.intervalMs} ms`);
  }

  private loseLead(route: string, outcome: 'lost' | 'superseded'): void {
    if (!this.leading.delete(route)) return;
    this.opts.metrics?.leader?.set({ route }, 0);
    const why = outcome === 'lost' ? 'another sidecar holds its lease' : 'its lease lapsed and a newer assessment was published';
    this.opts.logger.info({ route, outcome }, `lost the lead of route "${route}" (${why}): this sidecar now reads its published SLO assessment`);
  }

  private async release(route: string): Promise<void> {
    try {
      await this.board.release(route);
    } catch {
      // Unreachable store: the lease lapses by itself after 3 intervals.
    }
  }

  /** Read the buckets, assess, take the result; publish it when leading. (`pass` has found nothing to remember.) */
  private async assessAndPublish(spec: SloRouteSpec, now: number, publish: boolean): Promise<void> {
    const route = spec.route;
    let slos: Partial<Record<SloKind, SloAssessment>>;
    try {
      slos = await this.assess(spec, now);
    } catch (err) {
      this.keepLast(route, now, `SLO counters of route "${route}" unreadable`, err);
      return;
    }
    this.took(route, slos, now);
    if (publish) await this.publish(route, { at: now, spec: assessmentSpecKey(spec), slos });
  }

  /** An assessment made at `now` is the route's state from now on. */
  private took(route: string, slos: Partial<Record<SloKind, SloAssessment>>, now: number): void {
    this.opts.metrics?.assessments?.inc({ route });
    this.update(route, { slos, evaluatedAt: now, stale: false });
  }

  /**
   * The route's last assessment, when a read now would sum the very same buckets: the store counts its writes
   * (`CounterStore.writesTo`), none landed in the route since, and the minute has not turned (a route never written to
   * has empty windows at any minute). So the tick reads the routes with traffic, not every route configured.
   */
  private remembered(spec: SloRouteSpec, now: number): Partial<Record<SloKind, SloAssessment>> | undefined {
    const writes = this.opts.store.writesTo?.(spec.route);
    if (writes === undefined) return undefined;
    const last = this.assessed.get(spec.route);
    if (last === undefined || last.spec !== spec || last.writes !== writes) return undefined;
    return writes === 0 || last.minute === minuteIndex(now) ? last.slos : undefined;
  }

  /** The route's SLOs from its buckets (none to read while the store says no write ever landed in them). */
  private async assess(spec: SloRouteSpec, now: number): Promise<Partial<Record<SloKind, SloAssessment>>> {
    const route = spec.route;
    const writes = this.opts.store.writesTo?.(route);
    const windows = writes === 0 ? NO_COUNTS : await readSloWindows(this.opts.store, route, spec.windowDays, now, this.cache);
    const slos: Partial<Record<SloKind, SloAssessment>> = {};
    for (const kind of SLO_KINDS) slos[kind] = assessSlo(windows, objectiveOf(spec, kind));
    if (writes !== undefined) this.assessed.set(route, { spec, writes, minute: minuteIndex(now), slos });
    return slos;
  }

  private async publish(route: string, result: Omit<PublishedSlo, 'by'>): Promise<void> {
    try {
      const outcome = await this.board.publish(route, result, this.leaseMs);
      if (outcome !== 'published') this.loseLead(route, outcome);
    } catch (err) {
      this.opts.metrics?.publishFailures?.inc({ route });
      if (!this.publishFailing.has(route)) {
        this.publishFailing.add(route);
        this.opts.logger.warn({ route, err }, `could not publish the SLO assessment of route "${route}": the other sidecars keep the last one (and lift its action once it is older than staleAfterMs); retrying every interval`);
      }
      return;
    }
    if (this.publishFailing.delete(route)) this.opts.logger.info({ route }, `SLO assessment of route "${route}" published again`);
  }

  /** Take the leader's assessment, unless this sidecar already holds a newer one (it led the route until now). */
  private adopt(route: string, published: PublishedSlo, now: number): void {
    const prev = this.states.get(route);
    if (prev?.evaluatedAt !== undefined && prev.evaluatedAt > published.at) return this.keepLast(route, now, `published SLO assessment of route "${route}" older than this sidecar's`);
    const stale = now - published.at > this.staleAfterMs;
    this.update(route, { slos: published.slos, evaluatedAt: published.at, stale }, stale ? `SLO assessment of route "${route}" (by ${published.by}) not renewed` : undefined);
  }

  /** No fresh assessment this interval: keep the last one until it is older than `staleAfterMs`, then fail open. */
  private keepLast(route: string, now: number, why: string, err?: unknown): void {
    const prev = this.states.get(route);
    if (prev === undefined) return;
    const since = prev.evaluatedAt ?? this.startedAt;
    const stale = now - since > this.staleAfterMs;
    this.update(route, { stale }, stale ? why : undefined, err);
  }

  private get staleAfterMs(): number {
    return this.opts.staleAfterMs ?? 60_000;
  }

  private noteUndecodable(routes: readonly string[]): void {
    for (const route of routes) {
      if (!this.specs.has(route) || this.undecodable.has(route)) continue;
      this.undecodable.add(route);
      this.opts.logger.warn({ route }, `the published SLO assessment of route "${route}" does not decode (another Fusebox version?): treated as missing until its leader publishes it again`);
    }
    for (const route of this.undecodable) if (!routes.includes(route)) this.undecodable.delete(route);
  }

  /** `staleWhy`/`err`: why the assessment is old, for the log line when the route turns stale. */
  private update(route: string, change: Partial<Pick<RouteSloState, 'slos' | 'evaluatedAt' | 'stale'>>, staleWhy?: string, err?: unknown): void {
    const spec = this.specs.get(route);
    const prev = this.states.get(route);
    // A read that was in flight when a reload removed its route.
    if (spec === undefined || prev === undefined) return;
    const slos = change.slos ?? prev.slos;
    // The same assessment as before (a route whose counts did not change) has the same reasons.
    const { exhausted, fastBurn, reasons } = slos === prev.slos ? prev : reasonsOf(slos);
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
    if (stale && !prev.stale) {
      const age = Math.round((this.opts.now() - (next.evaluatedAt ?? this.startedAt)) / 1000);
      this.opts.logger.warn({ route, err }, `${staleWhy ?? `SLO assessment of route "${route}" old`} for ${age} s: its SLO action is lifted until there is a fresh one`);
    }
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
