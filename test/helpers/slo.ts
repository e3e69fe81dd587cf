import { SloSchema } from '../../src/config/schema.js';
import type { CounterStore } from '../../src/slo/counter-store.js';
import { SloRecorder, type SloEvent } from '../../src/slo/recorder.js';
import { sloSpecOf } from '../../src/slo/spec.js';

/** A good LLM call (priced) and a failed one, as the recorder counts them. */
export const goodCall: SloEvent = { availability: 'good', latencyMs: 800, costUsdMicros: 40_000 };
export const badCall: SloEvent = { availability: 'bad', latencyMs: 800 };

/**
 * Fresh routes (default SLOs) whose counters a test writes into a shared store as a fleet of sidecars would:
 * `at(t, n, event)` records n events at clock time t and flushes them. Names are `<prefix>0`, `<prefix>1`, ...
 */
export const sloRoutes = (store: CounterStore, prefix = 'r') => {
  let seq = 0;
  return () => {
    const name = `${prefix}${seq++}`;
    const clock = { t: 0 };
    const rec = new SloRecorder({ store, routes: [sloSpecOf(name, SloSchema.parse({}))], now: () => clock.t, flushIntervalMs: 1000 });
    const at = async (t: number, n: number, event: SloEvent) => {
      clock.t = t;
      for (let i = 0; i < n; i++) rec.record(name, event);
      await rec.flush();
    };
    return { name, at };
  };
};
