import type { RedisConnection } from '../store/redis-connection.js';
import { defineScript, reply } from '../store/redis-script.js';
import { bucketKey, dayBucketPattern, routeOfBucketKey, writerKey, type BucketFields, type BucketRef } from './buckets.js';

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
 * the last one it applied for that writer, in the same atomic step. So a batch whose answer was lost (timeout after
 * Redis ran it) can be sent again without being counted twice. Limits: the writer's mark lives 1 h (a batch retried
 * later than that could count twice — the recorder drops batches long before); a writer restarting gets a new id,
 * so batches unsent at a crash are lost, never doubled.
 */
export interface CounterStore {
  /** Apply batches in order, skipping those already applied. Throws CounterStoreUnavailableError. */
  write(writerId: string, batches: readonly CounterBatch[]): Promise<void>;
  /** The fields of each bucket, in the order asked; a missing bucket is `{}`. Throws CounterStoreUnavailableError. */
  read(refs: readonly BucketRef[]): Promise<BucketFields[]>;
  close(): Promise<void>;
}

/** How long a writer's last-applied mark is kept, s. Must exceed the age of the oldest batch a recorder retries. */
export const WRITER_MARK_TTL_SECONDS = 3600;

/** Counters in this process: one sidecar, or tests. Expired buckets are swept at most once a minute. */
export class MemoryCounterStore implements CounterStore {
  private readonly buckets = new Map<string, { fields: BucketFields; expiresAt: number }>();
  private readonly lastSeq = new Map<string, number>();
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
      }
      last = batch.seq;
    }
    this.lastSeq.set(writerId, last);
  }

  async read(refs: readonly BucketRef[]): Promise<BucketFields[]> {
    const now = this.opts.now();
    return refs.map((ref) => ({ ...(this.live(this.key(ref), now)?.fields ?? {}) }));
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
 * KEYS[1] the writer's mark, KEYS[2..] bucket keys. ARGV: mark TTL, batch count, then per batch `seq, writes`,
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

  async write(writerId: string, batches: readonly CounterBatch[]): Promise<void> {
    if (batches.length === 0) return;
    const keys = [writerKey(this.prefix, writerId)];
    const keyIndex = new Map<string, number>();
    const args: Array<string | number> = [WRITER_MARK_TTL_SECONDS, batches.length];
    for (const batch of batches) {
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
    try {
      await this.redis.run(APPLY, keys, args);
    } catch (err) {
      throw this.unavailable(err);
    }
  }

  async read(refs: readonly BucketRef[]): Promise<BucketFields[]> {
    let replies: Array<Record<string, string>>;
    try {
      replies = await this.redis.hgetallMany('sloRead', refs.map((ref) => bucketKey(this.prefix, ref)));
    } catch (err) {
      throw this.unavailable(err);
    }
    return replies.map((value) => {
      const out: BucketFields = {};
      for (const [k, v] of Object.entries(value)) out[k] = Number(v);
      return out;
    });
  }

  /**
   * The routes with a day bucket in the store, i.e. SLO counters within their window plus a day, sorted. SCANs the
   * whole keyspace, in steps: for a CLI's error message (an unknown route), never for a request.
   */
  async routes(): Promise<string[]> {
    const found = new Set<string>();
    try {
      // A cluster keeps each route's buckets on the master owning their slot: each master is scanned.
      for (const node of this.redis.masters()) {
        let cursor = '0';
        do {
          const [next, keys] = await this.redis.command('sloScan', undefined, () => node.scan(cursor, 'MATCH', dayBucketPattern(this.prefix), 'COUNT', 1000));
          cursor = next;
          for (const key of keys) {
            const route = routeOfBucketKey(this.prefix, key);
            if (route !== undefined) found.add(route);
          }
        } while (cursor !== '0');
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
