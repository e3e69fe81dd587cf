import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import type { RouteConfig } from '../../src/config/schema.js';
import {
  BadRequestError,
  CircuitOpenError as RealCircuitOpenError,
  FallbackExhaustedError,
  ClientClosedError,
  ProxyError,
  UpstreamResetError,
  UpstreamTimeoutError,
} from '../../src/errors.js';
import type { BodyEnd, CallContext, Handler, ProxyResponse, Verdict } from '../../src/pipeline/types.js';
import { minuteIndex } from '../../src/slo/buckets.js';
import { MemoryCounterStore } from '../../src/slo/counter-store.js';
import { SloEvaluator } from '../../src/slo/evaluator.js';
import { sloLayer, sloOutcomeOfError } from '../../src/slo/layer.js';
import { SloRecorder } from '../../src/slo/recorder.js';
import { sloSpecsOf } from '../../src/slo/spec.js';

const T = Date.UTC(2025, 0, 15, 12, 30, 30);

class CircuitOpenError extends ProxyError {
  constructor(message: string) {
    super('CIRCUIT_OPEN', message);
  }
}
class BudgetExceededError extends ProxyError {
  constructor(message: string) {
    super('BUDGET_EXCEEDED', message);
  }
}

const routeOf = (slo: Record<string, unknown>, extra: Record<string, unknown> = {}): RouteConfig =>
  parseConfig({ routes: [{ name: 'chat', match: { pathPrefix: '/chat' }, upstream: { url: 'http://127.0.0.1:9' }, slo, ...extra }] }, 'test', {}).routes[0]!;

const setup = (slo: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) => {
  const clock = { t: T };
  const now = () => clock.t;
  const route = routeOf(slo, extra);
  const specs = sloSpecsOf([route]);
  const store = new MemoryCounterStore({ now });
  const recorder = new SloRecorder({ store, routes: specs, now, flushIntervalMs: 1000 });
  const silent = { warn: () => undefined, info: () => undefined };
  const evaluator = new SloEvaluator({ store, routes: specs, now, logger: silent, cache: false });
  const upstream = { calls: 0, status: 200, throws: undefined as unknown, durationMs: 0, verdict: undefined as Verdict | undefined };
  const terminal: Handler = async () => {
    upstream.calls++;
    clock.t += upstream.durationMs;
    if (upstream.throws !== undefined) throw upstream.throws;
    return { statusCode: upstream.status, headers: {}, body: Buffer.from('{}'), observers: [], ...(upstream.verdict ? { verdict: upstream.verdict } : {}) };
  };
  const handler = sloLayer({ recorder, evaluator, now })(terminal);
  const ctx = (): CallContext => ({
    requestId: 'req-1',
    route,
    agent: 'agent-1',
    workflow: undefined,
    startedAt: clock.t,
    deadline: clock.t + 60_000,
    signal: new AbortController().signal,
    abort: () => {},
    mode: 'base-url',
    log: pino({ level: 'silent' }),
    attempts: 0,
    facts: {},
  });
  /** One call through the layer, its body ending as `end` says (the HTTP layer's job). */
  const call = async (end: Partial<BodyEnd> = {}, c = ctx()): Promise<ProxyResponse> => {
    const res = await handler({ method: 'POST', path: '/v1/chat/completions', headers: {}, body: { kind: 'none' } }, c);
    for (const o of res.observers) o.onEnd?.({ ok: true, bytes: 2, ...end });
    return res;
  };
  const counts = async () => {
    await recorder.flush();
    return (await store.read([{ route: 'chat', tier: 'm', index: minuteIndex(clock.t) }]))[0]!;
  };
  return { clock, upstream, call, ctx, counts, evaluator, recorder };
};

describe('SLO layer: how calls count', () => {
  it('counts answers good, upstream 5xx and 429 bad, client 4xx skipped, with latency and cost', async () => {
    const { call, upstream, counts, ctx } = setup();
    upstream.durationMs = 6000;
    const c = ctx();
    // What the budget layer settles for an LLM call; the SLO layer reads the cost from it.
    const settlement = { model: 'm', inputTokens: 1, cachedInputTokens: 0, outputTokens: 1, costUsdMicros: 200_000, estimated: false };
    c.facts.settled = Promise.resolve(settlement);
    await call({}, c);
    upstream.durationMs = 0;
    for (const status of [503, 429, 404]) {
      upstream.status = status;
      await call();
    }
    expect(await counts()).toEqual({ ag: 1, lb: 1, l10: 1, cb: 1, cs: 200_000, cn: 1, ab: 2, lg: 2, l0: 2, s: 1 });
  });

  it('counts a broken stream bad, an agent that went away skipped, a discarded body not at all', async () => {
    const { call, counts } = setup();
    await call({ ok: false, failedBy: 'upstream', error: new Error('reset') });
    await call({ ok: false, failedBy: 'client' });
    await call({ ok: false, discarded: true });
    expect(await counts()).toEqual({ ab: 1, lg: 1, l0: 1, s: 1 });
  });

  it('counts upstream errors, an open breaker and an exhausted fallback chain bad, Fusebox refusals apart, client aborts skipped', async () => {
    const { call, upstream, counts } = setup();
    for (const err of [
      new UpstreamTimeoutError('t', { phase: 'headers' }),
      new UpstreamResetError('r'),
      new CircuitOpenError('open'),
      new FallbackExhaustedError('every step failed'),
      new BudgetExceededError('over'),
      new ClientClosedError('gone'),
    ]) {
      upstream.throws = err;
      await expect(call()).rejects.toBe(err);
    }
    expect(await counts()).toEqual({ ab: 4, lg: 4, l0: 4, r: 1, s: 1 });
    expect(sloOutcomeOfError(new BadRequestError('bad'))).toBe('refused');
    expect(sloOutcomeOfError(new Error('a bug'))).toBe('bad');
  });
});

describe('SLO layer: the verdict made at send', () => {
  it('reads the verdict the send made, not the status again: a status the route retries is the upstream failing', async () => {
    const { call, upstream, counts } = setup();
    // 408 is a client error by status; a route that lists it in retry.retryableStatuses says it is the upstream's.
    upstream.status = 408;
    upstream.verdict = { outcome: 'retryable', breakerFailure: true, reason: 'status_4xx', beforeSend: false };
    await call();
    upstream.verdict = undefined;
    await call();
    expect(await counts()).toMatchObject({ ab: 1, s: 1 });
  });
});

describe('SLO layer: breakers', () => {
  it('counts a breaker the upstream’s failures opened bad, and one an operator forced open as a refusal', async () => {
    const { call, upstream, counts } = setup();
    const opened = new RealCircuitOpenError('open', { breaker: 'chat', state: 'open', retryAfterMs: 1000 });
    const forced = new RealCircuitOpenError('forced', { breaker: 'chat', state: 'forced_open' });
    for (const err of [opened, forced]) {
      upstream.throws = err;
      await expect(call()).rejects.toBe(err);
    }
    expect(await counts()).toEqual({ ab: 1, lg: 1, l0: 1, r: 1 });
    expect(sloOutcomeOfError(forced)).toBe('refused');
    expect(sloOutcomeOfError(opened)).toBe('bad');
  });
});

describe('SLO actions end to end (layer + recorder + store + evaluator)', () => {
  /** Fail `n` calls with 503 through the layer, flush, evaluate. */
  const burn = async (s: ReturnType<typeof setup>, n: number) => {
    s.upstream.status = 503;
    for (let i = 0; i < n; i++) await s.call();
    s.upstream.status = 200;
    await s.recorder.flush();
    await s.evaluator.evaluate();
  };

  it('shed: after a fast burn, calls fail fast with 503 SLO_BUDGET_EXHAUSTED without reaching the upstream, until the admin API suspends the action', async () => {
    const s = setup({ onFastBurn: 'shed', onBudgetExhausted: 'shed' });
    await burn(s, 20);
    expect(s.upstream.calls).toBe(20);
    const err = await s.call().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'SLO_BUDGET_EXHAUSTED', statusCode: 503, headers: { 'x-should-retry': 'false' } });
    expect(s.upstream.calls).toBe(20);
    // The refusal is counted apart: it does not burn more budget.
    expect(await s.counts()).toMatchObject({ ab: 20, r: 1 });
    s.evaluator.suspend('chat');
    const res = await s.call();
    expect(res.statusCode).toBe(200);
    expect(s.upstream.calls).toBe(21);
  });

  it('throttle: admits throttleRps calls per second and answers 429 SLO_THROTTLED with Retry-After to the rest', async () => {
    const s = setup({ onFastBurn: 'throttle', throttleRps: 1 });
    await burn(s, 20);
    expect((await s.call()).statusCode).toBe(200);
    const err = await s.call().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'SLO_THROTTLED', statusCode: 429, headers: { 'retry-after': '1' } });
    expect(s.upstream.calls).toBe(21);
    s.clock.t += 1000;
    expect((await s.call()).statusCode).toBe(200);
  });

  it('degrade: calls pass with the fallback step to start at, for the fallback layer', async () => {
    const steps = [{ type: 'static', body: 'first' }, { type: 'static', body: 'cheaper' }];
    const s = setup({ onFastBurn: 'degrade', degradeToStep: 1 }, { fallback: steps });
    await burn(s, 20);
    const c = s.ctx();
    await s.call({}, c);
    expect(c.facts).toMatchObject({ sloAction: 'degrade', degradeToStep: 1 });
  });

  it('passes calls untouched on a route with SLOs disabled', async () => {
    const s = setup({ enabled: false });
    await s.call();
    expect(await s.counts()).toEqual({});
  });
});
