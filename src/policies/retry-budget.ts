import type { RetryConfig } from '../config/schema.js';

/** The part of a route's retry config the budget reads. */
export type RetryBudgetConfig = Pick<RetryConfig, 'budgetPercent' | 'minRetriesPerSecond' | 'budgetWindowMs'>;

export interface RetryBudgetStats {
  /** Calls recorded in the current window. */
  readonly requests: number;
  /** Retries granted in the current window (from either source). */
  readonly retries: number;
  /** Retries that would be granted right now, one after the other: whole unspent deposits plus whole reserve tokens. */
  readonly available: number;
  /** Retries refused since the budget was made (the `retry_overflow` counter). */
  readonly refused: number;
  /** Whole seconds the window spans. */
  readonly windowSeconds: number;
}

/**
 * A retry budget in the style of Finagle's `RetryBudget` (Linkerd's is the same; Envoy's `retry_budget` is the
 * concurrency variant). Retries draw on two sources, the deposits first:
 *
 * - **Deposits**: every call deposits `budgetPercent`/100 of a retry. A deposit expires `budgetWindowMs` after the
 *   second it was made, and a retry spends the oldest live deposits (a whole retry's worth). So retries add at most
 *   `budgetPercent`% to the calls of the last window, and a long healthy spell cannot bank retries for a storm.
 * - **The floor** (`minRetriesPerSecond`), so that a quiet route can still retry: a token bucket that accrues
 *   `minRetriesPerSecond` tokens a second and holds at most max(1, `minRetriesPerSecond`) — one second's worth, the
 *   small burst a quiet route needs. It starts full.
 *
 * Why the floor is a bucket and not Finagle's reserve: Finagle adds `minRetriesPerSec × ttl` to the balance as one
 * lump, so with 10/s over 10 s a failing upstream got 101 retries in its first second and 1.4× the offered load
 * (issue 11, item 6). A floor "per second" has to accrue per second.
 *
 * **The bound.** With the budget made at time 0 (or a window after its last call), under a total outage, at every
 * time t (ms): retries(0..t) ≤ budgetPercent/100 · calls(0..t) + minRetriesPerSecond · t/1000 + max(1,
 * minRetriesPerSecond). So the upstream sees at most 1.2 × the offered load plus the floor times the elapsed seconds,
 * plus one second's burst (defaults: 20 %, 3/s). Each retry spends a deposit of a distinct call, or a token the
 * bucket accrued; nothing else. When the outage follows healthy traffic, the deposits of the last window's calls
 * (up to budgetPercent % of them) come on top, as in Finagle and Linkerd.
 *
 * Call `recordRequest()` once per incoming call (not per attempt) and `tryAcquireRetry()` right before each retry.
 * No timers: time comes from `now()`; deposits live in a ring of one-second buckets covering the current second and
 * the `windowSeconds − 1` before it (ceil(budgetWindowMs / 1000), at least 1). Each call is O(windowSeconds) at most.
 */
export class RetryBudget {
  private readonly windowSeconds: number;
  /** Per second of the window: calls recorded, deposits not yet spent (hundredths of a retry), retries granted. */
  private readonly calls: Float64Array;
  private readonly deposits: Float64Array;
  private readonly granted: Float64Array;
  private callSum = 0;
  private depositSum = 0;
  private grantedSum = 0;
  private refusedTotal = 0;
  /** The second (floor(now/1000)) the newest bucket belongs to. */
  private headSecond: number;
  /** The floor's bucket, in thousandths of a retry (exact for a whole-number floor on a millisecond clock). */
  private reserve: number;
  private readonly reserveCap: number;
  private reserveAt: number;

  constructor(
    private readonly config: RetryBudgetConfig,
    private readonly now: () => number,
  ) {
    this.windowSeconds = Math.max(1, Math.ceil(config.budgetWindowMs / 1000));
    this.calls = new Float64Array(this.windowSeconds);
    this.deposits = new Float64Array(this.windowSeconds);
    this.granted = new Float64Array(this.windowSeconds);
    const t = now();
    this.headSecond = Math.floor(t / 1000);
    this.reserveCap = config.minRetriesPerSecond > 0 ? Math.max(1, config.minRetriesPerSecond) * 1000 : 0;
    this.reserve = this.reserveCap;
    this.reserveAt = t;
  }

  /** Count one incoming call (the first attempt), and make its deposit. */
  recordRequest(): void {
    const i = this.advance();
    this.calls[i] = (this.calls[i] ?? 0) + 1;
    this.callSum += 1;
    this.deposits[i] = (this.deposits[i] ?? 0) + this.config.budgetPercent;
    this.depositSum += this.config.budgetPercent;
  }

  /** Take one retry from the budget: true (and counted) when a deposit or a reserve token pays for it. */
  tryAcquireRetry(): boolean {
    const i = this.advance();
    this.refill();
    if (this.depositSum >= 100) this.spendDeposits(100);
    else if (this.reserve >= 1000) this.reserve -= 1000;
    else {
      this.refusedTotal += 1;
      return false;
    }
    this.granted[i] = (this.granted[i] ?? 0) + 1;
    this.grantedSum += 1;
    return true;
  }

  stats(): RetryBudgetStats {
    this.advance();
    this.refill();
    return {
      requests: this.callSum,
      retries: this.grantedSum,
      available: Math.floor(this.depositSum / 100) + Math.floor(this.reserve / 1000),
      refused: this.refusedTotal,
      windowSeconds: this.windowSeconds,
    };
  }

  /** Spend `units` hundredths of a retry from the oldest live deposits. */
  private spendDeposits(units: number): void {
    for (let k = 1; k <= this.windowSeconds && units > 0; k++) {
      // headSecond + 1 is the oldest second still in the ring (headSecond − windowSeconds + 1).
      const j = this.index(this.headSecond + k);
      const take = Math.min(this.deposits[j] ?? 0, units);
      this.deposits[j] = (this.deposits[j] ?? 0) - take;
      this.depositSum -= take;
      units -= take;
    }
  }

  private refill(): void {
    const t = this.now();
    // A clock that steps back (it should not) accrues nothing until it passes the last refill again.
    if (t <= this.reserveAt) return;
    this.reserve = Math.min(this.reserveCap, this.reserve + (t - this.reserveAt) * this.config.minRetriesPerSecond);
    this.reserveAt = t;
  }

  /** Drop buckets that left the window; return the index of the current second's bucket. */
  private advance(): number {
    const second = Math.floor(this.now() / 1000);
    // A clock that steps back keeps writing into the newest bucket rather than reviving old ones.
    if (second > this.headSecond) {
      const gap = Math.min(second - this.headSecond, this.windowSeconds);
      for (let s = second - gap + 1; s <= second; s++) this.clear(this.index(s));
      this.headSecond = second;
    }
    return this.index(this.headSecond);
  }

  private clear(i: number): void {
    this.callSum -= this.calls[i] ?? 0;
    this.depositSum -= this.deposits[i] ?? 0;
    this.grantedSum -= this.granted[i] ?? 0;
    this.calls[i] = 0;
    this.deposits[i] = 0;
    this.granted[i] = 0;
  }

  private index(second: number): number {
    return ((second % this.windowSeconds) + this.windowSeconds) % this.windowSeconds;
  }
}
