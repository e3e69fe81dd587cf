import { randomUUID } from 'node:crypto';
import { StoreUnavailableError } from '../errors.js';
import type { LeaseReply, LeaseSource } from './lease-source.js';
import {
  addAmounts,
  assertAmounts,
  DEFAULT_ALERT_PERCENT,
  METRICS,
  overCap,
  plusAmounts,
  refusalReasonFor,
  reservedScopes,
  resetTimeOf,
  scopeKey,
  ZERO,
  zeroAmounts,
  type Actual,
  type AlertCrossing,
  type Amounts,
  type BudgetStore,
  type CommitResult,
  type Kill,
  type KillTarget,
  type LeaseView,
  type Metric,
  type MutableAmounts,
  type Refusal,
  type Reservation,
  type ReservedScope,
  type ReserveRequest,
  type ReserveResult,
  type ScopeBudget,
  type ScopeRef,
  type ScopeUsage,
} from './store.js';
import { dayId, monthId, windowAt, windowEndFromId, type WindowKind } from './windows.js';

/** Things worth a metric and a log line. */
export type LeaseEvent =
  | { readonly type: 'granted'; readonly scope: ScopeRef; readonly window: WindowKind; readonly grant: Amounts; readonly renewal: boolean; readonly liveHolders: number }
  | { readonly type: 'refused'; readonly scope: ScopeRef; readonly window: WindowKind; readonly reason: 'exhausted' | 'no_lease'; readonly metric: Metric; readonly requested: number }
  | { readonly type: 'outageAdmission'; readonly scope: ScopeRef; readonly window: WindowKind; readonly usdMicros: number; readonly onAllowance: boolean }
  | { readonly type: 'sourceDown'; readonly error: Error }
  | { readonly type: 'sourceUp' }
  | { readonly type: 'unreportedDropped'; readonly scope: ScopeRef; readonly window: WindowKind; readonly unreported: Amounts }
  /** A report this sidecar sent crossed the alert percent of a cap (the source marks the window: once per window and metric, fleet-wide). */
  | { readonly type: 'alert'; readonly crossing: AlertCrossing };

export interface LeasedStoreOptions {
  /** Kills (its kill copy), and the reservation ids: MemoryStore, or LocalFallbackStore over Redis. */
  inner: BudgetStore;
  source: LeaseSource;
  now: () => number;
  /** This process's holder id. Default: a random UUID. */
  holder?: string;
  /** Renew in the background once less than this percent of the slice is left (or of its lifetime). Default 25. */
  renewBelowPercent?: number;
  /** µUSD admitted per outage per window on no valid slice. Default 0. */
  allowanceUsdMicros?: number;
  /** Spend is reported at most this often while there is some, ms. Default 20000 (the factory passes config `store.lease.reportIntervalMs`, 1000 for a memory store). */
  reportIntervalMs?: number;
  /** How often slices of idle windows are given back and uncapped spend reported, ms. Default 1000. */
  tickMs?: number;
  /** Percent reported by alert crossings (the sources decide when). Default 75. */
  alertPercent?: number;
  onEvent?: (e: LeaseEvent) => void;
}


interface Pending {
  readonly seq: number;
  readonly report: Amounts;
  readonly keep: boolean;
  readonly want: Amounts;
  /** Spend rate since the last report, per second: sizes the next slice. */
  readonly rate: Amounts;
  /** Workflow windows: this sidecar's last use of the window when the request was made. */
  readonly usedAt: number;
}

/** One window as this sidecar leases it. */
interface Lease {
  readonly scope: ReservedScope;
  /** The window's caps; none: only counted. */
  caps: Partial<Amounts>;
  /** The first metric the window caps (undefined: only counted), worked out when its caps are set, not per call. */
  firstCap: Metric | undefined;
  /** The slice held, per metric. */
  grant: Amounts;
  grantedAt: number;
  expiresAt: number;
  /** Settled since the last report applied. While a slice is live this is what was spent of it. */
  readonly unreported: MutableAmounts;
  /** Estimates of calls in flight on this window. */
  readonly held: MutableAmounts;
  /** A lease request sent but not answered: resent as is (same seq) until it is. */
  pending: Pending | undefined;
  renewing: Promise<boolean> | undefined;
  /** Estimates of calls waiting for a renew. */
  readonly waiting: MutableAmounts;
  /** The last answer granted less than was asked: the pool is (nearly) empty. */
  short: boolean;
  failedAt: number;
  /** Admitted on the outage allowance since the source last answered. */
  allowanceUsed: number;
  /** The source's figures in its last answer: spend (presumed included), slices outstanding, other live holders. */
  known: { spent: Amounts; outstanding: Amounts; liveOthers: number; seenAt: number | null };
  lastEstimate: Amounts;
  /** Last call that asked for this window (admitted or not): an idle window's slice is given back. */
  lastUseAt: number;
  /** Last call admitted or settled on this window (0: none): the `usedAt` reported, a workflow window's idle time. */
  usedAt: number;
  lastReportAt: number;
}

interface Entry {
  readonly leases: readonly Lease[];
  settled: boolean;
}

const ENTRY = Symbol('lease entry');
type Leased = Reservation & { readonly [ENTRY]?: Entry };

/*
 * Every window is served from leased slices (route, fleet, an agent's day and month, workflows), whatever
 * it caps. A slice has a part per capped metric (µUSD, tokens, calls), and the source keeps Σ slices ≤ what is left
 * of each cap, so a slice of calls is safe for a workflow's `maxCalls`, the runaway-loop stopper: calls are taken from
 * a slice when admitted, so however many sidecars run the loop, the fleet admits at most `maxCalls` calls (exactly,
 * not approximately: a slice of calls cannot be overspent, unlike money, whose actual cost may pass the estimate).
 * What a sidecar may leave unused is only a delay: its slice returns when it is given back or lapses. The inner
 * store behind LeasedStore checks kills only (its per-call path stays, tested, should a window kind need to be exact
 * per call again).
 */
const NO_SCOPES: readonly ScopeBudget[] = [];
const NOTHING_CROSSED: CommitResult = { crossed: [] };
const REMEMBERED_WORKFLOWS = 10_000;

/** A dropped workflow lease's last answer, kept for an outage (LeasedStore.remembered). */
interface Remembered {
  readonly known: Lease['known'];
  readonly lastReportAt: number;
  readonly usedAt: number;
  /** When it is of no more use: its workflow gone idle (a lease made again then starts fresh). */
  readonly forgetAt: number;
}

/** A request's windows' ids and keys, worked out once per scope list and day and month, not per call. */
interface Split {
  readonly day: string;
  readonly month: string;
  readonly windowIds: readonly string[];
  readonly keys: readonly string[];
}
const anyAmount = (a: Amounts) => a.usdMicros > 0 || a.tokens > 0 || a.calls > 0;

/**
 * Serves every cap of every window (route, fleet, an agent's day and month, workflows; µUSD, tokens and calls) from
 * leased slices (why that is exact for `maxCalls`: the note above NO_SCOPES), in front of a store that only checks kills (its per-call path is kept for
 * a window kind that would be exact per call again). Why (issue 14): a fleet-wide cap checked by every call makes one
 * Redis key every sidecar's call touches (one hot slot), and during a Redis outage each sidecar used to guess its own
 * share (25 % of the cap each); and per-call scripts over an agent's windows cost Redis ~140 µs a call (a workflow
 * window ~200 µs in a fleet of 1,000), two round trips of it whatever the scripts do.
 * Instead each sidecar leases a slice of each capped window (lease-source.ts), admits calls against it in memory,
 * reports the spend of every leased window (capped or only counted) with its renewals or every `reportIntervalMs`,
 * and renews in the background while it spends. Hence:
 * - a call asks the inner store for its kill copy only (no store command, but the copy's refresh once a second);
 *   the lease costs a round trip per slice, not per call. A call that does not fit waits for one renew before it is refused (BUDGET_EXCEEDED, or
 *   CALL_LIMIT for calls, naming the metric, with the source's figures), unless its agent is killed (KILLED).
 * - during an outage a sidecar spends what is left of the slices it holds until they expire, then nothing on
 *   that cap (or `allowanceUsdMicros`): a 503 BUDGET_STORE_UNAVAILABLE. A sidecar that starts during an outage
 *   has no slice, so it admits nothing there. Spend settled meanwhile is kept and reported (idempotently, by
 *   seq) when the source answers again.
 * - an idle window does no lease traffic: its slice is given back as it is about to lapse.
 * Refusal by either side returns the other's holds. Holds of calls never settled stay counted here (the budget
 * layer settles every call; the inner store's TTL covers a crash, which takes this state with it anyway).
 */
export class LeasedStore implements BudgetStore {
  private readonly inner: BudgetStore;
  private readonly source: LeaseSource;
  private readonly now: () => number;
  private readonly holder: string;
  private readonly renewBelow: number;
  private readonly allowance: number;
  private readonly reportIntervalMs: number;
  private readonly tickMs: number;
  private readonly alertPercent: number;
  private readonly emit: (e: LeaseEvent) => void;
  private readonly leases = new Map<string, Lease>();
  /**
   * What the source last said of workflow windows whose lease went idle and was dropped (at most
   * REMEMBERED_WORKFLOWS, oldest first out, and each only until its workflow's idle time is over): a workflow that pauses, then goes on during an outage, is held to what
   * was left of its caps, not handed them whole again (see aloneRemaining).
   */
  private readonly remembered = new Map<string, Remembered>();
  /** Weak: the budget layer keeps one list per route and agent; a list made for one call goes with it. */
  private readonly splits = new WeakMap<readonly ScopeBudget[], Split>();
  private sourceUp = true;
  /**
   * Lease request numbers, one sequence for every window: a window's state is dropped when it goes idle, and the
   * source remembers the last number it applied for this holder, so a number must never repeat.
   */
  private seq = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(opts: LeasedStoreOptions) {
    this.inner = opts.inner;
    this.source = opts.source;
    this.now = opts.now;
    this.holder = opts.holder ?? randomUUID();
    this.renewBelow = (opts.renewBelowPercent ?? 25) / 100;
    this.allowance = opts.allowanceUsdMicros ?? 0;
    this.reportIntervalMs = opts.reportIntervalMs ?? 20_000;
    this.tickMs = opts.tickMs ?? 1_000;
    this.alertPercent = opts.alertPercent ?? DEFAULT_ALERT_PERCENT;
    this.emit = opts.onEvent ?? (() => {});
    this.timer = setInterval(() => this.tick(), this.tickMs);
    this.timer.unref();
  }

  async reserve(req: ReserveRequest): Promise<ReserveResult> {
    // No window at all: the inner store's kill check is the whole answer.
    if (req.scopes.length === 0) return this.inner.reserve(req);
    assertAmounts('estimate', req.estimate);
    const split = this.split(req.scopes, this.now());
    const taken: Lease[] = [];
    const unhold = () => taken.forEach((l) => addAmounts(l.held, req.estimate, -1));
    try {
      for (let k = 0; k < req.scopes.length; k++) {
        const lease = this.leaseFor(req.scopes[k]!, split.windowIds[k]!, split.keys[k]!);
        const refusal = this.holdAtOnce(lease, req.estimate) ? undefined : await this.admit(lease, req.estimate, req.onUnavailable);
        if (refusal) {
          unhold();
          return { ok: false, refusal: (await this.killed(req)) ?? refusal };
        }
        taken.push(lease);
      }
    } catch (err) {
      unhold();
      // A killed agent hears KILLED, not that the store is away (its kill copy outlives the outage).
      if (err instanceof StoreUnavailableError) {
        const kill = await this.killed(req);
        if (kill) return { ok: false, refusal: kill };
      }
      throw err;
    }
    let inner: ReserveResult;
    try {
      // The kill check: the inner store holds no window of the call.
      inner = await this.inner.reserve({ ...req, scopes: NO_SCOPES, leasedScopes: req.scopes });
    } catch (err) {
      unhold();
      throw err;
    }
    if (!inner.ok) {
      unhold();
      return inner;
    }
    // In the order asked (the leases were taken in it), so `used` lines up with the scopes.
    const scopes: ReservedScope[] = [];
    const used: Amounts[] = [];
    for (const l of taken) {
      scopes.push(l.scope);
      const k = l.known.spent;
      used.push({ usdMicros: k.usdMicros + l.unreported.usdMicros + l.held.usdMicros, tokens: k.tokens + l.unreported.tokens + l.held.tokens, calls: k.calls + l.unreported.calls + l.held.calls });
    }
    const reservation: Reservation = { ...inner.reservation, scopes };
    // On the reservation itself, hidden (not enumerable): a WeakMap of one entry per call tripled the GC time.
    Object.defineProperty(reservation, ENTRY, { value: { leases: taken, settled: false } satisfies Entry });
    // Crossings of leased windows are events (see `send`): the inner store holds no window, so it crosses nothing.
    return { ok: true, reservation, used, crossed: inner.crossed };
  }

  async commit(reservation: Reservation, actual: Actual): Promise<CommitResult> {
    const entry = (reservation as Leased)[ENTRY];
    if (!entry) return this.inner.commit(reservation, actual);
    assertAmounts('actual', actual);
    if (!entry.settled) {
      entry.settled = true;
      const now = this.now();
      for (const l of entry.leases) {
        l.usedAt = now;
        addAmounts(l.held, reservation.estimate, -1);
        l.unreported.usdMicros += actual.usdMicros;
        l.unreported.tokens += actual.tokens;
        l.unreported.calls += reservation.estimate.calls;
      }
    }
    // The inner reservation held nothing (and a Redis one never ran a script): nothing to settle there.
    return NOTHING_CROSSED;
  }

  async release(reservation: Reservation): Promise<void> {
    const entry = (reservation as Leased)[ENTRY];
    if (!entry) return this.inner.release(reservation);
    if (!entry.settled) {
      entry.settled = true;
      const now = this.now();
      for (const l of entry.leases) {
        l.usedAt = now;
        addAmounts(l.held, reservation.estimate, -1);
      }
    }
  }

  /** Leased windows as the source knows them, plus this sidecar's unreported spend and holds. */
  async snapshot(scopes: readonly ScopeBudget[]): Promise<ScopeUsage[]> {
    const now = this.now();
    const leased = reservedScopes(scopes, now);
    const fromSource = await this.source.usage(leased, now).catch((err: unknown) => {
      throw new StoreUnavailableError('the budget store is unreachable', {}, { cause: err });
    });
    return leased.map((r, j) => {
      const u = fromSource[j]!;
      const l = this.leases.get(scopeKey(r, r.windowId));
      return {
        scope: r.scope,
        window: r.window,
        windowId: r.windowId,
        caps: r.caps,
        spent: {
          usdMicros: u.spent.usdMicros + (l?.unreported.usdMicros ?? 0),
          tokens: u.spent.tokens + (l?.unreported.tokens ?? 0),
          calls: u.spent.calls + (l?.unreported.calls ?? 0),
        },
        reserved: { usdMicros: l?.held.usdMicros ?? 0, tokens: l?.held.tokens ?? 0, calls: l?.held.calls ?? 0 },
        resetAt: this.resetAt(l, u.seenAt, r),
      };
    });
  }

  getKills(): Promise<Kill[]> {
    return this.inner.getKills();
  }

  setKill(target: KillTarget, reason?: string): Promise<void> {
    return this.inner.setKill(target, reason);
  }

  clearKill(target: KillTarget): Promise<boolean> {
    return this.inner.clearKill(target);
  }

  /**
   * False while the inner store is away, or the lease source failed its last request (every window is leased: a
   * Redis that answers reads but refuses scripts, OOM, serves no call). Back once a lease request is answered (a
   * failed request is resent by the tick).
   */
  available(): boolean {
    return this.sourceUp && this.inner.available();
  }

  async ready(timeoutMs: number): Promise<void> {
    await this.inner.ready?.(timeoutMs);
  }

  /** Slices held now, for the lease gauges: per capped metric, what new calls may still take. */
  leaseViews(): LeaseView[] {
    const now = this.now();
    return [...this.leases.values()].map((l) => {
      const remaining: Partial<MutableAmounts> = {};
      for (const m of METRICS) {
        if (l.caps[m] !== undefined) remaining[m] = l.expiresAt > now ? Math.max(0, l.grant[m] - l.unreported[m] - l.held[m]) : 0;
      }
      return { scope: l.scope.scope, window: l.scope.window, remaining };
    });
  }

  /** Spend is settled in memory here (reported with the leases); the inner store has nothing of the calls to send. */
  async flush(): Promise<void> {
    await this.inner.flush?.();
  }

  /** Gives every slice back and reports what is unreported; what cannot be reported is an event (lost spend). */
  async close(): Promise<void> {
    clearInterval(this.timer);
    await Promise.all(
      [...this.leases.values()].map(async (l) => {
        // A renew in flight may be keeping the slice: wait for it, then give the slice back.
        if (l.renewing) await l.renewing;
        if ((anyAmount(l.grant) || anyAmount(l.unreported) || l.pending) && !(await this.renew(l, ZERO, false))) {
          // A pending request's report is part of `unreported` until it is answered.
          // Calls and tokens too: a workflow's lost call count is what its maxCalls stood on.
          if (anyAmount(l.unreported)) this.emit({ type: 'unreportedDropped', scope: l.scope.scope, window: l.scope.window, unreported: { ...l.unreported } });
        }
      }),
    );
    await this.inner.close();
  }

  /**
   * The kill refusal of a call refused by a slice (or by an outage with no slice left): the inner store checks its
   * kill copy on an empty scope list, which holds nothing and asks Redis for nothing (but a kill copy gone stale).
   * A kill is the answer that explains itself: BUDGET_EXCEEDED would tell the agent to wait for a reset that does
   * not lift the kill.
   */
  private async killed(req: ReserveRequest): Promise<Refusal | undefined> {
    try {
      const r = await this.inner.reserve({ scopes: NO_SCOPES, leasedScopes: req.scopes, estimate: req.estimate });
      return r.ok || r.refusal.reason !== 'KILLED' ? undefined : r.refusal;
    } catch {
      // No kill copy to read (a store that is away and fails closed): the refusal at hand stands.
      return undefined;
    }
  }

  private split(list: readonly ScopeBudget[], now: number): Split {
    const day = dayId(now);
    const month = monthId(now);
    const kept = this.splits.get(list);
    if (kept !== undefined && kept.day === day && kept.month === month) return kept;
    const windowIds = list.map((s) => windowAt(s.window, now).id);
    const made: Split = { day, month, windowIds, keys: list.map((s, k) => scopeKey(s, windowIds[k]!)) };
    this.splits.set(list, made);
    return made;
  }

  /** This sidecar's lease of a window (made on first use; dropped by `tick` once idle and reported). */
  private leaseFor(s: ScopeBudget, windowId: string, key: string): Lease {
    let l = this.leases.get(key);
    if (!l) {
      l = {
        scope: { ...s, windowId },
        caps: {},
        firstCap: undefined,
        grant: ZERO,
        grantedAt: 0,
        expiresAt: 0,
        unreported: zeroAmounts(),
        held: zeroAmounts(),
        pending: undefined,
        renewing: undefined,
        waiting: zeroAmounts(),
        short: false,
        failedAt: -Infinity,
        allowanceUsed: 0,
        known: { spent: ZERO, outstanding: ZERO, liveOthers: 0, seenAt: null },
        lastEstimate: ZERO,
        lastUseAt: 0,
        usedAt: 0,
        lastReportAt: -Infinity,
      };
      const before = this.remembered.get(key);
      if (before !== undefined) {
        this.remembered.delete(key);
        l.known = before.known;
        l.lastReportAt = before.lastReportAt;
        l.usedAt = before.usedAt;
      }
      this.leases.set(key, l);
    }
    // A reload may change the caps; the newest ones count.
    if (l.caps !== s.caps) {
      l.caps = s.caps;
      l.firstCap = METRICS.find((m) => s.caps[m] !== undefined);
    }
    return l;
  }

  /**
   * The capped metric a call of estimate `e` does not fit in the slice held (undefined: it fits). While a renew is
   * unanswered, calls are admitted on the old slice only up to what the renew asked for: Redis takes the old slice
   * back in the same step, and the new one covers at least `min(want, unspent of the old)`, so nothing admitted
   * meanwhile is left uncovered, even when the answer is lost (the limit holds until the resent request is answered).
   */
  private misfit(l: Lease, e: Amounts, now: number): Metric | undefined {
    if (l.expiresAt <= now) return l.firstCap ?? 'usdMicros';
    const p = l.pending;
    for (const m of METRICS) {
      if (l.caps[m] === undefined) continue;
      const limit = p ? Math.min(l.grant[m], p.report[m] + p.want[m]) : l.grant[m];
      if (overCap(l.unreported[m] + l.held[m], e[m], limit)) return m;
    }
    return undefined;
  }

  private fits(l: Lease, e: Amounts, now: number): boolean {
    return this.misfit(l, e, now) === undefined;
  }

  /**
   * A workflow window this sidecar last used its idle time ago or more: the source restarts it from zero when no
   * other sidecar used it meanwhile, so the slice held (of the old window) is not admitted on; the call asks.
   */
  private idleExpired(l: Lease, now: number): boolean {
    const idle = l.scope.idleTtlMs;
    return l.scope.window === 'workflow' && idle !== undefined && l.usedAt > 0 && now - l.usedAt >= idle;
  }

  /**
   * Holds `estimate` on the window when that needs no waiting: it is uncapped (only counted), or the call fits the
   * slice held. Synchronous, so the usual call makes no promise per leased window (an async admit per window was
   * 2.4 % of a capped call's allocation in memory mode, beside 5.8 % for the rest of reserve: bench:per-call --alloc-profile).
   */
  private holdAtOnce(l: Lease, estimate: Amounts): boolean {
    const now = this.now();
    l.lastUseAt = now;
    l.lastEstimate = estimate;
    if (l.firstCap === undefined) {
      addAmounts(l.held, estimate, 1);
      l.usedAt = now;
      return true;
    }
    if (!this.fits(l, estimate, now) || this.idleExpired(l, now)) return false;
    this.hold(l, estimate, false);
    return true;
  }

  /**
   * The rest of admission, once {@link holdAtOnce} could not hold the call: holds it after a renew, or says why not
   * (undefined: admitted). Throws StoreUnavailableError in an outage with no slice.
   */
  private async admit(l: Lease, estimate: Amounts, onUnavailable: ReserveRequest['onUnavailable']): Promise<Refusal | undefined> {
    if (l.firstCap === undefined) throw new TypeError('an uncapped window is always held at once');
    // The pool was found (nearly) empty less than a tick ago: refuse without asking again, so a fleet whose cap is
    // spent does not send every refused call to the one slot that holds it.
    if (l.short && this.sourceUp && this.now() - l.grantedAt < this.tickMs && !this.idleExpired(l, this.now())) return this.exhausted(l, estimate);
    // Calls waiting for a renew say so, so one renew asks for all of them (50 concurrent calls: one round trip).
    addAmounts(l.waiting, estimate, 1);
    try {
      if (l.renewing) {
        await l.renewing;
        if (this.fits(l, estimate, this.now()) && !this.idleExpired(l, this.now())) return this.hold(l, estimate, false);
      }
      for (let round = 0; round < 2; round++) {
        if (!(await this.renew(l, plusAmounts(l.held, l.waiting), true))) {
          // Connected but no answer in time (a loaded Redis): ask once more (same seq, so applied at most once)
          // before treating it as an outage. A Redis that is down fails at once and is not asked again.
          if (round === 0 && this.inner.available()) continue;
          return this.unreachable(l, estimate, onUnavailable);
        }
        if (this.fits(l, estimate, this.now())) return this.hold(l, estimate, false);
        // The pool had less than asked: another renew finds no more. Else the renew was someone else's, too small.
        if (l.short) break;
      }
    } finally {
      addAmounts(l.waiting, estimate, -1);
    }
    return this.exhausted(l, estimate);
  }

  /** BUDGET_EXCEEDED (CALL_LIMIT for calls), naming the metric whose slice the call does not fit, with the source's figures. */
  private exhausted(l: Lease, estimate: Amounts, metric = this.misfit(l, estimate, this.now())): Refusal {
    const m = metric ?? l.firstCap ?? 'usdMicros';
    this.emit({ type: 'refused', scope: l.scope.scope, window: l.scope.window, reason: 'exhausted', metric: m, requested: estimate[m] });
    return {
      reason: refusalReasonFor(m),
      scope: l.scope.scope,
      window: l.scope.window,
      metric: m,
      limit: l.caps[m] ?? 0,
      spent: l.known.spent[m] + l.unreported[m],
      reserved: Math.max(0, l.known.outstanding[m] - l.grant[m]) + l.held[m],
      requested: estimate[m],
      resetAt: this.resetAt(l, l.known.seenAt),
    };
  }

  /** When a window starts again: its calendar end, or a workflow's last use (anyone's as last known, or ours) + its idle time. */
  private resetAt(l: Lease | undefined, seenAt: number | null, s: ReservedScope | undefined = l?.scope): number | null {
    if (s === undefined) return null;
    if (s.window !== 'workflow') return windowEndFromId(s.window, s.windowId);
    const last = Math.max(seenAt ?? 0, l?.usedAt ?? 0);
    const at = resetTimeOf(s, s.windowId, last > 0 ? last : null);
    // Gone idle already: the window starts again at its next call (as the per-call snapshot reads it).
    return at !== null && at <= this.now() ? null : at;
  }

  /** The source is unreachable: the slice held (if any is left and live), the allowance, or a 503. */
  private unreachable(l: Lease, estimate: Amounts, onUnavailable: ReserveRequest['onUnavailable']): Refusal | undefined {
    const e = estimate.usdMicros;
    if (onUnavailable !== 'closed') {
      if (this.fits(l, estimate, this.now())) return this.hold(l, estimate, false);
      // The allowance is money: a window capping tokens or calls gets none (a loop stopper must not run on an allowance).
      if (this.allowance > 0 && l.caps.tokens === undefined && l.caps.calls === undefined && l.allowanceUsed + e <= this.allowance) {
        l.allowanceUsed += e;
        return this.hold(l, estimate, true);
      }
      const alone = this.aloneRemaining(l);
      if (alone !== undefined) {
        // The store's rule: a cap used up refuses even a call estimated at zero (a tool call), as `misfit` does.
        const short = METRICS.find((m) => l.caps[m] !== undefined && overCap(0, estimate[m], alone[m]));
        return short === undefined ? this.hold(l, estimate, false) : this.exhausted(l, estimate, short);
      }
    }
    const metric = l.firstCap ?? 'usdMicros';
    this.emit({ type: 'refused', scope: l.scope.scope, window: l.scope.window, reason: 'no_lease', metric, requested: estimate[metric] });
    throw new StoreUnavailableError(
      onUnavailable === 'closed'
        ? 'the budget store is unreachable and this route fails closed (budget.storeUnavailable: closed)'
        : `the budget store is unreachable and this sidecar holds no slice of the ${l.scope.scope.kind} ${l.scope.window} cap left (store.lease)`,
      { scope: l.scope.scope.kind, id: l.scope.scope.id, window: l.scope.window },
    );
  }

  /**
   * An agent's or workflow's window past its slice in an outage, on a `local` route, when this sidecar was the
   * window's only live holder at the source's last answer (one agent id normally runs in one pod): per metric, what
   * was left of the cap then, less what this sidecar spent and holds since. Nobody else was spending it, so this keeps
   * the agent within its caps through an outage of any length, as the local fallback did before these windows were
   * leased; without it a Redis outage longer than a slice's life (30 s) would answer 503 to every capped agent of the
   * fleet until it ends. Undefined (no such guess): route and fleet caps (the fleet's, issue 14), an agent id other
   * sidecars were spending too (replicas: their slices bound the outage, as for the fleet), an agent window the
   * source never answered for.
   * A workflow window the source never answered for (a workflow started during the outage) counts as new: its whole
   * caps, as the local fallback gave it before workflow windows were leased (one agent id and its workflows run in
   * one sidecar; workflows count per agent id), unless its agent's windows showed other live holders. One this
   * sidecar ran before and dropped when idle starts from what the source last said of it (`remembered`), and one
   * unseen for its idle time from zero, as its next request would.
   */
  private aloneRemaining(l: Lease): Amounts | undefined {
    const scope = l.scope.scope;
    if ((scope.kind !== 'agent' && scope.kind !== 'workflow') || l.firstCap === undefined) return undefined;
    const fresh = scope.kind === 'workflow' && (!Number.isFinite(l.lastReportAt) || this.idleExpired(l, this.now()));
    if (fresh) {
      if (scope.agent === undefined || this.sharedAgent(scope.agent)) return undefined;
    } else if (!Number.isFinite(l.lastReportAt) || l.known.liveOthers > 0) return undefined;
    const known = fresh ? { spent: ZERO, outstanding: ZERO } : l.known;
    const left = (m: Metric) => (l.caps[m] ?? 0) - known.spent[m] - Math.max(0, known.outstanding[m] - l.grant[m]) - l.unreported[m] - l.held[m];
    return { usdMicros: left('usdMicros'), tokens: left('tokens'), calls: left('calls') };
  }

  /** An agent id whose windows other sidecars held live slices of at the source's last answer (replicas). */
  private sharedAgent(agent: string): boolean {
    for (const l of this.leases.values()) if (l.scope.scope.kind === 'agent' && l.scope.scope.id === agent && l.known.liveOthers > 0) return true;
    return false;
  }

  private hold(l: Lease, estimate: Amounts, onAllowance: boolean): undefined {
    addAmounts(l.held, estimate, 1);
    l.usedAt = this.now();
    // The lease source learns of an outage only when a lease request fails; the inner store's view is quicker.
    if (!this.sourceUp || !this.inner.available()) this.emit({ type: 'outageAdmission', scope: l.scope.scope, window: l.scope.window, usdMicros: estimate.usdMicros, onAllowance });
    else this.maybeRenew(l);
    return undefined;
  }

  /** Renews ahead of need while the window is spending, so calls rarely wait for a round trip. */
  /** A capped metric of the slice has less than `renewBelowPercent` of its grant left (a loop: no closure per call). */
  private runningLow(l: Lease): boolean {
    for (const m of METRICS) {
      if (l.caps[m] !== undefined && l.grant[m] - l.unreported[m] - l.held[m] < this.renewBelow * l.grant[m]) return true;
    }
    return false;
  }

  private maybeRenew(l: Lease): void {
    const now = this.now();
    if (l.renewing || now - l.failedAt < this.tickMs) return;
    const lifeLeft = l.expiresAt - now;
    if (this.runningLow(l) || lifeLeft < this.renewBelow * (l.expiresAt - l.grantedAt)) {
      this.inBackground(l, plusAmounts(l.held, l.lastEstimate), true);
    }
  }

  /** A renew nobody awaits: a bug it throws (a TypeError) is logged, not left to crash the process as an unhandled rejection. */
  private inBackground(l: Lease, want: Amounts, keep: boolean): void {
    this.renew(l, want, keep).catch((err: unknown) => this.emit({ type: 'sourceDown', error: err instanceof Error ? err : new Error(String(err)) }));
  }

  /** One lease request at a time per window; a pending one (answer lost) is resent first. False: source unreachable. */
  private renew(l: Lease, want: Amounts, keep: boolean): Promise<boolean> {
    l.renewing ??= this.sendAll(l, want, keep).finally(() => {
      l.renewing = undefined;
    });
    return l.renewing;
  }

  private async sendAll(l: Lease, want: Amounts, keep: boolean): Promise<boolean> {
    if (l.pending && !(await this.send(l))) return false;
    let wanted = want;
    if (!keep) {
      // Nothing may be admitted on a slice being given back: Redis counts it free once the answer is in.
      l.expiresAt = Math.min(l.expiresAt, this.now());
    } else {
      const need = plusAmounts(l.held, l.waiting);
      wanted = { usdMicros: Math.max(want.usdMicros, need.usdMicros), tokens: Math.max(want.tokens, need.tokens), calls: Math.max(want.calls, need.calls) };
    }
    const now = this.now();
    // Spend since the last report over the time it took (at least a second, so one call just after a grant does not
    // read as a torrent): what the next slice should last at. A first request knows none.
    const elapsedMs = now - l.lastReportAt;
    const per = Number.isFinite(elapsedMs) ? 1000 / Math.max(1_000, elapsedMs) : 0;
    const u = l.unreported;
    const rate = { usdMicros: u.usdMicros * per, tokens: u.tokens * per, calls: u.calls * per };
    l.pending = { seq: ++this.seq, report: { ...l.unreported }, keep, want: wanted, rate, usedAt: l.usedAt };
    return this.send(l);
  }

  private async send(l: Lease): Promise<boolean> {
    const p = l.pending!;
    const now = this.now();
    let r: LeaseReply;
    try {
      r = await this.source.acquire({ scope: l.scope, holder: this.holder, seq: p.seq, report: p.report, keep: p.keep, want: p.want, rate: p.rate, caps: l.caps, usedAt: p.usedAt, now });
    } catch (err) {
      if (err instanceof TypeError) throw err;
      l.failedAt = this.now();
      if (this.sourceUp) {
        this.sourceUp = false;
        this.emit({ type: 'sourceDown', error: err instanceof Error ? err : new Error(String(err)) });
      }
      return false;
    }
    l.pending = undefined;
    l.short = p.keep && METRICS.some((m) => l.caps[m] !== undefined && r.grant[m] < p.want[m]);
    addAmounts(l.unreported, p.report, -1);
    const renewal = l.expiresAt > now;
    l.grant = r.grant;
    l.grantedAt = now;
    l.expiresAt = r.expiresAt;
    l.known = { spent: r.spent, outstanding: r.outstanding, liveOthers: r.liveHolders, seenAt: r.seenAt };
    l.allowanceUsed = 0;
    l.lastReportAt = now;
    if (!this.sourceUp) {
      this.sourceUp = true;
      this.emit({ type: 'sourceUp' });
    }
    if (anyAmount(r.grant)) this.emit({ type: 'granted', scope: l.scope.scope, window: l.scope.window, grant: r.grant, renewal, liveHolders: r.liveHolders });
    // Said now, not handed to the next call: most reports are the tick's, and a sidecar whose agent stopped calling
    // at 80 % of its cap would never make that call.
    for (const m of r.alerts) {
      const limit = l.caps[m];
      if (limit === undefined) continue;
      const s = l.scope;
      this.emit({ type: 'alert', crossing: { scope: s.scope, window: s.window, windowId: s.windowId, metric: m, percent: this.alertPercent, used: r.spent[m], limit } });
    }
    return true;
  }

  private remember(key: string, l: Lease): void {
    this.remembered.delete(key);
    const idle = l.scope.idleTtlMs;
    this.remembered.set(key, { known: l.known, lastReportAt: l.lastReportAt, usedAt: l.usedAt, forgetAt: idle !== undefined && l.usedAt > 0 ? l.usedAt + idle : Infinity });
    if (this.remembered.size > REMEMBERED_WORKFLOWS) this.remembered.delete(this.remembered.keys().next().value!);
  }

  /**
   * Background work that needs no call to trigger it: an idle window's slice is given back as it is about to lapse
   * (so its unused part returns to the fleet now, not after the grace); spend is reported at most every
   * `reportIntervalMs` while there is some (so `/admin/budgets` on any sidecar is at most that stale, and spend kept
   * through an outage is reported once the source answers); forgotten windows are dropped.
   */
  private tick(): void {
    const now = this.now();
    // Oldest first (the order they were dropped in): what has gone idle since would start fresh anyway.
    for (const [key, r] of this.remembered) {
      if (r.forgetAt > now) break;
      this.remembered.delete(key);
    }
    for (const [key, l] of this.leases) {
      if (l.renewing || now - l.failedAt < this.tickMs) continue;
      const unreported = anyAmount(l.unreported) || l.pending !== undefined;
      const idle = l.held.calls === 0 && now - l.lastUseAt >= this.tickMs;
      if (anyAmount(l.grant) && idle && l.expiresAt - now <= 2 * this.tickMs) this.inBackground(l, ZERO, false);
      // A lapsed slice with calls still in flight is renewed, not given back: the new slice must cover their holds
      // (there is room: the old slice they were admitted on returns in the same step).
      else if (unreported && now - l.lastReportAt >= this.reportIntervalMs) {
        this.inBackground(l, plusAmounts(l.held, l.lastEstimate), l.firstCap !== undefined && (l.expiresAt > now || l.held.calls > 0));
      }
      else if (!unreported && !anyAmount(l.grant) && idle) {
        this.leases.delete(key);
        if (l.scope.window === 'workflow' && Number.isFinite(l.lastReportAt)) this.remember(key, l);
      }
    }
  }
}
