import type { RetryConfig } from '../config/schema.js';

/** The part of a route's retry config the backoff reads. */
export type BackoffConfig = Pick<RetryConfig, 'baseMs' | 'capMs'>;

/**
 * "Full jitter" exponential backoff (AWS Architecture Blog, "Exponential Backoff And Jitter"):
 * `delay = random() · min(capMs, baseMs · 2^attempt)`, in whole ms (rounded down).
 * Full jitter spreads a fleet's retries over the whole interval, so clients that failed together do not retry together.
 *
 * @param attempt 0 for the first retry, 1 for the second...
 * @param random returns a number in [0, 1), like Math.random; injected so tests are exact.
 */
export const backoffDelay = (attempt: number, config: BackoffConfig, random: () => number): number => {
  const { baseMs, capMs } = config;
  // 0 · 2^1100 is NaN (2^1100 is Infinity); a zero base means no wait at any attempt.
  if (baseMs <= 0 || capMs <= 0) return 0;
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.max(0, attempt));
  return Math.floor(random() * ceiling);
};

/**
 * The wait before retry number `attempt` (0-based), or undefined when the retry must not happen.
 * An upstream-requested delay (Retry-After and friends, see retry-after.ts) is honoured exactly: the upstream knows
 * when its limit resets, and retrying earlier only earns another 429. When it is longer than `retryAfterMaxMs`,
 * waiting would hold the agent too long: undefined, so the caller falls back or answers instead.
 */
export const retryDelay = (
  attempt: number,
  retryAfterMs: number | undefined,
  config: Pick<RetryConfig, 'baseMs' | 'capMs' | 'retryAfterMaxMs'>,
  random: () => number,
): number | undefined => {
  if (retryAfterMs === undefined) return backoffDelay(attempt, config, random);
  return retryAfterMs > config.retryAfterMaxMs ? undefined : retryAfterMs;
};
