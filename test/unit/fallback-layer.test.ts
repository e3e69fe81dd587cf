import { PassThrough, Writable } from 'node:stream';
import { pino } from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import { RouteSchema, type RouteConfig } from '../../src/config/schema.js';
import {
  BadRequestError,
  CircuitOpenError,
  ClientClosedError,
  FallbackExhaustedError,
  UpstreamConnectError,
  UpstreamTimeoutError,
} from '../../src/errors.js';
import type { CallContext, Handler, ProxyRequest, ProxyResponse } from '../../src/pipeline/types.js';
import { compose } from '../../src/pipeline/compose.js';
import { fallbackLayer, withModel, type FallbackStepHandler } from '../../src/policies/fallback.js';
import { retryLayer } from '../../src/policies/retry.js';
import { createMetrics, type Metrics } from '../../src/telemetry/metrics.js';
import { callContext } from '../helpers/pipeline.js';

const routeOf = (over: Record<string, unknown> = {}): RouteConfig =>
  RouteSchema.parse({ name: 'r', match: { pathPrefix: '/r' }, upstream: { url: 'http://127.0.0.1:1' }, ...over });

const ctxOf = (route: RouteConfig, signal = new AbortController().signal, log = pino({ level: 'silent' })): CallContext =>
  callContext(route, { signal, log });

const req: ProxyRequest = {
  method: 'POST',
  path: '/v1/chat/completions',
  headers: { 'content-length': '36' },
  body: { kind: 'buffered', bytes: Buffer.from('{"model":"gpt-4o","messages":[],"n":1}') },
};

type Tracked = ProxyResponse & { discarded: boolean };
const response = (statusCode: number): Tracked => {
  const r = { statusCode, headers: {}, body: new PassThrough(), observers: [], discarded: false } as Tracked;
  r.observers.push({ onEnd: (end) => (r.discarded = end.discarded === true) });
  return r;
};

/** A step (or primary) answering `outcome`: a status, an error to throw, or undefined (nothing to offer). */
const stepOf = (name: string, outcome: number | Error | undefined, log: string[], final = false, sendsBody = !final) => {
  const made: Tracked[] = [];
  const step: FallbackStepHandler = {
    name,
    final,
    sendsBody,
    handler: async () => {
      log.push(name);
      if (outcome instanceof Error) throw outcome;
      if (outcome === undefined) return undefined;
      const r = response(outcome);
      made.push(r);
      return r;
    },
  };
  return { step, made };
};

describe('fallback layer', () => {
  let metrics: Metrics;
  let order: string[];
  beforeEach(() => {
    metrics = createMetrics({ defaultMetrics: false });
    order = [];
  });
  const layerOf = (route: RouteConfig, steps: FallbackStepHandler[]) => fallbackLayer(route, steps, { now: () => 0, metrics });
  const primary = (outcome: number | Error): { handler: Handler; made: Tracked[] } => {
    const s = stepOf('primary', outcome, order);
    return { handler: s.step.handler as Handler, made: s.made };
  };
  const count = async (m: Metrics['fallbacks'] | Metrics['fallbackAttempts'], labels: Record<string, string>) =>
    (await m.get()).values.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k as never] === x)).reduce((s, v) => s + v.value, 0);

  it('returns the primary answer untouched when it succeeds', async () => {
    const route = routeOf();
    const ctx = ctxOf(route);
    const res = await layerOf(route, [stepOf('a', 200, order).step])(primary(200).handler)(req, ctx);
    expect(res.statusCode).toBe(200);
    expect(order).toEqual(['primary']);
    expect(ctx.fallbackStep).toBeUndefined();
  });

  it('tries steps in order after exhausted retries, discards the answers it does not use, and names the step that answered', async () => {
    const route = routeOf();
    const p = primary(503);
    const a = stepOf('a', 502, order);
    const b = stepOf('b', 200, order);
    const c = stepOf('c', 200, order);
    const ctx = ctxOf(route);
    const res = await layerOf(route, [a.step, b.step, c.step])(p.handler)(req, ctx);
    expect(res).toBe(b.made[0]);
    expect(order).toEqual(['primary', 'a', 'b']);
    expect(p.made[0]!.discarded).toBe(true);
    expect(a.made[0]!.discarded).toBe(true);
    expect(b.made[0]!.discarded).toBe(false);
    expect(ctx.fallbackStep).toBe('b');
    expect(await count(metrics.fallbacks, { route: 'r', step: 'b', reason: 'retries_exhausted' })).toBe(1);
    expect(await count(metrics.fallbackAttempts, { step: 'a', outcome: 'failed' })).toBe(1);
  });

  it('treats a 429 from a step as a failure, like a 5xx', async () => {
    const route = routeOf();
    const ctx = ctxOf(route);
    await layerOf(route, [stepOf('a', 429, order).step, stepOf('b', 200, order).step])(primary(503).handler)(req, ctx);
    expect(ctx.fallbackStep).toBe('b');
  });

  it('falls back when the primary breaker is open, and on upstream errors thrown after retries', async () => {
    const route = routeOf();
    for (const [err, reason] of [
      [new CircuitOpenError('open'), 'circuit_open'],
      [new UpstreamConnectError('refused'), 'retries_exhausted'],
      [new UpstreamTimeoutError('headers', { phase: 'headers' }), 'retries_exhausted'],
    ] as const) {
      const ctx = ctxOf(route);
      await layerOf(route, [stepOf('a', 200, order).step])(primary(err).handler)(req, ctx);
      expect(ctx.fallbackStep).toBe('a');
      expect(await count(metrics.fallbacks, { step: 'a', reason })).toBeGreaterThan(0);
    }
  });

  it('falls back on a final 500 with maxRetriesOn500: 0 exactly as on a 502: it reads the verdict, not the status again', async () => {
    const route = routeOf({ idempotent: true, retry: { maxRetriesOn500: 0, baseMs: 1 } });
    for (const status of [500, 502]) {
      const ctx = ctxOf(route);
      const attempts: number[] = [];
      const terminal: Handler = async () => {
        attempts.push(status);
        return response(status);
      };
      const chain = compose(layerOf(route, [stepOf('a', 200, order).step]), retryLayer(route, { now: () => 0, random: () => 0, metrics }));
      const res = await chain(terminal)(req, ctx);
      expect(res.statusCode).toBe(200);
      expect(ctx.fallbackStep).toBe('a');
      // The 500 is never retried (maxRetriesOn500: 0); the 502 is, maxRetries times.
      expect(attempts).toHaveLength(status === 500 ? 1 : 4);
    }
    expect(await count(metrics.fallbacks, { step: 'a', reason: 'retries_exhausted' })).toBe(2);
  });

  it('judges an answer by the verdict it carries, made where it arose', async () => {
    const route = routeOf();
    // A route whose send classified this 503 as final (say, a narrowed retryableStatuses): no fallback.
    const fatal = response(503);
    fatal.verdict = { outcome: 'fatal', breakerFailure: true, reason: 'status_5xx', beforeSend: false };
    const res = await layerOf(route, [stepOf('a', 200, order).step])(async () => fatal)(req, ctxOf(route));
    expect(res).toBe(fatal);
    expect(order).not.toContain('a');
  });

  it('falls back on a final status listed in fallbackOn, and not on other 4xx', async () => {
    const route = routeOf({ fallbackOn: [400] });
    const ctx = ctxOf(route);
    await layerOf(route, [stepOf('a', 200, order).step])(primary(400).handler)(req, ctx);
    expect(ctx.fallbackStep).toBe('a');
    expect(await count(metrics.fallbacks, { reason: 'fallback_on' })).toBe(1);
    const other = await layerOf(route, [stepOf('b', 200, order).step])(primary(404).handler)(req, ctxOf(route));
    expect(other.statusCode).toBe(404);
    expect(order).not.toContain('b');
  });

  it('does not fall back for Fusebox refusals, the call deadline, or an agent that left', async () => {
    const route = routeOf();
    for (const err of [new BadRequestError('bad'), new ClientClosedError('gone'), new UpstreamTimeoutError('total', { phase: 'total' })]) {
      await expect(layerOf(route, [stepOf('a', 200, order).step])(primary(err).handler)(req, ctxOf(route))).rejects.toBe(err);
    }
    const controller = new AbortController();
    controller.abort(new ClientClosedError('gone'));
    const res = await layerOf(route, [stepOf('a', 200, order).step])(primary(503).handler)(req, ctxOf(route, controller.signal));
    expect(res.statusCode).toBe(503);
    expect(order).not.toContain('a');
  });

  it('answers 502 FALLBACK_EXHAUSTED listing every attempt when all steps fail', async () => {
    const route = routeOf();
    const lines: Array<Record<string, unknown>> = [];
    const sink = new Writable({
      write(c: Buffer, _e, cb) {
        lines.push(JSON.parse(c.toString()) as Record<string, unknown>);
        cb();
      },
    });
    const steps = [
      stepOf('backup', 503, order).step,
      stepOf('other-route', new CircuitOpenError('open'), order).step,
      stepOf('cache', undefined, order).step,
      stepOf('broken', new UpstreamConnectError('refused'), order).step,
    ];
    const err = (await layerOf(route, steps)(primary(new CircuitOpenError('open', {}))
      .handler)(req, ctxOf(route, undefined, pino(sink)))
      .catch((e: unknown) => e)) as FallbackExhaustedError;
    expect(err).toBeInstanceOf(FallbackExhaustedError);
    expect(err.statusCode).toBe(502);
    expect(err.headers['x-should-retry']).toBe('false');
    expect(err.details.attempts).toEqual([
      { step: 'primary', outcome: 'circuit_open', code: 'CIRCUIT_OPEN' },
      { step: 'backup', outcome: 'failed', status: 503 },
      { step: 'other-route', outcome: 'circuit_open', code: 'CIRCUIT_OPEN' },
      { step: 'cache', outcome: 'miss' },
      { step: 'broken', outcome: 'error', code: 'UPSTREAM_CONNECT_FAILED' },
    ]);
    expect(lines.find((l) => l.msg === 'fallback exhausted')).toBeDefined();
  });

  it('takes a static step as the last word whatever its status', async () => {
    const route = routeOf();
    const ctx = ctxOf(route);
    const res = await layerOf(route, [stepOf('a', 503, order).step, stepOf('static-1', 503, order, true).step])(primary(503).handler)(req, ctx);
    expect(res.statusCode).toBe(503);
    expect(ctx.fallbackStep).toBe('static-1');
  });

  it('does not send a streamed body a second time: only a breaker refusal leaves it unread', async () => {
    const route = routeOf();
    const streamed: ProxyRequest = { ...req, body: { kind: 'stream', stream: new PassThrough() } };
    const steps = () => [stepOf('upstream-0', 200, order).step, stepOf('static-1', 200, order, true).step];
    const sent = ctxOf(route);
    await layerOf(route, steps())(primary(503).handler)(streamed, sent);
    expect(sent.fallbackStep).toBe('static-1');
    expect(order).toEqual(['primary', 'static-1']);

    order.length = 0;
    const refused = ctxOf(route);
    await layerOf(route, steps())(primary(new CircuitOpenError('open')).handler)(streamed, refused);
    expect(refused.fallbackStep).toBe('upstream-0');

    order.length = 0;
    const twice = [stepOf('a', 503, order).step, stepOf('b', 200, order).step, stepOf('static-2', 200, order, true).step];
    const ctx = ctxOf(route);
    await layerOf(route, twice)(primary(new CircuitOpenError('open')).handler)(streamed, ctx);
    expect(order).toEqual(['primary', 'a', 'static-2']);
    expect(await count(metrics.fallbackAttempts, { step: 'b', outcome: 'not_replayable' })).toBe(1);
  });

  it('is no layer at all for a route without steps', async () => {
    const route = routeOf();
    const p = primary(new CircuitOpenError('open'));
    expect(layerOf(route, [])(p.handler)).toBe(p.handler);
  });
});

describe('model rewrite for fallback steps', () => {
  const route = routeOf();
  it('replaces model in a buffered JSON body and fixes content-length', () => {
    const ctx = ctxOf(route);
    const out = withModel(req, 'gpt-4o-mini', ctx, 'mini');
    expect(out.body.kind === 'buffered' && out.body.bytes.toString()).toBe('{"model":"gpt-4o-mini","messages":[],"n":1}');
    expect(out.headers['content-length']).toBe('43');
    expect(req.headers['content-length']).toBe('36');
    expect(ctx.facts.fallbackModel).toBe('gpt-4o-mini');
  });

  it('leaves a body that is not JSON (or streamed) unchanged', () => {
    const plain: ProxyRequest = { ...req, body: { kind: 'buffered', bytes: Buffer.from('model=gpt-4o') } };
    expect(withModel(plain, 'gpt-4o-mini', ctxOf(route), 'mini')).toBe(plain);
    const streamed: ProxyRequest = { ...req, body: { kind: 'stream', stream: new PassThrough() } };
    expect(withModel(streamed, 'gpt-4o-mini', ctxOf(route), 'mini')).toBe(streamed);
    expect(withModel(req, undefined, ctxOf(route), 'none')).toBe(req);
  });
});
