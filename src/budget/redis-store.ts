import { randomUUID } from 'node:crypto';
import type { RedisConnection } from '../store/redis-connection.js';
import { RedisReplyError, type RedisScript } from '../store/redis-script.js';
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
  scopeKey,
  type Actual,
  type AlertCrossing,
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
  type ScopeUsage,
  type StoreCommonOptions,
} from './store.js';
import { windowEndFromId } from './windows.js';

export interface RedisStoreOptions extends StoreCommonOptions {
  /** The process's Redis connection (its key prefix names every key); RedisStore never closes it. */
  redis: RedisConnection;
  /**
   * How long a settled reservation (or replayed journal entry) id is remembered against double charging, ms.
   * Default 600000. It only has to outlive a retry of the same commit: a journal replay after a reply was lost
   * runs within seconds of the store answering again. One key per call lives this long, so a day would cost
   * 86 M keys per sidecar at 1,000 req/s; ten minutes costs 600 k at that rate, 30 k at a realistic 50 req/s.
   */
  settledTtlMs?: number;
}

/** Calendar windows are kept this long after they end so "yesterday" can still be read and late commits land. */
const CALENDAR_GRACE_MS = 2 * 86_400_000;

const metricIndex = (m: Metric) => METRICS.indexOf(m) + 1;
const amountsArray = (a: Amounts) => METRICS.map((m) => a[m]);
const capsArray = (s: ScopeBudget) => METRICS.flatMap((m) => (s.caps[m] === undefined ? [] : [[metricIndex(m), s.caps[m]]]));

/**
 * The fleet's store: every sidecar reserves against the same Redis with one atomic Lua script per
 * operation (see redis-scripts.ts for the data layout and the invariant). Keys carry their window
 * (`{fusebox}:agent:a1:day:2026-11-22`) and expire after it. Commands fail fast when Redis is away (see
 * RedisConnection), and a reply of the wrong shape rejects with a RedisReplyError; the caller
 * (LocalFallbackStore) decides what a failure means.
 */
export class RedisStore implements BudgetStore {
  private readonly redis: RedisConnection;
  private readonly prefix: string;
  private readonly now: () => number;
  private readonly alertPercent: number;
  private readonly reservationTtlMs: number;
  private readonly settledTtlMs: number;
  private readonly newId: () => string;

  constructor(opts: RedisStoreOptions) {
    this.now = opts.now;
    this.alertPercent = opts.alertPercent ?? DEFAULT_ALERT_PERCENT;
    this.reservationTtlMs = opts.reservationTtlMs ?? DEFAULT_RESERVATION_TTL_MS;
    this.settledTtlMs = opts.settledTtlMs ?? 600_000;
    this.newId = opts.newId ?? randomUUID;
    this.redis = opts.redis;
    this.prefix = `{${opts.redis.keyPrefix}}:`;
  }

  async reserve(req: ReserveRequest): Promise<ReserveResult> {
    assertAmounts('estimate', req.estimate);
    const now = this.now();
    const scopes = reservedScopes(req.scopes, now);
    const ttlMs = req.ttlMs ?? this.reservationTtlMs;
    const reservation: Reservation = {
      id: this.newId(),
      scopes,
      estimate: { usdMicros: req.estimate.usdMicros, tokens: req.estimate.tokens, calls: req.estimate.calls },
      expiresAt: now + ttlMs,
    };
    const r = await this.run(RESERVE, [`${this.prefix}kills`, ...this.windowKeys(scopes)], {
      now,
      m: member(reservation),
      exp: reservation.expiresAt,
      est: amountsArray(reservation.estimate),
      alert: this.alertPercent,
      kill: killFieldsFor(scopes),
      win: scopes.map((s) => ({ caps: capsArray(s), idle: s.idleTtlMs ?? 0, gc: this.gcMs(s, now, ttlMs) })),
    });
    if (r.admitted) {
      if (r.used.length !== scopes.length) throw new RedisReplyError(RESERVE.name, `${r.used.length} windows used for ${scopes.length} given`);
      return { ok: true, reservation, used: r.used, crossed: this.crossings(RESERVE.name, scopes, r.crossed) };
    }
    if (r.refusal === 'KILLED') {
      const kill = parseKillValue(r.killValue);
      return {
        ok: false,
        refusal: { reason: 'KILLED', scope: refusalScopeOfKill(r.killField), limit: 0, spent: 0, reserved: 0, requested: 0, resetAt: null, killReason: kill.reason },
      };
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

  async commit(reservation: Reservation, actual: Actual): Promise<CommitResult> {
    assertAmounts('actual', actual);
    const now = this.now();
    const holdLeftMs = Math.max(0, reservation.expiresAt - now);
    const r = await this.run(COMMIT, [`${this.prefix}settled:${reservation.id}`, ...this.windowKeys(reservation.scopes)], {
      now,
      m: member(reservation),
      est: amountsArray(reservation.estimate),
      act: [actual.usdMicros, actual.tokens, reservation.estimate.calls],
      alert: this.alertPercent,
      ttl: this.settledTtlMs,
      win: reservation.scopes.map((s) => ({ caps: capsArray(s), idle: s.idleTtlMs ?? 0, gc: this.gcMs(s, now, holdLeftMs) })),
    });
    return { crossed: this.crossings(COMMIT.name, reservation.scopes, r.crossed) };
  }

  async release(reservation: Reservation): Promise<void> {
    await this.run(RELEASE, this.windowKeys(reservation.scopes), { m: member(reservation), est: amountsArray(reservation.estimate) });
  }

  async snapshot(scopes: readonly ScopeBudget[]): Promise<ScopeUsage[]> {
    const now = this.now();
    const reserved = reservedScopes(scopes, now);
    const windows = await this.run(SNAPSHOT, this.windowKeys(reserved), { now, win: reserved.map((s) => ({ idle: s.idleTtlMs ?? 0 })) });
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

  async getKills(): Promise<Kill[]> {
    const key = `${this.prefix}kills`;
    const all = await this.redis.command('kills', key, (c) => c.hgetall(key));
    const out: Kill[] = [];
    for (const [field, value] of Object.entries(all)) {
      const target = killTargetFromField(field);
      if (target) out.push({ target, ...parseKillValue(value) });
    }
    return out;
  }

  async setKill(target: KillTarget, reason = ''): Promise<void> {
    const key = `${this.prefix}kills`;
    await this.redis.command('kills', key, (c) => c.hset(key, killField(target), JSON.stringify({ reason, at: this.now() })));
  }

  async clearKill(target: KillTarget): Promise<boolean> {
    const key = `${this.prefix}kills`;
    return (await this.redis.command('kills', key, (c) => c.hdel(key, killField(target)))) > 0;
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

  private windowKeys(scopes: readonly ReservedScope[]): string[] {
    return scopes.flatMap((s) => {
      const k = `${this.prefix}${scopeKey(s, s.windowId)}`;
      return [k, `${k}:res`];
    });
  }

  /** Key TTL: calendar windows live past their end (grace); a workflow window past its idle time and any hold. */
  private gcMs(s: ReservedScope, now: number, holdMs: number): number {
    const end = windowEndFromId(s.window, s.windowId);
    const ms = end !== null ? end - now + CALENDAR_GRACE_MS : (s.idleTtlMs ?? 0) + holdMs;
    return Math.max(1_000, Math.ceil(ms));
  }

  private crossings(script: string, scopes: readonly ReservedScope[], crossed: readonly CrossingReply[]): AlertCrossing[] {
    return crossed.map((c) => {
      const s = scopeAt(script, scopes, c.window);
      const limit = s.caps[c.metric];
      if (limit === undefined) throw new RedisReplyError(script, `an alert on ${c.metric}, which window ${c.window} does not cap`);
      return { scope: s.scope, window: s.window, windowId: s.windowId, metric: c.metric, percent: this.alertPercent, used: c.used, limit };
    });
  }

  /** Every script takes its arguments as one JSON document. */
  private run<R>(script: RedisScript<R>, keys: string[], args: unknown): Promise<R> {
    return this.redis.run(script, keys, [JSON.stringify(args)]);
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
