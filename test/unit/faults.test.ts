import { PassThrough } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FaultsSchema, RouteSchema } from '../../src/config/schema.js';
import { UpstreamResetError } from '../../src/errors.js';
import type { CallContext, Handler, ProxyRequest } from '../../src/pipeline/types.js';
import { faultsLayer, parseFaultHeader, type FaultKind } from '../../src/policies/faults.js';
import { callContext, seeded } from '../helpers/pipeline.js';

const route = RouteSchema.parse({ name: 'r', match: { pathPrefix: '/r' }, upstream: { url: 'http://127.0.0.1:1' } });
const ctxOf = (faultHeader?: string): CallContext => callContext(route, faultHeader === undefined ? {} : { facts: { faultHeader } });
const get: ProxyRequest = { method: 'GET', path: '/x', headers: {}, body: { kind: 'none' } };

/** The layer over a terminal that answers 200 and counts the calls that reached it. */
const layered = (faults: Record<string, unknown>, random: () => number) => {
  const injected: FaultKind[] = [];
  let reached = 0;
  const terminal: Handler = async () => {
    reached++;
    return { statusCode: 200, headers: {}, body: new PassThrough(), observers: [] };
  };
  const handler = faultsLayer(FaultsSchema.parse(faults), { random, onFault: (k) => injected.push(k) })(terminal);
  return { handler, injected, reached: () => reached };
};

/** Outcome of one call: the status, or 'reset' when the layer threw the injected reset. */
const outcome = async (handler: Handler, header?: string): Promise<number | 'reset'> => {
  try {
    return (await handler(get, ctxOf(header))).statusCode;
  } catch (err) {
    if (err instanceof UpstreamResetError) return 'reset';
    throw err;
  }
};

describe('parseFaultHeader', () => {
  it('reads abort=<status>, delay=<ms> and reset, separated by commas or semicolons, with spaces around', () => {
    expect(parseFaultHeader('abort=503')).toEqual({ abort: 503 });
    expect(parseFaultHeader('delay=250')).toEqual({ delayMs: 250 });
    expect(parseFaultHeader('reset')).toEqual({ reset: true });
    expect(parseFaultHeader(' delay = 100 ; abort=429,reset ')).toEqual({ delayMs: 100, abort: 429, reset: true });
  });

  it('ignores unknown and malformed parts and keeps the good ones', () => {
    expect(parseFaultHeader('bogus=1, abort=42, delay=soon, reset')).toEqual({ reset: true });
    expect(parseFaultHeader('abort, delay, abort=600, abort=99, abort=503.5, delay=0, delay=-5, delay=1.5, delay=600001')).toEqual({});
    expect(parseFaultHeader('chaos;;,abort=502;')).toEqual({ abort: 502 });
    expect(parseFaultHeader('')).toEqual({});
  });

  it('accepts the edges of each range: status 100 and 599, delay 1 ms and 600000 ms', () => {
    expect(parseFaultHeader('abort=100, delay=1')).toEqual({ abort: 100, delayMs: 1 });
    expect(parseFaultHeader('abort=599, delay=600000')).toEqual({ abort: 599, delayMs: 600_000 });
  });

  it('lets a later part override an earlier one of the same kind', () => {
    expect(parseFaultHeader('abort=500, abort=502')).toEqual({ abort: 502 });
  });
});

describe('faults layer', () => {
  it('fires a percentage when the roll is under it, not at it: percent 30 fires at 0.2999, not at 0.30', async () => {
    const under = layered({ enabled: true, abort: { percent: 30, status: 418 } }, () => 0.2999);
    expect(await outcome(under.handler)).toBe(418);
    const at = layered({ enabled: true, abort: { percent: 30, status: 418 } }, () => 0.3);
    expect(await outcome(at.handler)).toBe(200);
  });

  it('aborts about the configured share of 10,000 calls with a seeded random, and only those miss the upstream', async () => {
    const { handler, injected, reached } = layered({ enabled: true, abort: { percent: 12.5, status: 503 } }, seeded(42));
    const results = [];
    for (let i = 0; i < 10_000; i++) results.push(await outcome(handler));
    const aborted = results.filter((r) => r === 503).length;
    // 3 standard deviations of a binomial(10000, 0.125): ±99
    expect(aborted).toBeGreaterThan(1_250 - 100);
    expect(aborted).toBeLessThan(1_250 + 100);
    expect(injected).toHaveLength(aborted);
    expect(reached()).toBe(10_000 - aborted);
  });

  it('resets about the configured share of 10,000 calls with a seeded random', async () => {
    const { handler, injected } = layered({ enabled: true, reset: { percent: 5 } }, seeded(7));
    const results = [];
    for (let i = 0; i < 10_000; i++) results.push(await outcome(handler));
    const resets = results.filter((r) => r === 'reset').length;
    // ±3σ of binomial(10000, 0.05) ≈ ±65
    expect(resets).toBeGreaterThan(500 - 66);
    expect(resets).toBeLessThan(500 + 66);
    expect(injected.filter((k) => k === 'reset')).toHaveLength(resets);
  });

  it('injects nothing and rolls nothing when faults are off, whatever the header says', async () => {
    const random = vi.fn(() => 0);
    const { handler, injected } = layered({ enabled: false, abort: { percent: 100 } }, random);
    expect(await outcome(handler, 'abort=503')).toBe(200);
    expect(injected).toEqual([]);
    expect(random).not.toHaveBeenCalled();
  });

  it('ignores the header unless headerControl is on', async () => {
    const { handler } = layered({ enabled: true }, () => 0.99);
    expect(await outcome(handler, 'abort=503')).toBe(200);
    const controlled = layered({ enabled: true, headerControl: true }, () => 0.99);
    expect(await outcome(controlled.handler, 'abort=503')).toBe(503);
  });

  describe('delays', () => {
    beforeEach(() => vi.useFakeTimers());
    afterEach(() => vi.useRealTimers());

    it('holds a delayed call exactly the configured time before sending it', async () => {
      const { handler, injected, reached } = layered({ enabled: true, delay: { percent: 50, ms: 300 } }, () => 0.49);
      const pending = handler(get, ctxOf());
      await vi.advanceTimersByTimeAsync(299);
      expect(reached()).toBe(0);
      await vi.advanceTimersByTimeAsync(1);
      expect((await pending).statusCode).toBe(200);
      expect(reached()).toBe(1);
      expect(injected).toEqual(['delay']);
    });

    it('sends a call whose roll misses the delay at once', async () => {
      const { handler, injected } = layered({ enabled: true, delay: { percent: 50, ms: 300 } }, () => 0.5);
      expect((await handler(get, ctxOf())).statusCode).toBe(200);
      expect(injected).toEqual([]);
    });

    it('takes a header delay over the configured one, then applies the header abort', async () => {
      const { handler, injected, reached } = layered({ enabled: true, headerControl: true, delay: { percent: 100, ms: 5_000 } }, () => 0);
      const pending = handler(get, ctxOf('delay=40;abort=429'));
      await vi.advanceTimersByTimeAsync(40);
      expect((await pending).statusCode).toBe(429);
      expect(reached()).toBe(0);
      expect(injected).toEqual(['delay', 'abort']);
    });
  });
});
