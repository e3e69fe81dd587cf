import { DAY_MS, FIELD, HOUR_MS, MINUTE_MS, type BucketFields } from './buckets.js';

/**
 * Error budgets and burn rates, pure. Definitions (Google SRE workbook, "Alerting on SLOs"):
 * - error rate over a window = bad / (good + bad);
 * - burn rate = error rate / (1 − objective): 1× spends the budget exactly over the SLO window;
 * - error budget remaining = 1 − (bad / (good + bad)) / (1 − objective) over the SLO window: 1 untouched, 0 spent,
 *   negative overspent.
 * A window with fewer than `minEvents` events has no burn rate (undefined): a few calls must not page anyone.
 */

export type SloKind = 'availability' | 'latency' | 'cost';
export const SLO_KINDS: readonly SloKind[] = ['availability', 'latency', 'cost'];

/** The short and long windows of the workbook's multi-window alerts. */
export type BurnWindow = '5m' | '30m' | '1h' | '6h' | '3d';
export const BURN_WINDOWS_MS: Readonly<Record<BurnWindow, number>> = {
  '5m': 5 * MINUTE_MS,
  '30m': 30 * MINUTE_MS,
  '1h': HOUR_MS,
  '6h': 6 * HOUR_MS,
  '3d': 3 * DAY_MS,
};
export const BURN_WINDOWS = Object.keys(BURN_WINDOWS_MS) as BurnWindow[];

export type AlertSpeed = 'fast' | 'medium' | 'slow';

/** A multi-window alert: fires when both windows burn faster than `factor`. */
export interface BurnAlert {
  readonly speed: AlertSpeed;
  readonly long: BurnWindow;
  readonly short: BurnWindow;
  /** 14.4× over 1 h spends 2 % of a 30-day budget; 6× over 6 h 5 %; 1× over 3 days 10 %. */
  readonly factor: number;
}

export const BURN_ALERTS: readonly BurnAlert[] = [
  { speed: 'fast', long: '1h', short: '5m', factor: 14.4 },
  { speed: 'medium', long: '6h', short: '30m', factor: 6 },
  { speed: 'slow', long: '3d', short: '6h', factor: 1 },
];

export interface GoodBad {
  readonly good: number;
  readonly bad: number;
}

const FIELDS_OF: Readonly<Record<SloKind, readonly [string, string]>> = {
  availability: [FIELD.availabilityGood, FIELD.availabilityBad],
  latency: [FIELD.latencyGood, FIELD.latencyBad],
  cost: [FIELD.costGood, FIELD.costBad],
};

export const goodBad = (fields: Readonly<BucketFields>, kind: SloKind): GoodBad => {
  const [g, b] = FIELDS_OF[kind];
  return { good: fields[g] ?? 0, bad: fields[b] ?? 0 };
};

/** Allowed share of bad events, e.g. 99.5 → 0.005, rounded so 99.9 gives 0.001 and not 0.000999…. */
export const allowedErrorRate = (objectivePercent: number): number => Number(((100 - objectivePercent) / 100).toFixed(12));

export const errorRate = (gb: GoodBad, minEvents: number): number | undefined => {
  const total = gb.good + gb.bad;
  return total < minEvents || total === 0 ? undefined : gb.bad / total;
};

/** Burn rate, or undefined below `minEvents`. With a 100 % objective any bad event is an infinite burn. */
export const burnRate = (gb: GoodBad, objectivePercent: number, minEvents: number): number | undefined => {
  const rate = errorRate(gb, minEvents);
  if (rate === undefined) return undefined;
  const allowed = allowedErrorRate(objectivePercent);
  if (allowed === 0) return rate === 0 ? 0 : Number.POSITIVE_INFINITY;
  return rate / allowed;
};

/** Share of the error budget left over the SLO window (1 = untouched, ≤ 0 = spent), or undefined below `minEvents`. */
export const budgetRemaining = (gb: GoodBad, objectivePercent: number, minEvents: number): number | undefined => {
  const burn = burnRate(gb, objectivePercent, minEvents);
  return burn === undefined ? undefined : 1 - burn;
};

/** A burn alert's state: `insufficient` when either window has fewer than `minEvents` events. */
export type AlertState = 'firing' | 'ok' | 'insufficient';

export const alertState = (burnRates: Readonly<Partial<Record<BurnWindow, number>>>, alert: Pick<BurnAlert, 'long' | 'short'>, factor: number): AlertState => {
  const long = burnRates[alert.long];
  const short = burnRates[alert.short];
  if (long === undefined || short === undefined) return 'insufficient';
  return long > factor && short > factor ? 'firing' : 'ok';
};

/** Counts read for one route: one sum per burn window, plus the whole SLO window. */
export type WindowFields = Readonly<Record<BurnWindow | 'budget', Readonly<BucketFields>>>;

/** Objectives of one SLO of one route. */
export interface SloObjective {
  readonly kind: SloKind;
  readonly objectivePercent: number;
  readonly minEvents: number;
}

/** Everything known about one SLO of one route at one moment. */
export interface SloAssessment {
  readonly kind: SloKind;
  readonly objectivePercent: number;
  /** Events per window (good + bad), the budget window under `budget`. */
  readonly events: Readonly<Record<BurnWindow | 'budget', GoodBad>>;
  /** Burn rate per window; a window below `minEvents` is missing. */
  readonly burnRates: Readonly<Partial<Record<BurnWindow, number>>>;
  /** Error budget left over the SLO window; undefined below `minEvents`. */
  readonly budgetRemaining: number | undefined;
  /** Each workbook alert at its standard factor. */
  readonly alerts: Readonly<Record<AlertSpeed, AlertState>>;
}

export const assessSlo = (windows: WindowFields, slo: SloObjective): SloAssessment => {
  const events = {} as Record<BurnWindow | 'budget', GoodBad>;
  const burnRates: Partial<Record<BurnWindow, number>> = {};
  for (const w of BURN_WINDOWS) {
    events[w] = goodBad(windows[w], slo.kind);
    const burn = burnRate(events[w], slo.objectivePercent, slo.minEvents);
    if (burn !== undefined) burnRates[w] = burn;
  }
  events.budget = goodBad(windows.budget, slo.kind);
  const alerts = {} as Record<AlertSpeed, AlertState>;
  for (const a of BURN_ALERTS) alerts[a.speed] = alertState(burnRates, a, a.factor);
  return {
    kind: slo.kind,
    objectivePercent: slo.objectivePercent,
    events,
    burnRates,
    budgetRemaining: budgetRemaining(events.budget, slo.objectivePercent, slo.minEvents),
    alerts,
  };
};
