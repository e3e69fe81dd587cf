import type { MemoryStore } from './memory-store.js';
import { reachedAlert, scopeKey, type Amounts, type ReservedScope } from './store.js';
import { windowEndFromId } from './windows.js';

/**
 * Where a sidecar leases its slices of the money caps lease.ts serves (route, fleet, an agent's USD-only windows).
 * One call does everything a holder needs, atomically: report the spend settled since its last report, give back
 * its previous slice, and take a new one. Both implementations follow the same rules (the Lua in lease-scripts.ts mirrors
 * {@link MemoryLeaseSource.acquire}):
 * - `remaining = cap − spent − Σ outstanding slices`; a slice is `min(max(size, want), remaining)`, where `size` is
 *   what the holder would spend in two slice lifetimes at its recent rate (at least `minSlice`), but never more
 *   than a fair share, `remaining / (live holders + 1)`; a source with one holder grants all of `remaining`.
 *   Sized by demand, not by what is left: sized by what is left, the first sidecars of a day took half the fleet
 *   cap between them, and near a tight cap most sidecars found nothing left while a few held slices they could not
 *   spend (bench:fleet's outage run: 985 of 1,999 calls refused, 79 % of the cap never spent).
 * - A slice is the holder's until `expiresAt`; it is returned to the pool only `graceMs` later, and then counted
 *   as spent ("presumed") until its holder reports what it really spent: a holder that lost the store may have
 *   spent all of it, and counting it free would let another sidecar spend it again.
 * - `seq` is per holder and scope window: a request whose `seq` is not above the last one applied is a retry whose
 *   answer was lost, and is answered again without being applied twice.
 */
export interface LeaseSource {
  acquire(req: LeaseRequest): Promise<LeaseReply>;
  /** What the source knows of each window (reported spend, presumed spend included). */
  usage(scopes: readonly ReservedScope[]): Promise<LeaseUsage[]>;
}

export interface LeaseRequest {
  /** A leased scope window (window id fixed): route, fleet, or an agent's day or month. */
  readonly scope: ReservedScope;
  /** This sidecar (one id per process). */
  readonly holder: string;
  readonly seq: number;
  /** Spend settled since the last report applied (calls counted too). */
  readonly report: Amounts;
  /** False: give the slice back, take none (an idle sidecar, a shutdown, an uncapped window's report). */
  readonly keep: boolean;
  /** µUSD needed now (holds of calls in flight + the estimate at hand): the slice is at least this, if left. */
  readonly wantUsdMicros: number;
  /** This holder's spend rate on the window since its last report, µUSD per second (0: none known). Sizes the slice. */
  readonly rateUsdMicrosPerS?: number;
  /** µUSD; undefined: the window is uncapped and only counted. */
  readonly capUsdMicros: number | undefined;
  /** The caller's clock, ms epoch. */
  readonly now: number;
}

export interface LeaseReply {
  readonly grantUsdMicros: number;
  /** Clock time the slice stops being the holder's; 0 with no slice. */
  readonly expiresAt: number;
  /** Spend of the window as reported by every holder, presumed spend of lapsed slices included, µUSD. */
  readonly spentUsdMicros: number;
  /** Tokens and calls reported by every holder (no presumed part: a slice is money only). */
  readonly spentTokens: number;
  readonly spentCalls: number;
  /** Σ of the slices outstanding, this one included, µUSD. */
  readonly outstandingUsdMicros: number;
  /** Other holders with a live slice. */
  readonly liveHolders: number;
  /** Spend reached the alert percent for the first time in this window. */
  readonly alert: boolean;
}

export interface LeaseUsage {
  readonly spent: Amounts;
  readonly outstandingUsdMicros: number;
}

export interface LeaseSizing {
  /** How long a slice lasts, ms. */
  readonly ttlMs: number;
  /** A lapsed slice returns to the pool this long after its expiry, ms (covers clock skew between sidecars). */
  readonly graceMs: number;
  readonly minSliceUsdMicros: number;
  /** Percent of the cap at which `alert` is answered once per window; 0: never. */
  readonly alertPercent: number;
}

/** What a holder spending `rate` µUSD/s would use in two slice lifetimes of `ttlMs`. */
export const demandOf = (rate: number, ttlMs: number): number => Math.floor((rate * ttlMs * 2) / 1000);

/** The slice rule both sources share (the Lua copy is in lease-scripts.ts). */
export const sliceSize = (remaining: number, liveOthers: number, want: number, min: number, whole: boolean, demand = 0): number => {
  if (remaining <= 0) return 0;
  const share = whole ? remaining : Math.min(Math.floor(remaining / (liveOthers + 1)), Math.max(demand, min));
  return Math.min(Math.max(share, want), remaining);
};

interface Holder {
  grant: number;
  expiresAt: number;
  seq: number;
  /** A lapsed slice counted as spent until this holder reports. */
  presumed: number;
}

interface LeaseWindow {
  readonly holders: Map<string, Holder>;
  alerted: boolean;
}

const CALENDAR_GRACE_MS = 2 * 86_400_000;

/**
 * Leases inside one process. Spend lands in the MemoryStore's own counters (so the snapshot file keeps route and
 * fleet spend); slices, holders and presumed spend live here. With `whole` (the default: one sidecar, one holder)
 * a slice is all that is left, so admission is exactly the MemoryStore's `spent + held + e ≤ cap`.
 */
export class MemoryLeaseSource implements LeaseSource {
  private readonly windows = new Map<string, LeaseWindow>();
  private readonly whole: boolean;
  private lastSweep = 0;

  constructor(
    private readonly counters: MemoryStore,
    private readonly sizing: LeaseSizing,
    opts: { whole?: boolean } = {},
  ) {
    this.whole = opts.whole ?? true;
  }

  async acquire(req: LeaseRequest): Promise<LeaseReply> {
    const { now } = req;
    this.sweep(now);
    const key = scopeKey(req.scope, req.scope.windowId);
    let w = this.windows.get(key);
    if (!w) this.windows.set(key, (w = { holders: new Map(), alerted: false }));
    let live = 0;
    let outstanding = 0;
    let presumed = 0;
    for (const [id, h] of w.holders) {
      if (id === req.holder) continue;
      if (h.grant > 0 && h.expiresAt + this.sizing.graceMs <= now) {
        h.presumed += h.grant;
        h.grant = 0;
      }
      outstanding += h.grant;
      presumed += h.presumed;
      if (h.grant > 0 && h.expiresAt > now) live++;
    }
    let me = w.holders.get(req.holder);
    if (!me) w.holders.set(req.holder, (me = { grant: 0, expiresAt: 0, seq: 0, presumed: 0 }));
    const reply = (alert: boolean): LeaseReply => {
      const spent = this.counters.spentIn(req.scope);
      return {
        grantUsdMicros: me.grant,
        expiresAt: me.expiresAt,
        spentUsdMicros: spent.usdMicros + presumed + me.presumed,
        spentTokens: spent.tokens,
        spentCalls: spent.calls,
        outstandingUsdMicros: outstanding + me.grant,
        liveHolders: live,
        alert,
      };
    };
    if (req.seq <= me.seq) return reply(false);
    me.seq = req.seq;
    if (req.report.usdMicros > 0 || req.report.tokens > 0 || req.report.calls > 0) this.counters.charge(req.scope, req.report);
    me.presumed = 0;
    me.grant = 0;
    me.expiresAt = 0;
    const spent = this.counters.spentIn(req.scope).usdMicros + presumed;
    const cap = req.capUsdMicros;
    if (cap !== undefined && req.keep) {
      const demand = demandOf(req.rateUsdMicrosPerS ?? 0, this.sizing.ttlMs);
      me.grant = sliceSize(cap - spent - outstanding, live, req.wantUsdMicros, this.sizing.minSliceUsdMicros, this.whole, demand);
      if (me.grant > 0) me.expiresAt = now + this.sizing.ttlMs;
    }
    let alert = false;
    if (cap !== undefined && !w.alerted && reachedAlert(spent, cap, this.sizing.alertPercent)) {
      w.alerted = true;
      alert = true;
    }
    return reply(alert);
  }

  async usage(scopes: readonly ReservedScope[]): Promise<LeaseUsage[]> {
    return scopes.map((s) => {
      const w = this.windows.get(scopeKey(s, s.windowId));
      let presumed = 0;
      let outstanding = 0;
      for (const h of w?.holders.values() ?? []) {
        presumed += h.presumed;
        outstanding += h.grant;
      }
      const spent = this.counters.spentIn(s);
      return { spent: { ...spent, usdMicros: spent.usdMicros + presumed }, outstandingUsdMicros: outstanding };
    });
  }

  /** Windows are dropped with the counters' grace after they end. */
  private sweep(now: number): void {
    if (now - this.lastSweep < 60_000) return;
    this.lastSweep = now;
    for (const key of this.windows.keys()) {
      const [, , window, windowId] = splitKey(key);
      const end = window === 'day' || window === 'month' ? windowEndFromId(window, windowId) : null;
      if (end !== null && end + CALENDAR_GRACE_MS <= now) this.windows.delete(key);
    }
  }
}

/** `kind:id:window:windowId`; the id of a route has no colon (route names are [A-Za-z0-9_.-]). */
const splitKey = (key: string): [string, string, string, string] => {
  const [kind = '', id = '', window = '', windowId = ''] = key.split(':');
  return [kind, id, window, windowId];
};
