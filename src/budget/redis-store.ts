import { randomUUID } from 'node:crypto';
import type { RedisConnection } from '../store/redis-connection.js';
import { RedisReplyError, type RedisScript } from '../store/redis-script.js';
import { CrossSlotError, sameSlot } from '../store/redis-slots.js';
import { counterKey } from './redis-keys.js';
import { COMMIT, RELEASE, RESERVE, SNAPSHOT, type CrossingReply } from './redis-scripts.js';
import {
  assertAmounts,
  DEFAULT_ALERT_PERCENT,
  DEFAULT_RESERVATION_TTL_MS,
  killField,
  killFieldsFor,
  killTargetFromField,
  METRICS,
  refusalReasonFor,
  refusalScopeOfKill,
  reservedScopes,
  resetTimeOf,
  type Actual,
  type AlertCrossing,
  type BudgetStore,
  type CommitResult,
  type Kill,
  type KillTarget,
  type Reservation,
  type ReservedScope,
  type ReserveRequest,
  type ReserveResult,
  type ScopeBudget,
  type ScopeUsage,
  type StoreCommonOptions,
} from './store.js';
import { windowEndFromId } from './windows.js';

export interface RedisStoreOptions extends StoreCommonOptions {
  /** The process's Redis connection (its key prefix starts every key); RedisStore never closes it. */
  redis: RedisConnection;
  /**
   * How old this store's copy of the kill set may be when a reserve reads it, ms. Default 1000. A kill set or lifted
   * through this store applies to it at once; one set through another sidecar (or by hand) applies here within this
   * time: the first reserve that finds the copy older re-reads the kills hash and waits for it. An idle sidecar reads
   * nothing.
   */
  killRefreshMs?: number;
}

/** Where a journaled commit of a reservation made locally stands in its sidecar's journal (LocalFallbackStore). */
export interface JournalPosition {
  /** The journal's id: one per LocalFallbackStore, so two processes never share a sequence. */
  readonly journal: string;
  /** 1, 2, 3... in the order the journal replays. */
  readonly seq: number;
}

export const DEFAULT_KILL_REFRESH_MS = 1_000;

/** Calendar windows are kept this long after they end so "yesterday" can still be read and late commits land. */
const CALENDAR_GRACE_MS = 2 * 86_400_000;

const NO_CAP = -1;
const capArgs = (s: ScopeBudget) => METRICS.map((m) => s.caps[m] ?? NO_CAP);

/**
 * The fleet's store: every sidecar reserves against the same Redis with one atomic Lua script per operation (see
 * redis-scripts.ts for the data layout and the invariant).
 *
 * KEY LAYOUT (issue 14): keys are hash-tagged by scope, so one agent's calls touch one Redis Cluster slot and the fleet
 * spreads over all of them: an agent's day and month windows and the windows of the workflows it runs share
 * `{<prefix>:a:<agentId>}` (`{fusebox:a:pod-1}:day:2026-11-22`, `{fusebox:a:pod-1}:wf:w1`); a route's windows
 * `{<prefix>:r:<routeId>}`; the fleet's `{<prefix>:f}`; kills `{<prefix>}:kills`. A workflow is therefore counted per
 * agent id (normally the pod name): a workflow id used by two agents has two sets of counters. A workflow scope that
 * names no agent gets its own tag `{<prefix>:w:<id>}`. A call whose scopes span several tags still runs as one script on
 * a standalone Redis; on a cluster (where the lease layer leaves only one agent's scopes per call) it is refused before
 * it is sent, with a CrossSlotError.
 *
 * Kills are not read by the per-call script: the store keeps a copy of the kills hash (see `killRefreshMs`).
 * Commands fail fast when Redis is away (see RedisConnection), and a reply of the wrong shape rejects with a
 * RedisReplyError; the caller (LocalFallbackStore) decides what a failure means.
 */
export class RedisStore implements BudgetStore {
  private readonly redis: RedisConnection;
  private readonly prefix: string;
  private readonly killsKey: string;
  private readonly now: () => number;
  private readonly alertPercent: number;
  private readonly reservationTtlMs: number;
  private readonly killRefreshMs: number;
  private readonly newId: () => string;
  /** The kills hash as last read, field → value, and when (this store's clock). */
  private kills = new Map<string, string>();
  private killsReadAt = -Infinity;
  /** Bumped by every local change, so a read that started before one cannot undo it. */
  private killsVersion = 0;
  private killsReading: Promise<void> | undefined;

  constructor(opts: RedisStoreOptions) {
    this.now = opts.now;
    this.alertPercent = opts.alertPercent ?? DEFAULT_ALERT_PERCENT;
    this.reservationTtlMs = opts.reservationTtlMs ?? DEFAULT_RESERVATION_TTL_MS;
    this.killRefreshMs = opts.killRefreshMs ?? DEFAULT_KILL_REFRESH_MS;
    this.newId = opts.newId ?? randomUUID;
    this.redis = opts.redis;
    this.prefix = opts.redis.keyPrefix;
    this.killsKey = `{${this.prefix}}:kills`;
  }

  async reserve(req: ReserveRequest): Promise<ReserveResult> {
    assertAmounts('estimate', req.estimate);
    const now = this.now();
    const scopes = reservedScopes(req.scopes, now);
    const kills = await this.killsAsOf(now);
    for (const field of killFieldsFor(scopes, req.leasedScopes)) {
      const value = kills.get(field);
      if (value === undefined) continue;
      const kill = parseKillValue(value);
      return {
        ok: false,
        refusal: { reason: 'KILLED', scope: refusalScopeOfKill(field), limit: 0, spent: 0, reserved: 0, requested: 0, resetAt: null, killReason: kill.reason },
      };
    }
    const ttlMs = req.ttlMs ?? this.reservationTtlMs;
    const reservation: Reservation = {
      id: this.newId(),
      scopes,
      estimate: { usdMicros: req.estimate.usdMicros, tokens: req.estimate.tokens, calls: req.estimate.calls },
      expiresAt: now + ttlMs,
    };
    // Every window of the call is leased (LeasedStore): the kill copy was all there was to check, and no script runs.
    if (scopes.length === 0) return { ok: true, reservation, used: [], crossed: [] };
    const e = reservation.estimate;
    const r = await this.run(RESERVE, this.windowKeys(scopes), [
      now,
      member(reservation),
      reservation.expiresAt,
      e.usdMicros,
      e.tokens,
      e.calls,
      this.alertPercent,
      ...this.windowArgs(scopes, now, ttlMs),
    ]);
    if (r.admitted) {
      if (r.used.length !== scopes.length) throw new RedisReplyError(RESERVE.name, `${r.used.length} windows used for ${scopes.length} given`);
      return { ok: true, reservation, used: r.used, crossed: this.crossings(RESERVE.name, scopes, r.crossed) };
    }
    const s = scopeAt(RESERVE.name, scopes, r.window);
    return {
      ok: false,
      refusal: {
        reason: refusalReasonFor(r.metric),
        scope: s.scope,
        window: s.window,
        metric: r.metric,
        limit: r.limit,
        spent: r.spent,
        reserved: r.reserved,
        requested: reservation.estimate[r.metric],
        resetAt: resetTimeOf(s, s.windowId, r.lastSeen),
      },
    };
  }

  /** Charges a window iff this call removed the reservation's hold from it (held, or reaped after its TTL): a replay charges nothing. */
  commit(reservation: Reservation, actual: Actual): Promise<CommitResult> {
    return this.settle(reservation, actual, undefined);
  }

  /**
   * Commits a reservation made locally while Redis was away (it never had a hold here), replayed from a journal in
   * order: charged iff `at.seq` is above the mark its journal left in each window, so a replay repeated after a lost
   * reply charges nothing.
   */
  async commitJournaled(reservation: Reservation, actual: Actual, at: JournalPosition): Promise<CommitResult> {
    if (!Number.isSafeInteger(at.seq) || at.seq < 1) throw new TypeError(`journal sequence numbers start at 1, got ${at.seq}`);
    return this.settle(reservation, actual, at);
  }

  async release(reservation: Reservation): Promise<void> {
    const e = reservation.estimate;
    await this.run(RELEASE, this.windowKeys(reservation.scopes), [member(reservation), e.usdMicros, e.tokens, e.calls]);
  }

  async snapshot(scopes: readonly ScopeBudget[]): Promise<ScopeUsage[]> {
    const now = this.now();
    const reserved = reservedScopes(scopes, now);
    const args = reserved.flatMap((s) => {
      const { idle, gc, slack } = this.lifetime(s, now, 0);
      return [idle, gc, slack];
    });
    const windows = await this.run(SNAPSHOT, this.windowKeys(reserved), [now, ...args]);
    if (windows.length !== reserved.length) throw new RedisReplyError(SNAPSHOT.name, `${windows.length} windows for ${reserved.length} given`);
    return reserved.map((s, i) => {
      const w = windows[i]!;
      return {
        scope: s.scope,
        window: s.window,
        windowId: s.windowId,
        caps: s.caps,
        spent: w.spent,
        reserved: w.reserved,
        resetAt: resetTimeOf(s, s.windowId, w.lastSeen),
      };
    });
  }

  /** Read from Redis (the admin API wants the truth), refreshing the copy reserve checks. */
  async getKills(): Promise<Kill[]> {
    await this.readKills(this.now());
    return this.knownKills();
  }

  /**
   * The copy reserve checks, as last read or as this sidecar last set it; no I/O. Kept fresh by reserves (every
   * killRefreshMs while calls come), it is the kill set LocalFallbackStore goes on obeying through an outage.
   */
  knownKills(): Kill[] {
    const out: Kill[] = [];
    for (const [field, value] of this.kills) {
      const target = killTargetFromField(field);
      if (target) out.push({ target, ...parseKillValue(value) });
    }
    return out;
  }

  async setKill(target: KillTarget, reason = ''): Promise<void> {
    const value = JSON.stringify({ reason, at: this.now() });
    const key = this.killsKey;
    await this.redis.command('kills', key, (c) => c.hset(key, killField(target), value));
    this.killsVersion++;
    this.kills.set(killField(target), value);
  }

  async clearKill(target: KillTarget): Promise<boolean> {
    const key = this.killsKey;
    const cleared = (await this.redis.command('kills', key, (c) => c.hdel(key, killField(target)))) > 0;
    this.killsVersion++;
    this.kills.delete(killField(target));
    return cleared;
  }

  /** True while connected and ready. */
  available(): boolean {
    return this.redis.available();
  }

  /** Calls `listener` every time the connection becomes ready (again). */
  onReady(listener: () => void): void {
    this.redis.onReady(listener);
  }

  /** Resolves once connected; rejects after `timeoutMs`. */
  waitReady(timeoutMs: number): Promise<void> {
    return this.redis.ready(timeoutMs);
  }

  /** Nothing to do: the connection belongs to whoever made it. */
  async close(): Promise<void> {}

  private async settle(reservation: Reservation, actual: Actual, at: JournalPosition | undefined): Promise<CommitResult> {
    assertAmounts('actual', actual);
    const now = this.now();
    const e = reservation.estimate;
    const holdLeftMs = Math.max(0, reservation.expiresAt - now);
    const r = await this.run(COMMIT, this.windowKeys(reservation.scopes), [
      now,
      member(reservation),
      e.usdMicros,
      e.tokens,
      e.calls,
      actual.usdMicros,
      actual.tokens,
      e.calls,
      this.alertPercent,
      at?.journal ?? '',
      at?.seq ?? 0,
      ...this.windowArgs(reservation.scopes, now, holdLeftMs),
    ]);
    return { crossed: this.crossings(COMMIT.name, reservation.scopes, r.crossed) };
  }

  /** The kill set as of `now`: this store's copy, re-read first when it is older than killRefreshMs. */
  private async killsAsOf(now: number): Promise<ReadonlyMap<string, string>> {
    if (now - this.killsReadAt >= this.killRefreshMs) {
      // Concurrent reserves share one read.
      this.killsReading ??= this.readKills(now).finally(() => {
        this.killsReading = undefined;
      });
      await this.killsReading;
    }
    return this.kills;
  }

  private async readKills(now: number): Promise<void> {
    const version = this.killsVersion;
    const key = this.killsKey;
    const all = await this.redis.command('kills', key, (c) => c.hgetall(key));
    // A setKill/clearKill that ran meanwhile is newer than what this read saw; the next reserve reads again.
    if (version !== this.killsVersion) return;
    this.kills = new Map(Object.entries(all));
    this.killsReadAt = now;
  }

  /** Per window: counters hash, holds zset, reaped holds zset. */
  private windowKeys(scopes: readonly ReservedScope[]): string[] {
    return scopes.flatMap((s) => {
      const k = counterKey(this.prefix, s);
      return [k, `${k}:h`, `${k}:e`];
    });
  }

  /** The per-window ARGV of reserve and commit (WINDOW_ARGS in redis-scripts.ts). */
  private windowArgs(scopes: readonly ReservedScope[], now: number, holdMs: number): number[] {
    return scopes.flatMap((s) => {
      const { idle, gc, slack } = this.lifetime(s, now, holdMs);
      return [idle, gc, slack, ...capArgs(s)];
    });
  }

  /**
   * Key lifetime. A calendar window lives until its end plus a grace (a fixed time: slack 0, never refreshed). A
   * workflow window lives its idle time and any hold past its last call; the TTL is extended by half the idle time more
   * than needed so it is refreshed (a PEXPIRE) once per half idle time, not on every call.
   */
  private lifetime(s: ReservedScope, now: number, holdMs: number): { idle: number; gc: number; slack: number } {
    const end = windowEndFromId(s.window, s.windowId);
    if (end !== null) return { idle: 0, gc: Math.max(1_000, Math.ceil(end - now + CALENDAR_GRACE_MS)), slack: 0 };
    const idle = s.idleTtlMs ?? 0;
    return { idle, gc: Math.max(1_000, Math.ceil(idle + holdMs)), slack: Math.ceil(idle / 2) };
  }

  private crossings(script: string, scopes: readonly ReservedScope[], crossed: readonly CrossingReply[]): AlertCrossing[] {
    return crossed.map((c) => {
      const s = scopeAt(script, scopes, c.window);
      const limit = s.caps[c.metric];
      if (limit === undefined) throw new RedisReplyError(script, `an alert on ${c.metric}, which window ${c.window} does not cap`);
      return { scope: s.scope, window: s.window, windowId: s.windowId, metric: c.metric, percent: this.alertPercent, used: c.used, limit };
    });
  }

  private run<R>(script: RedisScript<R>, keys: string[], args: ReadonlyArray<string | number>): Promise<R> {
    // Checked here, not left to Redis: CROSSSLOT would read as an outage and the fallback would hide a wiring bug.
    if (this.redis.client.isCluster && !sameSlot(keys)) return Promise.reject(new CrossSlotError(script.name, keys));
    return this.redis.run(script, keys, args);
  }
}

/** The scope window a reply names by index; an index out of range is a reply of the wrong shape. */
const scopeAt = (script: string, scopes: readonly ReservedScope[], i: number): ReservedScope => {
  const s = scopes[i];
  if (!s) throw new RedisReplyError(script, `window ${i} of ${scopes.length}`);
  return s;
};

/** A hold's zset member carries its amounts so the reaper can return them without another lookup. */
const member = (r: Reservation) => `${r.id}|${r.estimate.usdMicros}|${r.estimate.tokens}|${r.estimate.calls}`;

const parseKillValue = (value: string): { reason: string; at: number } => {
  try {
    const v = JSON.parse(value) as { reason?: unknown; at?: unknown };
    return { reason: typeof v.reason === 'string' ? v.reason : '', at: typeof v.at === 'number' ? v.at : 0 };
  } catch {
    // Someone set the kill by hand with redis-cli; the kill itself stands.
    return { reason: value, at: 0 };
  }
};
