import type { BudgetsConfig, RouteConfig } from '../config/schema.js';
import type { BudgetRefusalCode } from '../errors.js';
import { microUsdFromUsd } from './prices.js';
import { windowAt, windowEndFromId, type WindowKind } from './windows.js';

/**
 * The shared budget store: one interface, implemented by memory, Redis, a wrapper that keeps enforcing locally
 * while Redis is away, and LeasedStore, which serves every cap from leased slices in front of either. A request is admitted by `reserve` (checks every scope and holds
 * its estimate in one atomic step), then settled by `commit` (charges the actual cost) or `release`
 * (returns the hold). Per-request caps (`maxRequestUsd`, `maxRequestTokens`) are the caller's business.
 *
 * OVERSPEND BOUND (quoted by the README; proved in test/integration/store-contract.test.ts)
 * ─────────────────────────────────────────────────────────────────────────────────────────
 * For every cap C of every scope window, each store keeps `spent` (settled charges) and `reserved` (sum of
 * the estimates of reservations not yet settled or expired). `reserve` admits a request with estimate e
 * only if `spent + reserved + e ≤ C`, and adds e to `reserved` in the same atomic step as the check.
 * `commit` removes e from `reserved` and adds the actual cost a to `spent`, even when a > e, and never
 * refuses. Hence, looking at the last admission k in a window:
 *
 *     final spent ≤ C + Σ over requests j in flight when k was admitted (k included) of (a_j − e_j)
 *
 * i.e. total committed spend never exceeds the cap by more than the sum, over in-flight requests, of
 * (actual − estimated); if no request costs more than its estimate, spend never exceeds the cap.
 * Qualifications, each deliberate:
 * - Presumed spend of expired holds: a reservation not settled within its TTL is reaped, its estimate moved
 *   from `reserved` to `spent` (its sidecar may have died after the upstream answered: over-counted, never
 *   under-counted), and kept aside so that a late commit charges a_j − e_j and a late release refunds e_j,
 *   once. spent + reserved never changes at a reap, so the bound holds as stated (a request never settled
 *   counts as a_j = e_j). Keep the TTL above the route's total timeout.
 * - A request is charged to the windows it was reserved in, even if it settles after midnight.
 * - Every cap of every window (route, fleet, an agent's day and month, workflows; µUSD, tokens, calls) is served by
 *   LeasedStore (lease.ts) from leased slices: the source keeps, per metric,
 *   `spent + Σ slices outstanding ≤ C`, and a sidecar admits e only if its unreported spend + holds + e ≤ its
 *   slice. Calls are taken from a slice at admission, so a call cap (`maxCalls`) holds exactly fleet-wide. So
 *   spend ≤ C + Σ (a − e) of calls in flight + N × allowance (N sidecars, money only,
 *   `store.lease.allowanceUsd`) for each such window, and during an outage the spend admitted is at most what was left of the slices
 *   outstanding when it began (+ allowances); it does not grow with N. This assumes clocks agree within the lease
 *   grace (a lapsed slice returns to the pool only `graceMs` after its expiry, counted as spent until its holder
 *   reports, and a report made with calls in flight asks for a slice covering their holds).
 * - While Redis is unreachable, LocalFallbackStore enforces the windows left to it against their last-known remaining
 *   (one agent id lives in one sidecar; see local-fallback-store.ts): none once LeasedStore leases every window,
 *   whose own rule (`aloneRemaining`) does the same for an agent's or workflow's window a sidecar alone held.
 * - A scope whose cap is used up refuses every request, even one estimated at zero (a tool call), so a
 *   runaway workflow stops; calls are counted at reserve time, so `maxCalls` stops the (N+1)th call
 *   exactly even under concurrency.
 */

/** Who a budget belongs to. `fleet` is every agent sharing the store (id `all`). */
export type ScopeKind = 'agent' | 'workflow' | 'route' | 'fleet';

export interface ScopeRef {
  readonly kind: ScopeKind;
  readonly id: string;
  /**
   * `workflow` scopes: the agent running the workflow. RedisStore keeps a workflow's counters beside its agent's (one
   * cluster slot per agent), so workflow caps count per agent id; absent, the workflow is counted under its own key.
   */
  readonly agent?: string;
}

/** What is counted. Money is integer micro-dollars (1 USD = 1_000_000), never a float. */
export interface Amounts {
  readonly usdMicros: number;
  readonly tokens: number;
  readonly calls: number;
}

export type Metric = keyof Amounts;
export const METRICS: readonly Metric[] = ['usdMicros', 'tokens', 'calls'];
export const ZERO: Amounts = { usdMicros: 0, tokens: 0, calls: 0 };
/** Amounts a store adds to in place (counters, holds). */
export type MutableAmounts = { -readonly [M in Metric]: number };
export const zeroAmounts = (): MutableAmounts => ({ usdMicros: 0, tokens: 0, calls: 0 });
/** `to += sign × a`, metric by metric (written out: it runs per window per call). */
export const addAmounts = (to: MutableAmounts, a: Amounts, sign: 1 | -1): void => {
  to.usdMicros += sign * a.usdMicros;
  to.tokens += sign * a.tokens;
  to.calls += sign * a.calls;
};
export const plusAmounts = (a: Amounts, b: Amounts): Amounts => ({ usdMicros: a.usdMicros + b.usdMicros, tokens: a.tokens + b.tokens, calls: a.calls + b.calls });

/**
 * One counted window of one scope, with its caps. A scope window without caps is still counted (spend
 * per agent/route for metrics) but never refuses. Built from config by {@link budgetScopes}.
 */
export interface ScopeBudget {
  readonly scope: ScopeRef;
  readonly window: WindowKind;
  /** Caps in the metric's unit (µUSD, tokens, calls). Absent: not capped. */
  readonly caps: Partial<Amounts>;
  /** `workflow` windows: counters unseen (no reserve or commit) this long start again from zero, ms. */
  readonly idleTtlMs?: number;
}

/** What a request may cost, known before it is sent. `calls` is 1 per request (tool calls included). */
export type Estimate = Amounts;

/** What a request did cost. Its call count is the one reserved. */
export interface Actual {
  readonly usdMicros: number;
  readonly tokens: number;
}

export interface ReserveRequest {
  readonly scopes: readonly ScopeBudget[];
  readonly estimate: Estimate;
  /** How long the hold lasts if never settled, ms. Default: the store's `reservationTtlMs`. */
  readonly ttlMs?: number;
  /**
   * Per call (from the route's `budget.storeUnavailable`): what LocalFallbackStore does while the shared
   * store is unreachable. `local` (default) enforces a local slice; `closed` throws StoreUnavailableError.
   * Other stores ignore it.
   */
  readonly onUnavailable?: 'local' | 'closed';
  /**
   * Scopes of the call that LeasedStore serves from leased slices (lease.ts) and left out of `scopes`: not counted
   * here, but a kill of their agent still refuses the call. So a call whose every window is leased (an empty
   * `scopes`) is checked against the store's kill copy and nothing else.
   */
  readonly leasedScopes?: readonly ScopeBudget[];
}

/** A scope window as reserved: the window id is fixed at reserve time, so settling charges that window. */
export interface ReservedScope extends ScopeBudget {
  readonly windowId: string;
}

/** Proof of a hold, handed back to `commit` or `release`. Plain data; treat it as opaque. */
export interface Reservation {
  readonly id: string;
  readonly scopes: readonly ReservedScope[];
  readonly estimate: Estimate;
  /** Clock time (ms) after which the hold is reaped: its estimate is then presumed spent until it is settled. */
  readonly expiresAt: number;
  /** Made by LocalFallbackStore's local slice while the shared store was away. */
  readonly local?: boolean;
}

export type RefusalReason = BudgetRefusalCode;

/** Why a reserve was refused; amounts in the metric's unit. */
export interface Refusal {
  readonly reason: RefusalReason;
  /** The capped scope, or the kill target (`global` for everything, id `*`). */
  readonly scope: { readonly kind: ScopeKind | 'global'; readonly id: string };
  readonly window?: WindowKind;
  readonly metric?: Metric;
  readonly limit: number;
  /** Settled charges in the window. */
  readonly spent: number;
  /** Held by other in-flight requests. */
  readonly reserved: number;
  /** This request's estimate. */
  readonly requested: number;
  /** When the window's counters start again from zero (ms epoch); null for a kill (lifted by hand). */
  readonly resetAt: number | null;
  /** The reason given when the kill was set. */
  readonly killReason?: string;
}

/** A cap reached `alertPercent` for the first time in its window (reported once per window). */
export interface AlertCrossing {
  readonly scope: ScopeRef;
  readonly window: WindowKind;
  readonly windowId: string;
  readonly metric: Metric;
  readonly percent: number;
  /** spent + reserved after this operation. */
  readonly used: number;
  readonly limit: number;
}

export type ReserveResult =
  | {
      readonly ok: true;
      readonly reservation: Reservation;
      /** spent + reserved per scope window after this reservation, in `reservation.scopes` order (remaining-budget headers). */
      readonly used: readonly Amounts[];
      readonly crossed: readonly AlertCrossing[];
    }
  | { readonly ok: false; readonly refusal: Refusal };

export interface CommitResult {
  readonly crossed: readonly AlertCrossing[];
}

/** A scope window's counters, for metrics and the admin API. */
export interface ScopeUsage {
  readonly scope: ScopeRef;
  readonly window: WindowKind;
  readonly windowId: string;
  readonly caps: Partial<Amounts>;
  readonly spent: Amounts;
  readonly reserved: Amounts;
  /** When the counters start again from zero (ms epoch); null for an idle workflow window. */
  readonly resetAt: number | null;
}

/** What a kill stops: one agent, one workflow, or everything. */
export type KillTarget = { readonly kind: 'global' } | { readonly kind: 'agent' | 'workflow'; readonly id: string };

export interface Kill {
  readonly target: KillTarget;
  readonly reason: string;
  /** Clock time (ms) the kill was set. */
  readonly at: number;
}

export interface BudgetStore {
  /** Checks kills and every cap of every scope, and holds the estimate, in one atomic step. */
  reserve(req: ReserveRequest): Promise<ReserveResult>;
  /**
   * Settles a hold with the actual cost, charged even above the estimate; never refuses; idempotent per reservation.
   * Resolves once the charge landed, which may wait for the next reserve to carry it (RedisStore's commitDelayMs).
   */
  commit(reservation: Reservation, actual: Actual): Promise<CommitResult>;
  /** Returns a hold unspent (the request never reached the upstream). Idempotent. */
  release(reservation: Reservation): Promise<void>;
  snapshot(scopes: readonly ScopeBudget[]): Promise<ScopeUsage[]>;
  getKills(): Promise<Kill[]>;
  setKill(target: KillTarget, reason?: string): Promise<void>;
  /** Lifts a kill; true if there was one. */
  clearKill(target: KillTarget): Promise<boolean>;
  /** False while the store cannot be reached (a gauge). */
  available(): boolean;
  /**
   * Waits at most `timeoutMs` for a store that connects (Redis) to be usable; never rejects. Called before the
   * sidecar accepts calls, so its first calls do not find a store that is merely still connecting "down".
   */
  ready?(timeoutMs: number): Promise<void>;
  /**
   * Sends commits still waiting to ride a reserve (RedisStore's commitDelayMs) now; resolves once each landed or was
   * journaled. Never rejects. Stores that keep no commit waiting have none.
   */
  flush?(): Promise<void>;
  /** Sends what is waiting (flush), then lets go. */
  close(): Promise<void>;
  /** Slices this sidecar holds (LeasedStore only), for the lease gauge. */
  leaseViews?(): LeaseView[];
}

/** A leased window as this sidecar sees it. */
export interface LeaseView {
  readonly scope: ScopeRef;
  readonly window: WindowKind;
  /**
   * Slice left for new calls per metric the window caps (µUSD, tokens, calls; 0 once lapsed). A metric the window
   * does not cap is absent: it takes no slice, only counted.
   */
  readonly remaining: Partial<Amounts>;
}

/** Options every store takes. */
export interface StoreCommonOptions {
  /** Clock, ms epoch. Windows, reservation expiry and workflow idle time all follow it. */
  now: () => number;
  /** Percent of a cap at which one alert per window is reported (config `budgets.alertPercent`). 0: none. Default 75. */
  alertPercent?: number;
  /** Default reservation TTL, ms. Default 660000 (the default route total timeout plus a minute). */
  reservationTtlMs?: number;
  /** New reservation ids. Default crypto.randomUUID. */
  newId?: () => string;
}

export const DEFAULT_ALERT_PERCENT = 75;
export const DEFAULT_RESERVATION_TTL_MS = 660_000;

/** The counters key of a scope window, without the store prefix: `agent:a1:day:2026-11-22`. */
export const scopeKey = (s: { scope: ScopeRef; window: WindowKind }, windowId: string): string =>
  `${s.scope.kind}:${s.scope.id}:${s.window}:${windowId}`;

/** Hash field of a kill: `global`, `agent:<id>` or `workflow:<id>`. */
export const killField = (t: KillTarget): string => (t.kind === 'global' ? 'global' : `${t.kind}:${t.id}`);

export const killTargetFromField = (field: string): KillTarget | undefined => {
  if (field === 'global') return { kind: 'global' };
  const colon = field.indexOf(':');
  const kind = field.slice(0, colon);
  if (colon > 0 && (kind === 'agent' || kind === 'workflow')) return { kind, id: field.slice(colon + 1) };
  return undefined;
};

/** The kill fields that stop a request on these scopes (and on the ones leased elsewhere, see ReserveRequest), `global` first. */
export const killFieldsFor = (scopes: readonly ScopeBudget[], leased: readonly ScopeBudget[] = []): string[] => {
  const fields = ['global'];
  for (const list of [leased, scopes]) {
    for (const s of list) {
      if (s.scope.kind !== 'agent' && s.scope.kind !== 'workflow') continue;
      const f = killField({ kind: s.scope.kind, id: s.scope.id });
      if (!fields.includes(f)) fields.push(f);
    }
  }
  return fields;
};

export const refusalScopeOfKill = (field: string): Refusal['scope'] => {
  const t = killTargetFromField(field);
  return !t || t.kind === 'global' ? { kind: 'global', id: '*' } : { kind: t.kind, id: t.id };
};

/** Pins each scope to the window containing `now`. */
export const reservedScopes = (scopes: readonly ScopeBudget[], now: number): ReservedScope[] =>
  scopes.map((s) => ({ ...s, windowId: windowAt(s.window, now).id }));

/**
 * Reset time of a scope window: the calendar edge, or for a workflow window the moment it goes idle
 * (`lastSeen + idleTtlMs`; null if never seen).
 */
export const resetTimeOf = (s: ScopeBudget, windowId: string, lastSeen: number | null): number | null => {
  if (s.window !== 'workflow') return windowEndFromId(s.window, windowId);
  return lastSeen === null || s.idleTtlMs === undefined ? null : lastSeen + s.idleTtlMs;
};

/** A cap reached: the reason names `CALL_LIMIT` for the call counter, `BUDGET_EXCEEDED` otherwise. */
export const refusalReasonFor = (metric: Metric): RefusalReason => (metric === 'calls' ? 'CALL_LIMIT' : 'BUDGET_EXCEEDED');

/**
 * The admission rule shared by every store: a cap refuses when the estimate would take it over, and when it
 * is already used up (so a zero-estimate call cannot slip past an exhausted cap).
 */
export const overCap = (used: number, estimate: number, limit: number): boolean => used >= limit || used + estimate > limit;

/** Alert threshold reached? Integer arithmetic: used·100 ≥ limit·percent. */
export const reachedAlert = (used: number, limit: number, percent: number): boolean => percent > 0 && used * 100 >= limit * percent;

const isCount = (n: number) => Number.isSafeInteger(n) && n >= 0;

/** Guards the store boundary: amounts are non-negative safe integers (µUSD, tokens, calls). */
export function assertAmounts(what: string, a: Partial<Amounts>): void {
  for (const m of METRICS) {
    const v = a[m];
    if (v !== undefined && !isCount(v)) throw new TypeError(`${what}.${m} must be a non-negative safe integer, got ${v}`);
  }
}

/** Identity of the caller of {@link budgetScopes}. */
export interface ScopeIds {
  readonly agent: string;
  readonly route: string;
  /** From `x-fusebox-workflow`; no workflow scope without it. */
  readonly workflow?: string;
}

/**
 * The scope windows a request is counted in, with the caps config sets: agent day (USD, tokens) and month
 * (USD), workflow (USD, tokens, calls; idle TTL), route day (USD), fleet day and month (USD). Uncapped windows are
 * still listed so spend is counted for metrics.
 */
export function budgetScopes(budgets: BudgetsConfig, route: Pick<RouteConfig, 'budget'>, ids: ScopeIds): ScopeBudget[] {
  const usd = (v: number | undefined) => (v === undefined ? undefined : microUsdFromUsd(v));
  const caps = (c: { usdMicros?: number | undefined; tokens?: number | undefined; calls?: number | undefined }): Partial<Amounts> => {
    const out: { -readonly [M in Metric]?: number } = {};
    for (const m of METRICS) if (c[m] !== undefined) out[m] = c[m];
    return out;
  };
  const a = budgets.agent;
  const scopes: ScopeBudget[] = [
    { scope: { kind: 'agent', id: ids.agent }, window: 'day', caps: caps({ usdMicros: usd(a.dailyUsd), tokens: a.dailyTokens }) },
    { scope: { kind: 'agent', id: ids.agent }, window: 'month', caps: caps({ usdMicros: usd(a.monthlyUsd) }) },
  ];
  if (ids.workflow !== undefined) {
    const w = budgets.workflow;
    scopes.push({
      scope: { kind: 'workflow', id: ids.workflow, agent: ids.agent },
      window: 'workflow',
      caps: caps({ usdMicros: usd(w.usd), tokens: w.tokens, calls: w.maxCalls }),
      idleTtlMs: w.idleTtlMs,
    });
  }
  scopes.push(
    { scope: { kind: 'route', id: ids.route }, window: 'day', caps: caps({ usdMicros: usd(route.budget.dailyUsd) }) },
    { scope: { kind: 'fleet', id: 'all' }, window: 'day', caps: caps({ usdMicros: usd(budgets.fleet.dailyUsd) }) },
    { scope: { kind: 'fleet', id: 'all' }, window: 'month', caps: caps({ usdMicros: usd(budgets.fleet.monthlyUsd) }) },
  );
  return scopes;
}
