import { FIELD, latencyQuantileMs, type BucketFields } from './buckets.js';
import { worstVerdict, type GateVerdict } from './gate.js';

/**
 * Canary vs stable, pure: error rate, p99 latency and cost per call of two routes over the same window, judged
 * with a HALT and a ROLLBACK threshold each (the canary rules of the source guide: error rate 2 points worse,
 * p99 1.5×, cost 1.3× → rollback).
 */

export interface RouteSample {
  readonly label: string;
  readonly route: string;
  /** Calls counted for availability (good + bad). */
  readonly events: number;
  readonly errorRate: number | undefined;
  readonly p99Ms: number | undefined;
  /** µUSD per call with a known cost. */
  readonly costPerCallMicros: number | undefined;
}

export const sampleOf = (label: string, route: string, f: Readonly<BucketFields>): RouteSample => {
  const good = f[FIELD.availabilityGood] ?? 0;
  const bad = f[FIELD.availabilityBad] ?? 0;
  const events = good + bad;
  const costCount = f[FIELD.costCount] ?? 0;
  return {
    label,
    route,
    events,
    errorRate: events === 0 ? undefined : bad / events,
    p99Ms: latencyQuantileMs(f, 0.99),
    costPerCallMicros: costCount === 0 ? undefined : (f[FIELD.costSumMicros] ?? 0) / costCount,
  };
};

export interface CompareThresholds {
  /** Canary error rate minus stable's, percentage points. Defaults 1 (halt) and 2 (rollback). */
  readonly haltErrorDelta: number;
  readonly rollbackErrorDelta: number;
  /** Canary p99 / stable p99. Defaults 1.2 and 1.5. */
  readonly haltLatencyRatio: number;
  readonly rollbackLatencyRatio: number;
  /** Canary cost per call / stable's. Defaults 1.1 and 1.3. */
  readonly haltCostRatio: number;
  readonly rollbackCostRatio: number;
}

export const DEFAULT_COMPARE_THRESHOLDS: CompareThresholds = {
  haltErrorDelta: 1,
  rollbackErrorDelta: 2,
  haltLatencyRatio: 1.2,
  rollbackLatencyRatio: 1.5,
  haltCostRatio: 1.1,
  rollbackCostRatio: 1.3,
};

export interface CompareCheck {
  readonly metric: 'error_rate' | 'p99_latency' | 'cost_per_call';
  readonly canary: number | undefined;
  readonly stable: number | undefined;
  /** Percentage points for error_rate, a ratio for the others; undefined when it cannot be computed. */
  readonly value: number | undefined;
  readonly halt: number;
  readonly rollback: number;
  readonly verdict: GateVerdict;
}

export interface Comparison {
  readonly verdict: GateVerdict;
  readonly reasons: readonly string[];
  readonly canary: RouteSample;
  readonly stable: RouteSample;
  readonly checks: readonly CompareCheck[];
}

const judge = (value: number | undefined, halt: number, rollback: number): GateVerdict =>
  value === undefined ? 'PROCEED' : value > rollback ? 'ROLLBACK' : value > halt ? 'HALT' : 'PROCEED';

/** A ratio only when both sides are known and the stable side is not zero (nothing to compare against). */
const ratio = (canary: number | undefined, stable: number | undefined): number | undefined =>
  canary === undefined || stable === undefined || stable === 0 ? undefined : canary / stable;

export const compareSamples = (canary: RouteSample, stable: RouteSample, t: CompareThresholds, minEvents: number): Comparison => {
  const delta = canary.errorRate === undefined || stable.errorRate === undefined ? undefined : (canary.errorRate - stable.errorRate) * 100;
  const checks: CompareCheck[] = [
    { metric: 'error_rate', canary: canary.errorRate, stable: stable.errorRate, value: delta, halt: t.haltErrorDelta, rollback: t.rollbackErrorDelta, verdict: 'PROCEED' },
    { metric: 'p99_latency', canary: canary.p99Ms, stable: stable.p99Ms, value: ratio(canary.p99Ms, stable.p99Ms), halt: t.haltLatencyRatio, rollback: t.rollbackLatencyRatio, verdict: 'PROCEED' },
    {
      metric: 'cost_per_call',
      canary: canary.costPerCallMicros,
      stable: stable.costPerCallMicros,
      value: ratio(canary.costPerCallMicros, stable.costPerCallMicros),
      halt: t.haltCostRatio,
      rollback: t.rollbackCostRatio,
      verdict: 'PROCEED',
    },
  ].map((c) => ({ ...c, verdict: judge(c.value, c.halt, c.rollback) }) as CompareCheck);

  const thin = [canary, stable].filter((s) => s.events < minEvents);
  let verdict: GateVerdict = 'PROCEED';
  const reasons: string[] = [];
  for (const c of checks) {
    if (c.verdict === 'PROCEED') continue;
    verdict = worstVerdict(verdict, c.verdict);
    const v = c.metric === 'error_rate' ? `${c.value!.toFixed(2)} points worse` : `${c.value!.toFixed(2)}× the stable value`;
    reasons.push(`${c.metric}: canary is ${v} (${c.verdict === 'ROLLBACK' ? 'rollback' : 'halt'} above ${c.verdict === 'ROLLBACK' ? c.rollback : c.halt})`);
  }
  // Too few calls make every number above noise.
  if (thin.length > 0) {
    return {
      verdict: 'INSUFFICIENT_DATA',
      reasons: thin.map((s) => `${s.label} (${s.route}): ${s.events} calls in the window, fewer than ${minEvents}`),
      canary,
      stable,
      checks,
    };
  }
  return { verdict, reasons, canary, stable, checks };
};
