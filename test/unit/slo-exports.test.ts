import { Counter, Gauge, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { SloSchema } from '../../src/config/schema.js';
import { MemoryCounterStore } from '../../src/slo/counter-store.js';
import { SloEvaluator } from '../../src/slo/evaluator.js';
import { applySloGauges, zeroSloEventSeries } from '../../src/slo/exports.js';
import { SloRecorder } from '../../src/slo/recorder.js';
import { sloSpecOf } from '../../src/slo/spec.js';

const T = Date.UTC(2025, 0, 15, 12, 30, 30);

describe('SLO metrics through prom-client', () => {
  it('exports events, budget remaining and burn rates with the documented names and labels', async () => {
    const registry = new Registry();
    const events = new Counter({ name: 'fusebox_slo_events_total', help: 'h', labelNames: ['route', 'slo', 'kind'] as const, registers: [registry] });
    const refused = new Counter({ name: 'fusebox_slo_refused_total', help: 'h', labelNames: ['route'] as const, registers: [registry] });
    const budgetRemaining = new Gauge({ name: 'fusebox_slo_error_budget_remaining', help: 'h', labelNames: ['route', 'slo'] as const, registers: [registry] });
    const burnRate = new Gauge({ name: 'fusebox_slo_burn_rate', help: 'h', labelNames: ['route', 'slo', 'window'] as const, registers: [registry] });
    const action = new Gauge({ name: 'fusebox_slo_action', help: 'h', labelNames: ['route', 'action'] as const, registers: [registry] });

    const specs = [sloSpecOf('chat', SloSchema.parse({}))];
    const store = new MemoryCounterStore({ now: () => T });
    const recorder = new SloRecorder({ store, routes: specs, now: () => T, flushIntervalMs: 1000, counters: { events, refused } });
    const evaluator = new SloEvaluator({ store, routes: specs, now: () => T, logger: { warn: () => undefined, info: () => undefined } });
    zeroSloEventSeries(events, specs);
    for (let i = 0; i < 99; i++) recorder.record('chat', { availability: 'good', latencyMs: 100 });
    recorder.record('chat', { availability: 'bad', latencyMs: 100 });
    recorder.record('chat', { availability: 'skip', refused: true });
    await recorder.flush();
    await evaluator.evaluate();
    applySloGauges({ budgetRemaining, burnRate, action }, evaluator.all());

    const text = await registry.metrics();
    expect(text).toContain('fusebox_slo_events_total{route="chat",slo="availability",kind="good"} 99');
    expect(text).toContain('fusebox_slo_events_total{route="chat",slo="availability",kind="bad"} 1');
    expect(text).toContain('fusebox_slo_events_total{route="chat",slo="cost",kind="bad"} 0');
    expect(text).toContain('fusebox_slo_refused_total{route="chat"} 1');
    // 1 % errors against 0.5 % allowed: burn 2, budget overspent by 100 %.
    expect(text).toContain('fusebox_slo_burn_rate{route="chat",slo="availability",window="5m"} 2');
    expect(text).toContain('fusebox_slo_error_budget_remaining{route="chat",slo="availability"} -1');
    expect(text).toContain('fusebox_slo_action{route="chat",action="alert"} 1');
    expect(text).not.toContain('fusebox_slo_error_budget_remaining{route="chat",slo="cost"}');
  });
});
