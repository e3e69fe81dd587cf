import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { RedisConnection } from '../store/redis-connection.js';
import { COMMIT_LUA, RELEASE_LUA, RESERVE_LUA, SNAPSHOT_LUA } from './redis-scripts.js';
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
const SCRIPTS = { fuseboxReserve: RESERVE_LUA, fuseboxCommit: COMMIT_LUA, fuseboxRelease: RELEASE_LUA, fuseboxSnapshot: SNAPSHOT_LUA };
type ScriptName = keyof typeof SCRIPTS;
type ScriptFn = (numKeys: number, ...args: string[]) => Promise<unknown>;

const metricIndex = (m: Metric) => METRICS.indexOf(m) + 1;
const metricAt = (i: number): Metric => METRICS[i - 1] ?? 'usdMicros';
const amountsArray = (a: Amounts) => METRICS.map((m) => a[m]);
const capsArray = (s: ScopeBudget) => METRICS.flatMap((m) => (s.caps[m] === undefined ? [] : [[metricIndex(m), s.caps[m]]]));

/**
 * The fleet's store: every sidecar reserves against the same Redis with one atomic Lua script per
 * operation (see redis-scripts.ts for the data layout and the invariant). Keys carry their window
 * (`{fusebox}:agent:a1:day:2026-11-22`) and expire after it. Commands fail fast when Redis is away (no
 * offline queue, short timeout, no resend after reconnect, which could apply a script twice); the caller
 * (LocalFallbackStore) decides what a failure means.
 */
export class RedisStore implements BudgetStore {
  private readonly redis: RedisConnection;
  private readonly client: Redis;
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
    this.client = opts.redis.client;
    this.prefix = `{${opts.redis.keyPrefix}}:`;
    for (const [name, lua] of Object.entries(SCRIPTS)) this.client.defineCommand(name, { lua });
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
    const reply = (await this.run('fuseboxReserve', [`${this.prefix}kills`, ...this.windowKeys(scopes)], {
      now,
      m: member(reservation),
      exp: reservation.expiresAt,
      est: amountsArray(reservation.estimate),
      alert: this.alertPercent,
      kill: killFieldsFor(scopes),
      win: scopes.map((s) => ({ caps: capsArray(s), idle: s.idleTtlMs ?? 0, gc: this.gcMs(s, now, ttlMs) })),
    })) as (number | string)[];
    if (reply[0] === 1) {
      const n = scopes.length * 3;
      const v = reply.slice(1, 1 + n).map(Number);
      const used = scopes.map((_, i) => ({ usdMicros: v[i * 3] ?? 0, tokens: v[i * 3 + 1] ?? 0, calls: v[i * 3 + 2] ?? 0 }));
      return { ok: true, reservation, used, crossed: this.crossings(scopes, reply.slice(1 + n)) };
    }
    if (reply[1] === 'KILLED') {
      const kill = parseKillValue(String(reply[3]));
      return {
        ok: false,
        refusal: { reason: 'KILLED', scope: refusalScopeOfKill(String(reply[2])), limit: 0, spent: 0, reserved: 0, requested: 0, resetAt: null, killReason: kill.reason },
      };
    }
    const [, , w, m, limit, spent, held, seen] = reply;
    const s = scopes[Number(w) - 1];
    if (!s) throw new Error(`budget reserve script answered an unknown window ${String(w)}`);
    const metric = metricAt(Number(m));
    return {
      ok: false,
      refusal: {
        reason: refusalReasonFor(metric),
        scope: s.scope,
        window: s.window,
        metric,
        limit: Number(limit),
        spent: Number(spent),
        reserved: Number(held),
        requested: reservation.estimate[metric],
        resetAt: resetTimeOf(s, s.windowId, seen === '' || seen === undefined ? null : Number(seen)),
      },
    };
  }

  async commit(reservation: Reservation, actual: Actual): Promise<CommitResult> {
    assertAmounts('actual', actual);
    const now = this.now();
    const holdLeftMs = Math.max(0, reservation.expiresAt - now);
    const reply = (await this.run('fuseboxCommit', [`${this.prefix}settled:${reservation.id}`, ...this.windowKeys(reservation.scopes)], {
      now,
      m: member(reservation),
      est: amountsArray(reservation.estimate),
      act: [actual.usdMicros, actual.tokens, reservation.estimate.calls],
      alert: this.alertPercent,
      ttl: this.settledTtlMs,
      win: reservation.scopes.map((s) => ({ caps: capsArray(s), idle: s.idleTtlMs ?? 0, gc: this.gcMs(s, now, holdLeftMs) })),
    })) as number[];
    return { crossed: reply[0] === 1 ? this.crossings(reservation.scopes, reply.slice(1)) : [] };
  }

  async release(reservation: Reservation): Promise<void> {
    await this.run('fuseboxRelease', this.windowKeys(reservation.scopes), { m: member(reservation), est: amountsArray(reservation.estimate) });
  }

  async snapshot(scopes: readonly ScopeBudget[]): Promise<ScopeUsage[]> {
    const now = this.now();
    const reserved = reservedScopes(scopes, now);
    const reply = (await this.run('fuseboxSnapshot', this.windowKeys(reserved), {
      now,
      win: reserved.map((s) => ({ idle: s.idleTtlMs ?? 0 })),
    })) as number[];
    return reserved.map((s, i) => {
      const v = reply.slice(i * 7, i * 7 + 7).map(Number);
      const at = (j: number) => v[j] ?? 0;
      const seen = at(6);
      return {
        scope: s.scope,
        window: s.window,
        windowId: s.windowId,
        caps: s.caps,
        spent: { usdMicros: at(0), tokens: at(1), calls: at(2) },
        reserved: { usdMicros: at(3), tokens: at(4), calls: at(5) },
        resetAt: resetTimeOf(s, s.windowId, seen < 0 ? null : seen),
      };
    });
  }

  async getKills(): Promise<Kill[]> {
    const all = await this.client.hgetall(`${this.prefix}kills`);
    const out: Kill[] = [];
    for (const [field, value] of Object.entries(all)) {
      const target = killTargetFromField(field);
      if (target) out.push({ target, ...parseKillValue(value) });
    }
    return out;
  }

  async setKill(target: KillTarget, reason = ''): Promise<void> {
    await this.client.hset(`${this.prefix}kills`, killField(target), JSON.stringify({ reason, at: this.now() }));
  }

  async clearKill(target: KillTarget): Promise<boolean> {
    return (await this.client.hdel(`${this.prefix}kills`, killField(target))) > 0;
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

  private crossings(scopes: readonly ReservedScope[], flat: readonly (number | string)[]): AlertCrossing[] {
    const out: AlertCrossing[] = [];
    for (let i = 0; i + 2 < flat.length; i += 3) {
      const s = scopes[Number(flat[i]) - 1];
      const metric = metricAt(Number(flat[i + 1]));
      const limit = s?.caps[metric];
      if (!s || limit === undefined) continue;
      out.push({ scope: s.scope, window: s.window, windowId: s.windowId, metric, percent: this.alertPercent, used: Number(flat[i + 2]), limit });
    }
    return out;
  }

  private run(name: ScriptName, keys: string[], args: unknown): Promise<unknown> {
    const fn = (this.client as unknown as Record<ScriptName, ScriptFn>)[name];
    return fn.call(this.client, keys.length, ...keys, JSON.stringify(args));
  }
}

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
