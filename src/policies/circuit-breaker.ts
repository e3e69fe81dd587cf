import type { BreakerConfig } from '../config/schema.js';
import { isSlowCall } from '../upstream/classify.js';

/*
 * Why our own breaker and not opossum (the obvious choice, tried first and removed):
 * - opossum counts thrown errors only; we judge *results* (a 503, a slow 200, an MCP `isError` inside a 200,
 *   a stream that broke after the headers) with the shared classifier, and a 4xx must count as neither.
 * - it runs 2 timers per breaker (rolling window + reset); with one breaker per model or MCP tool that is
 *   thousands of timers, and fake-time tests get fiddly. Here time is a `now()` we are given: no timers at all,
 *   so a breaker evicted from the registry leaks nothing.
 * - it has no consecutive-failure trigger, and `volumeThreshold` defaults to 0 (one failure in an idle window
 *   opens it).
 * - half-open admission has known holes (opossum #819, #613); we need exactly one probe at a time, and a probe
 *   whose caller never reports back must not wedge the breaker (it gets a lease).
 * - no shared state (opossum #675, wontfix); this state machine is small and explicit so a fleet-shared
 *   variant can follow.
 * - jittered reset, so a fleet does not probe in lockstep.
 * It is the cockatiel model: a state machine that compares `now − openedAt` instead of arming timers.
 */

/**
 * `forced_open` / `forced_closed` are admin overrides (`forceOpen()` / `forceClose()`), held until `reset()`
 * or the other override.
 */
export type BreakerState = 'closed' | 'open' | 'half_open' | 'forced_open' | 'forced_closed';

export type TransitionReason =
  /** `consecutiveFailures` failures in a row. */
  | 'consecutive_failures'
  /** `errorRatePercent` reached over the window with at least `minCalls` calls. */
  | 'error_rate'
  /** `resetMs` (+ jitter) passed and a call arrived: it becomes the probe. */
  | 'probe_admitted'
  | 'probe_succeeded'
  | 'probe_failed'
  /** Admin `forceOpen()` / `forceClose()`. */
  | 'forced'
  /** Admin `reset()`. */
  | 'reset';

/**
 * Called after every state change, with the new state already in place. It must not throw (the lead maps it to a
 * metric and a log line). `lastFailure` is the reason of the failure that caused an opening, if any.
 */
export type TransitionListener = (from: BreakerState, to: BreakerState, reason: TransitionReason, lastFailure: string | undefined) => void;

/** The breaker settings of a route (`BreakerConfig`), plus how long a probe may stay out. */
export type CircuitBreakerOptions = Pick<
  BreakerConfig,
  'errorRatePercent' | 'windowMs' | 'minCalls' | 'consecutiveFailures' | 'resetMs' | 'resetJitterPercent' | 'slowCallMs'
> & {
  /**
   * A probe not settled within max(resetMs, probeLeaseMs) is given up and the next call becomes the probe.
   * Set it to the longest a call may take (the route's `timeouts.totalMs`). Default: resetMs.
   */
  readonly probeLeaseMs?: number;
  /** Buckets in the rolling window. Default 10: the window slides in steps of windowMs/10. */
  readonly buckets?: number;
};

export interface CircuitBreakerDeps {
  readonly now: () => number;
  /** In [0, 1), like Math.random: the reset jitter. */
  readonly random: () => number;
  readonly onTransition?: TransitionListener;
}

/**
 * Admission to call the upstream. Settle it exactly once; later calls are ignored, as are results of permits
 * granted before the breaker last changed state (a slow call from before an opening cannot close it).
 */
export interface BreakerPermit {
  /** This call is the half-open probe: its result closes or re-opens the breaker. */
  readonly probe: boolean;
  /** The upstream answered well. Slower than `slowCallMs` counts as a failure (reason `slow`). */
  success(durationMs?: number): void;
  /** The upstream failed; `reason` is a bounded label (the classifier's `reason`). */
  failure(reason: string): void;
  /** No verdict (the client left before the upstream answered): nothing is counted; a probe slot is freed. */
  release(): void;
}

export type Admission =
  | { readonly allowed: true; readonly permit: BreakerPermit }
  | {
      readonly allowed: false;
      readonly state: Extract<BreakerState, 'open' | 'half_open' | 'forced_open'>;
      /**
       * A hint for Retry-After: when a probe may be admitted. Undefined when forced open: an operator's override is
       * never probed, so no wait would end it.
       */
      readonly retryAfterMs: number | undefined;
    };

export interface BreakerStats {
  readonly state: BreakerState;
  /** Calls and failures in the rolling window. */
  readonly calls: number;
  readonly failures: number;
  /** failures / calls × 100 over the window; 0 with no calls. */
  readonly errorRatePercent: number;
  readonly consecutiveFailures: number;
  /** Open: ms until the next call is admitted as the probe (0: the next call will be). Otherwise undefined. */
  readonly msUntilProbe: number | undefined;
  readonly probeInFlight: boolean;
  /** Clock time the breaker last opened, if it is open or half-open. */
  readonly openedAt: number | undefined;
  readonly lastFailure: string | undefined;
}

/**
 * A timer-less circuit breaker. Closed: calls pass and results are counted. It opens on `consecutiveFailures` in a
 * row, or when failures reach `errorRatePercent` of at least `minCalls` calls in the last `windowMs`, whichever
 * comes first. Open: calls are refused until `resetMs` + random jitter (up to `resetJitterPercent` of resetMs)
 * has passed; then the next call is admitted as the only probe (half-open) and every other call is refused while it
 * is out. The probe's success closes the breaker with fresh counters; its failure opens it again.
 */
export class CircuitBreaker {
  private current: BreakerState = 'closed';
  /** Bumped on every state change; permits from an older epoch are ignored. */
  private epoch = 0;
  private consecutive = 0;
  private lastFailure: string | undefined;
  private openedAt: number | undefined;
  private probeAt = 0;
  private probeToken: object | undefined;
  private probeLeaseEnd = 0;

  private readonly bucketMs: number;
  private readonly bucketCalls: Float64Array;
  private readonly bucketFailures: Float64Array;
  /** Index (floor(now / bucketMs)) of the newest bucket. */
  private headBucket: number;
  private calls = 0;
  private failures = 0;

  constructor(
    private readonly options: CircuitBreakerOptions,
    private readonly deps: CircuitBreakerDeps,
  ) {
    const buckets = Math.max(1, Math.floor(options.buckets ?? 10));
    this.bucketMs = Math.max(1, Math.ceil(options.windowMs / buckets));
    this.bucketCalls = new Float64Array(buckets);
    this.bucketFailures = new Float64Array(buckets);
    this.headBucket = Math.floor(deps.now() / this.bucketMs);
  }

  /** Ask to make a call. Never blocks and arms no timer. */
  tryAcquire(): Admission {
    const now = this.deps.now();
    switch (this.current) {
      case 'closed':
      case 'forced_closed':
        return this.admit(false);
      case 'forced_open':
        return { allowed: false, state: this.current, retryAfterMs: undefined };
      case 'open':
        if (now < this.probeAt) return { allowed: false, state: 'open', retryAfterMs: this.probeAt - now };
        this.transition('half_open', 'probe_admitted');
        return this.admitProbe(now);
      case 'half_open':
        // A probe that outlived its lease was lost (its caller never settled it): the next call replaces it.
        if (this.probeToken !== undefined && now < this.probeLeaseEnd) {
          return { allowed: false, state: 'half_open', retryAfterMs: this.probeLeaseEnd - now };
        }
        return this.admitProbe(now);
    }
  }

  state(): BreakerState {
    return this.current;
  }

  /**
   * Would a call at clock time `at` (default now) be admitted? Changes nothing: no transition, no probe taken.
   * The retry layer asks it before it backs off, so that it never waits for a retry the breaker will refuse.
   */
  wouldAdmit(at = this.deps.now()): boolean {
    switch (this.current) {
      case 'closed':
      case 'forced_closed':
        return true;
      case 'forced_open':
        return false;
      case 'open':
        return at >= this.probeAt;
      case 'half_open':
        return this.probeToken === undefined || at >= this.probeLeaseEnd;
    }
  }

  stats(): BreakerStats {
    const now = this.deps.now();
    this.advance(now);
    return {
      state: this.current,
      calls: this.calls,
      failures: this.failures,
      errorRatePercent: this.calls === 0 ? 0 : (this.failures / this.calls) * 100,
      consecutiveFailures: this.consecutive,
      msUntilProbe: this.current === 'open' ? Math.max(0, this.probeAt - now) : undefined,
      probeInFlight: this.current === 'half_open' && this.probeToken !== undefined && now < this.probeLeaseEnd,
      openedAt: this.openedAt,
      lastFailure: this.lastFailure,
    };
  }

  /** Admin: refuse every call until `reset()` or `forceClose()`. */
  forceOpen(): void {
    this.clearCounters();
    this.openedAt = this.deps.now();
    this.transition('forced_open', 'forced');
  }

  /** Admin: admit every call, whatever fails, until `reset()` or `forceOpen()`. Results are still counted. */
  forceClose(): void {
    this.clearCounters();
    this.openedAt = undefined;
    this.transition('forced_closed', 'forced');
  }

  /** Admin: back to closed with fresh counters, ending any override. Permits granted before are ignored. */
  reset(): void {
    this.clearCounters();
    this.openedAt = undefined;
    this.transition('closed', 'reset');
  }

  private admit(probe: boolean): Admission {
    const epoch = this.epoch;
    const token = {};
    let settled = false;
    const settle = (result: { failed: boolean; reason?: string } | undefined) => {
      if (settled) return;
      settled = true;
      if (epoch !== this.epoch) return;
      if (probe) this.settleProbe(token, result);
      else if (result !== undefined) this.record(result.failed, result.reason);
    };
    if (probe) this.probeToken = token;
    return {
      allowed: true,
      permit: {
        probe,
        success: (durationMs) =>
          settle(isSlowCall(durationMs, this.options.slowCallMs) ? { failed: true, reason: 'slow' } : { failed: false }),
        failure: (reason) => settle({ failed: true, reason }),
        release: () => settle(undefined),
      },
    };
  }

  private admitProbe(now: number): Admission {
    this.probeLeaseEnd = now + Math.max(this.options.resetMs, this.options.probeLeaseMs ?? 0);
    return this.admit(true);
  }

  private settleProbe(token: object, result: { failed: boolean; reason?: string } | undefined): void {
    // A probe replaced after its lease ran out has no say any more.
    if (token !== this.probeToken) return;
    this.probeToken = undefined;
    if (result === undefined) return;
    if (!result.failed) {
      this.clearCounters();
      this.openedAt = undefined;
      this.transition('closed', 'probe_succeeded');
      return;
    }
    this.lastFailure = result.reason;
    this.open('probe_failed');
  }

  private record(failed: boolean, reason: string | undefined): void {
    const i = this.advance(this.deps.now());
    this.bucketCalls[i] = (this.bucketCalls[i] ?? 0) + 1;
    this.calls += 1;
    if (!failed) {
      this.consecutive = 0;
      return;
    }
    this.bucketFailures[i] = (this.bucketFailures[i] ?? 0) + 1;
    this.failures += 1;
    this.consecutive += 1;
    this.lastFailure = reason;
    if (this.current !== 'closed') return;
    const o = this.options;
    if (this.consecutive >= o.consecutiveFailures) this.open('consecutive_failures');
    // windowMs 0 means no window: only the consecutive rule applies.
    else if (o.windowMs > 0 && this.calls >= o.minCalls && this.failures * 100 >= o.errorRatePercent * this.calls) this.open('error_rate');
  }

  private open(reason: TransitionReason): void {
    const now = this.deps.now();
    const { resetMs, resetJitterPercent } = this.options;
    this.openedAt = now;
    this.probeAt = now + resetMs + Math.floor(this.deps.random() * ((resetMs * resetJitterPercent) / 100));
    this.transition('open', reason);
  }

  private transition(to: BreakerState, reason: TransitionReason): void {
    const from = this.current;
    this.current = to;
    this.epoch += 1;
    if (to !== 'half_open') this.probeToken = undefined;
    if (from === to) return;
    const opening = reason === 'consecutive_failures' || reason === 'error_rate' || reason === 'probe_failed';
    this.deps.onTransition?.(from, to, reason, opening ? this.lastFailure : undefined);
  }

  private clearCounters(): void {
    this.bucketCalls.fill(0);
    this.bucketFailures.fill(0);
    this.calls = 0;
    this.failures = 0;
    this.consecutive = 0;
    this.lastFailure = undefined;
  }

  /** Drop buckets that left the window; return the current bucket's index. */
  private advance(now: number): number {
    const n = this.bucketCalls.length;
    const bucket = Math.floor(now / this.bucketMs);
    if (bucket > this.headBucket) {
      const gap = Math.min(bucket - this.headBucket, n);
      for (let b = bucket - gap + 1; b <= bucket; b++) {
        const i = ((b % n) + n) % n;
        this.calls -= this.bucketCalls[i] ?? 0;
        this.failures -= this.bucketFailures[i] ?? 0;
        this.bucketCalls[i] = 0;
        this.bucketFailures[i] = 0;
      }
      this.headBucket = bucket;
    }
    return ((this.headBucket % n) + n) % n;
  }
}

/**
 * Settle a permit from a classifier verdict: aborted → release, breaker failure → failure(reason), else
 * success(durationMs).
 */
export const settlePermit = (
  permit: BreakerPermit,
  verdict: { readonly breakerFailure: boolean; readonly reason: string },
  durationMs?: number,
): void => {
  if (verdict.reason === 'aborted') permit.release();
  else if (verdict.breakerFailure) permit.failure(verdict.reason);
  else permit.success(durationMs);
};
