import { describe, expect, it } from 'vitest';
import { assessSlo, type WindowFields } from '../../src/slo/burn.js';
import { compareSamples, DEFAULT_COMPARE_THRESHOLDS, sampleOf } from '../../src/slo/compare.js';
import { DEFAULT_GATE_THRESHOLDS, GATE_EXIT, judgeSlo, judgeSlos } from '../../src/slo/gate.js';

/** Availability counts per window: [good, bad]. */
const windows = (w: Partial<Record<keyof WindowFields, [number, number]>>): WindowFields => {
  const f = (k: keyof WindowFields) => ({ ag: w[k]?.[0] ?? 0, ab: w[k]?.[1] ?? 0 });
  return { '5m': f('5m'), '30m': f('30m'), '1h': f('1h'), '6h': f('6h'), '3d': f('3d'), budget: f('budget') };
};
const assess = (w: Partial<Record<keyof WindowFields, [number, number]>>) =>
  assessSlo(windows(w), { kind: 'availability', objectivePercent: 99.5, minEvents: 10 });
const judge = (w: Partial<Record<keyof WindowFields, [number, number]>>) => judgeSlo(assess(w), DEFAULT_GATE_THRESHOLDS, 10);

const healthy = { '5m': [200, 0], '30m': [1200, 1], '1h': [2400, 2], '6h': [14_000, 10], '3d': [160_000, 100], budget: [1_000_000, 1000] } as const;
type W = Partial<Record<keyof WindowFields, [number, number]>>;
const h = healthy as unknown as W;

describe('gate verdicts', () => {
  it('exit codes are 0 PROCEED, 10 HALT, 20 ROLLBACK, 30 not enough data, 31 store unreachable', () => {
    expect(GATE_EXIT).toMatchObject({ PROCEED: 0, HALT: 10, ROLLBACK: 20, INSUFFICIENT_DATA: 30, STORE_UNREACHABLE: 31 });
  });

  it('PROCEEDs on a healthy route (burns under 1×, 80 % of the budget left)', () => {
    expect(judge(h)).toEqual({ verdict: 'PROCEED', reasons: [] });
  });

  it('ROLLBACKs when the 1 h and 5 min burns are both above 14.4×', () => {
    // 1 h: 200 bad of 2600 = 7.7 % → 15.4×; 5 min: 20 of 200 = 10 % → 20×.
    const j = judge({ ...h, '5m': [180, 20], '1h': [2400, 200] });
    expect(j.verdict).toBe('ROLLBACK');
    expect(j.reasons).toEqual(['availability: burn rate 15.4× over 1h and 20.0× over 5m, above 14.4×']);
  });

  it('does not roll back on a 5-minute spike the 1-hour window does not confirm', () => {
    expect(judge({ ...h, '5m': [180, 20] }).verdict).toBe('PROCEED');
  });

  it('ROLLBACKs when the error budget is spent', () => {
    // 5000 bad of 1,000,000 = exactly the 0.5 % allowed.
    const j = judge({ ...h, budget: [995_000, 5000] });
    expect(j).toEqual({ verdict: 'ROLLBACK', reasons: ['availability: error budget exhausted (0.0 % left)'] });
  });

  it('HALTs when the 6 h and 30 min burns are both above 6×', () => {
    // 6 h: 500 of 14000 = 3.57 % → 7.1×; 30 min: 40 of 1200 → 6.7×.
    const j = judge({ ...h, '6h': [13_500, 500], '30m': [1160, 40] });
    expect(j).toEqual({ verdict: 'HALT', reasons: ['availability: burn rate 7.1× over 6h and 6.7× over 30m, above 6×'] });
  });

  it('HALTs when less than 20 % of the budget is left', () => {
    // 4100 bad of 1,000,000 = 0.41 % → 82 % spent.
    const j = judge({ ...h, budget: [995_900, 4100] });
    expect(j.verdict).toBe('HALT');
    expect(j.reasons[0]).toMatch(/only 18\.0 % of the error budget left \(under 20 %\)/);
  });

  it('refuses to PROCEED with too few events over the SLO window or the last 6 h', () => {
    expect(judge({ budget: [9, 0], '6h': [9, 0] })).toEqual({
      verdict: 'INSUFFICIENT_DATA',
      reasons: ['availability: 9 events over the SLO window, fewer than 10', 'availability: 9 events over the last 6h, fewer than 10'],
    });
    expect(judge({ ...h, '6h': [3, 0], '30m': [0, 0], '1h': [0, 0], '5m': [0, 0] }).verdict).toBe('INSUFFICIENT_DATA');
  });

  it('still says ROLLBACK when a spent budget is certain though recent traffic is thin', () => {
    expect(judge({ budget: [900, 100], '6h': [2, 0] }).verdict).toBe('ROLLBACK');
  });

  it('takes configurable thresholds', () => {
    const a = assess({ ...h, '5m': [180, 20], '1h': [2400, 200] });
    expect(judgeSlo(a, { ...DEFAULT_GATE_THRESHOLDS, rollbackBurn: 30 }, 10).verdict).toBe('PROCEED');
    expect(judgeSlo(assess(h), { ...DEFAULT_GATE_THRESHOLDS, haltBudgetPercent: 90 }, 10).verdict).toBe('HALT');
  });

  it('judges several SLOs by the worst verdict', () => {
    const ok = assess(h);
    const bad = assess({ ...h, budget: [1_000_000, 9000] });
    const j = judgeSlos([ok, bad], DEFAULT_GATE_THRESHOLDS, 10);
    expect(j.verdict).toBe('ROLLBACK');
    expect(j.perSlo.map((p) => p.verdict)).toEqual(['PROCEED', 'ROLLBACK']);
  });
});

describe('canary vs stable', () => {
  // 1000 calls, p99 in the 1-2.5 s bucket, $0.04 per call.
  const stable = sampleOf('stable', 'chat', { ag: 998, ab: 2, l7: 900, l8: 100, cs: 40_000_000, cn: 1000 });

  it('PROCEEDs when the canary is as good as stable', () => {
    const canary = sampleOf('canary', 'chat-canary', { ag: 499, ab: 1, l7: 450, l8: 50, cs: 20_000_000, cn: 500 });
    const c = compareSamples(canary, stable, DEFAULT_COMPARE_THRESHOLDS, 10);
    expect(c.verdict).toBe('PROCEED');
    expect(c.checks.map((k) => [k.metric, Number(k.value!.toFixed(3))])).toEqual([
      ['error_rate', 0],
      ['p99_latency', 1],
      ['cost_per_call', 1],
    ]);
  });

  it('ROLLBACKs a canary 2.6 points worse in error rate or 1.6× slower at p99; HALTs one 1.37× slower', () => {
    const worse = sampleOf('canary', 'c', { ag: 486, ab: 14, l7: 450, l8: 50, cs: 20_000_000, cn: 500 });
    const r = compareSamples(worse, stable, DEFAULT_COMPARE_THRESHOLDS, 10);
    expect(r.verdict).toBe('ROLLBACK');
    expect(r.reasons).toEqual(['error_rate: canary is 2.60 points worse (rollback above 2)']);
    // Stable p99: rank 990 of 1000 is the 90th of 100 in (1000, 2500] ms → 2350 ms.
    expect(stable.p99Ms).toBeCloseTo(2350, 9);
    // Canary: rank 495 of 500 is the 5th of 10 in (2500, 5000] → 3750 ms = 1.60×.
    const slower = sampleOf('canary', 'c', { ag: 500, l7: 490, l9: 10, cs: 20_000_000, cn: 500 });
    const s = compareSamples(slower, stable, DEFAULT_COMPARE_THRESHOLDS, 10);
    expect(s.checks[1]!.value).toBeCloseTo(3750 / 2350, 9);
    expect(s.verdict).toBe('ROLLBACK');
    // Canary: rank 495 is the 2nd of 7 in (2500, 5000] → 3214 ms = 1.37×.
    const bitSlower = sampleOf('canary', 'c', { ag: 500, l7: 493, l9: 7, cs: 20_000_000, cn: 500 });
    const b = compareSamples(bitSlower, stable, DEFAULT_COMPARE_THRESHOLDS, 10);
    expect(b.checks[1]!.value).toBeCloseTo((2500 + 2500 * (2 / 7)) / 2350, 9);
    expect(b.verdict).toBe('HALT');
  });

  it('HALTs a canary 1.2× as expensive per call', () => {
    const pricier = sampleOf('canary', 'c', { ag: 500, l7: 450, l8: 50, cs: 24_000_000, cn: 500 });
    const c = compareSamples(pricier, stable, DEFAULT_COMPARE_THRESHOLDS, 10);
    expect(c.verdict).toBe('HALT');
    expect(c.reasons).toEqual(['cost_per_call: canary is 1.20× the stable value (halt above 1.1)']);
  });

  it('refuses to judge with too few calls on either side', () => {
    const few = sampleOf('canary', 'c', { ag: 3, ab: 3 });
    const c = compareSamples(few, stable, DEFAULT_COMPARE_THRESHOLDS, 10);
    expect(c.verdict).toBe('INSUFFICIENT_DATA');
    expect(c.reasons).toEqual(['canary (c): 6 calls in the window, fewer than 10']);
  });
});
