import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { counterSeries, gaugeSeries, histogramSeries } from '../../src/telemetry/fast-metrics.js';

/** Two registries with the same metrics: one fed through prom-client's own API, one through fast-metrics. */
const pair = () => {
  const make = () => {
    const registry = new Registry();
    return {
      registry,
      counter: new Counter({ name: 'c_total', help: 'a counter', labelNames: ['route', 'kind'] as const, registers: [registry] }),
      gauge: new Gauge({ name: 'g', help: 'a gauge', labelNames: ['route'] as const, registers: [registry] }),
      histogram: new Histogram({ name: 'h_seconds', help: 'a histogram', labelNames: ['route'] as const, buckets: [0.25, 1, 4], registers: [registry] }),
    };
  };
  return { native: make(), fast: make() };
};

describe('fast metric series', () => {
  it('expose what prom-client exposes for the same updates, byte for byte', async () => {
    const { native, fast } = pair();
    // Values whose sums are exact in binary, so the text can be compared whole.
    const updates: Array<[string, string, number]> = [
      ['chat', 'in', 3],
      ['chat', 'out', 0.5],
      ['tools', 'in', 0],
      ['chat', 'in', 7],
    ];
    for (const [route, kind, n] of updates) {
      native.counter.labels(route, kind).inc(n);
      counterSeries(fast.counter, route, kind).inc(n);
    }
    for (const [route, steps] of [['chat', [1, 1, -1]], ['tools', [1, -1]]] as const) {
      for (const step of steps) {
        if (step > 0) native.gauge.labels(route).inc();
        else native.gauge.labels(route).dec();
        const g = gaugeSeries(fast.gauge, route);
        if (step > 0) g.inc();
        else g.dec();
      }
    }
    // Below, on, between and above the bounds (0.25, 1, 4): above the last one counts in +Inf only.
    for (const v of [0, 0.25, 0.5, 1, 2, 4, 8, 16]) {
      native.histogram.labels('chat').observe(v);
      histogramSeries(fast.histogram, 'chat').observe(v);
    }
    native.histogram.labels('tools').observe(0.125);
    histogramSeries(fast.histogram, 'tools').observe(0.125);

    const expected = await native.registry.metrics();
    expect(expected).toContain('h_seconds_bucket{le="+Inf",route="chat"} 8');
    expect(await fast.registry.metrics()).toBe(expected);
    // A second read adds nothing twice; updates after it are added once.
    expect(await fast.registry.metrics()).toBe(expected);
    native.counter.labels('chat', 'in').inc(2);
    counterSeries(fast.counter, 'chat', 'in').inc(2);
    native.histogram.labels('chat').observe(0.5);
    histogramSeries(fast.histogram, 'chat').observe(0.5);
    expect(await fast.registry.metrics()).toBe(await native.registry.metrics());
  });

  it('add to series that prom-client updated itself, before and after', async () => {
    const { fast } = pair();
    fast.counter.labels('chat', 'in').inc(5);
    fast.histogram.labels('chat').observe(0.5);
    counterSeries(fast.counter, 'chat', 'in').inc(2);
    histogramSeries(fast.histogram, 'chat').observe(2);
    await fast.registry.metrics();
    fast.counter.labels('chat', 'in').inc(1);
    const text = await fast.registry.metrics();
    expect(text).toContain('c_total{route="chat",kind="in"} 8');
    expect(text).toContain('h_seconds_count{route="chat"} 2');
    expect(text).toContain('h_seconds_sum{route="chat"} 2.5');
    expect(text).toContain('h_seconds_bucket{le="1",route="chat"} 1');
  });

  it('reach prom-client readers other than the scrape (get())', async () => {
    const { fast } = pair();
    counterSeries(fast.counter, 'chat', 'in').inc(4);
    expect((await fast.counter.get()).values).toEqual([{ value: 4, labels: { route: 'chat', kind: 'in' } }]);
  });

  it('leave a label set that was never updated out, and show one updated by 0', async () => {
    const { fast } = pair();
    counterSeries(fast.counter, 'chat', 'never');
    counterSeries(fast.counter, 'chat', 'zero').inc(0);
    histogramSeries(fast.histogram, 'chat');
    const text = await fast.registry.metrics();
    expect(text).not.toContain('kind="never"');
    expect(text).toContain('c_total{route="chat",kind="zero"} 0');
    expect(text).not.toContain('h_seconds_count');
  });

  it('are one object per label set, and refuse what prom-client refuses', () => {
    const { fast } = pair();
    expect(counterSeries(fast.counter, 'chat', 'in')).toBe(counterSeries(fast.counter, 'chat', 'in'));
    expect(counterSeries(fast.counter, 'chat', 'in')).not.toBe(counterSeries(fast.counter, 'chat', 'out'));
    expect(() => counterSeries(fast.counter, 'chat')).toThrow(/expected 2 label values/);
    expect(() => counterSeries(fast.counter, 'chat', 'in').inc(-1)).toThrow(RangeError);
    expect(() => counterSeries(fast.counter, 'chat', 'in').inc(Infinity)).toThrow(RangeError);
    expect(() => histogramSeries(fast.histogram, 'chat').observe(Number.NaN)).toThrow(TypeError);
  });

  it("keep a metric's own collect callback", async () => {
    const registry = new Registry();
    let collected = 0;
    const counter = new Counter({
      name: 'own_total',
      help: 'h',
      labelNames: ['route'] as const,
      registers: [registry],
      collect: () => {
        collected += 1;
      },
    });
    counterSeries(counter, 'chat').inc();
    expect(await registry.metrics()).toContain('own_total{route="chat"} 1');
    expect(collected).toBe(1);
  });
});
