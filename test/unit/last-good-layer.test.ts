import { PassThrough } from 'node:stream';
import { beforeEach, describe, expect, it } from 'vitest';
import { RouteSchema, type RouteConfig } from '../../src/config/schema.js';
import { discardResponse } from '../../src/pipeline/body-end.js';
import type { BodyEnd, CallContext, HeaderMap, ProxyRequest, ProxyResponse } from '../../src/pipeline/types.js';
import { LastGoodCache, lastGoodKey, lastGoodRecordLayer, lastGoodStep } from '../../src/policies/last-good.js';
import { createMetrics, type Metrics } from '../../src/telemetry/metrics.js';
import { callContext } from '../helpers/pipeline.js';

const routeOf = (over: Record<string, unknown> = {}, lastGood: Record<string, unknown> = {}): RouteConfig =>
  RouteSchema.parse({
    name: 'r',
    match: { pathPrefix: '/r' },
    upstream: { url: 'http://127.0.0.1:1' },
    lastGood: { enabled: true, ttlMs: 60_000, maxBodyBytes: 100, ...lastGood },
    ...over,
  });

const ctxOf = (route: RouteConfig): CallContext => callContext(route);

const call = (method: string, body?: string, headers: HeaderMap = {}): ProxyRequest => ({
  method,
  path: '/v1/thing?q=1',
  headers,
  body: body === undefined ? { kind: 'none' } : { kind: 'buffered', bytes: Buffer.from(body) },
});

/** Stream `chunks` to the observers the way sendResponse does, ending with `end`. */
const play = (res: ProxyResponse, chunks: string[], end: Partial<BodyEnd> = {}) => {
  let bytes = 0;
  for (const c of chunks) {
    bytes += c.length;
    for (const o of res.observers) o.onChunk?.(Buffer.from(c));
  }
  for (const o of res.observers) o.onEnd?.({ ok: true, bytes, ...end });
};

describe('last-good answers', () => {
  let clock: { t: number };
  let metrics: Metrics;
  beforeEach(() => {
    clock = { t: 5_000_000 };
    metrics = createMetrics({ defaultMetrics: false });
  });

  const setup = (route: RouteConfig, status = 200, type = 'application/json') => {
    const deps = { now: () => clock.t, metrics };
    const cache = new LastGoodCache(route.lastGood, deps.now);
    const terminal = async (): Promise<ProxyResponse> => ({
      statusCode: status,
      headers: { 'content-type': type, 'x-other': 'dropped' },
      body: new PassThrough(),
      observers: [],
    });
    return { record: lastGoodRecordLayer(route, cache, deps)(terminal), serve: lastGoodStep(route, cache, deps), cache };
  };

  it('remembers a 2xx answer once its body ended and serves it for the same method, path and body with its age', async () => {
    const route = routeOf();
    const { record, serve } = setup(route);
    play(await record(call('GET'), ctxOf(route)), ['{"a":', '1}']);
    clock.t += 4_500;
    const hit = await serve(call('GET'));
    expect(hit?.statusCode).toBe(200);
    expect(hit?.body.toString()).toBe('{"a":1}');
    expect(hit?.headers).toEqual({ 'content-type': 'application/json', 'x-fusebox-cache-age': '4' });
    expect(await serve(call('HEAD'))).toBeUndefined();
    expect(await serve({ ...call('GET'), path: '/v1/thing?q=2' })).toBeUndefined();
    expect(await serve(call('GET', 'x'))).toBeUndefined();
  });

  it('holds at most maxTotalBytes per route, dropping the least recently used answers first', async () => {
    const route = routeOf({}, { maxBodyBytes: 100, maxTotalBytes: 250 });
    const { record, serve, cache } = setup(route);
    const body = 'x'.repeat(100);
    for (const q of ['a', 'b', 'c']) play(await record({ ...call('GET'), path: `/v1/${q}` }, ctxOf(route)), [body]);
    // 300 bytes offered, 250 allowed: the oldest answer went.
    expect(cache.size).toBe(2);
    expect(await serve({ ...call('GET'), path: '/v1/a' })).toBeUndefined();
    expect((await serve({ ...call('GET'), path: '/v1/c' }))?.body.toString()).toBe(body);
  });

  it('forgets an answer older than ttlMs', async () => {
    const route = routeOf();
    const { record, serve } = setup(route);
    play(await record(call('GET'), ctxOf(route)), ['ok']);
    clock.t += 60_001;
    expect(await serve(call('GET'))).toBeUndefined();
  });

  it('does not remember broken, discarded, oversized, non-2xx or SSE answers', async () => {
    const route = routeOf();
    const broken = setup(route);
    play(await broken.record(call('GET'), ctxOf(route)), ['{"a"'], { ok: false, failedBy: 'upstream' });
    discardResponse(await broken.record(call('GET'), ctxOf(route)));
    play(await broken.record(call('GET'), ctxOf(route)), ['x'.repeat(60), 'y'.repeat(60)]);
    expect(broken.cache.size).toBe(0);

    const failed = setup(route, 503);
    play(await failed.record(call('GET'), ctxOf(route)), ['{}']);
    expect(failed.cache.size).toBe(0);

    const sse = setup(route, 200, 'text/event-stream');
    play(await sse.record(call('GET'), ctxOf(route)), ['data: {}\n\n']);
    expect(sse.cache.size).toBe(0);
  });

  it('does not remember answers to non-idempotent tool calls unless includeUnsafe', async () => {
    const tool = routeOf();
    const plain = setup(tool);
    play(await plain.record(call('POST', '{"pay":1}'), ctxOf(tool)), ['done']);
    expect(plain.cache.size).toBe(0);
    play(await plain.record(call('POST', '{"pay":1}', { 'idempotency-key': 'k' }), ctxOf(tool)), ['done']);
    expect(plain.cache.size).toBe(1);

    const unsafe = routeOf({}, { includeUnsafe: true });
    const opted = setup(unsafe);
    play(await opted.record(call('POST', '{"pay":1}'), ctxOf(unsafe)), ['done']);
    expect(opted.cache.size).toBe(1);

    const llm = routeOf({ provider: 'openai' });
    const chat = setup(llm);
    play(await chat.record(call('POST', '{"model":"m"}'), ctxOf(llm)), ['{"choices":[]}']);
    expect(chat.cache.size).toBe(1);
  });

  it('keys by method, path and body, and never keys a streamed body', () => {
    expect(lastGoodKey(call('GET'))).toBe(lastGoodKey(call('GET')));
    expect(lastGoodKey(call('POST', 'a'))).not.toBe(lastGoodKey(call('POST', 'b')));
    expect(lastGoodKey({ ...call('PUT'), body: { kind: 'stream', stream: new PassThrough() } })).toBeUndefined();
  });

  it('holds at most maxEntries answers', async () => {
    const route = routeOf({}, { maxEntries: 2 });
    const { record, cache } = setup(route);
    for (const path of ['/1', '/2', '/3']) play(await record({ ...call('GET'), path }, ctxOf(route)), ['ok']);
    expect(cache.size).toBe(2);
  });

  it('records nothing when lastGood is disabled', async () => {
    const route = routeOf({}, { enabled: false });
    const { record, cache } = setup(route);
    const res = await record(call('GET'), ctxOf(route));
    expect(res.observers).toHaveLength(0);
    play(res, ['ok']);
    expect(cache.size).toBe(0);
  });
});
