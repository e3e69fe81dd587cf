import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import Fastify from 'fastify';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { BudgetRefusedError, CircuitOpenError, HeadersTooLargeError } from '../../src/errors.js';
import { registerAdmin } from '../../src/http/admin.js';
import { endWithError, errorAnswer, replyError, sendError } from '../../src/http/error-answer.js';
import { createMetrics } from '../../src/telemetry/metrics.js';

const refusal = () =>
  new BudgetRefusedError('CALL_LIMIT', 'workflow "w1" reached its limit of 3 calls', { scope: 'workflow', limit: 3 }, { retry: { afterMs: 4_000 } });

describe('errorAnswer: one answer, whatever the transport', () => {
  it('writes Fusebox’s shape with x-fusebox-error, the request id and the error’s own headers', () => {
    const a = errorAnswer(refusal(), { requestId: 'r1', route: 'tool' });
    const body = { statusCode: 402, error: 'Payment Required', code: 'CALL_LIMIT', message: 'workflow "w1" reached its limit of 3 calls', route: 'tool', requestId: 'r1', scope: 'workflow', limit: 3 };
    expect(JSON.parse(a.payload)).toEqual(body);
    expect(a.statusCode).toBe(402);
    expect(a.headers).toEqual({
      'content-type': 'application/json; charset=utf-8',
      'content-length': String(Buffer.byteLength(a.payload)),
      'x-fusebox-error': 'CALL_LIMIT',
      'x-request-id': 'r1',
      'retry-after': '4',
      'x-should-retry': 'false',
    });
  });

  it('wraps the answer in the provider’s envelope on an LLM route, Fusebox’s body kept as error.fusebox', () => {
    const a = errorAnswer(refusal(), { requestId: 'r1', route: 'chat', provider: 'openai' });
    const sent = JSON.parse(a.payload) as { error: { code: string; type: string; fusebox: { code: string } } };
    expect(sent.error).toMatchObject({ code: 'CALL_LIMIT', type: 'insufficient_quota', fusebox: { code: 'CALL_LIMIT', route: 'chat' } });
    expect(a.headers['x-fusebox-error']).toBe('CALL_LIMIT');
  });

  it('says requestId "-" and sends no x-request-id before a call has an id', () => {
    const a = errorAnswer(new HeadersTooLargeError('too large'), {}, true);
    expect(JSON.parse(a.payload)).toMatchObject({ requestId: '-', code: 'HEADERS_TOO_LARGE' });
    expect(a.headers['x-request-id']).toBeUndefined();
    expect(a.headers.connection).toBe('close');
  });
});

describe('the three adapters', () => {
  let server: Server | undefined;
  afterEach(() => new Promise<void>((r) => (server ? server.close(() => r()) : r())));

  it('node:http response: status, headers and body of errorAnswer', async () => {
    const err = new CircuitOpenError('open', { breaker: 'chat', state: 'open', retryAfterMs: 2_000 });
    server = createServer((_req, res) => sendError(res, err, { requestId: 'r2', route: 'chat' }));
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    const res = await request(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
    expect(res.statusCode).toBe(503);
    expect(res.headers).toMatchObject({ 'x-fusebox-error': 'CIRCUIT_OPEN', 'x-request-id': 'r2', 'retry-after': '2', 'x-should-retry': 'false', 'x-fusebox-breaker': 'open' });
    expect(await res.body.text()).toBe(errorAnswer(err, { requestId: 'r2', route: 'chat' }).payload);
  });

  it('raw socket: a whole HTTP/1.1 answer with connection: close, then the socket ends', async () => {
    const socket = new PassThrough();
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    const ended = new Promise((r) => socket.on('end', r));
    endWithError(socket, new HeadersTooLargeError('request headers are larger than the limit'));
    await ended;
    const text = Buffer.concat(chunks).toString();
    const [head, body] = text.split('\r\n\r\n');
    expect(head!.split('\r\n')).toEqual([
      'HTTP/1.1 431 Request Header Fields Too Large',
      'content-type: application/json; charset=utf-8',
      `content-length: ${Buffer.byteLength(body!)}`,
      'x-fusebox-error: HEADERS_TOO_LARGE',
      'connection: close',
    ]);
    expect(JSON.parse(body!)).toMatchObject({ statusCode: 431, code: 'HEADERS_TOO_LARGE', requestId: '-' });
  });

  it('fastify reply: the same answer', async () => {
    const app = Fastify();
    const err = refusal();
    app.get('/x', (_req, reply) => replyError(reply, err, { requestId: 'r3' }));
    const res = await app.inject({ method: 'GET', url: '/x' });
    expect(res.statusCode).toBe(402);
    expect(res.headers).toMatchObject({ 'x-fusebox-error': 'CALL_LIMIT', 'x-request-id': 'r3', 'retry-after': '4', 'content-type': 'application/json; charset=utf-8' });
    expect(res.body).toBe(errorAnswer(err, { requestId: 'r3' }).payload);
    await app.close();
  });
});

describe('admin API errors', () => {
  const admin = async (token: string | undefined) => {
    const app = Fastify();
    registerAdmin(app, { metrics: createMetrics(), token, tokenEnv: 'FUSEBOX_ADMIN_TOKEN', isReady: () => true });
    app.post('/admin/thing', async () => ({ ok: true }));
    await app.ready();
    return app;
  };

  it('maps fastify’s own errors into the closed list of codes, fastify’s code kept as fastifyCode', async () => {
    const app = await admin('t');
    const auth = { authorization: 'Bearer t', 'content-type': 'application/json' };
    const bad = await app.inject({ method: 'POST', url: '/admin/thing', headers: auth, payload: '{not json' });
    expect(bad.statusCode).toBe(400);
    expect(bad.headers['x-fusebox-error']).toBe('BAD_REQUEST');
    expect(bad.json()).toMatchObject({ code: 'BAD_REQUEST', fastifyCode: 'FST_ERR_CTP_INVALID_JSON_BODY' });
    const big = await app.inject({ method: 'POST', url: '/admin/thing', headers: auth, payload: `"${'x'.repeat(1_100_000)}"` });
    expect(big.statusCode).toBe(413);
    expect(big.json()).toMatchObject({ code: 'BODY_TOO_LARGE', fastifyCode: 'FST_ERR_CTP_BODY_TOO_LARGE' });
    const unknown = await app.inject({ method: 'GET', url: '/admin/nothing' });
    expect(unknown.statusCode).toBe(404);
    expect(unknown.json()).toMatchObject({ code: 'NOT_FOUND' });
    await app.close();
  });

  it('answers 401 UNAUTHORIZED with WWW-Authenticate: Bearer, and 403 ADMIN_DISABLED without a token configured', async () => {
    const app = await admin('t');
    const wrong = await app.inject({ method: 'POST', url: '/admin/thing', headers: { authorization: 'Bearer nope' } });
    expect(wrong.statusCode).toBe(401);
    expect(wrong.headers).toMatchObject({ 'x-fusebox-error': 'UNAUTHORIZED', 'www-authenticate': 'Bearer' });
    await app.close();
    const off = await admin(undefined);
    const disabled = await off.inject({ method: 'POST', url: '/admin/thing' });
    expect(disabled.statusCode).toBe(403);
    expect(disabled.json()).toMatchObject({ code: 'ADMIN_DISABLED' });
    await off.close();
  });
});
