import { randomUUID } from 'node:crypto';
import type { RedisConnection } from '../store/redis-connection.js';
import { RedisReplyError, type RedisScript } from '../store/redis-script.js';
import { CrossSlotError, sameSlot } from '../store/redis-slots.js';
import { counterKey } from './redis-keys.js';
import { COMMIT, RELEASE, RESERVE, SNAPSHOT, type CommitReply, type CrossingReply } from './redis-scripts.js';
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
  /**
   * How long a commit may wait to ride the next reserve of its agent (the same hash tags), ms. Default 0: every commit
   * is sent at once, in a script call of its own. Above 0 a commit is queued: the next reserve on its tags carries it
   * (one script call and one round trip for both), or it is sent after this long, with the other commits queued for
   * those tags, or at flush() and close(). Its hold stays counted until it lands, so a cap can only refuse more
   * meanwhile, never admit more; a hold that would expire within the delay is committed at once.
   */
  commitDelayMs?: number;
  /** Told how every commit script call or ride went out: `ridden` inside a reserve, `alone` in a commit script call. */
  onCommitsSent?: (how: 'ridden' | 'alone', commits: number) => void;
}

/** Where a journaled commit of a reservation made locally stands in its sidecar's journal (LocalFallbackStore). */
export interface JournalPosition {
  /** The journal's id: one per LocalFallbackStore, so two processes never share a sequence. */
  readonly journal: string;
  /** 1, 2, 3... in the order the journal replays. */
  readonly seq: number;
}

export const DEFAULT_KILL_REFRESH_MS = 1_000;

/**
 * Most commits one script call carries. Each adds its windows' keys and arguments; an agent with many calls in flight
 * sends its queue in several calls rather than one huge one.
 */
const MAX_COMMITS_PER_CALL = 32;

/** A commit and where it is in a journal (journaled commits of local reservations only). */
interface CommitOp {
  readonly reservation: Reservation;
  readonly actual: Actual;
  readonly at?: JournalPosition | undefined;
}

/** A commit waiting to ride a reserve, and its caller's promise. */
interface QueuedCommit extends CommitOp {
  readonly keys: readonly string[];
  readonly resolve: (r: CommitResult) => void;
  readonly reject: (err: unknown) => void;
}

/** The commits queued for one set of hash tags, and the timer that sends them alone if no reserve comes. */
interface CommitQueue {
  readonly commits: QueuedCommit[];
  timer: NodeJS.Timeout | undefined;
}

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
 * a standalone Redis; on a cluster it is refused before it is sent, with a CrossSlotError. (Behind LeasedStore, which
 * leases every window, a sidecar's calls reach this store with no scope at all: the kill copy is all they read.)
 *
 * COMMITS RIDE (issue 14, `commitDelayMs`): each script call costs Redis a round trip (~17 µs of its CPU: read, parse,
 * reply) besides its work, and an agent's calls come one after another. So a commit waits up to commitDelayMs for the
 * next reserve on the same hash tags and runs first inside that reserve's script, sharing its window reads and writes;
 * several queued commits go in one call. It keeps every guarantee of a commit sent alone: the same Lua decides what it
 * charges (exactly once, reaped holds, journal marks), its hold counts against the caps until it lands (so waiting can
 * only refuse more), it lands even when the reserve it rides is refused, and a failed or unanswered ride rejects the
 * commit's promise exactly as a failed commit does (LocalFallbackStore journals it; a replay charges nothing twice).
 * Releases never wait: a failed call's hold goes back at once.
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
  private readonly commitDelayMs: number;
  private readonly onCommitsSent: (how: 'ridden' | 'alone', commits: number) => void;
  /** Commits waiting to ride, by the hash tags of their keys (see rideKey). */
  private readonly queues = new Map<string, CommitQueue>();
  /** Queued commits being sent alone (flush, the delay's timer), so flush() and close() can wait for them. */
  private readonly sending = new Set<Promise<void>>();
  private closed = false;

  constructor(opts: RedisStoreOptions) {
    this.now = opts.now;
    this.alertPercent = opts.alertPercent ?? DEFAULT_ALERT_PERCENT;
    this.reservationTtlMs = opts.reservationTtlMs ?? DEFAULT_RESERVATION_TTL_MS;
    this.killRefreshMs = opts.killRefreshMs ?? DEFAULT_KILL_REFRESH_MS;
    this.newId = opts.newId ?? randomUUID;
    this.redis = opts.redis;
    this.prefix = opts.redis.keyPrefix;
    this.killsKey = `{${this.prefix}}:kills`;
    this.commitDelayMs = opts.commitDelayMs ?? 0;
    this.onCommitsSent = opts.onCommitsSent ?? (() => {});
  }

  async reserve(req: ReserveRequest): Promise<ReserveResult> {
    assertAmounts('estimate', req.estimate);
    const now = this.now();
    const scopes = reservedScopes(req.scopes, now);
    const kills = await this.killsAsOf(now);
    // Almost always none: the kill fields of the call are only worked out when there is a kill to find (as MemoryStore).
    if (kills.size > 0) {
      for (const field of killFieldsFor(scopes, req.leasedScopes)) {
        const value = kills.get(field);
        if (value === undefined) continue;
        const kill = parseKillValue(value);
        return {
          ok: false,
          refusal: { reason: 'KILLED', scope: refusalScopeOfKill(field), limit: 0, spent: 0, reserved: 0, requested: 0, resetAt: null, killReason: kill.reason },
        };
      }
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
    const keys = this.windowKeys(scopes);
    // Commits queued for these very keys' tags ride along: settled first, in the same script call.
    const riders = this.takeRiders(keys);
    let r;
    try {
      const riderKeys: string[] = [];
      const args: Array<string | number> = [now, this.alertPercent, riders.length];
      for (const c of riders) {
        riderKeys.push(...c.keys);
        args.push(...this.commitArgs(c, now));
      }
      args.push(member(reservation), reservation.expiresAt, e.usdMicros, e.tokens, e.calls, ...this.windowArgs(scopes, now, ttlMs));
      if (riders.length > 0) this.onCommitsSent('ridden', riders.length);
      r = await this.run(RESERVE, riders.length > 0 ? [...riderKeys, ...keys] : keys, args);
      if (r.settled.length !== riders.length) throw new RedisReplyError(RESERVE.name, `${r.settled.length} commits settled for ${riders.length} sent`);
    } catch (err) {
      // The script may have run (a lost answer): the commits' callers journal them, and a replay charges nothing twice.
      for (const c of riders) c.reject(err);
      throw err;
    }
    riders.forEach((c, i) => this.answer(RESERVE.name, c, r.settled[i]!));
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

  /**
   * Charges a window iff this call removed the reservation's hold from it (held, or reaped after its TTL, when only
   * actual − estimate is charged: the reap presumed the estimate spent): a replay charges nothing. With commitDelayMs, resolves once the commit landed: ridden on a reserve, or sent alone.
   */
  commit(reservation: Reservation, actual: Actual): Promise<CommitResult> {
    try {
      assertAmounts('actual', actual);
    } catch (err) {
      return Promise.reject(err);
    }
    const keys = this.windowKeys(reservation.scopes);
    // A hold that could expire while its commit waits would be reaped (its estimate presumed spent, shown as spent
    // until the commit corrects it): not queued.
    if (this.commitDelayMs <= 0 || this.closed || reservation.expiresAt - this.now() <= this.commitDelayMs) {
      return this.sendOne({ reservation, actual, keys });
    }
    return new Promise((resolve, reject) => this.enqueue({ reservation, actual, keys, resolve, reject }));
  }

  /** Commits at once, in a script call of its own (journal replays, which go one entry at a time in order). */
  commitNow(reservation: Reservation, actual: Actual): Promise<CommitResult> {
    try {
      assertAmounts('actual', actual);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.sendOne({ reservation, actual, keys: this.windowKeys(reservation.scopes) });
  }

  /**
   * Commits a reservation made locally while Redis was away (it never had a hold here), replayed from a journal in
   * order: charged iff `at.seq` is above the mark its journal left in each window, so a replay repeated after a lost
   * reply charges nothing.
   */
  async commitJournaled(reservation: Reservation, actual: Actual, at: JournalPosition): Promise<CommitResult> {
    if (!Number.isSafeInteger(at.seq) || at.seq < 1) throw new TypeError(`journal sequence numbers start at 1, got ${at.seq}`);
    assertAmounts('actual', actual);
    return this.sendOne({ reservation, actual, at, keys: this.windowKeys(reservation.scopes) });
  }

  /** Sends every queued commit now, alone; resolves once each has landed or failed (its caller was told). Never rejects. */
  async flush(): Promise<void> {
    const sends = [...this.queues.keys()].map((k) => this.sendQueued(k));
    await Promise.all([...sends, ...this.sending]);
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

  /** Sends the queued commits; later commits are sent at once. The connection belongs to whoever made it. */
  async close(): Promise<void> {
    this.closed = true;
    await this.flush();
  }

  private enqueue(c: QueuedCommit): void {
    const key = rideKey(c.keys);
    let q = this.queues.get(key);
    if (!q) {
      q = { commits: [], timer: undefined };
      this.queues.set(key, q);
    }
    q.commits.push(c);
    // From the oldest commit waiting: none waits longer than the delay.
    q.timer ??= setTimeout(() => void this.sendQueued(key), this.commitDelayMs);
  }

  /** The commits waiting for these keys' tags, oldest first, as many as one call carries. */
  private takeRiders(keys: readonly string[]): QueuedCommit[] {
    if (this.queues.size === 0) return [];
    const key = rideKey(keys);
    const q = this.queues.get(key);
    if (!q) return [];
    const riders = q.commits.splice(0, MAX_COMMITS_PER_CALL);
    if (q.commits.length === 0) {
      clearTimeout(q.timer);
      this.queues.delete(key);
    }
    return riders;
  }

  /** Sends one tag set's queue alone, in calls of at most MAX_COMMITS_PER_CALL. Never rejects. */
  private sendQueued(key: string): Promise<void> {
    const q = this.queues.get(key);
    if (!q) return Promise.resolve();
    this.queues.delete(key);
    clearTimeout(q.timer);
    const calls: Array<Promise<void>> = [];
    for (let i = 0; i < q.commits.length; i += MAX_COMMITS_PER_CALL) {
      const batch = q.commits.slice(i, i + MAX_COMMITS_PER_CALL);
      calls.push(
        this.sendAlone(batch).then(
          (replies) => batch.forEach((c, j) => this.answer(COMMIT.name, c, replies[j]!)),
          (err: unknown) => batch.forEach((c) => c.reject(err)),
        ),
      );
    }
    const sent = Promise.all(calls).then(() => {
      this.sending.delete(sent);
    });
    this.sending.add(sent);
    return sent;
  }

  private async sendOne(op: CommitOp & { readonly keys: readonly string[] }): Promise<CommitResult> {
    const [reply] = await this.sendAlone([op]);
    return { crossed: this.crossings(COMMIT.name, op.reservation.scopes, reply!.crossed) };
  }

  /** One commit script call for these commits (their keys may repeat: the script reads each window once). */
  private async sendAlone(ops: ReadonlyArray<CommitOp & { readonly keys: readonly string[] }>): Promise<CommitReply[]> {
    const now = this.now();
    const keys: string[] = [];
    const args: Array<string | number> = [now, this.alertPercent, ops.length];
    for (const op of ops) {
      keys.push(...op.keys);
      args.push(...this.commitArgs(op, now));
    }
    this.onCommitsSent('alone', ops.length);
    const replies = await this.run(COMMIT, keys, args);
    if (replies.length !== ops.length) throw new RedisReplyError(COMMIT.name, `${replies.length} commits settled for ${ops.length} sent`);
    return replies;
  }

  /** A queued commit's answer to its caller: its crossings, or a reply error. */
  private answer(script: string, c: QueuedCommit, reply: CommitReply): void {
    try {
      c.resolve({ crossed: this.crossings(script, c.reservation.scopes, reply.crossed) });
    } catch (err) {
      c.reject(err);
    }
  }

  /** One commit's ARGV (COMMIT_ONE in redis-scripts.ts). */
  private commitArgs(op: CommitOp, now: number): Array<string | number> {
    const { reservation, actual, at } = op;
    const e = reservation.estimate;
    const holdLeftMs = Math.max(0, reservation.expiresAt - now);
    return [
      member(reservation),
      e.usdMicros,
      e.tokens,
      e.calls,
      actual.usdMicros,
      actual.tokens,
      e.calls,
      at?.journal ?? '',
      at?.seq ?? 0,
      reservation.scopes.length,
      ...this.windowArgs(reservation.scopes, now, holdLeftMs),
    ];
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

/**
 * The hash tags of a script's keys (every third key is a window's counters hash), each once, in order: a commit rides
 * only a reserve whose keys carry exactly its tags, so a ride never adds a slot to a script call.
 */
const rideKey = (keys: readonly string[]): string => {
  const tags: string[] = [];
  for (let i = 0; i < keys.length; i += 3) {
    const k = keys[i]!;
    const tag = k.slice(0, k.indexOf('}') + 1);
    if (!tags.includes(tag)) tags.push(tag);
  }
  return tags.length === 1 ? tags[0]! : tags.join('');
};

/** A hold's zset member carries its amounts so the reaper can presume them spent without another lookup. */
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
