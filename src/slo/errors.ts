import { ProxyError } from '../errors.js';

/**
 * The route's error budget is spent (or it burns too fast) and its SLO action is `shed`: fail fast instead of
 * adding load to a failing upstream. `x-should-retry: false` tells the OpenAI and Anthropic SDKs not to retry.
 */
export class SloBudgetExhaustedError extends ProxyError {
  readonly code = 'SLO_BUDGET_EXHAUSTED';
  readonly statusCode = 503;
  constructor(message: string, details: Record<string, unknown> = {}) {
    super(message, details);
    this.headers = { 'x-should-retry': 'false' };
  }
}

/** The route's SLO action is `throttle` and this second's share of calls is used up. */
export class SloThrottledError extends ProxyError {
  readonly code = 'SLO_THROTTLED';
  readonly statusCode = 429;
  constructor(message: string, retryAfterSeconds: number, details: Record<string, unknown> = {}) {
    super(message, { ...details, retryAfterSeconds });
    this.headers = { 'retry-after': String(retryAfterSeconds) };
  }
}

/** The SLO counter store could not be reached (or did not answer in time). Never reaches an agent. */
export class CounterStoreUnavailableError extends Error {
  readonly code = 'SLO_STORE_UNAVAILABLE';
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'CounterStoreUnavailableError';
  }
}
