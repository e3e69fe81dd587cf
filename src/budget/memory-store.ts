import { randomUUID } from 'node:crypto';
import { readFileSync, renameSync } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { z } from 'zod';
import {
  addAmounts,
  assertAmounts,
  DEFAULT_ALERT_PERCENT,
  DEFAULT_RESERVATION_TTL_MS,
  killField,
  killFieldsFor,
  killTargetFromField,
  METRICS,
  overCap,
  reachedAlert,
  refusalReasonFor,
  refusalScopeOfKill,
  reservedScopes,
  resetTimeOf,
  scopeKey,
  zeroAmounts,
  type Actual,
  type AlertCrossing,
  type Amounts,
  type BudgetStore,
  type CommitResult,
  type Kill,
  type KillTarget,
  type Metric,
  type MutableAmounts,
  type Reservation,
  type ReservedScope,
  type ReserveRequest,
  type ReserveResult,
  type ScopeBudget,
  type ScopeUsage,
  type StoreCommonOptions,
} from './store.js';
import { dayId, monthId, windowEndFromId } from './windows.js';

export interface MemoryStoreOptions extends StoreCommonOptions {
  /** File the counters are saved to (config `store.snapshotPath`); none: nothing survives a restart. */
  snapshotPath?: string;
  /** How often the snapshot is written, ms (config `store.snapshotIntervalMs`). Default 5000. */
  snapshotIntervalMs?: number;
  /** A snapshot could not be read (the store then starts empty) or written. Log it; the store keeps working. */
  onSnapshotError?: (err: Error) => void;
}

interface Hold {
  readonly amounts: Amounts;
  readonly expiresAt: number;
}

interface Counter {
  readonly spent: MutableAmounts;
  readonly reserved: MutableAmounts;
  readonly alerted: Set<Metric>;
  readonly holds: Map<string, Hold>;
  /**
   * Presumed spend of expired holds: a hold reaped unsettled had its estimate charged to `spent` (its caller may have
   * died after the upstream answered); kept here so a late commit charges only actual − estimate and a late release
   * refunds the estimate. Gone with the window (an idle reset drops its presumed spend too).
   */
  readonly presumed: Map<string, Amounts>;
  /** No hold expires before this (ms): holds are scanned for reaping only from then on, not on every call. */
  nextExpiry: number;
  /** Last reserve or commit (workflow idle time counts from it). */
  lastSeen: number | null;
  /** After this the entry is garbage. */
  gcAt: number;
}

/**
 * Takes a reservation's hold off a window, once: off `reserved` while it is held, or, reaped meanwhile, its presumed
 * spend back off `spent` (a commit then charges its actual cost; a release leaves nothing). Nothing when settled before.
 */
const settleHold = (c: Counter, id: string): void => {
  const hold = c.holds.get(id);
  if (hold) {
    addAmounts(c.reserved, hold.amounts, -1);
    c.holds.delete(id);
    return;
  }
  const presumed = c.presumed.get(id);
  if (presumed) {
    addAmounts(c.spent, presumed, -1);
    c.presumed.delete(id);
  }
};

/** A scope list pinned to the windows of one day and month, with the counter key of each scope. */
interface Pinned {
  readonly day: string;
  readonly month: string;
  readonly scopes: readonly ReservedScope[];
  readonly keys: readonly string[];
}

/** Calendar windows are kept this long after they end so "yesterday" can still be read and late commits land. */
const CALENDAR_GRACE_MS = 2 * 86_400_000;
const SWEEP_EVERY_MS = 60_000;
const SNAPSHOT_VERSION = 1;

const amountsSchema = z.strictObject({
  usdMicros: z.number().int().nonnegative(),
  tokens: z.number().int().nonnegative(),
  calls: z.number().int().nonnegative(),
});
const snapshotSchema = z.strictObject({
  version: z.literal(SNAPSHOT_VERSION),
  savedAt: z.number(),
  counters: z.array(
    z.tuple([
      z.string(),
      z.strictObject({
        spent: amountsSchema,
        alerted: z.array(z.enum(['usdMicros', 'tokens', 'calls'])),
        lastSeen: z.number().nullable(),
        gcAt: z.number(),
      }),
    ]),
  ),
  kills: z.array(z.tuple([z.string(), z.strictObject({ reason: z.string(), at: z.number() })])),
  // Generic counters of an interface nothing called (issue 12): still read so files written before stay usable
  // (ignored), and still written (empty) so a sidecar rolled back to such a version accepts the file.
  buckets: z.array(z.unknown()).optional(),
});
type SnapshotFile = z.infer<typeof snapshotSchema>;

/** The snapshot file exists but cannot be used; the store started empty and moved the file aside. */
export class SnapshotError extends Error {
  constructor(
    message: string,
    readonly path: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'SnapshotError';
  }
}

/**
 * Reservation ids that only need to be unique in this store: a random prefix and a counter, rather than a UUID per
 * call (a reservation never leaves the process; a Redis store makes its own).
 */
const sequentialIds = (): (() => string) => {
  const prefix = `${randomUUID()}:`;
  let n = 0;
  return () => prefix + String((n += 1));
};


/**
 * The default store for one sidecar: exact (plain maps, every operation runs to completion before the next,
 * so reserve is atomic) behind the async interface. With `snapshotPath`, settled counters and
 * kills are saved (tmp file + rename, on an interval and on close) so a restarted sidecar keeps its spend.
 * Holds are not saved: the requests they belonged to died with the process.
 */
export class MemoryStore implements BudgetStore {
  private readonly now: () => number;
  private readonly alertPercent: number;
  private readonly reservationTtlMs: number;
  private readonly newId: () => string;
  private readonly counters = new Map<string, Counter>();
  private readonly kills = new Map<string, { reason: string; at: number }>();
  /**
   * Reservations already committed, so committing one twice charges once. Held weakly: in one process a
   * reservation is the object `reserve` returned (no reply can be lost between us and ourselves), so nothing
   * needs remembering after the caller drops it. An id map kept for a day grew by one entry per call
   * (86 M a day at 1,000 req/s).
   */
  private readonly settled = new WeakSet<Reservation>();
  /**
   * The budget layer passes the same scope list on every call of a route (src/policies/budget.ts): it is pinned to
   * its windows and given its counter keys once per day, not once per call (four object spreads and eight key
   * strings a call were a fifth of what a call allocated). Weak: a list made for one call goes with it.
   */
  private readonly pins = new WeakMap<readonly ScopeBudget[], Pinned>();
  /** Counter keys of the scope lists reservations carry, for commit and release. */
  private readonly keysOf = new WeakMap<readonly ReservedScope[], readonly string[]>();
  private lastSweep = 0;
  private timer: NodeJS.Timeout | undefined;
  private saving: Promise<void> = Promise.resolve();
  private closed = false;
  /** Why the snapshot could not be loaded at start, if it could not. */
  readonly snapshotLoadError: SnapshotError | undefined;

  constructor(private readonly opts: MemoryStoreOptions) {
    this.now = opts.now;
    this.alertPercent = opts.alertPercent ?? DEFAULT_ALERT_PERCENT;
    this.reservationTtlMs = opts.reservationTtlMs ?? DEFAULT_RESERVATION_TTL_MS;
    this.newId = opts.newId ?? sequentialIds();
    if (opts.snapshotPath !== undefined) {
      this.snapshotLoadError = this.load(opts.snapshotPath);
      if (this.snapshotLoadError) opts.onSnapshotError?.(this.snapshotLoadError);
      this.timer = setInterval(() => void this.saveSnapshot(), opts.snapshotIntervalMs ?? 5_000);
      this.timer.unref();
    }
  }

  async reserve(req: ReserveRequest): Promise<ReserveResult> {
    assertAmounts('estimate', req.estimate);
    const now = this.now();
    this.maybeSweep(now);
    // Almost always none: the kill fields of the call are only worked out when there is a kill to find.
    if (this.kills.size > 0) {
      for (const field of killFieldsFor(req.scopes, req.leasedScopes)) {
        const kill = this.kills.get(field);
        if (kill) {
          return {
            ok: false,
            refusal: { reason: 'KILLED', scope: refusalScopeOfKill(field), limit: 0, spent: 0, reserved: 0, requested: 0, resetAt: null, killReason: kill.reason },
          };
        }
      }
    }
    const { scopes, keys } = this.pinned(req.scopes, now);
    for (let i = 0; i < scopes.length; i++) {
      const s = scopes[i]!;
      const c = this.live(s, keys[i]!, now, false);
      for (const m of METRICS) {
        const limit = s.caps[m];
        if (limit === undefined) continue;
        const spent = c?.spent[m] ?? 0;
        const reserved = c?.reserved[m] ?? 0;
        if (overCap(spent + reserved, req.estimate[m], limit)) {
          return {
            ok: false,
            refusal: {
              reason: refusalReasonFor(m),
              scope: s.scope,
              window: s.window,
              metric: m,
              limit,
              spent,
              reserved,
              requested: req.estimate[m],
              resetAt: resetTimeOf(s, s.windowId, c?.lastSeen ?? null),
            },
          };
        }
      }
    }
    const reservation: Reservation = {
      id: this.newId(),
      scopes,
      estimate: { usdMicros: req.estimate.usdMicros, tokens: req.estimate.tokens, calls: req.estimate.calls },
      expiresAt: now + (req.ttlMs ?? this.reservationTtlMs),
    };
    const crossed: AlertCrossing[] = [];
    const used: Amounts[] = [];
    const hold: Hold = { amounts: reservation.estimate, expiresAt: reservation.expiresAt };
    for (let i = 0; i < scopes.length; i++) {
      const s = scopes[i]!;
      const c = this.live(s, keys[i]!, now, true);
      addAmounts(c.reserved, reservation.estimate, 1);
      c.holds.set(reservation.id, hold);
      c.nextExpiry = Math.min(c.nextExpiry, reservation.expiresAt);
      this.touch(c, s, now);
      used.push({ usdMicros: c.spent.usdMicros + c.reserved.usdMicros, tokens: c.spent.tokens + c.reserved.tokens, calls: c.spent.calls + c.reserved.calls });
      this.alerts(c, s, crossed);
    }
    return { ok: true, reservation, used, crossed };
  }

  async commit(reservation: Reservation, actual: Actual): Promise<CommitResult> {
    assertAmounts('actual', actual);
    const now = this.now();
    if (this.settled.has(reservation)) return { crossed: [] };
    this.settled.add(reservation);
    const charge: Amounts = { usdMicros: actual.usdMicros, tokens: actual.tokens, calls: reservation.estimate.calls };
    const crossed: AlertCrossing[] = [];
    const keys = this.keysFor(reservation.scopes);
    for (let i = 0; i < reservation.scopes.length; i++) {
      const s = reservation.scopes[i]!;
      const c = this.live(s, keys[i]!, now, true);
      settleHold(c, reservation.id);
      addAmounts(c.spent, charge, 1);
      this.touch(c, s, now);
      this.alerts(c, s, crossed);
    }
    return { crossed };
  }

  async release(reservation: Reservation): Promise<void> {
    const keys = this.keysFor(reservation.scopes);
    for (let i = 0; i < reservation.scopes.length; i++) {
      const c = this.counters.get(keys[i]!);
      if (c) settleHold(c, reservation.id);
    }
  }

  async snapshot(scopes: readonly ScopeBudget[]): Promise<ScopeUsage[]> {
    const now = this.now();
    return reservedScopes(scopes, now).map((s) => {
      const c = this.live(s, scopeKey(s, s.windowId), now, false);
      return {
        scope: s.scope,
        window: s.window,
        windowId: s.windowId,
        caps: s.caps,
        spent: { ...(c?.spent ?? zeroAmounts()) },
        reserved: { ...(c?.reserved ?? zeroAmounts()) },
        resetAt: resetTimeOf(s, s.windowId, c?.lastSeen ?? null),
      };
    });
  }

  async getKills(): Promise<Kill[]> {
    const out: Kill[] = [];
    for (const [field, k] of this.kills) {
      const target = killTargetFromField(field);
      if (target) out.push({ target, reason: k.reason, at: k.at });
    }
    return out;
  }

  async setKill(target: KillTarget, reason = ''): Promise<void> {
    this.kills.set(killField(target), { reason, at: this.now() });
  }

  async clearKill(target: KillTarget): Promise<boolean> {
    return this.kills.delete(killField(target));
  }

  available(): boolean {
    return true;
  }

  /**
   * Adds settled spend to a scope window without a reservation: the memory lease source (lease-source.ts) keeps
   * the leased windows' spend here, so it is in the snapshot file and in `snapshot` like any other window's.
   */
  charge(s: ReservedScope, amounts: Amounts, use?: { readonly seenAt: number; readonly gcAt: number }): void {
    assertAmounts('charge', amounts);
    const now = this.now();
    const c = this.live(s, scopeKey(s, s.windowId), now, true);
    addAmounts(c.spent, amounts, 1);
    if (use === undefined) this.touch(c, s, now);
    else {
      // A leased workflow window: its last use is what the holders report (0: none), and the source says how long to keep it.
      if (use.seenAt > 0) c.lastSeen = Math.max(c.lastSeen ?? 0, use.seenAt);
      c.gcAt = use.gcAt;
    }
  }

  /**
   * Marks `metric`'s alert of a scope window as given; false if it already was. The memory lease source's marks live
   * here, beside the spend, so the snapshot file keeps them (a restart does not alert again) and an idle reset
   * (`forget`) drops them with the counters.
   */
  markAlerted(s: ReservedScope, metric: Metric): boolean {
    const c = this.live(s, scopeKey(s, s.windowId), this.now(), true)!;
    if (c.alerted.has(metric)) return false;
    c.alerted.add(metric);
    return true;
  }

  /** Last reserve or commit of a scope window (null if unseen). */
  lastSeenIn(s: ReservedScope): number | null {
    return this.counters.get(scopeKey(s, s.windowId))?.lastSeen ?? null;
  }

  /** Drops a scope window's counters: the memory lease source's idle reset of a workflow window. */
  forget(s: ReservedScope): void {
    this.counters.delete(scopeKey(s, s.windowId));
  }

  /** Settled spend of a scope window (zero if unseen), read without side effects other than reaping. */
  spentIn(s: ReservedScope): Amounts {
    const c = this.live(s, scopeKey(s, s.windowId), this.now(), false);
    return { ...(c?.spent ?? zeroAmounts()) };
  }

  /** Forgets every counter and hold (kills stay). LocalFallbackStore starts each outage's slice with it. */
  resetCounters(): void {
    this.counters.clear();
  }

  /** Writes the snapshot now (tmp file + rename, so a crash mid-write leaves the previous one intact). */
  saveSnapshot(): Promise<void> {
    const path = this.opts.snapshotPath;
    if (path === undefined) return Promise.resolve();
    // Chained so an interval write and the close() write never interleave on the tmp file.
    this.saving = this.saving.then(async () => {
      try {
        this.sweep(this.now());
        const tmp = `${path}.tmp-${process.pid}`;
        await mkdir(dirname(path), { recursive: true });
        await writeFile(tmp, JSON.stringify(this.toFile()));
        await rename(tmp, path);
      } catch (err) {
        this.opts.onSnapshotError?.(err instanceof Error ? err : new Error(String(err)));
      }
    });
    return this.saving;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await this.saveSnapshot();
  }

  /** `list` pinned to the windows containing `now`, with its counter keys: made once per list and day. */
  private pinned(list: readonly ScopeBudget[], now: number): Pinned {
    const day = dayId(now);
    const month = monthId(now);
    const kept = this.pins.get(list);
    if (kept !== undefined && kept.day === day && kept.month === month) return kept;
    const scopes = reservedScopes(list, now);
    const pinned: Pinned = { day, month, scopes, keys: scopes.map((s) => scopeKey(s, s.windowId)) };
    this.pins.set(list, pinned);
    this.keysOf.set(scopes, pinned.keys);
    return pinned;
  }

  /** Counter keys of a reservation's scopes: kept from `pinned`, or made again (a reservation another store shaped). */
  private keysFor(scopes: readonly ReservedScope[]): readonly string[] {
    return this.keysOf.get(scopes) ?? scopes.map((s) => scopeKey(s, s.windowId));
  }

  /**
   * The counters of a scope window (`key`: its counter key) as of `now`: expired holds reaped, and a workflow window
   * unseen for its idle time started again. With `create` false a missing window stays missing (refusals write nothing).
   */
  private live(s: ReservedScope, key: string, now: number, create: true): Counter;
  private live(s: ReservedScope, key: string, now: number, create: boolean): Counter | undefined;
  private live(s: ReservedScope, key: string, now: number, create: boolean): Counter | undefined {
    let c = this.counters.get(key);
    if (c && s.window === 'workflow' && s.idleTtlMs !== undefined && c.lastSeen !== null && now - c.lastSeen >= s.idleTtlMs) {
      this.counters.delete(key);
      c = undefined;
    }
    if (!c) {
      if (!create) return undefined;
      c = { spent: zeroAmounts(), reserved: zeroAmounts(), alerted: new Set(), holds: new Map(), presumed: new Map(), nextExpiry: Infinity, lastSeen: null, gcAt: 0 };
      this.counters.set(key, c);
    }
    // Scanning every hold on every call cost more than the rest of reserve+commit with 32 calls in flight.
    if (now >= c.nextExpiry) {
      let next = Infinity;
      for (const [id, hold] of c.holds) {
        if (hold.expiresAt > now) {
          next = Math.min(next, hold.expiresAt);
          continue;
        }
        // Presumed spent: moved from reserved to spent, so spent + reserved (and the alerts) stay as they were.
        addAmounts(c.reserved, hold.amounts, -1);
        addAmounts(c.spent, hold.amounts, 1);
        c.presumed.set(id, hold.amounts);
        c.holds.delete(id);
      }
      c.nextExpiry = next;
    }
    return c;
  }

  private touch(c: Counter, s: ReservedScope, now: number): void {
    c.lastSeen = now;
    const end = windowEndFromId(s.window, s.windowId);
    c.gcAt = end !== null ? end + CALENDAR_GRACE_MS : now + (s.idleTtlMs ?? 0) + this.reservationTtlMs;
  }

  private alerts(c: Counter, s: ReservedScope, out: AlertCrossing[]): void {
    for (const m of METRICS) {
      const limit = s.caps[m];
      if (limit === undefined || c.alerted.has(m)) continue;
      const used = c.spent[m] + c.reserved[m];
      if (!reachedAlert(used, limit, this.alertPercent)) continue;
      c.alerted.add(m);
      out.push({ scope: s.scope, window: s.window, windowId: s.windowId, metric: m, percent: this.alertPercent, used, limit });
    }
  }

  private maybeSweep(now: number): void {
    if (now - this.lastSweep >= SWEEP_EVERY_MS) this.sweep(now);
  }

  /** Drops windows past their grace, idle workflows (with their holds: those are past their TTL too). */
  private sweep(now: number): void {
    this.lastSweep = now;
    for (const [k, c] of this.counters) if (c.gcAt !== 0 && c.gcAt <= now) this.counters.delete(k);
  }

  private toFile(): SnapshotFile {
    return {
      version: SNAPSHOT_VERSION,
      savedAt: this.now(),
      counters: [...this.counters].map(([k, c]) => [k, { spent: { ...c.spent }, alerted: [...c.alerted], lastSeen: c.lastSeen, gcAt: c.gcAt }]),
      kills: [...this.kills],
      buckets: [],
    };
  }

  /** Reads the snapshot; a missing file is a first start, anything unusable is returned (and moved aside so it is not overwritten). */
  private load(path: string): SnapshotError | undefined {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      return new SnapshotError(`cannot read budget snapshot ${path}: ${(err as Error).message}; starting with empty counters`, path, { cause: err });
    }
    let file: SnapshotFile;
    try {
      const parsed = snapshotSchema.safeParse(JSON.parse(text));
      if (!parsed.success) throw new Error(parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; '));
      file = parsed.data;
    } catch (err) {
      const aside = `${path}.corrupt-${this.now()}`;
      let moved = '';
      try {
        renameSync(path, aside);
        moved = `; the file was moved to ${aside}`;
      } catch {
        // Leave it: the next save replaces it, and the error below already names it.
      }
      return new SnapshotError(
        `budget snapshot ${path} is not usable (${(err as Error).message}); starting with empty counters${moved}`,
        path,
        { cause: err },
      );
    }
    for (const [k, c] of file.counters) {
      this.counters.set(k, { spent: { ...c.spent }, reserved: zeroAmounts(), alerted: new Set(c.alerted), holds: new Map(), presumed: new Map(), nextExpiry: Infinity, lastSeen: c.lastSeen, gcAt: c.gcAt });
    }
    for (const [field, k] of file.kills) this.kills.set(field, k);
    return undefined;
  }
}
