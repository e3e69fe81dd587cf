import { CircuitOpenError, ProxyError, type ErrorCode } from '../errors.js';
import type { BodyEnd, Layer, ProxyResponse } from '../pipeline/types.js';
import { classifyError } from '../upstream/classify.js';
import type { SloEvaluator } from './evaluator.js';
import type { SloEvent, SloRecorder } from './recorder.js';

/**
 * How one finished call counts for the availability SLO (the rules):
 * upstream 5xx, 429, timeouts, resets, connect failures and broken streams are `bad`; client 4xx and calls the agent
 * abandoned are `skip`; Fusebox's own refusals (budget, kill switch, SLO shed/throttle...) are `refused` and never
 * burn the budget. An open breaker is the upstream's failure, not a refusal; one an operator forced open is a refusal.
 */
export type SloOutcome = 'good' | 'bad' | 'skip' | 'refused';

/**
 * Codes of Fusebox errors that report an upstream failure rather than a decision of Fusebox's own: an open breaker,
 * and a fallback chain whose every step failed too (the outage the error budget exists to count).
 */
export const UPSTREAM_FAILURE_CODES: ReadonlySet<ErrorCode> = new Set(['CIRCUIT_OPEN', 'FALLBACK_EXHAUSTED']);

export const sloOutcomeOfStatus = (statusCode: number): SloOutcome =>
  statusCode >= 500 || statusCode === 429 ? 'bad' : statusCode >= 400 ? 'skip' : 'good';

/**
 * An answer's SLO outcome from the verdict `send` made of it (the one classification retry, breaker and fallback read
 * too: a status the route declares retryable is the upstream's failure here as well); from its status when Fusebox
 * made the answer itself (a static or cached fallback) and nobody classified it.
 */
export const sloOutcomeOfAnswer = (res: Pick<ProxyResponse, 'statusCode' | 'verdict'>): SloOutcome => {
  const v = res.verdict;
  if (v === undefined) return sloOutcomeOfStatus(res.statusCode);
  return v.outcome === 'success' ? 'good' : v.breakerFailure ? 'bad' : 'skip';
};

export const sloOutcomeOfError = (err: unknown, upstreamFailureCodes: ReadonlySet<ErrorCode> = UPSTREAM_FAILURE_CODES): SloOutcome => {
  // A breaker an operator forced open says nothing about the upstream: a refusal, like a kill switch.
  if (err instanceof CircuitOpenError && err.forced) return 'refused';
  if (err instanceof ProxyError && (err.code.startsWith('UPSTREAM_') || upstreamFailureCodes.has(err.code))) return 'bad';
  const v = classifyError(err);
  if (v.reason === 'aborted') return 'skip';
  if (v.reason === 'local') return 'refused';
  return 'bad';
};

export const sloOutcomeOfBodyEnd = (res: Pick<ProxyResponse, 'statusCode' | 'verdict'>, end: BodyEnd): SloOutcome | undefined => {
  if (end.discarded === true) return undefined;
  if (end.ok) return sloOutcomeOfAnswer(res);
  return end.failedBy === 'client' ? 'skip' : 'bad';
};

export interface SloLayerDeps {
  recorder: Pick<SloRecorder, 'record'>;
  evaluator: Pick<SloEvaluator, 'admit'>;
  now: () => number;
  upstreamFailureCodes?: ReadonlySet<ErrorCode>;
}

/**
 * The SLO layer: asks the evaluator whether to admit the call (shed → 503 SLO_BUDGET_EXHAUSTED, throttle → 429
 * SLO_THROTTLED past `throttleRps`, degrade → `ctx.facts.degradeToStep` for the fallback layer), then counts
 * how the call ended. Sits outermost in a route's pipeline, so a fallback's answer counts as the agent saw it, and
 * the refusals of inner layers (budget, kill switch) are seen and counted apart.
 */
export const sloLayer =
  (deps: SloLayerDeps): Layer =>
  (next) =>
  async (req, ctx) => {
    const route = ctx.route.name;
    if (!ctx.route.slo.enabled) return next(req, ctx);
    const admission = deps.evaluator.admit(route);
    if (admission.action !== 'none') ctx.facts.sloAction = admission.action;
    if (!admission.admit) {
      deps.recorder.record(route, { availability: 'skip', refused: true });
      throw admission.error;
    }
    if (admission.degradeToStep !== undefined) ctx.facts.degradeToStep = admission.degradeToStep;

    const record = (outcome: SloOutcome) => {
      if (outcome === 'refused') return deps.recorder.record(route, { availability: 'skip', refused: true });
      const latencyMs = deps.now() - ctx.startedAt;
      const event = (costUsdMicros: number | undefined): SloEvent => ({ availability: outcome, latencyMs, costUsdMicros });
      // The cost is known once the budget layer has settled the call (an LLM route); other calls have none.
      const settled = ctx.facts.settled;
      if (settled === undefined) return deps.recorder.record(route, event(undefined));
      void settled.then((s) => deps.recorder.record(route, event(s?.costUsdMicros)));
    };

    let res;
    try {
      res = await next(req, ctx);
    } catch (err) {
      record(sloOutcomeOfError(err, deps.upstreamFailureCodes));
      throw err;
    }
    const answer = res;
    res.observers.push({
      onEnd: (end) => {
        const outcome = sloOutcomeOfBodyEnd(answer, end);
        if (outcome !== undefined) record(outcome);
      },
    });
    return res;
  };
