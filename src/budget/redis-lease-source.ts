import type { RedisConnection } from '../store/redis-connection.js';
import { reply } from '../store/redis-script.js';
import { LEASE_ACQUIRE } from './lease-scripts.js';
import { demandOf, type LeaseReply, type LeaseRequest, type LeaseSizing, type LeaseSource, type LeaseUsage } from './lease-source.js';
import { counterKey, scopeTag } from './redis-keys.js';
import type { ReservedScope } from './store.js';
import { windowEndFromId } from './windows.js';

/** Lease hashes outlive their window by two days, like the counters, so late reports still land. */
const CALENDAR_GRACE_MS = 2 * 86_400_000;

/**
 * The fleet's leases, one Lua script per lease request on the scope's own slot (see lease-scripts.ts). Fails fast
 * while Redis is away (RedisConnection); LeasedStore then keeps to the slices it holds.
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
    const args = {
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
    const key = this.keyOf(req.scope);
    const keys = [key, `${key}:x`];
    // RedisStore's counters hash of the same window (`{fusebox:a:pod-1}:day:2026-12-05`): seeds a new lease hash.
    if (req.scope.scope.kind === 'agent') keys.push(counterKey(this.prefix, req.scope));
    return this.redis.run(LEASE_ACQUIRE, keys, [JSON.stringify(args)]);
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
