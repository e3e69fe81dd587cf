import type { RedisConnection } from '../store/redis-connection.js';
import { reply, RedisReplyError } from '../store/redis-script.js';
import { CrossSlotError, sameSlot } from '../store/redis-slots.js';
import { LEASE_ACQUIRE, leaseArgs } from './lease-scripts.js';
import { demandOf, goneIdle, minSlices, workflowLeaseGcMs, type LeaseReply, type LeaseRequest, type LeaseSizing, type LeaseSource, type LeaseUsage } from './lease-source.js';
import { counterKey, scopeTag } from './redis-keys.js';
import { METRICS, ZERO, type Amounts, type ReservedScope } from './store.js';
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
    this.min = minSlices(opts);
  }

  private readonly sizing: LeaseSizing;
  private readonly min: Amounts;

  /**
   * The lease hash of a window, on its scope's own hash tag (the tags RedisStore gives the scope's counters):
   * `{fusebox:r:openai}:lease:day:2026-12-05`, `{fusebox:f}:lease:month:2026-12`, `{fusebox:a:pod-1}:lease:day:2026-12-05`,
   * a workflow `{fusebox:a:pod-1}:lease:wf:task-1` (its agent's tag: batched with the agent's day and month) or, naming
   * no agent, `{fusebox:w:task-1}:lease:wf:task-1`. An agent's lease shares its counters' slot, so a cluster spreads
   * agents' leases as it spreads their counters.
   */
  keyOf(s: ReservedScope): string {
    const tag = scopeTag(this.prefix, s.scope);
    return s.scope.kind === 'workflow' ? `${tag}:lease:wf:${s.scope.id}` : `${tag}:lease:${s.window}:${s.windowId}`;
  }

  acquire(req: LeaseRequest): Promise<LeaseReply> {
    const idle = req.scope.window === 'workflow' ? (req.scope.idleTtlMs ?? 0) : 0;
    const end = windowEndFromId(req.scope.window, req.scope.windowId);
    // A workflow's lease hash goes with its idle time (refreshed by every request); a calendar one with its window.
    const gc = idle > 0 ? workflowLeaseGcMs(idle, this.sizing) : Math.max(1_000, Math.ceil((end ?? req.now) - req.now + CALENDAR_GRACE_MS));
    const key = this.keyOf(req.scope);
    const keys = [key, `${key}:x`];
    // RedisStore's counters hash of the same window (`{fusebox:a:pod-1}:day:2026-12-05`): seeds a new lease hash.
    if (req.scope.scope.kind === 'agent' || req.scope.scope.kind === 'workflow') keys.push(counterKey(this.prefix, req.scope));
    const list = (f: (m: (typeof METRICS)[number]) => number) => METRICS.map(f);
    const args = leaseArgs({
      keys: keys.length === 3 ? 3 : 2,
      holder: req.holder,
      seq: req.seq,
      report: list((m) => req.report[m]),
      keep: req.keep,
      want: list((m) => req.want[m]),
      demand: list((m) => demandOf(req.rate?.[m] ?? 0, this.sizing.ttlMs)),
      caps: list((m) => req.caps[m] ?? -1),
      min: list((m) => this.min[m]),
      now: req.now,
      ttlMs: this.sizing.ttlMs,
      graceMs: this.sizing.graceMs,
      alertPercent: this.sizing.alertPercent,
      gcMs: gc,
      idleMs: idle,
      usedAt: idle > 0 ? (req.usedAt ?? 0) : 0,
    });
    const tag = scopeTag(this.prefix, req.scope.scope);
    let batch = this.batches.get(tag);
    if (batch === undefined) {
      batch = { keys: [], args: [], waiting: [] };
      this.batches.set(tag, batch);
      if (this.batches.size === 1) queueMicrotask(() => this.flush());
    }
    batch.keys.push(...keys);
    batch.args.push(...args);
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
  usage(scopes: readonly ReservedScope[], now: number): Promise<LeaseUsage[]> {
    return Promise.all(
      scopes.map(async (s): Promise<LeaseUsage> => {
        const key = this.keyOf(s);
        const v = await this.redis.command('leaseUsage', key, (c) => c.hmget(key, 'usd', 'tokens', 'calls', 'out', 'out_t', 'out_c', 'seen'));
        const n = (i: number, what: string) => {
          const x = v[i];
          return x === null || x === undefined ? 0 : reply.int(x, what);
        };
        const outstanding = { usdMicros: n(3, 'out'), tokens: n(4, 'out_t'), calls: n(5, 'out_c') };
        const seenAt = v[6] === null || v[6] === undefined ? null : reply.int(v[6], 'seen');
        if (goneIdle(s, seenAt, outstanding, now)) return { spent: ZERO, outstanding, seenAt: null };
        return { spent: { usdMicros: n(0, 'usd'), tokens: n(1, 'tokens'), calls: n(2, 'calls') }, outstanding, seenAt };
      }),
    );
  }
}
