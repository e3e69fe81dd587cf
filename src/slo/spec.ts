import type { RouteConfig, SloConfig } from '../config/schema.js';
import type { SloKind, SloObjective } from './burn.js';

/** The SLO settings of one route in the units the SLO code works in (µUSD, ms). Built once at startup. */
export interface SloRouteSpec {
  readonly route: string;
  readonly availabilityObjectivePercent: number;
  readonly latencyThresholdMs: number;
  readonly latencyObjectivePercent: number;
  /** Integer µUSD. */
  readonly costThresholdMicros: number;
  readonly costObjectivePercent: number;
  readonly windowDays: number;
  readonly minEvents: number;
  readonly onBudgetExhausted: SloConfig['onBudgetExhausted'];
  readonly onFastBurn: SloConfig['onFastBurn'];
  readonly throttleRps: number;
  readonly degradeToStep: number;
  /**
   * Whether the route's calls have a price (an LLM provider route): only those count cost events, so only those
   * get cost rules from `fusebox rules`. Unset: assumed priced.
   */
  readonly priced?: boolean;
}

export const sloSpecOf = (name: string, slo: SloConfig): SloRouteSpec => ({
  route: name,
  availabilityObjectivePercent: slo.availability.objectivePercent,
  latencyThresholdMs: slo.latency.thresholdMs,
  latencyObjectivePercent: slo.latency.objectivePercent,
  costThresholdMicros: Math.round(slo.cost.thresholdUsd * 1_000_000),
  costObjectivePercent: slo.cost.objectivePercent,
  windowDays: slo.windowDays,
  minEvents: slo.minEvents,
  onBudgetExhausted: slo.onBudgetExhausted,
  onFastBurn: slo.onFastBurn,
  throttleRps: slo.throttleRps,
  degradeToStep: slo.degradeToStep,
});

/** Specs of the routes with SLOs enabled. */
export const sloSpecsOf = (routes: readonly RouteConfig[]): SloRouteSpec[] =>
  routes.filter((r) => r.slo.enabled).map((r) => ({ ...sloSpecOf(r.name, r.slo), priced: r.provider === 'openai' || r.provider === 'anthropic' }));

export const objectiveOf = (spec: SloRouteSpec, kind: SloKind): SloObjective => ({
  kind,
  minEvents: spec.minEvents,
  objectivePercent:
    kind === 'availability' ? spec.availabilityObjectivePercent : kind === 'latency' ? spec.latencyObjectivePercent : spec.costObjectivePercent,
});
