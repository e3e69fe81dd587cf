import type { RedisConnection } from '../store/redis-connection.js';
import { reply, RedisReplyError } from '../store/redis-script.js';
import { CrossSlotError, sameSlot } from '../store/redis-slots.js';
import { LEASE_ACQUIRE } from './lease-scripts.js';
import { demandOf, type LeaseReply, type LeaseRequest, type LeaseSizing, type LeaseSource, type LeaseUsage } from './lease-source.js';
import { counterKey, scopeTag } from './redis-keys.js';
import type { ReservedScope } from './store.js';
import { windowEndFromId } from './windows.js';

/** Lease hashes outlive their window by two days, like the counters, so late reports still land. */
const CALENDAR_GRACE_MS = 2 * 86_400_000;

/** The requests for the windows of one hash tag made in the same turn: sent as one script call. */
interface Batch {
  keys: string[];
  args: string[];
  waiting: Array<{ resolve: (r: LeaseReply) => void; reject: (err: unknown) => void }>;
}

/**
 * The fleet's leases, by a Lua script on the scope's own slot (see lease-scripts.ts). Fails fast while Redis is away
 * (RedisConnection); LeasedStore then keeps to the slices it holds.
 *
 * Requests made in the same turn for windows of one hash tag (LeasedStore's tick reports an agent's day and month,
 * the fleet's day and month, in one loop) go as ONE script call: the reports were most of what a leased call cost
 * Redis. Flushed on a microtask: the tick's loop is synchronous, so its requests are all queued by then, and a call
 * waiting for its first slice waits no extra event-loop turn (nor for fake timers, which setImmediate may be).
 * A failed call fails each of its requests, as separate calls would have; LeasedStore resends each with its seq.
 */
export class RedisLeaseSource implements LeaseSource {
  private readonly redis: RedisConnection;
  private readonly prefix: string;

  constructor(opts: { redis: RedisConnection } & LeaseSizing) {
    this.redis = opts.redis;
    this.prefix = opts.redis.keyPrefix;
    this.sizing = opts;
  }

  private readonly sizing: LeaseSizing;

  /**
   * The lease hash of a window, on its scope's own hash tag (the tags RedisStore gives the scope's counters):
   * `{fusebox:r:openai}:lease:day:2026-12-05`, `{fusebox:f}:lease:month:2026-12`, `{fusebox:a:pod-1}:lease:day:2026-12-05`.
   * An agent's lease shares its counters' slot, so a cluster spreads agents' leases as it spreads their counters.
   */
  keyOf(s: ReservedScope): string {
    if (s.scope.kind === 'workflow') throw new TypeError('workflow windows are never leased: their call caps stay exact per call');
    return `${scopeTag(this.prefix, s.scope)}:lease:${s.window}:${s.windowId}`;
  }

  acquire(req: LeaseRequest): Promise<LeaseReply> {
    const end = windowEndFromId(req.scope.window, req.scope.windowId);
    const gc = Math.max(1_000, Math.ceil((end ?? req.now) - req.now + CALENDAR_GRACE_MS));
    const key = this.keyOf(req.scope);
    const keys = [key, `${key}:x`];
    // RedisStore's counters hash of the same window (`{fusebox:a:pod-1}:day:2026-12-05`): seeds a new lease hash.
    if (req.scope.scope.kind === 'agent') keys.push(counterKey(this.prefix, req.scope));
    const args = {
      k: keys.length,
      holder: req.holder,
      seq: req.seq,
      rep: [req.report.usdMicros, req.report.tokens, req.report.calls],
      keep: req.keep ? 1 : 0,
      want: req.wantUsdMicros,
      dem: demandOf(req.rateUsdMicrosPerS ?? 0, this.sizing.ttlMs),
      cap: req.capUsdMicros ?? -1,
      now: req.now,
      ttl: this.sizing.ttlMs,
      grace: this.sizing.graceMs,
      min: this.sizing.minSliceUsdMicros,
      whole: 0,
      alert: this.sizing.alertPercent,
      gc,
    };
    const tag = scopeTag(this.prefix, req.scope.scope);
    let batch = this.batches.get(tag);
    if (batch === undefined) {
      batch = { keys: [], args: [], waiting: [] };
      this.batches.set(tag, batch);
      if (this.batches.size === 1) queueMicrotask(() => this.flush());
    }
    batch.keys.push(...keys);
    batch.args.push(JSON.stringify(args));
    return new Promise((resolve, reject) => batch.waiting.push({ resolve, reject }));
  }

  private readonly batches = new Map<string, Batch>();

  private flush(): void {
    const batches = [...this.batches.values()];
    this.batches.clear();
    for (const b of batches) {
      this.send(b).then(
        (replies) => b.waiting.forEach((w, i) => w.resolve(replies[i]!)),
        (err: unknown) => b.waiting.forEach((w) => w.reject(err)),
      );
    }
  }

  private async send(b: Batch): Promise<LeaseReply[]> {
    if (this.redis.client.isCluster && !sameSlot(b.keys)) throw new CrossSlotError(LEASE_ACQUIRE.name, b.keys);
    const replies = await this.redis.run(LEASE_ACQUIRE, b.keys, b.args);
    if (replies.length !== b.waiting.length) {
      throw new RedisReplyError(LEASE_ACQUIRE.name, `${replies.length} replies for ${b.waiting.length} windows`);
    }
    return replies;
  }

  /** One HMGET per window: windows live on different slots. */
  usage(scopes: readonly ReservedScope[]): Promise<LeaseUsage[]> {
    return Promise.all(
      scopes.map(async (s) => {
        const key = this.keyOf(s);
        const [usd, tokens, calls, out] = await this.redis.command('leaseUsage', key, (c) => c.hmget(key, 'usd', 'tokens', 'calls', 'out'));
        const n = (v: string | null | undefined, what: string) => (v === null || v === undefined ? 0 : reply.int(v, what));
        return { spent: { usdMicros: n(usd, 'usd'), tokens: n(tokens, 'tokens'), calls: n(calls, 'calls') }, outstandingUsdMicros: n(out, 'out') };
      }),
    );
  }
}
