import type { RedisConnection } from '../store/redis-connection.js';
import { defineScript, reply } from '../store/redis-script.js';
import { addFields, bucketKey, dayBucketPatterns, legacyBucketKey, routeOfBucketKey, writerKey, type BucketFields, type BucketRef } from './buckets.js';

/**
 * The SLO counter store could not be reached (or did not answer in time). Never reaches an agent: the recorder keeps
 * its counts and the evaluator its last verdict, and `fusebox gate` says it could not judge.
 */
export class CounterStoreUnavailableError extends Error {
  readonly code = 'SLO_STORE_UNAVAILABLE';
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'CounterStoreUnavailableError';
  }
}

/** Counts to add to one bucket, and how long the bucket lives from now. */
export interface BucketWrite {
  readonly ref: BucketRef;
  readonly ttlSeconds: number;
  readonly fields: Readonly<BucketFields>;
}

/** One flush of one recorder. `seq` grows by one per batch of a writer. */
export interface CounterBatch {
  readonly seq: number;
  readonly writes: readonly BucketWrite[];
}

/**
 * Where SLO counters live. Memory for one sidecar, Redis for a fleet (every sidecar adds into the same buckets).
 *
 * Exactly-once: a writer sends its batches in `seq` order; the store applies a batch only when its `seq` is above
 * the last one it applied for that writer (in Redis: for that writer and route), in the same atomic step. So a batch whose answer was lost (timeout after
 * Redis ran it) can be sent again without being counted twice. Limits: the writer's mark lives 1 h (a batch retried
 * later than that could count twice — the recorder drops batches long before); a writer restarting gets a new id,
 * so batches unsent at a crash are lost, never doubled.
 */
export interface CounterStore {
  /** Apply batches in order, skipping those already applied. Throws CounterStoreUnavailableError. */
  write(writerId: string, batches: readonly CounterBatch[]): Promise<void>;
  /** The fields of each bucket, in the order asked; a missing bucket is `{}`. Throws CounterStoreUnavailableError. */
  read(refs: readonly BucketRef[]): Promise<BucketFields[]>;
  /**
   * A count that moves whenever a write lands in `route`'s buckets, 0 while none has. Only a store that sees every
   * write can tell (the memory store: one process); a shared one (Redis, where other sidecars write) leaves it out.
   * With it the evaluator re-reads a route only when its buckets or the minute changed: its 5-second tick then costs
   * what the routes with traffic cost, not a read of every route's windows.
   */
  writesTo?(route: string): number;
  close(): Promise<void>;
}

/** How long a writer's last-applied mark is kept, s. Must exceed the age of the oldest batch a recorder retries. */
export const WRITER_MARK_TTL_SECONDS = 3600;

/** Counters in this process: one sidecar, or tests. Expired buckets are swept at most once a minute. */
export class MemoryCounterStore implements CounterStore {
  private readonly buckets = new Map<string, { fields: BucketFields; expiresAt: number }>();
  private readonly lastSeq = new Map<string, number>();
  private readonly routeWrites = new Map<string, number>();
  private nextSweepAt = 0;

  constructor(private readonly opts: { now: () => number; keyPrefix?: string }) {}

  async write(writerId: string, batches: readonly CounterBatch[]): Promise<void> {
    const now = this.opts.now();
    this.sweep(now);
    let last = this.lastSeq.get(writerId) ?? 0;
    for (const batch of batches) {
      if (batch.seq <= last) continue;
      for (const w of batch.writes) {
        const key = this.key(w.ref);
        const bucket = this.live(key, now) ?? { fields: {}, expiresAt: 0 };
        for (const [f, v] of Object.entries(w.fields)) bucket.fields[f] = (bucket.fields[f] ?? 0) + v;
        bucket.expiresAt = now + w.ttlSeconds * 1000;
        this.buckets.set(key, bucket);
        this.routeWrites.set(w.ref.route, this.writesTo(w.ref.route) + 1);
      }
      last = batch.seq;
    }
    this.lastSeq.set(writerId, last);
  }

  async read(refs: readonly BucketRef[]): Promise<BucketFields[]> {
    const now = this.opts.now();
    return refs.map((ref) => ({ ...(this.live(this.key(ref), now)?.fields ?? {}) }));
  }

  writesTo(route: string): number {
    return this.routeWrites.get(route) ?? 0;
  }

  async close(): Promise<void> {}

  /** Buckets held now (expired ones not yet swept included). */
  get size(): number {
    return this.buckets.size;
  }

  private key(ref: BucketRef): string {
    return bucketKey(this.opts.keyPrefix ?? 'fusebox', ref);
  }

  private live(key: string, now: number) {
    const b = this.buckets.get(key);
    return b !== undefined && b.expiresAt > now ? b : undefined;
  }

  private sweep(now: number): void {
    if (now < this.nextSweepAt) return;
    this.nextSweepAt = now + 60_000;
    for (const [k, b] of this.buckets) if (b.expiresAt <= now) this.buckets.delete(k);
  }
}

/**
 * KEYS[1] the writer's mark of one route, KEYS[2..] that route's bucket keys (one slot). ARGV: mark TTL, batch count, then per batch `seq, writes`,
 * then per write `key index, ttl, field count, field, delta, ...`. Atomic, so a batch is applied whole or not at all,
 * and the mark moves with it. Reply: how many batches were applied (the others were already).
 */
const APPLY = defineScript('fuseboxSloApply', `
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local a = 1
local markTtl = ARGV[a]; a = a + 1
local batches = tonumber(ARGV[a]); a = a + 1
local applied = 0
for b = 1, batches do
  local seq = tonumber(ARGV[a]); local writes = tonumber(ARGV[a + 1]); a = a + 2
  local fresh = seq > last
  for w = 1, writes do
    local key = KEYS[tonumber(ARGV[a])]; local ttl = ARGV[a + 1]; local n = tonumber(ARGV[a + 2]); a = a + 3
    if fresh then
      for f = 0, n - 1 do redis.call('HINCRBY', key, ARGV[a + 2 * f], ARGV[a + 2 * f + 1]) end
      redis.call('EXPIRE', key, ttl)
    end
    a = a + 2 * n
  end
  if fresh then last = seq; applied = applied + 1 end
end
redis.call('SET', KEYS[1], last, 'EX', markTtl)
return applied
`, (raw) => ({ applied: reply.int(raw, 'applied batches') }));

/**
 * Counters in Redis, shared by a fleet. Fails fast (see RedisConnection): a flush or a read against a down Redis
 * rejects at once and the caller keeps its counts. The connection (and its key prefix) belongs to the caller, who
 * closes it.
 */
export class RedisCounterStore implements CounterStore {
  private readonly prefix: string;

  constructor(readonly redis: RedisConnection) {
    this.prefix = redis.keyPrefix;
  }

  /** Resolves once connected; rejects with CounterStoreUnavailableError when the connection fails or `timeoutMs` passes (a CLI's first step). */
  async ready(timeoutMs: number): Promise<void> {
    try {
      await this.redis.ready(timeoutMs);
    } catch (err) {
      throw this.unavailable(err);
    }
  }

  /**
   * One script call per route, all sent at once: a route's buckets and its mark share a slot (see buckets.ts), so
   * each call touches one Redis Cluster slot. A route's call is atomic; when some routes' calls fail, the batches stay
   * with the recorder, and the routes already applied skip them on the next try (their marks moved).
   */
  async write(writerId: string, batches: readonly CounterBatch[]): Promise<void> {
    if (batches.length === 0) return;
    const byRoute = new Map<string, Array<{ seq: number; writes: BucketWrite[] }>>();
    for (const batch of batches) {
      for (const w of batch.writes) {
        let list = byRoute.get(w.ref.route);
        if (!list) byRoute.set(w.ref.route, (list = []));
        if (list[list.length - 1]?.seq !== batch.seq) list.push({ seq: batch.seq, writes: [] });
        list[list.length - 1]!.writes.push(w);
      }
    }
    const calls = [...byRoute].map(([route, routeBatches]) => {
      const keys = [writerKey(this.prefix, route, writerId)];
      const keyIndex = new Map<string, number>();
      const args: Array<string | number> = [WRITER_MARK_TTL_SECONDS, routeBatches.length];
      for (const batch of routeBatches) {
        args.push(batch.seq, batch.writes.length);
        for (const w of batch.writes) {
          const key = bucketKey(this.prefix, w.ref);
          let i = keyIndex.get(key);
          if (i === undefined) {
            keys.push(key);
            i = keys.length;
            keyIndex.set(key, i);
          }
          const fields = Object.entries(w.fields).filter(([, v]) => v !== 0);
          args.push(i, w.ttlSeconds, fields.length);
          for (const [f, v] of fields) args.push(f, v);
        }
      }
      return this.redis.run(APPLY, keys, args);
    });
    const failed = (await Promise.allSettled(calls)).find((r) => r.status === 'rejected');
    if (failed) throw this.unavailable(failed.reason);
  }

  /**
   * One pipeline per route (a Redis Cluster pipeline stays on one slot); a missing bucket reads as `{}`. Buckets of the
   * previous layout (see legacyBucketKey) are added in: one EXISTS for all of them (they share one slot), and their
   * reads only when some exist.
   */
  async read(refs: readonly BucketRef[]): Promise<BucketFields[]> {
    if (refs.length === 0) return [];
    const byRoute = new Map<string, BucketRef[]>();
    for (const ref of refs) {
      let list = byRoute.get(ref.route);
      if (!list) byRoute.set(ref.route, (list = []));
      list.push(ref);
    }
    const read = new Map<BucketRef, BucketFields>();
    await Promise.all(
      [...byRoute.values()].map(async (routeRefs) => {
        const legacyKeys = routeRefs.map((ref) => legacyBucketKey(this.prefix, ref));
        const [current, legacyCount] = await Promise.all([this.hgetalls(routeRefs.map((ref) => bucketKey(this.prefix, ref))), this.existing(legacyKeys)]);
        const legacy = legacyCount > 0 ? await this.hgetalls(legacyKeys) : undefined;
        routeRefs.forEach((ref, i) => read.set(ref, legacy ? addFields(current[i]!, legacy[i]!) : current[i]!));
      }),
    );
    return refs.map((ref) => read.get(ref)!);
  }

  private async hgetalls(keys: readonly string[]): Promise<BucketFields[]> {
    let replies: Array<Record<string, string>>;
    try {
      replies = await this.redis.hgetallMany('sloRead', keys);
    } catch (err) {
      throw this.unavailable(err);
    }
    return replies.map((value) => {
      const out: BucketFields = {};
      for (const [k, v] of Object.entries(value)) out[k] = Number(v);
      return out;
    });
  }

  private async existing(keys: readonly string[]): Promise<number> {
    try {
      return await this.redis.command('sloRead', keys[0], (c) => c.exists(...keys));
    } catch (err) {
      throw this.unavailable(err);
    }
  }

  /**
   * The routes with a day bucket in the store, i.e. SLO counters within their window plus a day, sorted. SCANs the
   * whole keyspace, in steps: for a CLI's error message (an unknown route), never for a request.
   */
  async routes(): Promise<string[]> {
    const found = new Set<string>();
    try {
      for (const pattern of dayBucketPatterns(this.prefix)) {
        // A cluster keeps each route's buckets on the master owning their slot: each master is scanned.
        for (const node of this.redis.masters()) {
          let cursor = '0';
          do {
            const [next, keys] = await this.redis.command('sloScan', undefined, () => node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000));
            cursor = next;
            for (const key of keys) {
              const route = routeOfBucketKey(this.prefix, key);
              if (route !== undefined) found.add(route);
            }
          } while (cursor !== '0');
        }
      }
    } catch (err) {
      throw this.unavailable(err);
    }
    return [...found].sort();
  }

  /** Nothing to do: the connection belongs to whoever made it. */
  async close(): Promise<void> {}

  private unavailable(err: unknown): CounterStoreUnavailableError {
    const reason = err instanceof Error ? err.message : String(err);
    return new CounterStoreUnavailableError(`SLO counter store (Redis) unavailable: ${reason}`, { cause: err });
  }
}
