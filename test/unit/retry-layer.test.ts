import { PassThrough, Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { RouteSchema, type RouteConfig } from '../../src/config/schema.js';
import { CircuitOpenError, UpstreamConnectError, UpstreamResetError } from '../../src/errors.js';
import type { CallContext, Handler, ProxyRequest, ProxyResponse } from '../../src/pipeline/types.js';
import { compose } from '../../src/pipeline/compose.js';
import { makeBreakers } from '../../src/policies/breaker.js';
import { isResendable, retryLayer } from '../../src/policies/retry.js';
import { createMetrics, type Metrics } from '../../src/telemetry/metrics.js';
import { callContext } from '../helpers/pipeline.js';

const routeOf = (over: Record<string, unknown> = {}): RouteConfig =>
  RouteSchema.parse({ name: 'r', match: { pathPrefix: '/r' }, upstream: { url: 'http://127.0.0.1:1' }, ...over });

const ctxOf = (route: RouteConfig, over: Partial<CallContext> = {}): CallContext => callContext(route, over);

const get = (path = '/x'): ProxyRequest => ({ method: 'GET', path, headers: {}, body: { kind: 'none' } });
const post = (headers: Record<string, string> = {}): ProxyRequest => ({
  method: 'POST',
  path: '/x',
  headers,
  body: { kind: 'buffered', bytes: Buffer.from('{"a":1}') },
});

/** A response whose body is a live stream, so a test can see whether the layer destroyed it. */
const response = (statusCode: number, headers: Record<string, string> = {}): ProxyResponse & { discarded: boolean } => {
  const r = { statusCode, headers, body: new PassThrough(), observers: [], discarded: false } as ProxyResponse & { discarded: boolean };
  r.observers.push({ onEnd: (end) => (r.discarded = end.discarded === true) });
  return r;
};

/** A terminal that plays `script` in order (a status, or an error to throw) and records when each attempt came. */
const scripted = (script: Array<number | Error | (() => ProxyResponse)>) => {
  const calls: number[] = [];
  const made: Array<ProxyResponse & { discarded?: boolean }> = [];
  const handler: Handler = async () => {
    calls.push(Date.now());
    const step = script[Math.min(calls.length - 1, script.length - 1)]!;
    if (step instanceof Error) throw step;
    const res = typeof step === 'number' ? response(step) : step();
    made.push(res);
    return res;
  };
  return { handler, calls, made };
};

const retriesCount = async (m: Metrics, outcome: string, reason?: string) => {
  const values = (await m.retries.get()).values;
  return values.filter((v) => v.labels.outcome === outcome && (reason === undefined || v.labels.reason === reason)).reduce((s, v) => s + v.value, 0);
};

describe('retry layer', () => {
  let metrics: Metrics;
  beforeEach(() => {
    vi.useFakeTimers({ now: 1_000_000 });
    metrics = createMetrics({ defaultMetrics: false });
  });
  afterEach(() => vi.useRealTimers());

  const layerOf = (route: RouteConfig, random = () => 0.5) => retryLayer(route, { now: () => Date.now(), random, metrics });

  it('retries a 503 with full-jitter exponential delays (random · base · 2^n) and returns the first success', async () => {
    const route = routeOf();
    const t = scripted([503, 503, 503, 200]);
    const pending = layerOf(route)(t.handler)(get(), ctxOf(route));
    await vi.runAllTimersAsync();
    const res = await pending;
    expect(res.statusCode).toBe(200);
    const start = t.calls[0]!;
    // random 0.5 → 250, 500, 1000 ms after each failure (base 500).
    expect(t.calls.map((c) => c - start)).toEqual([0, 250, 750, 1750]);
    expect(t.made.slice(0, 3).every((r) => r.discarded)).toBe(true);
    expect(await retriesCount(metrics, 'retried', 'status_5xx')).toBe(3);
  });

  it('caps each delay at capMs', async () => {
    const route = routeOf({ retry: { baseMs: 1000, capMs: 1500 } });
    const t = scripted([503, 503, 200]);
    const pending = layerOf(route, () => 0.999)(t.handler)(get(), ctxOf(route));
    await vi.runAllTimersAsync();
    await pending;
    const start = t.calls[0]!;
    expect(t.calls.map((c) => c - start)).toEqual([0, 999, 999 + 1498]);
  });

  it('stops after maxRetries and returns the last failing response, counted as limit_reached', async () => {
    const route = routeOf({ retry: { maxRetries: 2, baseMs: 10 } });
    const t = scripted([503]);
    const pending = layerOf(route)(t.handler)(get(), ctxOf(route));
    await vi.runAllTimersAsync();
    const res = await pending;
    expect(res.statusCode).toBe(503);
    expect(t.calls).toHaveLength(3);
    expect((res as { discarded?: boolean }).discarded).toBe(false);
    expect(await retriesCount(metrics, 'limit_reached')).toBe(1);
  });

  it('waits exactly what Retry-After asks before retrying a 429', async () => {
    const route = routeOf();
    const t = scripted([() => response(429, { 'retry-after': '2' }), 200]);
    const pending = layerOf(route)(t.handler)(get(), ctxOf(route));
    await vi.runAllTimersAsync();
    expect((await pending).statusCode).toBe(200);
    expect(t.calls[1]! - t.calls[0]!).toBe(2000);
  });

  it('does not wait a Retry-After longer than retryAfterMaxMs: answers at once', async () => {
    const route = routeOf({ retry: { retryAfterMaxMs: 5000 } });
    const t = scripted([() => response(429, { 'retry-after-ms': '5001' }), 200]);
    const res = await layerOf(route)(t.handler)(get(), ctxOf(route));
    expect(res.statusCode).toBe(429);
    expect(t.calls).toHaveLength(1);
    expect(await retriesCount(metrics, 'retry_after_too_long', 'status_429')).toBe(1);
  });

  it('does not start a wait that would pass the call deadline', async () => {
    const route = routeOf();
    const t = scripted([() => response(503, { 'retry-after': '3' }), 200]);
    const res = await layerOf(route)(t.handler)(get(), ctxOf(route, { deadline: Date.now() + 2000 }));
    expect(res.statusCode).toBe(503);
    expect(t.calls).toHaveLength(1);
    expect(await retriesCount(metrics, 'deadline')).toBe(1);
  });

  it('does not resend a POST to a tool route after it was sent, but does after a connect error', async () => {
    const route = routeOf();
    const sent = scripted([503, 200]);
    expect((await layerOf(route)(sent.handler)(post(), ctxOf(route))).statusCode).toBe(503);
    expect(sent.calls).toHaveLength(1);
    expect(await retriesCount(metrics, 'not_idempotent', 'status_5xx')).toBe(1);

    const reset = scripted([new UpstreamResetError('reset', { errno: 'ECONNRESET' }), 200]);
    await expect(layerOf(route)(reset.handler)(post(), ctxOf(route))).rejects.toBeInstanceOf(UpstreamResetError);
    expect(reset.calls).toHaveLength(1);

    const refused = scripted([new UpstreamConnectError('refused', { errno: 'ECONNREFUSED' }), 200]);
    const pending = layerOf(route)(refused.handler)(post(), ctxOf(route));
    await vi.runAllTimersAsync();
    expect((await pending).statusCode).toBe(200);
    expect(refused.calls).toHaveLength(2);
  });

  it('resends a POST when the route is idempotent, the call has an Idempotency-Key, or the route is an LLM provider', async () => {
    for (const [route, req] of [
      [routeOf({ idempotent: true }), post()],
      [routeOf(), post({ 'idempotency-key': 'k-1' })],
      [routeOf({ provider: 'openai' }), post()],
      [routeOf({ provider: 'anthropic' }), post()],
    ] as const) {
      const t = scripted([503, 200]);
      const pending = layerOf(route)(t.handler)(req, ctxOf(route));
      await vi.runAllTimersAsync();
      expect((await pending).statusCode).toBe(200);
    }
    expect(isResendable({ method: 'POST', headers: {} }, { provider: 'openai', idempotent: false })).toBe(false);
    expect(isResendable({ method: 'PATCH', headers: {} }, { provider: 'mcp', idempotent: undefined })).toBe(false);
    expect(isResendable({ method: 'DELETE', headers: {} }, { provider: 'none', idempotent: false })).toBe(true);
  });

  it('never retries a streamed (unbuffered) body', async () => {
    const route = routeOf({ idempotent: true });
    const t = scripted([503, 200]);
    const req: ProxyRequest = { method: 'PUT', path: '/x', headers: {}, body: { kind: 'stream', stream: new PassThrough(), length: 5_000_000 } };
    expect((await layerOf(route)(t.handler)(req, ctxOf(route))).statusCode).toBe(503);
    expect(t.calls).toHaveLength(1);
    expect(await retriesCount(metrics, 'not_replayable')).toBe(1);
  });

  it('never retries through an open breaker: CIRCUIT_OPEN goes straight up', async () => {
    const route = routeOf();
    const t = scripted([503, new CircuitOpenError('open'), 200]);
    const pending = layerOf(route)(t.handler)(get(), ctxOf(route));
    const settled = pending.catch((e: unknown) => e);
    await vi.runAllTimersAsync();
    expect(await settled).toBeInstanceOf(CircuitOpenError);
    expect(t.calls).toHaveLength(2);
  });

  it('stops with the upstream’s own answer when the attempt opens the breaker: no backoff, no retry counted, no CIRCUIT_OPEN', async () => {
    const route = routeOf({ breaker: { consecutiveFailures: 3, resetMs: 30_000, resetJitterPercent: 0 } });
    const lines: Array<Record<string, unknown>> = [];
    const log = pino(
      new Writable({
        write(c: Buffer, _e, cb) {
          lines.push(JSON.parse(c.toString()) as Record<string, unknown>);
          cb();
        },
      }),
    );
    const breakers = makeBreakers(route, { now: () => Date.now(), random: () => 0, logger: pino({ level: 'silent' }), metrics });
    const upstreamError = Buffer.from('{"error":{"message":"primary is down"}}');
    const t = scripted([() => ({ statusCode: 503, headers: { 'content-type': 'application/json' }, body: upstreamError, observers: [] })]);
    const chain = compose(retryLayer(route, { now: () => Date.now(), random: () => 0.5, metrics, breakers }), breakers.layer)(t.handler);
    const started = Date.now();
    const pending = chain(get(), ctxOf(route, { log }));
    await vi.runAllTimersAsync();
    const res = await pending;

    expect(t.calls).toHaveLength(3);
    expect(res.statusCode).toBe(503);
    expect(res.body).toBe(upstreamError);
    expect(res.headers['x-fusebox-breaker']).toBe('open');
    // Backed off 250 and 500 ms before the 2nd and 3rd attempts, and not at all after the 3rd.
    expect(Date.now() - started).toBe(750);
    expect(await retriesCount(metrics, 'retried')).toBe(2);
    expect(await retriesCount(metrics, 'circuit_open', 'status_5xx')).toBe(1);
    expect(lines.filter((l) => l.msg === 'retrying')).toHaveLength(2);
    expect(lines.find((l) => l.msg === 'not retrying')).toMatchObject({ attempt: 3, outcome: 'circuit_open', status: 503 });
    expect((await metrics.breakerRejections.get()).values.reduce((n, v) => n + v.value, 0)).toBe(0);
  });

  it('asks the breaker about the moment the retry would be sent: a probe due before the backoff ends is still taken', async () => {
    const route = routeOf({ breaker: { consecutiveFailures: 1, resetMs: 100, resetJitterPercent: 0 } });
    const breakers = makeBreakers(route, { now: () => Date.now(), random: () => 0, logger: pino({ level: 'silent' }), metrics });
    const t = scripted([503, 200]);
    // random 0.5 → a 250 ms backoff, past the breaker's 100 ms reset: the retry is the half-open probe.
    const chain = compose(retryLayer(route, { now: () => Date.now(), random: () => 0.5, metrics, breakers }), breakers.layer)(t.handler);
    const pending = chain(get(), ctxOf(route));
    await vi.runAllTimersAsync();
    expect((await pending).statusCode).toBe(200);
    expect(t.calls).toHaveLength(2);
  });

  it('retries a 500 only maxRetriesOn500 times', async () => {
    const route = routeOf({ retry: { maxRetriesOn500: 1 } });
    const t = scripted([500]);
    const pending = layerOf(route)(t.handler)(get(), ctxOf(route));
    await vi.runAllTimersAsync();
    expect((await pending).statusCode).toBe(500);
    expect(t.calls).toHaveLength(2);
    expect(await retriesCount(metrics, 'limit_reached', 'status_5xx')).toBe(1);
  });

  it('does not retry a 4xx', async () => {
    const route = routeOf();
    const t = scripted([400, 200]);
    expect((await layerOf(route)(t.handler)(get(), ctxOf(route))).statusCode).toBe(400);
    expect(t.calls).toHaveLength(1);
  });

  it('refuses retries over the budget: budgetPercent of recent calls plus the per-second floor', async () => {
    // 0 % and a floor of 1/s over a 1 s window: one retry per second, whatever the load.
    const route = routeOf({ retry: { budgetPercent: 0, minRetriesPerSecond: 1, budgetWindowMs: 1000, baseMs: 0 } });
    const t = scripted([503]);
    const layer = layerOf(route)(t.handler);
    const first = layer(get(), ctxOf(route));
    await vi.runAllTimersAsync();
    await first;
    expect(t.calls).toHaveLength(2);
    expect(await retriesCount(metrics, 'budget_exhausted')).toBe(1);
    const second = await layer(get(), ctxOf(route));
    expect(second.statusCode).toBe(503);
    expect(t.calls).toHaveLength(3);
    expect(await retriesCount(metrics, 'budget_exhausted')).toBe(2);
  });

  it('stops waiting when the call is aborted during a backoff', async () => {
    const route = routeOf();
    const controller = new AbortController();
    const t = scripted([503, 200]);
    const pending = layerOf(route)(t.handler)(get(), ctxOf(route, { signal: controller.signal }));
    const settled = pending.catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(10);
    controller.abort(new Error('client gone'));
    expect(((await settled) as Error).message).toBe('client gone');
    expect(t.calls).toHaveLength(1);
  });

  it('passes calls straight through when retries are disabled', async () => {
    const route = routeOf({ retry: { enabled: false } });
    const t = scripted([503, 200]);
    expect((await layerOf(route)(t.handler)(get(), ctxOf(route))).statusCode).toBe(503);
    expect(t.calls).toHaveLength(1);
  });
});
