import { BURN_WINDOWS, SLO_KINDS, type SloKind } from './burn.js';
import type { RouteSloState, SloAction } from './evaluator.js';
import type { SloRouteSpec } from './spec.js';

/** A prom-client Gauge fits. */
export interface GaugeLike<L extends string> {
  set(labels: Record<L, string>, value: number): void;
  remove(labels: Record<L, string>): void;
}

export interface SloGauges {
  /** `fusebox_slo_error_budget_remaining{route,slo}` */
  budgetRemaining: GaugeLike<'route' | 'slo'>;
  /** `fusebox_slo_burn_rate{route,slo,window}` */
  burnRate: GaugeLike<'route' | 'slo' | 'window'>;
  /** `fusebox_slo_action{route,action}`: 1 for the action in force, 0 for the others. */
  action?: GaugeLike<'route' | 'action'>;
}

/**
 * Create every `fusebox_slo_events_total{route,slo,kind}` series at 0 at startup. Without the `bad` series a
 * route that never failed has no error ratio in PromQL (an empty numerator, not 0), so its budget would be
 * missing instead of 100 %.
 */
export const zeroSloEventSeries = (
  counter: { inc(labels: { route: string; slo: SloKind; kind: 'good' | 'bad' }, value?: number): void },
  specs: readonly SloRouteSpec[],
): void => {
  for (const s of specs) for (const slo of SLO_KINDS) for (const kind of ['good', 'bad'] as const) counter.inc({ route: s.route, slo, kind }, 0);
};

const ACTIONS: readonly SloAction[] = ['none', 'alert', 'throttle', 'degrade', 'shed'];

/**
 * Copy the evaluator's state into the gauges (call from the gauges' `collect()` or after each evaluation).
 * A value without enough events is removed rather than exported as 0, so a dashboard shows a gap, not a lie.
 */
export const applySloGauges = (gauges: SloGauges, states: readonly RouteSloState[]): void => {
  for (const s of states) {
    for (const slo of SLO_KINDS) {
      const a = s.slos[slo];
      const labels = { route: s.route, slo };
      if (a?.budgetRemaining === undefined) gauges.budgetRemaining.remove(labels);
      else gauges.budgetRemaining.set(labels, a.budgetRemaining);
      for (const window of BURN_WINDOWS) {
        const burn = a?.burnRates[window];
        if (burn === undefined) gauges.burnRate.remove({ ...labels, window });
        else gauges.burnRate.set({ ...labels, window }, burn);
      }
    }
    for (const action of ACTIONS) gauges.action?.set({ route: s.route, action }, s.action === action ? 1 : 0);
  }
};

/** Remove every SLO gauge series of `route` (a reload removed the route): a gauge would otherwise keep its last value. */
export const dropSloGauges = (gauges: SloGauges, route: string): void => {
  for (const slo of SLO_KINDS) {
    gauges.budgetRemaining.remove({ route, slo });
    for (const window of BURN_WINDOWS) gauges.burnRate.remove({ route, slo, window });
  }
  for (const action of ACTIONS) gauges.action?.remove({ route, action });
};

/** JSON-safe number: Infinity and NaN become null. */
const num = (x: number | undefined): number | null => (x === undefined || !Number.isFinite(x) ? null : Number(x.toFixed(6)));

export interface SloRouteJson {
  route: string;
  action: SloAction;
  configuredAction: SloAction;
  overridden: boolean;
  stale: boolean;
  exhausted: boolean;
  fastBurn: boolean;
  reasons: readonly string[];
  evaluatedAt: string | null;
  slos: Partial<
    Record<
      SloKind,
      {
        objectivePercent: number;
        budgetRemaining: number | null;
        burnRates: Record<string, number | null>;
        alerts: Record<string, string>;
        events: Record<string, { good: number; bad: number }>;
      }
    >
  >;
}

/** `/admin/slo`: the same numbers as the metrics, as JSON. */
export const sloStatusJson = (states: readonly RouteSloState[]): { routes: SloRouteJson[] } => ({
  routes: states.map((s) => ({
    route: s.route,
    action: s.action,
    configuredAction: s.configuredAction,
    overridden: s.overridden,
    stale: s.stale,
    exhausted: s.exhausted,
    fastBurn: s.fastBurn,
    reasons: s.reasons,
    evaluatedAt: s.evaluatedAt === undefined ? null : new Date(s.evaluatedAt).toISOString(),
    slos: Object.fromEntries(
      Object.values(s.slos).map((a) => [
        a.kind,
        {
          objectivePercent: a.objectivePercent,
          budgetRemaining: num(a.budgetRemaining),
          burnRates: Object.fromEntries(BURN_WINDOWS.map((w) => [w, num(a.burnRates[w])])),
          alerts: { ...a.alerts },
          events: { ...a.events },
        },
      ]),
    ),
  })),
});
