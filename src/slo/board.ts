import { z } from 'zod';
import type { RedisConnection } from '../store/redis-connection.js';
import { defineScript, reply } from '../store/redis-script.js';
import { BURN_WINDOWS, SLO_KINDS, type SloAssessment, type SloKind } from './burn.js';
import { objectiveOf, type SloRouteSpec } from './spec.js';

/**
 * Where a fleet shares its SLO assessments (issue 14): per route, one sidecar at a time (the holder of the route's
 * lease) reads the buckets, assesses the route and publishes the result; every other sidecar reads the published
 * results of all its routes in one command per interval instead of re-reading the buckets itself.
 *
 * ## Keys (Redis)
 * | key                                   | what                                                            |
 * |---------------------------------------|-----------------------------------------------------------------|
 * | `{fusebox:slo}:published`             | hash: route → JSON `{at, by, spec, slos}` (the last assessment) |
 * | `{fusebox:slo}:<route>:lead`          | the id of the sidecar that assesses the route; PX 3 intervals   |
 * One hash tag for every route's result and lease, apart from the buckets' per-route tags: the results are tiny
 * (≈ 1 kB a route) and every sidecar reads them all, so one slot lets that be one HGETALL per interval; a per-route
 * tag would cost one read per route per sidecar. The slot's load is bounded by sidecars ÷ interval (1,000 sidecars
 * at 5 s: 200 reads/s), not by the routes, while the bucket traffic (every busy sidecar's flushes, the leaders' reads)
 * spreads over the cluster by route.
 */
export interface SloBoard {
  /** False for a single process (memory store): it leads every route and never reads anything back. */
  readonly shared: boolean;
  /** Every route's published result, in one store call. Throws when the store is unreachable. */
  read(): Promise<PublishedRead>;
  /** Take the route's lease when nobody holds it. True when this sidecar holds it now. Throws when unreachable. */
  lead(route: string, leaseMs: number): Promise<boolean>;
  /** Publish and renew the lease, if this sidecar still may (see {@link PublishOutcome}). Throws when unreachable. */
  publish(route: string, result: Omit<PublishedSlo, 'by'>, leaseMs: number): Promise<PublishOutcome>;
  /** Give the lease up (shutdown, a route removed), so another sidecar takes over without waiting for it to lapse. */
  release(route: string): Promise<void>;
}

/**
 * `published`: written, lease renewed. `lost`: another sidecar holds the lease (it took over while this one computed).
 * `superseded`: the lease had lapsed and a newer result is already published; nothing written.
 */
export type PublishOutcome = 'published' | 'lost' | 'superseded';

/** One route's assessment as published. */
export interface PublishedSlo {
  /** Clock time (ms) of the leader when it read the buckets. */
  readonly at: number;
  /** The sidecar that computed it. */
  readonly by: string;
  /** The objectives it was assessed against ({@link assessmentSpecKey}). */
  readonly spec: string;
  readonly slos: Readonly<Partial<Record<SloKind, SloAssessment>>>;
}

export interface PublishedRead {
  readonly results: ReadonlyMap<string, PublishedSlo>;
  /** Routes whose published value does not decode (another version's format): to be re-published by their leader. */
  readonly unreadable: readonly string[];
}

/**
 * What an assessment depends on besides the counters: the SLO window and each SLO's objective and minimum events.
 * A sidecar whose config differs (a rolling config change) does not take another's assessment for its own.
 */
export const assessmentSpecKey = (spec: SloRouteSpec): string =>
  JSON.stringify([spec.windowDays, spec.minEvents, ...SLO_KINDS.map((k) => objectiveOf(spec, k).objectivePercent)]);

const goodBad = z.object({ good: z.number(), bad: z.number() });
const windowKeys = [...BURN_WINDOWS, 'budget'] as const;
const alertState = z.enum(['firing', 'ok', 'insufficient']);
// ±Infinity (a 100 % objective with a bad event: an infinite burn, a budget of −∞) has no JSON form: it travels as a string.
const burn = z.union([z.number(), z.enum(['Infinity', '-Infinity']).transform((t) => (t === 'Infinity' ? Number.POSITIVE_INFINITY : Number.NEGATIVE_INFINITY))]);
const assessment = z.object({
  kind: z.enum(SLO_KINDS as [SloKind, ...SloKind[]]),
  objectivePercent: z.number(),
  events: z.object(Object.fromEntries(windowKeys.map((w) => [w, goodBad])) as Record<(typeof windowKeys)[number], typeof goodBad>),
  burnRates: z.object(Object.fromEntries(BURN_WINDOWS.map((w) => [w, burn.optional()])) as Record<(typeof BURN_WINDOWS)[number], z.ZodOptional<typeof burn>>),
  budgetRemaining: burn.optional(),
  alerts: z.object({ fast: alertState, medium: alertState, slow: alertState }),
});
const PublishedSchema = z.object({
  at: z.number(),
  by: z.string(),
  spec: z.string(),
  slos: z.object({ availability: assessment.optional(), latency: assessment.optional(), cost: assessment.optional() }),
});

export const encodePublished = (p: PublishedSlo): string =>
  JSON.stringify(p, (_k, v: unknown) => (v === Number.POSITIVE_INFINITY ? 'Infinity' : v === Number.NEGATIVE_INFINITY ? '-Infinity' : v));

/** The published value, or undefined when it is not one (garbage, another version's format). */
export const decodePublished = (text: string): PublishedSlo | undefined => {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return undefined;
  }
  const parsed = PublishedSchema.safeParse(raw);
  return parsed.success ? (parsed.data as PublishedSlo) : undefined;
};

/** One process: it is always the leader, and nothing is shared. */
export class LocalSloBoard implements SloBoard {
  readonly shared = false;
  async read(): Promise<PublishedRead> {
    return { results: new Map(), unreadable: [] };
  }
  async lead(): Promise<boolean> {
    return true;
  }
  async publish(): Promise<PublishOutcome> {
    return 'published';
  }
  async release(): Promise<void> {}
}

/**
 * KEYS[1] the route's lease, KEYS[2] the published hash. ARGV: sidecar id, lease ms, route, `at`, value.
 * The lease held by another → 0 (lost). Lapsed (nobody holds it) and a newer result published meanwhile → 2
 * (superseded): a sidecar whose lease ran out mid-computation never writes over a newer result. Otherwise the value
 * is written and the lease taken or renewed → 1. The holder itself always writes: its lease is the authority, and
 * comparing clocks of two sidecars would stall a leader behind a predecessor whose clock ran ahead.
 */
const PUBLISH = defineScript('fuseboxSloPublish', `
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
if not holder then
  local current = redis.call('HGET', KEYS[2], ARGV[3])
  if current then
    local ok, old = pcall(cjson.decode, current)
    if ok and type(old) == 'table' and type(old.at) == 'number' and old.at > tonumber(ARGV[4]) then return 2 end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
return 1
`, (raw) => (['lost', 'published', 'superseded'] as const)[reply.intIn(raw, 0, 2, 'publish outcome')]!);

/**
 * KEYS[1] the route's lease, KEYS[2] the published hash; ARGV: sidecar id, route. Only the holder releases: the lease
 * goes, and its last result with it, so the other sidecars see the route unassessed at their next read and one of
 * them takes it over then, instead of waiting for the result to age 2 intervals. Until then they keep the result
 * they last read.
 */
const RELEASE = defineScript('fuseboxSloRelease', `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
`, (raw) => reply.intIn(raw, 0, 1, 'released'));

/** The board of a fleet sharing one Redis (the process's one connection; its owner closes it). */
export class RedisSloBoard implements SloBoard {
  readonly shared = true;
  private readonly tag: string;

  constructor(
    private readonly redis: RedisConnection,
    private readonly opts: { sidecarId: string },
  ) {
    this.tag = `{${redis.keyPrefix}:slo}`;
  }

  get sidecarId(): string {
    return this.opts.sidecarId;
  }

  leaseKey(route: string): string {
    return `${this.tag}:${route}:lead`;
  }

  get publishedKey(): string {
    return `${this.tag}:published`;
  }

  async read(): Promise<PublishedRead> {
    const key = this.publishedKey;
    const all = await this.redis.command('sloBoard', key, (c) => c.hgetall(key));
    const results = new Map<string, PublishedSlo>();
    const unreadable: string[] = [];
    for (const [route, text] of Object.entries(all)) {
      const p = decodePublished(text);
      if (p) results.set(route, p);
      else unreadable.push(route);
    }
    return { results, unreadable };
  }

  async lead(route: string, leaseMs: number): Promise<boolean> {
    const key = this.leaseKey(route);
    return (await this.redis.command('sloBoard', key, (c) => c.set(key, this.opts.sidecarId, 'PX', leaseMs, 'NX'))) === 'OK';
  }

  publish(route: string, result: Omit<PublishedSlo, 'by'>, leaseMs: number): Promise<PublishOutcome> {
    const value = encodePublished({ ...result, by: this.opts.sidecarId });
    return this.redis.run(PUBLISH, [this.leaseKey(route), this.publishedKey], [this.opts.sidecarId, leaseMs, route, result.at, value]);
  }

  async release(route: string): Promise<void> {
    await this.redis.run(RELEASE, [this.leaseKey(route), this.publishedKey], [this.opts.sidecarId, route]);
  }
}
