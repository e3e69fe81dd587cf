import type { MemoryStore } from './memory-store.js';
import {
  METRICS,
  plusAmounts,
  reachedAlert,
  scopeKey,
  ZERO,
  zeroAmounts,
  type Amounts,
  type Metric,
  type MutableAmounts,
  type ReservedScope,
} from './store.js';
import { windowEndFromId } from './windows.js';

/**
 * Where a sidecar leases its slices of the caps lease.ts serves (every window: route, fleet, an agent's day and
 * month, a workflow). One call does everything a holder needs, atomically: report the spend settled since its last
 * report, give back its previous slice, and take a new one. A slice has a part per capped metric (µUSD, tokens,
 * calls), each sized alone by the same rules. Both implementations follow them (the Lua in lease-scripts.ts mirrors
 * {@link MemoryLeaseSource.acquire}):
 * - per metric, `remaining = cap − spent − Σ outstanding slices`; a slice is `min(max(size, want), remaining)`, where
 *   `size` is what the holder would spend in two slice lifetimes at its recent rate (at least the metric's minimum
 *   slice), but never more than a fair share, `remaining / (live holders + 1)`; a source with one holder grants all
 *   of `remaining`. Sized by demand, not by what is left: sized by what is left, the first sidecars of a day took
 *   half the fleet cap between them, and near a tight cap most sidecars found nothing left while a few held slices
 *   they could not spend (bench:fleet's outage run: 985 of 1,999 calls refused, 79 % of the cap never spent).
 *   Hence Σ slices ≤ what is left of each cap: a slice of calls spent to its end stops a workflow at exactly
 *   `maxCalls` fleet-wide (calls are taken from the slice at admission, never settled above it).
 * - A slice is the holder's until `expiresAt`; it is returned to the pool only `graceMs` later, and then counted
 *   as spent ("presumed", per metric) until its holder reports what it really spent: a holder that lost the store may
 *   have spent all of it, and counting it free would let another sidecar spend it again.
 * - `seq` is per holder and scope window: a request whose `seq` is not above the last one applied is a retry whose
 *   answer was lost, and is answered again without being applied twice.
 * - A workflow window (`scope.idleTtlMs`) starts again from zero once unseen for its idle time, as RedisStore's
 *   per-call scripts reset it: "seen" is the latest `usedAt` any holder reported (its last reserve or settle there).
 *   The request that finds it idle resets it before applying anything, and its own report, spend of the window that
 *   went idle, is dropped with it. Never while another holder's slice is outstanding: that holder may be spending it.
 */
export interface LeaseSource {
  acquire(req: LeaseRequest): Promise<LeaseReply>;
  /** What the source knows of each window as of `now` (reported spend, presumed spend included). */
  usage(scopes: readonly ReservedScope[], now: number): Promise<LeaseUsage[]>;
}

export interface LeaseRequest {
  /** A leased scope window (window id fixed): route, fleet, an agent's day or month, a workflow. */
  readonly scope: ReservedScope;
  /** This sidecar (one id per process). */
  readonly holder: string;
  readonly seq: number;
  /** Spend settled since the last report applied (calls counted too). */
  readonly report: Amounts;
  /** False: give the slice back, take none (an idle sidecar, a shutdown, an uncapped window's report). */
  readonly keep: boolean;
  /** Needed now per metric (holds of calls in flight + the estimate at hand): the slice is at least this, if left. */
  readonly want: Amounts;
  /** This holder's spend rate on the window since its last report, per second (0: none known). Sizes the slice. */
  readonly rate?: Amounts;
  /** The window's caps (µUSD, tokens, calls); a metric absent is uncapped and only counted. */
  readonly caps: Partial<Amounts>;
  /** Workflow windows: this holder's last reserve or settle on the window, ms epoch (0: none). Drives the idle reset. */
  readonly usedAt?: number;
  /** The caller's clock, ms epoch. */
  readonly now: number;
}

export interface LeaseReply {
  /** This holder's slice per metric (0 for an uncapped one). */
  readonly grant: Amounts;
  /** Clock time the slice stops being the holder's; 0 with no slice. */
  readonly expiresAt: number;
  /** Spend of the window as reported by every holder, presumed spend of lapsed slices included. */
  readonly spent: Amounts;
  /** Σ of the slices outstanding, this one included. */
  readonly outstanding: Amounts;
  /** Other holders with a live slice. */
  readonly liveHolders: number;
  /** Metrics whose spend reached the alert percent for the first time in this window. */
  readonly alerts: readonly Metric[];
  /** Workflow windows: the latest use any holder reported (null: none since the window started). */
  readonly seenAt: number | null;
}

export interface LeaseUsage {
  readonly spent: Amounts;
  readonly outstanding: Amounts;
  /** Workflow windows: the latest use reported (null: none, or the window went idle). */
  readonly seenAt: number | null;
}

export interface LeaseSizing {
  /** How long a slice lasts, ms. */
  readonly ttlMs: number;
  /** A lapsed slice returns to the pool this long after its expiry, ms (covers clock skew between sidecars). */
  readonly graceMs: number;
  readonly minSliceUsdMicros: number;
  /**
   * Smallest token and call slices (defaults 10,000 and 10; always within the fair share, so a `maxCalls` of 3 still
   * gives one holder 3). Without them a first slice held only the call at hand and each of a sidecar's first calls
   * renewed (bench:fleet --workflow=on, 1,000 sidecars for 20 s: 0.45 → 0.40 script calls per call).
   */
  readonly minSliceTokens?: number;
  readonly minSliceCalls?: number;
  /** Percent of the cap at which `alert` is answered once per window and metric; 0: never. */
  readonly alertPercent: number;
}

/** The smallest slice per metric. */
export const minSlices = (s: LeaseSizing): Amounts => ({ usdMicros: s.minSliceUsdMicros, tokens: s.minSliceTokens ?? 10_000, calls: s.minSliceCalls ?? 10 });

/** What a holder spending `rate` a second would use in two slice lifetimes of `ttlMs`. */
export const demandOf = (rate: number, ttlMs: number): number => Math.floor((rate * ttlMs * 2) / 1000);

/**
 * The slice rule both sources share, per metric. The Lua copy (lease-scripts.ts) is the `whole = false` rule: any
 * Redis window may have other holders. `whole` is MemoryLeaseSource's one process, one holder.
 */
export const sliceSize = (remaining: number, liveOthers: number, want: number, min: number, whole: boolean, demand = 0): number => {
  if (remaining <= 0) return 0;
  const share = whole ? remaining : Math.min(Math.floor(remaining / (liveOthers + 1)), Math.max(demand, min));
  return Math.min(Math.max(share, want), remaining);
};

/** Lease hashes of a workflow window outlive its last request by this (its idle time, plus a slice's life and grace). */
export const workflowLeaseGcMs = (idleTtlMs: number, s: LeaseSizing): number => idleTtlMs + s.ttlMs + s.graceMs;

const isZero = (a: Amounts) => a.usdMicros === 0 && a.tokens === 0 && a.calls === 0;

/**
 * A workflow window unseen for its idle time, with no slice out, reads as the reset its next request will make
 * (both sources' `usage`).
 */
export const goneIdle = (s: ReservedScope, seenAt: number | null, outstanding: Amounts, now: number): boolean =>
  s.window === 'workflow' && s.idleTtlMs !== undefined && seenAt !== null && now - seenAt >= s.idleTtlMs && isZero(outstanding);

interface Holder {
  grant: MutableAmounts;
  expiresAt: number;
  seq: number;
  /** Lapsed slices counted as spent until this holder reports. */
  presumed: MutableAmounts;
}

interface LeaseWindow {
  readonly holders: Map<string, Holder>;
  /** Workflow windows: dropped after this (`workflowLeaseGcMs` after the last request applied). */
  gcAt: number;
}

const CALENDAR_GRACE_MS = 2 * 86_400_000;

/**
 * Leases inside one process. Spend lands in the MemoryStore's own counters (so the snapshot file keeps it, workflow
 * windows' last use included); slices, holders and presumed spend live here. With `whole` (the default: one sidecar,
 * one holder) a slice is all that is left, so admission is exactly the MemoryStore's `spent + held + e ≤ cap`.
 * The MemoryStore is handed workflow windows without their idle time: the idle reset is this source's (it must not
 * reset under another holder's outstanding slice), and their last use is the holders' `usedAt`, not the report time.
 */
export class MemoryLeaseSource implements LeaseSource {
  private readonly windows = new Map<string, LeaseWindow>();
  private readonly whole: boolean;
  private readonly min: Amounts;
  private lastSweep = 0;

  constructor(
    private readonly counters: MemoryStore,
    private readonly sizing: LeaseSizing,
    opts: { whole?: boolean } = {},
  ) {
    this.whole = opts.whole ?? true;
    this.min = minSlices(sizing);
  }

  async acquire(req: LeaseRequest): Promise<LeaseReply> {
    const { now } = req;
    this.sweep(now);
    const scope = counted(req.scope);
    const key = scopeKey(req.scope, req.scope.windowId);
    let w = this.windows.get(key);
    if (!w) {
      // A calendar window is dropped with the counters' grace after it ends; a workflow window sets its own below.
      const end = req.scope.window === 'day' || req.scope.window === 'month' ? windowEndFromId(req.scope.window, req.scope.windowId) : null;
      this.windows.set(key, (w = { holders: new Map(), gcAt: end === null ? Infinity : end + CALENDAR_GRACE_MS }));
    }
    let live = 0;
    const outstanding = zeroAmounts();
    const presumed = zeroAmounts();
    for (const [id, h] of w.holders) {
      if (id === req.holder) continue;
      if (h.expiresAt + this.sizing.graceMs <= now && !isZero(h.grant)) {
        for (const m of METRICS) h.presumed[m] += h.grant[m];
        h.grant = zeroAmounts();
      }
      for (const m of METRICS) {
        outstanding[m] += h.grant[m];
        presumed[m] += h.presumed[m];
      }
      if (!isZero(h.grant) && h.expiresAt > now) live++;
    }
    let me = w.holders.get(req.holder);
    if (!me) w.holders.set(req.holder, (me = { grant: zeroAmounts(), expiresAt: 0, seq: 0, presumed: zeroAmounts() }));
    const reply = (alerts: readonly Metric[]): LeaseReply => ({
      grant: { ...me.grant },
      expiresAt: me.expiresAt,
      spent: plusAmounts(plusAmounts(this.counters.spentIn(scope), presumed), me.presumed),
      outstanding: plusAmounts(outstanding, me.grant),
      liveHolders: live,
      alerts,
      seenAt: req.scope.window === 'workflow' ? this.counters.lastSeenIn(scope) : null,
    });
    if (req.seq <= me.seq) return reply([]);
    me.seq = req.seq;
    let report = req.report;
    const idle = req.scope.idleTtlMs;
    if (req.scope.window === 'workflow' && idle !== undefined) {
      const gcAt = now + workflowLeaseGcMs(idle, this.sizing);
      w.gcAt = gcAt;
      const seen = Math.max(this.counters.lastSeenIn(scope) ?? 0, req.usedAt ?? 0);
      if (seen > 0 && now - seen >= idle && isZero(outstanding)) {
        // Idle: the window starts again from zero, and this report (spend of the window gone idle) goes with it.
        // Its alert marks go with its counters.
        this.counters.forget(scope);
        // As the Lua rewrites every holder's entry: no slice and no expiry (a retry of another holder answers 0).
        for (const h of w.holders.values()) {
          h.grant = zeroAmounts();
          h.expiresAt = 0;
          h.presumed = zeroAmounts();
        }
        for (const m of METRICS) presumed[m] = 0;
      } else {
        this.counters.charge(scope, report, { seenAt: req.usedAt ?? 0, gcAt });
      }
      report = ZERO;
    }
    if (!isZero(report)) this.counters.charge(scope, report);
    me.presumed = zeroAmounts();
    me.grant = zeroAmounts();
    me.expiresAt = 0;
    const spent = plusAmounts(this.counters.spentIn(scope), presumed);
    const capped = METRICS.some((m) => req.caps[m] !== undefined);
    if (capped && req.keep) {
      for (const m of METRICS) {
        const cap = req.caps[m];
        if (cap === undefined) continue;
        const demand = demandOf(req.rate?.[m] ?? 0, this.sizing.ttlMs);
        me.grant[m] = sliceSize(cap - spent[m] - outstanding[m], live, req.want[m], this.min[m], this.whole, demand);
      }
      if (!isZero(me.grant)) me.expiresAt = now + this.sizing.ttlMs;
    }
    const alerts: Metric[] = [];
    for (const m of METRICS) {
      const cap = req.caps[m];
      // The mark is the MemoryStore counter's, so the snapshot file keeps it: a restart does not alert again.
      if (cap !== undefined && reachedAlert(spent[m], cap, this.sizing.alertPercent) && this.counters.markAlerted(scope, m)) alerts.push(m);
    }
    return reply(alerts);
  }

  async usage(scopes: readonly ReservedScope[], now: number): Promise<LeaseUsage[]> {
    return scopes.map((s) => {
      const w = this.windows.get(scopeKey(s, s.windowId));
      const presumed = zeroAmounts();
      const outstanding = zeroAmounts();
      for (const h of w?.holders.values() ?? []) {
        for (const m of METRICS) {
          presumed[m] += h.presumed[m];
          outstanding[m] += h.grant[m];
        }
      }
      const scope = counted(s);
      const seenAt = s.window === 'workflow' ? this.counters.lastSeenIn(scope) : null;
      if (goneIdle(s, seenAt, outstanding, now)) return { spent: ZERO, outstanding: ZERO, seenAt: null };
      return { spent: plusAmounts(this.counters.spentIn(scope), presumed), outstanding, seenAt };
    });
  }

  /** Windows past their `gcAt`: calendar windows the counters' grace after they end, workflows unseen past their gc. */
  private sweep(now: number): void {
    if (now - this.lastSweep < 60_000) return;
    this.lastSweep = now;
    for (const [key, w] of this.windows) if (w.gcAt <= now) this.windows.delete(key);
  }
}

/** The scope as the MemoryStore counts it: a workflow window without its idle time (this source resets it). */
const counted = (s: ReservedScope): ReservedScope => {
  if (s.idleTtlMs === undefined) return s;
  const { idleTtlMs: _idle, ...rest } = s;
  return rest;
};

