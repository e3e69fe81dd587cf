import type { RetryConfig } from '../config/schema.js';

/** The part of a route's retry config the budget reads. */
export type RetryBudgetConfig = Pick<RetryConfig, 'budgetPercent' | 'minRetriesPerSecond' | 'budgetWindowMs'>;

export interface RetryBudgetStats {
  /** Requests recorded in the current window. */
  readonly requests: number;
  /** Retries granted in the current window. */
  readonly retries: number;
  /** Retries the window allows in total: budgetPercent% of requests + minRetriesPerSecond × windowSeconds. */
  readonly allowance: number;
  /** Retries refused since the budget was made (the `retry_overflow` counter). */
  readonly refused: number;
  /** Whole seconds the window spans. */
  readonly windowSeconds: number;
}

/**
 * A retry budget in the style of Finagle / Linkerd (Envoy's `retry_budget` is the concurrency variant): retries may
 * add at most `budgetPercent`% of the requests seen in the last `budgetWindowMs`, plus a reserve of
 * `minRetriesPerSecond` × window seconds so that quiet routes can still retry. It stops retry storms: when an
 * upstream fails every call, the load it sees stays near (1 + budgetPercent/100) × offered instead of
 * (1 + maxRetries) × offered.
 *
 * A retry is granted while `retries < budgetPercent/100 · requests + minRetriesPerSecond · windowSeconds` over the
 * window, and the grant itself counts as a retry. Call `recordRequest()` once per incoming call (not per attempt)
 * and `tryAcquireRetry()` before each retry.
 *
 * The window is a ring of one-second buckets, so it covers the current second and the `windowSeconds − 1` before it
 * (ceil(budgetWindowMs / 1000), at least 1). No timers: time comes from `now()`. Each call does O(1) work, at most
 * `windowSeconds` bucket clears after an idle gap.
 */
export class RetryBudget {
  private readonly windowSeconds: number;
  private readonly requests: Float64Array;
  private readonly retries: Float64Array;
  private requestSum = 0;
  private retrySum = 0;
  private refusedTotal = 0;
  /** The second (floor(now/1000)) the newest bucket belongs to. */
  private headSecond: number;

  constructor(
    private readonly config: RetryBudgetConfig,
    private readonly now: () => number,
  ) {
    this.windowSeconds = Math.max(1, Math.ceil(config.budgetWindowMs / 1000));
    this.requests = new Float64Array(this.windowSeconds);
    this.retries = new Float64Array(this.windowSeconds);
    this.headSecond = Math.floor(now() / 1000);
  }

  /** Count one incoming call (the first attempt). */
  recordRequest(): void {
    const i = this.advance();
    this.requests[i] = (this.requests[i] ?? 0) + 1;
    this.requestSum += 1;
  }

  /** Take one retry from the budget: true (and counted) when the window allows it, false when it is spent. */
  tryAcquireRetry(): boolean {
    const i = this.advance();
    // Integer arithmetic (×100) so that e.g. 20% of 50 requests is exactly 10, not 9.999...
    if (this.retrySum * 100 >= this.allowanceX100()) {
      this.refusedTotal += 1;
      return false;
    }
    this.retries[i] = (this.retries[i] ?? 0) + 1;
    this.retrySum += 1;
    return true;
  }

  stats(): RetryBudgetStats {
    this.advance();
    return {
      requests: this.requestSum,
      retries: this.retrySum,
      allowance: this.allowanceX100() / 100,
      refused: this.refusedTotal,
      windowSeconds: this.windowSeconds,
    };
  }

  private allowanceX100(): number {
    return this.config.budgetPercent * this.requestSum + this.config.minRetriesPerSecond * this.windowSeconds * 100;
  }

  /** Drop buckets that left the window; return the index of the current second's bucket. */
  private advance(): number {
    const second = Math.floor(this.now() / 1000);
    // A clock that steps back (it should not) keeps writing into the newest bucket rather than reviving old ones.
    if (second > this.headSecond) {
      const gap = Math.min(second - this.headSecond, this.windowSeconds);
      for (let s = second - gap + 1; s <= second; s++) this.clear(this.index(s));
      this.headSecond = second;
    }
    return this.index(this.headSecond);
  }

  private clear(i: number): void {
    this.requestSum -= this.requests[i] ?? 0;
    this.retrySum -= this.retries[i] ?? 0;
    this.requests[i] = 0;
    this.retries[i] = 0;
  }

  private index(second: number): number {
    return ((second % this.windowSeconds) + this.windowSeconds) % this.windowSeconds;
  }
}
