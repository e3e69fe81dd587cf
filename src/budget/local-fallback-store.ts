import { randomUUID } from 'node:crypto';
import { StoreUnavailableError } from '../errors.js';
import { MemoryStore } from './memory-store.js';
import type { JournalPosition } from './redis-store.js';
import {
  METRICS,
  scopeKey,
  type Actual,
  type Amounts,
  type BudgetStore,
  type CommitResult,
  type Kill,
  type KillTarget,
  type Metric,
  type Reservation,
  type ReservedScope,
  type ReserveRequest,
  type ReserveResult,
  type ScopeBudget,
  type ScopeKind,
  type ScopeUsage,
  type StoreCommonOptions,
  ZERO,
} from './store.js';
import { windowAt } from './windows.js';

/** The store being protected (RedisStore): a BudgetStore that says when it is connected again. */
export interface SharedStore extends BudgetStore {
  /** Commits at once, never waiting for a reserve to ride (a journal replay goes one entry at a time). */
  commitNow(reservation: Reservation, actual: Actual): Promise<CommitResult>;
  /** Sends the commits waiting to ride a reserve now; resolves once each has landed or failed. Never rejects. */
  flush(): Promise<void>;
  /** Commits a reservation made locally (no hold in the shared store); charged once per journal position. */
  commitJournaled(reservation: Reservation, actual: Actual, at: JournalPosition): Promise<CommitResult>;
  onReady(listener: () => void): void;
  /** Resolves once connected; rejects after `timeoutMs`. */
  waitReady(timeoutMs: number): Promise<void>;
  /** The kill set as the shared store last read it (no I/O): what an outage goes on obeying. */
  knownKills(): Kill[];
}

/** A commit made while the shared store was away, replayed into it later. */
export interface JournalEntry {
  /** The reservation's id. */
  readonly id: string;
  readonly reservation: Reservation;
  readonly actual: Actual;
  /**
   * A reservation made locally never had a hold in the shared store, so it is charged by journal position (the
   * shared store keeps the last position applied per window); one held there is charged by removing its hold. Either
   * way replaying an entry twice charges once.
   */
  readonly at?: JournalPosition;
  /**
   * A release (the call was refused or failed before it cost anything), with `actual` zero: replayed as a release,
   * so its hold is handed back instead of lapsing and being presumed spent at its estimate.
   */
  readonly release?: true;
}

/** Things worth a log line; none of them is an error the caller must handle. */
export type FallbackEvent =
  | { readonly type: 'unavailable'; readonly error: Error }
  | { readonly type: 'recovered'; readonly replayed: number }
  | { readonly type: 'replayFailed'; readonly error: Error; readonly pending: number }
  | { readonly type: 'journal'; readonly entries: number }
  /** `full`: the oldest entries made room (store.journalMaxEntries); `shutdown`: the store never came back. */
  | { readonly type: 'journalDropped'; readonly reason: 'full' | 'shutdown'; readonly entries: number; readonly usdMicros: number };

export interface LocalFallbackOptions extends StoreCommonOptions {
  shared: SharedStore;
  /**
   * Fraction of a scope's last known remaining budget this sidecar may spend on its own while the shared
   * store is away, per scope kind. Default: agent 1 and workflow 1 (one agent id and its workflows run in
   * one sidecar: `agent.id` is normally the pod name), route 0 and fleet 0: those caps are the fleet's, and
   * LeasedStore (lease.ts) serves them from leased slices in front of this store, so they never reach it (nor, since
   * the multi-metric leases, does any window: a sidecar's calls reach this store with no scope, for the kill copy). A
   * share guessed here (it used to be 0.25: "a few replicas") let 20 sidecars spend 6.6× what was left (issue 14).
   */
  localShare?: Partial<Record<ScopeKind, number>>;
  /** Most journal entries kept; past it the oldest is dropped (an event, so a log line and a metric). Default 100000. */
  journalMaxEntries?: number;
  /** How often a pending journal is retried while the shared store is away, ms. Default 1000. */
  replayIntervalMs?: number;
  onEvent?: (e: FallbackEvent) => void;
}

const DEFAULT_SHARE: Record<ScopeKind, number> = { agent: 1, workflow: 1, route: 0, fleet: 0 };
export const DEFAULT_JOURNAL_MAX_ENTRIES = 100_000;
/** Drops for a full journal are reported at most this often (one line per second, not one per call), ms. */
const DROP_REPORT_MS = 1_000;
const MAX_REMEMBERED = 10_000;
/** A journaled commit reports no alert crossing: its replay's crossings are not reported either. */
const JOURNALED: CommitResult = { crossed: [] };

/**
 * Wraps the shared (Redis) store so an outage is a decision, not an accident. While the shared store
 * answers, every call goes to it. When a call fails, the store is "down" until the shared store is ready
 * again AND every journaled commit has been replayed into it; meanwhile:
 * - reserve with `onUnavailable: 'closed'` (per call, from the route config) throws StoreUnavailableError;
 * - reserve with `'local'` (default) enforces a local slice of each cap: `floor(share × (limit − last known
 *   used))`, where "last known used" is the spent + reserved the shared store reported on this sidecar's
 *   last successful reserve in that window (none known: the whole limit). Kills last read from the shared
 *   store still apply. The slice restarts at each outage.
 * - every commit (of a local or a shared reservation) is journaled and replayed in order when the shared
 *   store returns; a replay entry is applied by the shared store's idempotent commit (a shared reservation
 *   charges iff its hold is still there to remove; a local one iff its sequence number is past the journal's
 *   mark), so an interrupted replay or a commit that timed out after it ran is never counted twice, and
 *   afterwards the shared totals equal the sum of all charges. Commits of local reservations go through the
 *   journal even after the store is back, to keep their order. Releases of shared reservations are journaled and
 *   replayed the same way (a release removes its hold once, like a commit): unreplayed, the hold would outlive its
 *   call, lapse and be presumed spent at its estimate by RedisStore's reaper, over-counting a call that cost
 *   nothing (which a release dropped with a full or lost journal still does). A commit the shared store keeps
 *   waiting to ride a reserve (RedisStore's commitDelayMs) is journaled
 *   the same way when its ride or its own send fails; replays never wait (commitNow), and close() sends what waits.
 * The journal lives in memory and holds at most `journalMaxEntries`: past it the oldest entry is dropped and
 * reported (`journalDropped`, at most once a second with the totals); a sidecar that dies during an outage
 * loses it (reported on close()).
 */
export class LocalFallbackStore implements BudgetStore {
  private readonly shared: SharedStore;
  private readonly local: MemoryStore;
  private readonly now: () => number;
  private readonly share: Record<ScopeKind, number>;
  private readonly emit: (e: FallbackEvent) => void;
  private readonly lastKnown = new Map<string, Amounts>();
  private readonly pending: JournalEntry[] = [];
  /** This journal's identity and last sequence number (see JournalEntry.at). */
  private readonly journalId = randomUUID();
  private seq = 0;
  private readonly journalMax: number;
  private dropped = { entries: 0, usdMicros: 0, reportedAt: -Infinity };
  private down = false;
  private replaying: Promise<number> | undefined;
  private readonly timer: NodeJS.Timeout;
  /** Commits sent to the shared store and not yet answered (they may wait to ride a reserve): close() journals the failures first. */
  private readonly committing = new Set<Promise<CommitResult>>();

  constructor(opts: LocalFallbackOptions) {
    this.shared = opts.shared;
    this.now = opts.now;
    this.share = { ...DEFAULT_SHARE, ...opts.localShare };
    this.journalMax = opts.journalMaxEntries ?? DEFAULT_JOURNAL_MAX_ENTRIES;
    this.emit = opts.onEvent ?? (() => {});
    const { now, alertPercent, reservationTtlMs, newId } = opts;
    this.local = new MemoryStore({ now, alertPercent: alertPercent ?? 0, ...(reservationTtlMs !== undefined && { reservationTtlMs }), ...(newId && { newId }) });
    this.shared.onReady(() => void this.replayJournal());
    this.timer = setInterval(() => {
      if (this.down && this.shared.available()) void this.replayJournal();
    }, opts.replayIntervalMs ?? 1_000);
    this.timer.unref();
  }

  async reserve(req: ReserveRequest): Promise<ReserveResult> {
    if (this.up()) {
      try {
        const result = await this.shared.reserve(req);
        if (result.ok) this.remember(result.reservation.scopes, result.used);
        return result;
      } catch (err) {
        this.markDown(err);
      }
    }
    if (req.onUnavailable === 'closed') {
      throw new StoreUnavailableError('the budget store is unreachable and this route fails closed (budget.storeUnavailable: closed)');
    }
    return this.reserveLocally(req);
  }

  commit(reservation: Reservation, actual: Actual): Promise<CommitResult> {
    if (reservation.local) return this.commitLocal(reservation, actual);
    if (!this.up()) {
      this.journalAdd({ id: reservation.id, reservation, actual });
      return Promise.resolve(JOURNALED);
    }
    const settled = this.commitShared(reservation, actual);
    this.committing.add(settled);
    // then(f, f), not finally(): finally's own promise would reject again, unheard, when the caller's commit fails.
    const forget = () => this.committing.delete(settled);
    settled.then(forget, forget);
    return settled;
  }

  /** A commit the shared store failed (or may have, unanswered: a replay charges nothing twice) goes to the journal. */
  private async commitShared(reservation: Reservation, actual: Actual): Promise<CommitResult> {
    try {
      return await this.shared.commit(reservation, actual);
    } catch (err) {
      this.markDown(err);
      this.journalAdd({ id: reservation.id, reservation, actual });
      return JOURNALED;
    }
  }

  /**
   * A reservation made locally always settles through the journal, even once the shared store is back: charged by
   * sequence number, its commits must reach the shared store in order, which one replay at a time guarantees.
   */
  private async commitLocal(reservation: Reservation, actual: Actual): Promise<CommitResult> {
    this.journalAdd({ id: reservation.id, reservation, actual, at: { journal: this.journalId, seq: ++this.seq } });
    await this.local.commit(reservation, actual);
    if (this.up()) {
      await this.replayJournal();
      // A replay that was finishing when this entry arrived may have missed it: one more, then call it a failure.
      if (this.pending.length > 0) await this.replayJournal();
      if (this.pending.length > 0) this.markDown(new Error('the journal could not be replayed into the budget store'));
    }
    return { crossed: [] };
  }

  async release(reservation: Reservation): Promise<void> {
    if (reservation.local) return this.local.release(reservation);
    if (!this.up()) {
      this.journalAdd({ id: reservation.id, reservation, actual: ZERO, release: true });
      return;
    }
    try {
      await this.shared.release(reservation);
    } catch (err) {
      this.markDown(err);
      // It may have run (an answer lost): replaying it again removes nothing twice.
      this.journalAdd({ id: reservation.id, reservation, actual: ZERO, release: true });
    }
  }

  snapshot(scopes: readonly ScopeBudget[]): Promise<ScopeUsage[]> {
    return this.viaShared(() => this.shared.snapshot(scopes));
  }

  /** The shared kill set; during an outage, the one last read. */
  async getKills(): Promise<Kill[]> {
    if (!this.up()) return this.shared.knownKills();
    return this.viaShared(() => this.shared.getKills());
  }

  /** Fails with StoreUnavailableError during an outage: a kill only this sidecar obeyed would mislead. */
  setKill(target: KillTarget, reason?: string): Promise<void> {
    return this.viaShared(() => this.shared.setKill(target, reason));
  }

  clearKill(target: KillTarget): Promise<boolean> {
    return this.viaShared(() => this.shared.clearKill(target));
  }

  /** False from the first failed call until the shared store is back and the journal replayed. */
  available(): boolean {
    return this.up();
  }

  /** Commits waiting to be replayed into the shared store, oldest first. */
  journal(): readonly JournalEntry[] {
    return this.pending;
  }

  /**
   * Replays the journal into the shared store, oldest first; on success the store is "up" again. Safe to
   * call at any time and concurrently (one replay runs at a time). Returns how many entries were applied.
   */
  replayJournal(): Promise<number> {
    this.replaying ??= this.replay().finally(() => {
      this.replaying = undefined;
    });
    return this.replaying;
  }

  async ready(timeoutMs: number): Promise<void> {
    // Down after the wait is not an error here: the first call finds out and serves locally (or refuses).
    await this.shared.waitReady(timeoutMs).catch(() => {});
  }

  /** Sends the shared store's waiting commits; resolves once each landed or was journaled. Never rejects. */
  async flush(): Promise<void> {
    await this.shared.flush();
    await Promise.allSettled(this.committing);
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    // Waiting commits first: one that fails now is journaled, then replayed or reported below like any other.
    await this.flush();
    if (this.pending.length > 0 && this.shared.available()) await this.replayJournal();
    this.reportDropped(true);
    if (this.pending.length > 0) {
      const usdMicros = this.pending.reduce((sum, e) => sum + e.actual.usdMicros, 0);
      this.emit({ type: 'journalDropped', reason: 'shutdown', entries: this.pending.length, usdMicros });
    }
    await this.local.close();
    await this.shared.close();
  }

  private up(): boolean {
    if (!this.down && !this.shared.available()) this.markDown(new Error('the budget store is not connected'));
    return !this.down;
  }

  private async replay(): Promise<number> {
    let applied = 0;
    try {
      for (let e = this.pending[0]; e !== undefined; e = this.pending[0]) {
        if (e.release) await this.shared.release(e.reservation);
        else await (e.at ? this.shared.commitJournaled(e.reservation, e.actual, e.at) : this.shared.commitNow(e.reservation, e.actual));
        // Entries leave from the front only here (this is the only replay running); a full journal drops the
        // second entry while a replay runs, so the front is still the entry just applied.
        this.pending.shift();
        applied++;
        this.emit({ type: 'journal', entries: this.pending.length });
      }
      this.reportDropped(true);
      // Synchronously after the last await: no commit can slip into the journal between the check and the switch.
      if (this.down && this.shared.available()) {
        this.down = false;
        this.emit({ type: 'recovered', replayed: applied });
      }
    } catch (err) {
      this.emit({ type: 'replayFailed', error: toError(err), pending: this.pending.length });
    }
    return applied;
  }

  private journalAdd(entry: JournalEntry): void {
    this.pending.push(entry);
    if (this.pending.length > this.journalMax) {
      // shift() is what V8 does in O(1) (it moves the array's start); a replay in flight owns the front entry.
      const gone = this.replaying ? this.pending.splice(1, 1)[0] : this.pending.shift();
      this.dropped.entries++;
      this.dropped.usdMicros += gone?.actual.usdMicros ?? 0;
      this.reportDropped(false);
    }
    this.emit({ type: 'journal', entries: this.pending.length });
  }

  /** Reports drops of a full journal: the first at once, then at most once per DROP_REPORT_MS (or now, if `flush`). */
  private reportDropped(flush: boolean): void {
    const d = this.dropped;
    if (d.entries === 0 || (!flush && this.now() - d.reportedAt < DROP_REPORT_MS)) return;
    this.emit({ type: 'journalDropped', reason: 'full', entries: d.entries, usdMicros: d.usdMicros });
    this.dropped = { entries: 0, usdMicros: 0, reportedAt: this.now() };
  }

  /** Any failure of the shared store means "down", except a caller's bug (bad amounts), which is rethrown. */
  private markDown(err: unknown): void {
    if (err instanceof TypeError) throw err;
    if (this.down) return;
    this.down = true;
    this.local.resetCounters();
    this.emit({ type: 'unavailable', error: toError(err) });
  }

  private async reserveLocally(req: ReserveRequest): Promise<ReserveResult> {
    await this.syncKills();
    const now = this.now();
    const sliced = req.scopes.map((s) => ({ ...s, caps: this.slice(s, now) }));
    const result = await this.local.reserve({ ...req, scopes: sliced });
    if (!result.ok) return result;
    // The reservation carries the real caps, so a replayed commit reports against them.
    const scopes = result.reservation.scopes.map((s, i) => ({ ...s, caps: req.scopes[i]?.caps ?? s.caps }));
    return { ok: true, reservation: { ...result.reservation, scopes, local: true }, used: result.used, crossed: [] };
  }

  /** This sidecar's slice of each cap for the outage (see the class comment). */
  private slice(s: ScopeBudget, now: number): Partial<Amounts> {
    const known = this.lastKnown.get(scopeKey(s, windowAt(s.window, now).id));
    const share = this.share[s.scope.kind];
    const out: { -readonly [M in Metric]?: number } = {};
    for (const m of METRICS) {
      const limit = s.caps[m];
      if (limit !== undefined) out[m] = Math.floor(share * Math.max(0, limit - (known?.[m] ?? 0)));
    }
    return out;
  }

  private remember(scopes: readonly ReservedScope[], used: readonly Amounts[]): void {
    scopes.forEach((s, i) => {
      const u = used[i];
      if (!u) return;
      const key = scopeKey(s, s.windowId);
      // Re-inserted so the Map's order is least recently used first, and the oldest can be dropped.
      this.lastKnown.delete(key);
      this.lastKnown.set(key, u);
    });
    for (const key of this.lastKnown.keys()) {
      if (this.lastKnown.size <= MAX_REMEMBERED) break;
      this.lastKnown.delete(key);
    }
  }

  private async syncKills(): Promise<void> {
    const current = await this.local.getKills();
    for (const k of current) await this.local.clearKill(k.target);
    for (const k of this.shared.knownKills()) await this.local.setKill(k.target, k.reason);
  }

  private async viaShared<T>(op: () => Promise<T>): Promise<T> {
    if (!this.up()) throw new StoreUnavailableError('the budget store is unreachable');
    try {
      return await op();
    } catch (err) {
      this.markDown(err);
      throw new StoreUnavailableError('the budget store is unreachable', {}, { cause: err });
    }
  }
}

const toError = (err: unknown): Error => (err instanceof Error ? err : new Error(String(err)));
