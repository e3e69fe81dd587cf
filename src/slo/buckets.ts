/**
 * The layout of the SLO counters in the shared store: per route, time buckets at three resolutions, each a hash of
 * small integer counters. Pure: key names, retention, which buckets cover a window, and sums.
 *
 * ## Layout
 * | tier | bucket    | key                                 | kept after the bucket ends     |
 * |------|-----------|-------------------------------------|--------------------------------|
 * | `m`  | 1 minute  | `{fusebox:slo:<route>}:m:<minute>`  | 6 h 10 min (6 h window, exact) |
 * | `h`  | 1 hour    | `{fusebox:slo:<route>}:h:<hour>`    | max(windowDays, 3) days + 1 h  |
 * | `d`  | 1 UTC day | `{fusebox:slo:<route>}:d:<day>`     | windowDays + 1 day             |
 * `<minute>`, `<hour>`, `<day>` count whole units since the Unix epoch (UTC). The hash tag `{fusebox:slo:<route>}`
 * puts a route's buckets and its writers' marks in one Redis Cluster slot, so the one script that adds a flush into
 * a route touches one slot, and the routes of a fleet spread over the cluster instead of loading one node.
 *
 * Every event is added to its minute, hour and day bucket (one script call per route per flush), so a window is
 * read from the coarsest buckets that fit it: the 30-day budget of a route is ≤ 23 hour buckets at its old edge
 * plus ≤ 30 day buckets, never 720 hour buckets.
 *
 * ## Fields (only non-zero ones are written)
 * `ag`/`ab` availability good/bad, `lg`/`lb` latency under/over the threshold, `cg`/`cb` cost under/over the
 * threshold, `r` Fusebox refusals (never burn a budget), `s` skipped (client 4xx, client gone), `cs` cost sum in
 * µUSD and `cn` calls with a known cost (cost per call = cs / cn), `l0`…`l16` a latency histogram on the
 * boundaries of `fusebox_request_duration_seconds` (`l16` = over 600 s), for p99 comparisons.
 *
 * ## Cost, 100 routes × 30 days, every route busy every minute
 * Live keys per route: 371 minute + 722 hour + 32 day = 1,125; 100 routes = 112,500 keys. A bucket is a small
 * listpack hash of 8–15 fields: Redis 7 `MEMORY USAGE` gives 136–153 bytes per key, so ≈ 16 MB, ≈ 20 MB with the
 * expiry index. Idle routes and idle minutes write no key. Writes: one script call per busy route per sidecar per flush.
 */

/** Bucket resolutions: minute, hour, UTC day. */
export type Tier = 'm' | 'h' | 'd';

export const MINUTE_MS = 60_000;
export const HOUR_MS = 60 * MINUTE_MS;
export const DAY_MS = 24 * HOUR_MS;

export const TIER_MS: Readonly<Record<Tier, number>> = { m: MINUTE_MS, h: HOUR_MS, d: DAY_MS };

/** Windows up to this long are read at minute resolution; longer ones at hour resolution. */
export const MINUTE_RESOLUTION_MAX_MS = 6 * HOUR_MS;

/** How long after its end a bucket is kept. Minute buckets serve windows ≤ 6 h; hour buckets the 3-day window and the edges of the SLO window. */
export const retentionMs = (tier: Tier, windowDays: number): number => {
  if (tier === 'm') return MINUTE_RESOLUTION_MAX_MS + 10 * MINUTE_MS;
  if (tier === 'h') return Math.max(windowDays, 3) * DAY_MS + HOUR_MS;
  return (windowDays + 1) * DAY_MS;
};

/** One bucket of one route. `index` counts whole tier units since the epoch. */
export interface BucketRef {
  readonly route: string;
  readonly tier: Tier;
  readonly index: number;
}

/** Counter name → value. Missing fields are zero. */
export type BucketFields = Record<string, number>;

/** The hash tag of a route's buckets and marks: one Redis Cluster slot per route. */
export const routeTag = (prefix: string, route: string): string => `{${prefix}:slo:${route}}`;

export const bucketKey = (prefix: string, ref: BucketRef): string => `${routeTag(prefix, ref.route)}:${ref.tier}:${ref.index}`;

/**
 * A bucket's key in the layout before per-route tags (every route under the one tag `{prefix}`): read as well as
 * the current one while such buckets exist, so an upgraded fleet keeps its SLO windows and counts the calls of the
 * sidecars not yet upgraded. They are never written; they expire within the SLO window plus a day.
 */
export const legacyBucketKey = (prefix: string, ref: BucketRef): string => `{${prefix}}:slo:${ref.route}:${ref.tier}:${ref.index}`;

/** The route of a bucket key under `prefix`, or undefined for any other key (a writer's mark, another prefix). */
export const routeOfBucketKey = (prefix: string, key: string): string | undefined => {
  const head = `{${prefix}:slo:`;
  // Route names have no "}" (config: letters, digits, "_", "-", "."), so the tag ends at the first one.
  if (key.startsWith(head)) return /^([^}]+)\}:[mhd]:\d+$/.exec(key.slice(head.length))?.[1];
  const legacyHead = `{${prefix}}:slo:`;
  return key.startsWith(legacyHead) ? /^([^:]+):[mhd]:\d+$/.exec(key.slice(legacyHead.length))?.[1] : undefined;
};

/** Redis SCAN patterns for the day buckets of every route under `prefix` (the longest-lived buckets: one per route-day), current and legacy layout. */
export const dayBucketPatterns = (prefix: string): string[] => [`{${prefix}:slo:*}:d:*`, `{${prefix}}:slo:*:d:*`];

/**
 * The key holding the last batch sequence number a writer (one recorder) had applied to a route: beside the route's
 * buckets, in their slot, so the script that applies a batch checks and moves it in the same step.
 */
export const writerKey = (prefix: string, route: string, writerId: string): string => `${routeTag(prefix, route)}:w:${writerId}`;

/** Seconds until the bucket should expire, measured from `now` (≥ 1, so a late write never deletes at once). */
export const ttlSeconds = (ref: BucketRef, windowDays: number, now: number): number => {
  const unit = TIER_MS[ref.tier];
  const expiresAt = (ref.index + 1) * unit + retentionMs(ref.tier, windowDays);
  return Math.max(1, Math.ceil((expiresAt - now) / 1000));
};

export const minuteIndex = (ms: number): number => Math.floor(ms / MINUTE_MS);

/** The field names, one place. */
export const FIELD = {
  availabilityGood: 'ag',
  availabilityBad: 'ab',
  latencyGood: 'lg',
  latencyBad: 'lb',
  costGood: 'cg',
  costBad: 'cb',
  refused: 'r',
  skipped: 's',
  costSumMicros: 'cs',
  costCount: 'cn',
} as const;

/** Upper bounds of the latency histogram, ms: the buckets of `fusebox_request_duration_seconds`. */
export const LATENCY_BOUNDS_MS: readonly number[] = [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000];

/** Histogram field of a latency: `l<i>` for the first bound ≥ ms, `l16` past the last bound. */
export const latencyField = (ms: number): string => {
  const i = LATENCY_BOUNDS_MS.findIndex((bound) => ms <= bound);
  return `l${i === -1 ? LATENCY_BOUNDS_MS.length : i}`;
};

/**
 * A quantile of the latency histogram, ms, interpolated linearly inside its bucket the way PromQL's
 * `histogram_quantile` does (the first bucket starts at 0; a rank in the overflow bucket answers the last bound).
 * Undefined when the histogram is empty.
 */
export const latencyQuantileMs = (fields: BucketFields, q: number): number | undefined => {
  const counts = Array.from({ length: LATENCY_BOUNDS_MS.length + 1 }, (_, i) => fields[`l${i}`] ?? 0);
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0) return undefined;
  const rank = q * total;
  let below = 0;
  for (let i = 0; i < LATENCY_BOUNDS_MS.length; i++) {
    const inBucket = counts[i]!;
    if (below + inBucket >= rank && inBucket > 0) {
      const lower = i === 0 ? 0 : LATENCY_BOUNDS_MS[i - 1]!;
      const upper = LATENCY_BOUNDS_MS[i]!;
      return lower + (upper - lower) * ((rank - below) / inBucket);
    }
    below += inBucket;
  }
  return LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.length - 1]!;
};

/** Add `from` into `into` (mutates `into`). */
export const addFields = (into: BucketFields, from: Readonly<BucketFields>): BucketFields => {
  for (const [k, v] of Object.entries(from)) into[k] = (into[k] ?? 0) + v;
  return into;
};

export const sumFields = (list: readonly Readonly<BucketFields>[]): BucketFields => list.reduce<BucketFields>((acc, f) => addFields(acc, f), {});

/** The first minute of a window of `durationMs` ending with the current bucket; hour-aligned for windows over 6 h. */
export const windowFirstMinute = (durationMs: number, now: number): number => {
  if (durationMs <= MINUTE_RESOLUTION_MAX_MS) return minuteIndex(now) - Math.ceil(durationMs / MINUTE_MS) + 1;
  const currentHour = Math.floor(now / HOUR_MS);
  return (currentHour - Math.ceil(durationMs / HOUR_MS) + 1) * 60;
};

/**
 * The fewest buckets that hold every event of a route from minute `firstMinute` up to now: minutes until an hour
 * boundary, hours until a UTC day boundary, then days. A bucket reaching past now is fine: it holds nothing later
 * than now (up to the clock skew between sidecars).
 */
export const coverSince = (route: string, firstMinute: number, now: number): BucketRef[] => {
  const last = minuteIndex(now);
  const refs: BucketRef[] = [];
  let m = firstMinute;
  while (m <= last) {
    if (m % 1440 === 0) {
      refs.push({ route, tier: 'd', index: m / 1440 });
      m += 1440;
    } else if (m % 60 === 0) {
      refs.push({ route, tier: 'h', index: m / 60 });
      m += 60;
    } else {
      refs.push({ route, tier: 'm', index: m });
      m += 1;
    }
  }
  return refs;
};

/**
 * A window of `durationMs` ending now: the last `durationMs / 1 min` minute buckets (the current one included, so
 * between duration − 1 min and duration of history), or for windows over 6 h the last `durationMs / 1 h` hour buckets.
 */
export const coverWindow = (route: string, durationMs: number, now: number): BucketRef[] =>
  coverSince(route, windowFirstMinute(durationMs, now), now);

export const refId = (ref: BucketRef): string => `${ref.route}:${ref.tier}:${ref.index}`;
