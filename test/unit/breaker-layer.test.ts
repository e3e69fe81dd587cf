import { PassThrough, Writable } from 'node:stream';
import { pino } from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import { RouteSchema, type RouteConfig } from '../../src/config/schema.js';
import { CircuitOpenError, ClientClosedError, UpstreamResetError } from '../../src/errors.js';
import { discardResponse } from '../../src/pipeline/body-end.js';
import type { BodyEnd, CallContext, Handler, ProxyRequest, ProxyResponse } from '../../src/pipeline/types.js';
import { makeBreakers } from '../../src/policies/breaker.js';
import { createMetrics, type Metrics } from '../../src/telemetry/metrics.js';
import { callContext } from '../helpers/pipeline.js';

const routeOf = (over: Record<string, unknown> = {}): RouteConfig =>
  RouteSchema.parse({
    name: 'r',
    match: { pathPrefix: '/r' },
    upstream: { url: 'http://127.0.0.1:1' },
    ...over,
    breaker: { consecutiveFailures: 3, resetMs: 10_000, resetJitterPercent: 0, ...((over.breaker as object | undefined) ?? {}) },
  });

const ctxOf = (route: RouteConfig): CallContext => callContext(route);

const get: ProxyRequest = { method: 'GET', path: '/x', headers: {}, body: { kind: 'none' } };
const jsonReq = (obj: unknown): ProxyRequest => ({ method: 'POST', path: '/x', headers: {}, body: { kind: 'buffered', bytes: Buffer.from(JSON.stringify(obj)) } });
const toolCall = (name: string) => jsonReq({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name, arguments: {} } });

const response = (statusCode: number, body: Buffer | PassThrough = new PassThrough()): ProxyResponse => ({ statusCode, headers: {}, body, observers: [] });

/** Play a body to its observers the way sendResponse does. */
const finish = (res: ProxyResponse, end: Partial<BodyEnd> = {}, chunk?: Buffer) => {
  if (chunk !== undefined) for (const o of res.observers) o.onChunk?.(chunk);
  for (const o of res.observers) o.onEnd?.({ ok: true, bytes: chunk?.length ?? 0, ...end });
};

describe('breaker layer', () => {
  let clock: { t: number };
  let metrics: Metrics;
  let lines: Array<Record<string, unknown>>;
  let calls: number;

  beforeEach(() => {
    clock = { t: 1_000_000 };
    metrics = createMetrics({ defaultMetrics: false });
    lines = [];
    calls = 0;
  });

  const setup = (route: RouteConfig, terminal: Handler, fixedKey?: string) => {
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        cb();
      },
    });
    const breakers = makeBreakers(route, { now: () => clock.t, random: () => 0, logger: pino(sink), metrics }, fixedKey);
    const counted: Handler = (req, ctx) => {
      calls += 1;
      return terminal(req, ctx);
    };
    return { handler: breakers.layer(counted), registry: breakers.registry, wouldAdmit: breakers.wouldAdmit };
  };
  const gauge = async (key: string) => (await metrics.breakerState.get()).values.find((v) => v.labels.key === key)?.value;

  it('opens after consecutive 5xx, then refuses at once with 503 CIRCUIT_OPEN, Retry-After and x-should-retry: false', async () => {
    const route = routeOf();
    const { handler } = setup(route, async () => response(503));
    const answers = [];
    for (let i = 0; i < 3; i++) answers.push(await handler(get, ctxOf(route)));
    expect(answers.map((a) => a.statusCode)).toEqual([503, 503, 503]);
    // The answer of the attempt that opened it says so; the ones before do not.
    expect(answers.map((a) => a.headers['x-fusebox-breaker'])).toEqual([undefined, undefined, 'open']);
    const err = (await handler(get, ctxOf(route)).catch((e: unknown) => e)) as CircuitOpenError;
    expect(err).toBeInstanceOf(CircuitOpenError);
    expect(err.statusCode).toBe(503);
    expect(err.headers).toEqual({ 'retry-after': '10', 'x-should-retry': 'false', 'x-fusebox-breaker': 'open' });
    expect(err.details).toMatchObject({ breaker: 'r', state: 'open', retryAfterMs: 10_000 });
    expect(calls).toBe(3);
    expect(await gauge('r')).toBe(2);
    expect((await metrics.breakerRejections.get()).values[0]?.value).toBe(1);
    const transition = lines.find((l) => l.msg === 'breaker transition');
    expect(transition).toMatchObject({ route: 'r', key: 'r', from: 'closed', to: 'open', reason: 'consecutive_failures', lastFailure: 'status_5xx' });
  });

  it('lets exactly one probe through after resetMs; the probe succeeding at its body end closes the breaker', async () => {
    const route = routeOf();
    let status = 503;
    const { handler } = setup(route, async () => response(status));
    for (let i = 0; i < 3; i++) await handler(get, ctxOf(route));
    clock.t += 10_000;
    status = 200;
    const probe = await handler(get, ctxOf(route));
    await expect(handler(get, ctxOf(route))).rejects.toBeInstanceOf(CircuitOpenError);
    expect(await gauge('r')).toBe(1);
    finish(probe);
    expect(await gauge('r')).toBe(0);
    expect((await handler(get, ctxOf(route))).statusCode).toBe(200);
    expect(calls).toBe(5);
    expect(lines.filter((l) => l.msg === 'breaker transition').map((l) => l.to)).toEqual(['open', 'half_open', 'closed']);
  });

  it('does not count 4xx answers against the upstream', async () => {
    const route = routeOf();
    const { handler, registry } = setup(route, async () => response(404));
    for (let i = 0; i < 5; i++) finish(await handler(get, ctxOf(route)));
    expect(registry.peek('r')?.stats()).toMatchObject({ state: 'closed', calls: 5, failures: 0 });
  });

  it('counts a body the upstream broke after the commit point, and counts errors thrown before headers', async () => {
    const route = routeOf();
    let mode: 'ok' | 'reset' = 'ok';
    const { handler, registry } = setup(route, async () => {
      if (mode === 'reset') throw new UpstreamResetError('reset', { errno: 'ECONNRESET' });
      return response(200);
    });
    finish(await handler(get, ctxOf(route)), { ok: false, failedBy: 'upstream', error: new Error('socket hang up') });
    mode = 'reset';
    await expect(handler(get, ctxOf(route))).rejects.toBeInstanceOf(UpstreamResetError);
    expect(registry.peek('r')?.stats()).toMatchObject({ calls: 2, failures: 2, lastFailure: 'reset' });
  });

  it('refuses a forced-open breaker without Retry-After: an operator’s override is never probed', async () => {
    const route = routeOf();
    const { handler, registry } = setup(route, async () => response(200));
    finish(await handler(get, ctxOf(route)));
    registry.peek('r')?.forceOpen();
    clock.t += 60_000;
    const err = (await handler(get, ctxOf(route)).catch((e: unknown) => e)) as CircuitOpenError;
    expect(err).toBeInstanceOf(CircuitOpenError);
    expect(err.forced).toBe(true);
    expect(err.headers).toEqual({ 'x-should-retry': 'false', 'x-fusebox-breaker': 'forced_open' });
    expect(err.details).toEqual({ breaker: 'r', state: 'forced_open' });
  });

  it('marks an upstream error that opened the breaker with x-fusebox-breaker: open', async () => {
    const route = routeOf();
    const { handler } = setup(route, async () => {
      throw new UpstreamResetError('reset', { errno: 'ECONNRESET' });
    });
    const errors: UpstreamResetError[] = [];
    for (let i = 0; i < 3; i++) errors.push((await handler(get, ctxOf(route)).catch((e: unknown) => e)) as UpstreamResetError);
    expect(errors.map((e) => e.headers['x-fusebox-breaker'])).toEqual([undefined, undefined, 'open']);
  });

  it('wouldAdmit peeks at the request’s breaker without making one or taking the probe', async () => {
    const route = routeOf({ breaker: { keyBy: 'model' } });
    const { handler, registry, wouldAdmit } = setup(route, async () => response(503));
    expect(wouldAdmit(jsonReq({ model: 'm' }), clock.t)).toBe(true);
    expect(registry.size).toBe(0);
    for (let i = 0; i < 3; i++) await handler(jsonReq({ model: 'm' }), ctxOf(route));
    expect(wouldAdmit(jsonReq({ model: 'm' }), clock.t)).toBe(false);
    expect(wouldAdmit(jsonReq({ model: 'm' }), clock.t + 10_000)).toBe(true);
    expect(wouldAdmit(jsonReq({ model: 'other' }), clock.t)).toBe(true);
    clock.t += 10_000;
    expect(wouldAdmit(jsonReq({ model: 'm' }), clock.t)).toBe(true);
    expect(registry.peek('m')?.state()).toBe('open');
  });

  it('gives no verdict for a discarded body or an agent that went away', async () => {
    const route = routeOf();
    let throwAbort = false;
    const { handler, registry } = setup(route, async () => {
      if (throwAbort) throw new ClientClosedError('gone');
      return response(200);
    });
    const discarded = await handler(get, ctxOf(route));
    discardResponse(discarded);
    finish(await handler(get, ctxOf(route)), { ok: false, failedBy: 'client', error: new Error('client closed') });
    throwAbort = true;
    await expect(handler(get, ctxOf(route))).rejects.toBeInstanceOf(ClientClosedError);
    expect(registry.peek('r')?.stats()).toMatchObject({ calls: 0, failures: 0 });
  });

  it('keeps one breaker per MCP tool and counts a tool error inside a 200 as that tool’s failure', async () => {
    const route = routeOf({ provider: 'mcp' });
    const { handler } = setup(route, async () => response(200));
    const sse = (result: unknown) => Buffer.from(`event: message\ndata: ${JSON.stringify({ jsonrpc: '2.0', id: 1, result })}\n\n`);
    for (let i = 0; i < 3; i++) {
      finish(await handler(toolCall('bad'), ctxOf(route)), {}, sse({ content: [], isError: true }));
      finish(await handler(toolCall('good'), ctxOf(route)), {}, sse({ content: [{ type: 'text', text: 'ok' }] }));
    }
    await expect(handler(toolCall('bad'), ctxOf(route))).rejects.toMatchObject({ code: 'CIRCUIT_OPEN', details: { breaker: 'bad' } });
    expect((await handler(toolCall('good'), ctxOf(route))).statusCode).toBe(200);
    expect(await gauge('bad')).toBe(2);
    expect(await gauge('good')).toBe(0);
  });

  it('counts a JSON-RPC error inside a 200 (plain JSON) as a tool failure, but not a caller error', async () => {
    const route = routeOf({ provider: 'mcp' });
    const { handler, registry } = setup(route, async () => response(200));
    const rpc = (code: number) => Buffer.from(JSON.stringify({ jsonrpc: '2.0', id: 1, error: { code, message: 'x' } }));
    finish(await handler(toolCall('t'), ctxOf(route)), {}, rpc(-32603));
    finish(await handler(toolCall('t'), ctxOf(route)), {}, rpc(-32602));
    expect(registry.peek('t')?.stats()).toMatchObject({ calls: 2, failures: 1, lastFailure: 'rpc_error' });
  });

  it('keys by model from the JSON body when keyBy is model, and by route name when the body has none', async () => {
    const route = routeOf({ breaker: { keyBy: 'model' } });
    const { handler, registry } = setup(route, async () => response(503));
    for (let i = 0; i < 3; i++) await handler(jsonReq({ model: 'gpt-4o' }), ctxOf(route));
    await expect(handler(jsonReq({ model: 'gpt-4o' }), ctxOf(route))).rejects.toBeInstanceOf(CircuitOpenError);
    expect((await handler(jsonReq({ model: 'gpt-4o-mini' }), ctxOf(route))).statusCode).toBe(503);
    expect((await handler(get, ctxOf(route))).statusCode).toBe(503);
    expect(registry.list().map((e) => e.key).sort()).toEqual(['gpt-4o', 'gpt-4o-mini', 'r']);
  });

  it('truncates request-derived keys and drops the gauge series of evicted breakers', async () => {
    const route = routeOf({ breaker: { keyBy: 'model', maxKeys: 2 } });
    const { handler, registry } = setup(route, async () => response(200));
    const long = 'm'.repeat(300);
    for (const model of [long, 'b', 'c']) finish(await handler(jsonReq({ model }), ctxOf(route)));
    expect(registry.size).toBe(2);
    expect(registry.peek('m'.repeat(128))).toBeUndefined();
    expect(await gauge('m'.repeat(128))).toBeUndefined();
    expect(await gauge('c')).toBe(0);
  });

  it('uses one fixed key for a fallback upstream chain', async () => {
    const route = routeOf({ provider: 'mcp' });
    const { handler, registry } = setup(route, async () => response(503), 'r/backup');
    await handler(toolCall('t'), ctxOf(route));
    expect(registry.list().map((e) => e.key)).toEqual(['r/backup']);
  });

  it('counts a slow success as a failure when slowCallMs is set', async () => {
    const route = routeOf({ breaker: { slowCallMs: 100 } });
    const { handler, registry } = setup(route, async () => response(200));
    const res = await handler(get, ctxOf(route));
    clock.t += 150;
    finish(res);
    expect(registry.peek('r')?.stats()).toMatchObject({ failures: 1, lastFailure: 'slow' });
  });

  it('passes calls straight through when the breaker is disabled', async () => {
    const route = routeOf({ breaker: { enabled: false } });
    const { handler } = setup(route, async () => response(503));
    for (let i = 0; i < 6; i++) expect((await handler(get, ctxOf(route))).statusCode).toBe(503);
    expect(calls).toBe(6);
  });
});
