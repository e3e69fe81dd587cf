import type { BurnWindow, SloAssessment } from './burn.js';

/**
 * The deploy gate's judgement, pure: from the assessment of a route's SLOs to PROCEED, HALT or ROLLBACK, with the
 * reasons. The CLI (src/cli/gate.ts) reads the counters and prints.
 */

export type GateVerdict = 'PROCEED' | 'HALT' | 'ROLLBACK' | 'INSUFFICIENT_DATA';

/** Exit codes of `fusebox gate`; part of its interface (pipelines branch on them). */
export const GATE_EXIT = {
  PROCEED: 0,
  HALT: 10,
  ROLLBACK: 20,
  INSUFFICIENT_DATA: 30,
  STORE_UNREACHABLE: 31,
  USAGE: 2,
} as const;

export interface GateThresholds {
  /** ROLLBACK when the burn rate over both 1 h and 5 min is above this. Default 14.4. */
  readonly rollbackBurn: number;
  /** HALT when the burn rate over both 6 h and 30 min is above this. Default 6. */
  readonly haltBurn: number;
  /** HALT when less than this share of the error budget is left, percent. Default 20. */
  readonly haltBudgetPercent: number;
}

export const DEFAULT_GATE_THRESHOLDS: GateThresholds = { rollbackBurn: 14.4, haltBurn: 6, haltBudgetPercent: 20 };

const RANK: Readonly<Record<GateVerdict, number>> = { PROCEED: 0, INSUFFICIENT_DATA: 1, HALT: 2, ROLLBACK: 3 };

/** The harsher verdict: ROLLBACK > HALT > INSUFFICIENT_DATA > PROCEED (bad news with enough data beats missing data). */
export const worstVerdict = (a: GateVerdict, b: GateVerdict): GateVerdict => (RANK[b] > RANK[a] ? b : a);

export interface SloJudgement {
  readonly verdict: GateVerdict;
  readonly reasons: readonly string[];
}

const pct = (x: number): string => `${(x * 100).toFixed(1)} %`;
const times = (x: number): string => (Number.isFinite(x) ? `${x.toFixed(1)}×` : '∞×');

const pairOver = (burn: Partial<Record<BurnWindow, number>>, long: BurnWindow, short: BurnWindow, factor: number): string | undefined => {
  const l = burn[long];
  const s = burn[short];
  if (l === undefined || s === undefined || !(l > factor && s > factor)) return undefined;
  return `burn rate ${times(l)} over ${long} and ${times(s)} over ${short}, above ${factor}×`;
};

/**
 * One SLO's verdict. ROLLBACK: budget spent, or the 1 h & 5 min burn above `rollbackBurn`. HALT: the 6 h & 30 min
 * burn above `haltBurn`, or less than `haltBudgetPercent` of the budget left. INSUFFICIENT_DATA: fewer than
 * `minEvents` events over the SLO window or over the last 6 h — the gate never says PROCEED on a guess.
 */
export const judgeSlo = (a: SloAssessment, t: GateThresholds, minEvents: number): SloJudgement => {
  const rollback: string[] = [];
  const halt: string[] = [];
  const b = a.budgetRemaining;
  if (b !== undefined && b <= 0) rollback.push(`${a.kind}: error budget exhausted (${pct(b)} left)`);
  const fast = pairOver(a.burnRates, '1h', '5m', t.rollbackBurn);
  if (fast) rollback.push(`${a.kind}: ${fast}`);
  const medium = pairOver(a.burnRates, '6h', '30m', t.haltBurn);
  if (medium) halt.push(`${a.kind}: ${medium}`);
  if (b !== undefined && b > 0 && b * 100 < t.haltBudgetPercent) halt.push(`${a.kind}: only ${pct(b)} of the error budget left (under ${t.haltBudgetPercent} %)`);
  if (rollback.length > 0) return { verdict: 'ROLLBACK', reasons: [...rollback, ...halt] };
  if (halt.length > 0) return { verdict: 'HALT', reasons: halt };
  const total = (w: BurnWindow | 'budget') => a.events[w].good + a.events[w].bad;
  const thin = (['budget', '6h'] as const).filter((w) => total(w) < minEvents);
  if (thin.length > 0) {
    return {
      verdict: 'INSUFFICIENT_DATA',
      reasons: thin.map((w) => `${a.kind}: ${total(w)} events over ${w === 'budget' ? 'the SLO window' : 'the last 6h'}, fewer than ${minEvents}`),
    };
  }
  return { verdict: 'PROCEED', reasons: [] };
};

const eventsOver = (a: SloAssessment): number => a.events.budget.good + a.events.budget.bad;

/**
 * Several SLOs of one route: the worst verdict, with every reason behind it. A cost SLO without a single priced
 * call over its window, next to SLOs that have data, is a route whose calls have no price (a tool API): it is not
 * judged, rather than turning every `--slo all` verdict on such a route into "not enough data".
 */
export const judgeSlos = (list: readonly SloAssessment[], t: GateThresholds, minEvents: number): SloJudgement & { perSlo: SloJudgement[] } => {
  const othersHaveData = (a: SloAssessment) => list.some((o) => o !== a && eventsOver(o) > 0);
  const perSlo = list.map((a) =>
    a.kind === 'cost' && list.length > 1 && eventsOver(a) === 0 && othersHaveData(a)
      ? { verdict: 'PROCEED' as const, reasons: ['cost: no priced call over the SLO window (calls without LLM usage): not judged'] }
      : judgeSlo(a, t, minEvents),
  );
  const verdict = perSlo.reduce<GateVerdict>((v, j) => worstVerdict(v, j.verdict), 'PROCEED');
  return { verdict, reasons: perSlo.filter((j) => j.verdict === verdict).flatMap((j) => j.reasons), perSlo };
};
