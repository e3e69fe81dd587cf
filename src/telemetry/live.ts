import type { CallMode } from '../pipeline/types.js';

/** How a call ended: the `outcome` label of `fusebox_requests_total`. */
export const CALL_OUTCOMES = ['success', 'upstream_error', 'failed', 'refused', 'aborted', 'stream_broken'] as const;
export type CallOutcome = (typeof CALL_OUTCOMES)[number];

/** The outcomes a status view counts as errors: the agent did not get a good answer, and did not leave first. */
export const ERROR_OUTCOMES: readonly CallOutcome[] = ['upstream_error', 'failed', 'refused', 'stream_broken'];

const FIELDS = [...CALL_OUTCOMES, 'retried', 'retry_budget_exhausted'] as const;
type Field = (typeof FIELDS)[number];
const INDEX = Object.fromEntries(FIELDS.map((f, i) => [f, i])) as Record<Field, number>;
const NO_CALLS = Object.fromEntries(FIELDS.map((f) => [f, 0])) as Record<Field, number>;

/** One refusal Fusebox answered itself, as the recent-refusals ring keeps it. */
export interface RefusalRecord {
  /** Clock time, ms. */
  readonly at: number;
  readonly code: string;
  readonly status: number;
  /** The route that refused it; undefined when no route was chosen (no route, not allowed, loop, malformed). */
  readonly route: string | undefined;
  readonly message: string;
  readonly requestId: string | undefined;
  /** How the call reached Fusebox; `connect` for a refused CONNECT tunnel. */
  readonly mode: CallMode | 'connect' | undefined;
}

/** A route's last window of calls, as `/admin/status` reports it. */
export interface RouteWindowStats {
  /** Seconds the counts cover: the window, or the whole seconds since start when shorter (at least 1). */
  readonly seconds: number;
  readonly outcomes: Readonly<Record<CallOutcome, number>>;
  readonly calls: number;
  readonly errors: number;
  readonly retried: number;
  readonly retryBudgetExhausted: number;
  /** Latency of the calls in the window that were not refused, ms; undefined without such a call. */
  readonly p50Ms: number | undefined;
  readonly p99Ms: number | undefined;
  /** Durations the percentiles were computed from (at most the reservoir's size). */
  readonly latencySamples: number;
}

/** Latency samples a route's reservoir has room for before its first call. */
const INITIAL_SAMPLES = 64;

/**
 * One route's counts per second over the last `seconds` seconds (a ring, no timers: like the retry budget, it
 * drops the buckets that left the window when it is next touched), and a reservoir of its latest call durations.
 */
class RouteWindow {
  private readonly counts: Float64Array;
  /** The second (floor(now/1000)) the newest bucket belongs to. */
  private head: number;
  /**
   * The reservoir starts small and doubles up to `samples` as calls come: full size from the start is 16 KB per route
   * at the default 1,000 (issue 15), which a route making a call a second never fills.
   */
  private durations: Float64Array;
  private endedAt: Float64Array;
  private next = 0;
  private filled = 0;

  constructor(
    private readonly seconds: number,
    private readonly samples: number,
    now: number,
  ) {
    this.counts = new Float64Array(seconds * FIELDS.length);
    this.head = Math.floor(now / 1000);
    this.durations = new Float64Array(Math.min(samples, INITIAL_SAMPLES));
    this.endedAt = new Float64Array(this.durations.length);
  }

  add(field: Field, now: number): void {
    const row = this.advance(now) * FIELDS.length;
    this.counts[row + INDEX[field]]! += 1;
  }

  sample(ms: number, now: number): void {
    // Full but not at its size yet: nothing was overwritten (the ring wraps only at full size), so the new slots
    // follow the old ones and the next sample goes to the first of them.
    if (this.filled === this.durations.length && this.filled < this.samples) this.grow();
    this.durations[this.next] = ms;
    this.endedAt[this.next] = now;
    this.next = (this.next + 1) % this.durations.length;
    this.filled = Math.min(this.filled + 1, this.durations.length);
  }

  totals(now: number): Record<Field, number> {
    this.advance(now);
    const out = Object.fromEntries(FIELDS.map((f) => [f, 0])) as Record<Field, number>;
    for (let s = 0; s < this.seconds; s++) for (const f of FIELDS) out[f] += this.counts[s * FIELDS.length + INDEX[f]]!;
    return out;
  }

  /** Nearest-rank percentiles of the durations that ended within the window. */
  percentiles(now: number, ps: readonly number[]): { values: Array<number | undefined>; n: number } {
    const since = now - this.seconds * 1000;
    const recent: number[] = [];
    for (let i = 0; i < this.filled; i++) if (this.endedAt[i]! > since) recent.push(this.durations[i]!);
    recent.sort((a, b) => a - b);
    const values = ps.map((p) => (recent.length === 0 ? undefined : recent[Math.max(0, Math.ceil(p * recent.length) - 1)]));
    return { values, n: recent.length };
  }

  private grow(): void {
    const size = Math.min(this.samples, this.durations.length * 2);
    const durations = new Float64Array(size);
    const endedAt = new Float64Array(size);
    durations.set(this.durations);
    endedAt.set(this.endedAt);
    this.durations = durations;
    this.endedAt = endedAt;
    this.next = this.filled;
  }

  /** Clear the buckets that left the window; return the row of the current second. */
  private advance(now: number): number {
    const second = Math.floor(now / 1000);
    // A clock that steps back keeps writing into the newest bucket rather than reviving old ones.
    if (second > this.head) {
      const gap = Math.min(second - this.head, this.seconds);
      for (let s = second - gap + 1; s <= second; s++) this.counts.fill(0, this.row(s) * FIELDS.length, (this.row(s) + 1) * FIELDS.length);
      this.head = second;
    }
    return this.row(this.head);
  }

  private row(second: number): number {
    return ((second % this.seconds) + this.seconds) % this.seconds;
  }
}

export interface LiveStatsOptions {
  now: () => number;
  /** Seconds the rates cover. Default 60. */
  windowSeconds?: number;
  /** Latest call durations kept per route for p50/p99. Default 1000. */
  latencySamples?: number;
  /** Refusals kept. Default 50. */
  refusals?: number;
}

/**
 * What `/admin/status` reads that the metrics cannot give without scraping ourselves twice: per route, the calls,
 * errors and retries of the last minute and the latest latencies; and the last refusals with their codes. Fed
 * where the metrics are (the observe layer, the retry layer, every place a refusal is counted), read on demand.
 * Memory is bounded: route names come from the config, the rings and the reservoir have bounded sizes, and a route
 * gets its window at its first call.
 */
export class LiveStats {
  readonly windowSeconds: number;
  private readonly samples: number;
  private readonly routes = new Map<string, RouteWindow>();
  private readonly ring: Array<RefusalRecord | undefined>;
  private nextRefusal = 0;
  private refusalCount = 0;
  /** Clock time (ms) counting began: the sidecar's start. */
  readonly startedAt: number;

  constructor(private readonly opts: LiveStatsOptions) {
    this.windowSeconds = Math.max(1, opts.windowSeconds ?? 60);
    this.samples = Math.max(1, opts.latencySamples ?? 1000);
    this.ring = new Array<RefusalRecord | undefined>(Math.max(1, opts.refusals ?? 50));
    this.startedAt = opts.now();
  }

  /** A call ended (its last byte sent or its error thrown), after `seconds` in Fusebox. */
  call(route: string, outcome: CallOutcome, seconds: number): void {
    const now = this.opts.now();
    const w = this.window(route, now);
    w.add(outcome, now);
    // Fusebox's own refusals take microseconds: counted in, they would hide the latency agents wait for.
    if (outcome !== 'refused') w.sample(seconds * 1000, now);
  }

  /** The retry layer's decision after a retryable failure: retried, or refused by the retry budget. */
  retry(route: string, decision: 'retried' | 'budget_exhausted'): void {
    const now = this.opts.now();
    this.window(route, now).add(decision === 'retried' ? 'retried' : 'retry_budget_exhausted', now);
  }

  /** A refusal Fusebox answered itself (a route's or one made before any route was chosen). */
  refused(r: Omit<RefusalRecord, 'at'>): void {
    this.ring[this.nextRefusal] = { at: this.opts.now(), ...r };
    this.nextRefusal = (this.nextRefusal + 1) % this.ring.length;
    this.refusalCount += 1;
  }

  /** The kept refusals, newest first. */
  recentRefusals(): RefusalRecord[] {
    const out: RefusalRecord[] = [];
    for (let k = 1; k <= this.ring.length; k++) {
      const r = this.ring[(this.nextRefusal - k + this.ring.length) % this.ring.length];
      if (r !== undefined) out.push(r);
    }
    return out;
  }

  /** Refusals since start (the ring keeps the last ones). */
  get refusalsTotal(): number {
    return this.refusalCount;
  }

  route(route: string): RouteWindowStats {
    const now = this.opts.now();
    // Read, a route without calls gets no window: the status page reads every route on each poll.
    const w = this.routes.get(route);
    const t = w?.totals(now) ?? NO_CALLS;
    const outcomes = Object.fromEntries(CALL_OUTCOMES.map((o) => [o, t[o]])) as Record<CallOutcome, number>;
    const { values, n } = w?.percentiles(now, [0.5, 0.99]) ?? { values: [undefined, undefined], n: 0 };
    return {
      seconds: Math.max(1, Math.min(this.windowSeconds, Math.floor((now - this.startedAt) / 1000))),
      outcomes,
      calls: CALL_OUTCOMES.reduce((sum, o) => sum + t[o], 0),
      errors: ERROR_OUTCOMES.reduce((sum, o) => sum + t[o], 0),
      retried: t.retried,
      retryBudgetExhausted: t.retry_budget_exhausted,
      p50Ms: values[0],
      p99Ms: values[1],
      latencySamples: n,
    };
  }

  private window(route: string, now: number): RouteWindow {
    let w = this.routes.get(route);
    if (w === undefined) this.routes.set(route, (w = new RouteWindow(this.windowSeconds, this.samples, now)));
    return w;
  }
}
