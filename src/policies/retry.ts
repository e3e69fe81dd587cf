import type { RouteConfig } from '../config/schema.js';
import { CircuitOpenError } from '../errors.js';
import { discardResponse } from '../pipeline/body-end.js';
import { sleep } from '../pipeline/sleep.js';
import type { HeaderMap, Layer, ProxyRequest, ProxyResponse } from '../pipeline/types.js';
import type { Metrics } from '../telemetry/metrics.js';
import { classifyError, classifyPolicy, verdictOf, type Verdict } from '../upstream/classify.js';
import { retryDelay } from './backoff.js';
import type { Breakers } from './breaker.js';
import { RetryBudget } from './retry-budget.js';
import type { LiveStats } from '../telemetry/live.js';

/** Why a retryable failure was, or was not, retried: the `outcome` label of `fusebox_retries_total`. */
export type RetryOutcome =
  | 'retried'
  | 'budget_exhausted'
  | 'deadline'
  | 'retry_after_too_long'
  | 'not_replayable'
  | 'not_idempotent'
  | 'limit_reached'
  /** The breaker (opened by this very attempt, or by others meanwhile) would refuse the retry. */
  | 'circuit_open';

// RFC 9110 §9.2.2: these methods are idempotent by definition; sending them twice is the client's stated intent.
const IDEMPOTENT_METHODS = new Set(['GET', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'TRACE']);

const hasHeader = (headers: HeaderMap, name: string): boolean => {
  const v = headers[name];
  return Array.isArray(v) ? v.length > 0 : v !== undefined && v !== '';
};

/**
 * May this request be sent again after the upstream may have received it?
 * Yes for idempotent methods, for a request carrying an `Idempotency-Key` (the upstream deduplicates), and for
 * routes that say `idempotent: true`. LLM provider routes default to yes: OpenAI and Anthropic do not process a
 * request they answer with 429/5xx. Tool routes (provider none or mcp) default to no: a POST that reached a tool
 * may have charged a card or sent an e-mail, so it is resent only if it never left (a connect error).
 */
export const isResendable = (req: Pick<ProxyRequest, 'method' | 'headers'>, route: Pick<RouteConfig, 'provider' | 'idempotent'>): boolean => {
  if (IDEMPOTENT_METHODS.has(req.method)) return true;
  if (hasHeader(req.headers, 'idempotency-key')) return true;
  return route.idempotent ?? (route.provider === 'openai' || route.provider === 'anthropic');
};


export interface RetryDeps {
  now: () => number;
  random: () => number;
  metrics: Pick<Metrics, 'retries'>;
  /** The breakers of the chain this layer retries through, asked (never charged) before each retry. */
  breakers?: Pick<Breakers, 'wouldAdmit'>;
  /** The chain's retry budget, made by the caller when it reads it too (`/admin/status`); default: a new one. */
  budget?: RetryBudget;
  /** Retries and budget refusals of the last minute, for `/admin/status`. */
  live?: Pick<LiveStats, 'retry'>;
}

/**
 * Retries with full-jitter backoff, Retry-After, a per-route retry budget and the deadline. It sits outside the
 * breaker: before each retry it asks the breaker whether the retry would be admitted (without taking a probe), and
 * stops with the answer in hand when not; each attempt still asks the breaker again, and a CIRCUIT_OPEN thrown
 * by it (the breaker opened meanwhile) ends the retries at once.
 *
 * When it stops with a response in hand it returns that response (the fallback layer above decides what to do
 * with a failure); when it stops on an error it throws it. Every body it does not return is discarded, so its
 * socket goes back to the pool. It never sees the client's socket: retries can only happen before the commit point.
 *
 * Each call is recorded once in the budget (not once per attempt): the budget bounds retries as a share of
 * offered load, which is what keeps a 100 %-failing upstream at ~1.2× its load instead of 4×.
 */
export const retryLayer = (route: RouteConfig, deps: RetryDeps): Layer => {
  const cfg = route.retry;
  if (!cfg.enabled || cfg.maxRetries === 0) return (next) => next;
  const policy = classifyPolicy(route);
  const budget = deps.budget ?? new RetryBudget(cfg, deps.now);
  const counter = deps.metrics.retries;
  const live = deps.live;

  return (next) => async (req, ctx) => {
    budget.recordRequest();
    let retriesOn500 = 0;
    for (let attempt = 0; ; attempt++) {
      let res: ProxyResponse | undefined;
      let error: unknown;
      try {
        res = await next(req, ctx);
      } catch (err) {
        // Never retry through an open breaker: the fallback chain (or a 503 CIRCUIT_OPEN) takes over.
        if (err instanceof CircuitOpenError) throw err;
        error = err;
      }
      const verdict: Verdict = res !== undefined ? verdictOf(res, policy, deps.now()) : classifyError(error);
      const status = res?.statusCode;

      const stop = (outcome: RetryOutcome): ProxyResponse => {
        counter.labels(route.name, verdict.reason, outcome).inc();
        if (outcome === 'budget_exhausted') live?.retry(route.name, outcome);
        ctx.log.warn({ attempt: attempt + 1, reason: verdict.reason, status, outcome }, 'not retrying');
        ctx.trace?.event('retry.stopped', { 'fusebox.attempt': attempt + 1, 'fusebox.reason': verdict.reason, 'fusebox.outcome': outcome, 'http.response.status_code': status });
        if (res !== undefined) return res;
        throw error;
      };

      if (verdict.outcome !== 'retryable' || ctx.signal.aborted) {
        if (res !== undefined) return res;
        throw error;
      }
      // A 500 is often a deterministic bug upstream: retried at most maxRetriesOn500 times, whatever the status list
      // says. The verdict stays retryable, so the fallback chain still takes over; 0 means "never", not a limit hit.
      if (res?.statusCode === 500 && retriesOn500 >= cfg.maxRetriesOn500) return retriesOn500 > 0 ? stop('limit_reached') : res;
      if (attempt >= cfg.maxRetries) return stop('limit_reached');
      // A streamed body was consumed by the first attempt: there is nothing left to send again.
      if (req.body.kind === 'stream') return stop('not_replayable');
      if (!verdict.beforeSend && !isResendable(req, route)) return stop('not_idempotent');
      const delayMs = retryDelay(attempt, verdict.retryAfterMs, cfg, deps.random);
      if (delayMs === undefined) return stop('retry_after_too_long');
      // Waiting past the deadline would only end in a timeout; answer now so the fallback chain can still run.
      if (deps.now() + delayMs >= ctx.deadline) return stop('deadline');
      // Never retry through an open breaker, nor wait for it: this attempt may have opened it. The agent then gets
      // this answer (the upstream's own error), or the fallback chain does, instead of a CIRCUIT_OPEN that would say
      // the upstream was not called.
      if (deps.breakers?.wouldAdmit(req, deps.now() + delayMs) === false) return stop('circuit_open');
      // Asked last, so that a retry refused for another reason does not spend the budget.
      if (!budget.tryAcquireRetry()) return stop('budget_exhausted');

      counter.labels(route.name, verdict.reason, 'retried').inc();
      live?.retry(route.name, 'retried');
      ctx.log.info({ attempt: attempt + 1, reason: verdict.reason, status, delayMs }, 'retrying');
      ctx.trace?.event('retry', { 'fusebox.attempt': attempt + 1, 'fusebox.delay_ms': delayMs, 'fusebox.reason': verdict.reason, 'http.response.status_code': status });
      if (res !== undefined) discardResponse(res, 'retried');
      if (status === 500) retriesOn500 += 1;
      await sleep(delayMs, ctx.signal);
    }
  };
};
