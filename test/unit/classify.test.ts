import { createServer, type Server, type Socket } from 'node:net';
import { Client, errors as undiciErrors } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import {
  BadRequestError,
  CredentialMissingError,
  ProxyError,
  UpstreamConnectError,
  UpstreamError,
  UpstreamResetError,
  UpstreamTimeoutError,
} from '../../src/errors.js';
import {
  classifyBodyEnd,
  classifyError,
  classifyMcpResponse,
  classifyPolicy,
  classifyResponse,
  isMcpToolFailure,
  verdictOf,
  isSlowCall,
  mcpResult,
  type Verdict,
} from '../../src/upstream/classify.js';
import { mapUpstreamError } from '../../src/upstream/send.js';
import type { ProxyResponse } from '../../src/pipeline/types.js';

const NOW = Date.parse('2025-03-01T12:00:00.000Z');
const policy = classifyPolicy({
  retry: { retryableStatuses: [429, 502, 503, 504] },
  breaker: { slowCallMs: undefined },
});
const slowPolicy = classifyPolicy({
  retry: { retryableStatuses: [429, 502, 503, 504] },
  breaker: { slowCallMs: 1_000 },
});
const facts = { now: NOW };
const status = (code: number, headers = {}, p = policy, f: Parameters<typeof classifyResponse>[3] = facts) =>
  classifyResponse(code, headers, p, f);
const v = (outcome: Verdict['outcome'], breakerFailure: boolean, reason: Verdict['reason'], beforeSend = false): Verdict => ({
  outcome,
  breakerFailure,
  reason,
  beforeSend,
});
const withCode = (code: string, message = code) => Object.assign(new Error(message), { code });

describe('classifyResponse', () => {
  it.each([200, 201, 204, 301, 304])('%i is a success and no breaker failure', (code) => {
    expect(status(code)).toEqual(v('success', false, 'ok'));
  });

  it.each([502, 503, 504])('%i is retryable and a breaker failure', (code) => {
    expect(status(code)).toEqual(v('retryable', true, 'status_5xx'));
  });

  it('429 is retryable and carries the wait from Retry-After', () => {
    expect(status(429, { 'retry-after': '7' })).toEqual({ ...v('retryable', true, 'status_429'), retryAfterMs: 7_000 });
  });

  it('429 carries the wait from OpenAI reset headers', () => {
    const headers = { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '1m0.5s' };
    expect(status(429, headers).retryAfterMs).toBe(60_500);
  });

  it('503 with an HTTP-date Retry-After waits until that date', () => {
    expect(status(503, { 'retry-after': 'Sat, 01 Mar 2025 12:00:09 GMT' }).retryAfterMs).toBe(9_000);
  });

  it('a retryable status without a wait header has no retryAfterMs', () => {
    expect(status(429)).not.toHaveProperty('retryAfterMs');
  });

  it('500 is retryable and a breaker failure, whatever retryableStatuses says: maxRetriesOn500 is the retry layer’s count', () => {
    expect(status(500)).toEqual(v('retryable', true, 'status_5xx'));
    const none = classifyPolicy({ retry: { retryableStatuses: [] }, breaker: { slowCallMs: undefined } });
    expect(status(500, {}, none)).toEqual(v('retryable', true, 'status_5xx'));
  });

  it.each([400, 401, 402, 403, 404, 409, 413, 422])('%i is fatal and not a breaker failure (the caller’s fault)', (code) => {
    expect(status(code, { 'retry-after': '5' })).toEqual(v('fatal', false, 'status_4xx'));
  });

  it.each([501, 505, 507])('%i (not in the retryable list) is fatal but still a breaker failure', (code) => {
    expect(status(code)).toEqual(v('fatal', true, 'status_5xx'));
  });

  it('a route can narrow retryableStatuses: 502 and 429 become fatal yet stay breaker failures', () => {
    const p = classifyPolicy({ retry: { retryableStatuses: [503] }, breaker: { slowCallMs: undefined } });
    expect(status(502, {}, p)).toEqual(v('fatal', true, 'status_5xx'));
    expect(status(429, { 'retry-after': '1' }, p)).toEqual(v('fatal', true, 'status_429'));
    expect(status(503, {}, p).outcome).toBe('retryable');
  });

  it('a route can add a 4xx (408) to retryableStatuses, which then also counts against the breaker', () => {
    const p = classifyPolicy({ retry: { retryableStatuses: [408] }, breaker: { slowCallMs: undefined } });
    expect(status(408, {}, p)).toEqual(v('retryable', true, 'status_4xx'));
  });

  it('a success slower than slowCallMs is a breaker failure with reason slow; exactly slowCallMs is not', () => {
    expect(status(200, {}, slowPolicy, { now: NOW, durationMs: 1_001 })).toEqual(v('success', true, 'slow'));
    expect(status(200, {}, slowPolicy, { now: NOW, durationMs: 1_000 })).toEqual(v('success', false, 'ok'));
    expect(status(200, {}, slowPolicy, facts)).toEqual(v('success', false, 'ok'));
  });

  it('a slow 4xx is still only the caller’s fault', () => {
    expect(status(404, {}, slowPolicy, { now: NOW, durationMs: 60_000 })).toEqual(v('fatal', false, 'status_4xx'));
  });
});

describe('verdictOf', () => {
  it('reads the verdict a response carries and never classifies it again', () => {
    const carried = v('retryable', true, 'status_5xx');
    const res: ProxyResponse = { statusCode: 200, headers: {}, body: Buffer.alloc(0), observers: [], verdict: carried };
    expect(verdictOf(res, policy, NOW)).toBe(carried);
  });

  it('classifies a response made without one once, and leaves the verdict on it', () => {
    const res: ProxyResponse = { statusCode: 503, headers: {}, body: Buffer.alloc(0), observers: [] };
    const first = verdictOf(res, policy, NOW);
    expect(first).toEqual(v('retryable', true, 'status_5xx'));
    expect(res.verdict).toBe(first);
    expect(verdictOf(res, slowPolicy, NOW + 1)).toBe(first);
  });
});

describe('one table of transport error codes: the answer’s code (mapUpstreamError) and the verdict agree', () => {
  const ctx = { signal: new AbortController().signal };
  it.each([
    ['ECONNREFUSED', 'UPSTREAM_CONNECT_FAILED', v('retryable', true, 'connect', true)],
    ['EHOSTDOWN', 'UPSTREAM_CONNECT_FAILED', v('retryable', true, 'connect', true)],
    ['ENETDOWN', 'UPSTREAM_CONNECT_FAILED', v('retryable', true, 'connect', true)],
    ['ENOTFOUND', 'UPSTREAM_CONNECT_FAILED', v('retryable', true, 'dns', true)],
    ['EAI_FAIL', 'UPSTREAM_CONNECT_FAILED', v('retryable', true, 'dns', true)],
    ['CERT_HAS_EXPIRED', 'UPSTREAM_CONNECT_FAILED', v('fatal', true, 'tls', true)],
    ['ERR_TLS_CERT_ALTNAME_INVALID', 'UPSTREAM_CONNECT_FAILED', v('fatal', true, 'tls', true)],
    ['ECONNRESET', 'UPSTREAM_RESET', v('retryable', true, 'reset')],
    ['ECONNABORTED', 'UPSTREAM_RESET', v('retryable', true, 'reset')],
    ['UND_ERR_CLOSED', 'UPSTREAM_RESET', v('retryable', true, 'reset')],
    ['UND_ERR_DESTROYED', 'UPSTREAM_RESET', v('retryable', true, 'reset')],
    ['UND_ERR_CONNECT_TIMEOUT', 'UPSTREAM_TIMEOUT', v('retryable', true, 'timeout', true)],
    ['UND_ERR_HEADERS_TIMEOUT', 'UPSTREAM_TIMEOUT', v('retryable', true, 'timeout')],
    ['ETIMEDOUT', 'UPSTREAM_TIMEOUT', v('retryable', true, 'timeout')],
    ['UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'UPSTREAM_ERROR', v('retryable', true, 'protocol')],
    ['HPE_INVALID_CONSTANT', 'UPSTREAM_ERROR', v('retryable', true, 'protocol')],
    ['UND_ERR_REQ_CONTENT_LENGTH_MISMATCH', 'UPSTREAM_ERROR', v('fatal', false, 'local')],
  ] as const)('%s → %s', (code, answer, verdict) => {
    const raw = withCode(code);
    const mapped = mapUpstreamError(raw, ctx, 'http://u');
    expect(mapped.code).toBe(answer);
    expect(classifyError(raw)).toEqual(verdict);
    expect(classifyError(mapped)).toEqual(verdict);
  });

  it('names a socket error by the errno undici wrapped in it', () => {
    const err = Object.assign(new undiciErrors.SocketError('other side closed'), { cause: withCode('EPIPE') });
    expect(mapUpstreamError(err, ctx, 'http://u').details).toMatchObject({ errno: 'EPIPE' });
  });
});

describe('isSlowCall', () => {
  it('is true only above a set threshold', () => {
    expect(isSlowCall(1_001, 1_000)).toBe(true);
    expect(isSlowCall(1_000, 1_000)).toBe(false);
    expect(isSlowCall(undefined, 1_000)).toBe(false);
    expect(isSlowCall(99_999, undefined)).toBe(false);
  });
});

describe('classifyError: Fusebox errors', () => {
  const upstream = 'http://127.0.0.1:1';

  it('connect refused is retryable before send', () => {
    const err = new UpstreamConnectError('x', { upstream, errno: 'ECONNREFUSED' }, { cause: withCode('ECONNREFUSED') });
    expect(classifyError(err)).toEqual(v('retryable', true, 'connect', true));
  });

  it.each(['ENOTFOUND', 'EAI_AGAIN'])('DNS failure %s is retryable before send, reason dns', (code) => {
    expect(classifyError(new UpstreamConnectError('x', { upstream, errno: code }))).toEqual(v('retryable', true, 'dns', true));
  });

  it('a rejected certificate is fatal (retrying cannot fix it) but counts against the breaker', () => {
    const err = new UpstreamConnectError('x', { upstream, errno: 'CERT_HAS_EXPIRED' });
    expect(classifyError(err)).toEqual(v('fatal', true, 'tls', true));
  });

  it('a connect error without a known code is still a retryable connect failure', () => {
    expect(classifyError(new UpstreamConnectError('x'))).toEqual(v('retryable', true, 'connect', true));
  });

  it('a reset is retryable but not before send', () => {
    const err = new UpstreamResetError('x', { upstream, errno: 'ECONNRESET' });
    expect(classifyError(err)).toEqual(v('retryable', true, 'reset'));
    expect(classifyError(new UpstreamResetError('x', { errno: 'EPIPE' }))).toEqual(v('retryable', true, 'reset'));
  });

  it('timeouts: connect is before send, headers and body are not, total is fatal', () => {
    expect(classifyError(new UpstreamTimeoutError('x', { phase: 'connect' }))).toEqual(v('retryable', true, 'timeout', true));
    expect(classifyError(new UpstreamTimeoutError('x', { phase: 'headers' }))).toEqual(v('retryable', true, 'timeout'));
    expect(classifyError(new UpstreamTimeoutError('x', { phase: 'body' }))).toEqual(v('retryable', true, 'timeout'));
    expect(classifyError(new UpstreamTimeoutError('x', { phase: 'total' }))).toEqual(v('fatal', true, 'timeout'));
  });

  it('a generic upstream error is a retryable protocol failure', () => {
    expect(classifyError(new UpstreamError('x', { errno: 'UNKNOWN' }))).toEqual(v('retryable', true, 'protocol'));
    const parse = new UpstreamError('x', { errno: 'HPE_INVALID_CONSTANT' }, { cause: withCode('HPE_INVALID_CONSTANT') });
    expect(classifyError(parse)).toEqual(v('retryable', true, 'protocol'));
  });

  it('a request body that did not match its length is our side’s fault, not the upstream’s', () => {
    const err = new UpstreamError('x', { errno: 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH' });
    expect(classifyError(err)).toEqual(v('fatal', false, 'local'));
  });

  it('a client that went away (ClientClosedError) is an abort: fatal, no breaker verdict', () => {
    class ClientClosedError extends ProxyError {
      constructor(message: string) {
        super('CLIENT_CLOSED', message);
      }
    }
    expect(classifyError(new ClientClosedError('gone'))).toEqual(v('fatal', false, 'aborted'));
  });

  it('other Fusebox refusals from inner layers are local: fatal, not held against the upstream', () => {
    expect(classifyError(new BadRequestError('x'))).toEqual(v('fatal', false, 'local'));
    expect(classifyError(new CredentialMissingError('x'))).toEqual(v('fatal', false, 'local'));
  });
});

describe('classifyError: raw undici and socket errors', () => {
  it.each([
    [new undiciErrors.ConnectTimeoutError(), v('retryable', true, 'timeout', true)],
    [new undiciErrors.HeadersTimeoutError(), v('retryable', true, 'timeout')],
    [new undiciErrors.BodyTimeoutError(), v('retryable', true, 'timeout')],
    [new undiciErrors.SocketError('other side closed'), v('retryable', true, 'reset')],
    [new undiciErrors.ResponseContentLengthMismatchError(), v('retryable', true, 'protocol')],
    [new undiciErrors.RequestAbortedError(), v('fatal', false, 'aborted')],
    [new undiciErrors.RequestContentLengthMismatchError(), v('fatal', false, 'local')],
  ])('%s', (err, expected) => {
    expect(classifyError(err)).toEqual(expected);
  });

  it.each([
    ['ECONNREFUSED', v('retryable', true, 'connect', true)],
    ['EHOSTUNREACH', v('retryable', true, 'connect', true)],
    ['ENOTFOUND', v('retryable', true, 'dns', true)],
    ['EAI_AGAIN', v('retryable', true, 'dns', true)],
    ['ECONNRESET', v('retryable', true, 'reset')],
    ['EPIPE', v('retryable', true, 'reset')],
    ['ETIMEDOUT', v('retryable', true, 'timeout')],
  ])('errno %s', (code, expected) => {
    expect(classifyError(withCode(code))).toEqual(expected);
  });

  it('reads the errno from the cause chain (fetch wraps socket errors)', () => {
    const err = new TypeError('fetch failed', { cause: withCode('ECONNRESET') });
    expect(classifyError(err)).toEqual(v('retryable', true, 'reset'));
  });

  it('an AbortError is an abort; a TimeoutError from AbortSignal.timeout is a retryable timeout', () => {
    expect(classifyError(new DOMException('aborted', 'AbortError'))).toEqual(v('fatal', false, 'aborted'));
    expect(classifyError(new DOMException('timed out', 'TimeoutError'))).toEqual(v('retryable', true, 'timeout'));
  });

  it('undici’s own ClientClosedError (a closed pool) is not mistaken for a client abort', () => {
    expect(classifyError(new undiciErrors.ClientClosedError())).toEqual(v('retryable', true, 'reset'));
  });

  it('an unknown error (our bug) is fatal and not held against the upstream', () => {
    expect(classifyError(new TypeError("Cannot read properties of undefined (reading 'x')"))).toEqual(v('fatal', false, 'internal'));
    expect(classifyError('a string')).toEqual(v('fatal', false, 'internal'));
    expect(classifyError(undefined)).toEqual(v('fatal', false, 'internal'));
  });

  it('survives a cyclic cause chain', () => {
    const a = new Error('a') as Error & { cause?: unknown };
    const b = new Error('b', { cause: a });
    a.cause = b;
    expect(classifyError(a)).toEqual(v('fatal', false, 'internal'));
  });
});

describe('classifyError: real sockets on loopback', () => {
  const servers: Server[] = [];
  const sockets = new Set<Socket>();
  const clients: Client[] = [];
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.destroy()));
    for (const s of sockets) s.destroy();
    sockets.clear();
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  });
  const listen = async (onSocket: (socket: Socket) => void) => {
    const server = createServer((socket) => {
      sockets.add(socket);
      onSocket(socket);
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const addr = server.address();
    if (addr === null || typeof addr === 'string') throw new Error('no port');
    return addr.port;
  };
  const requestError = async (port: number, opts: ConstructorParameters<typeof Client>[1] = {}) => {
    const client = new Client(`http://127.0.0.1:${port}`, opts);
    clients.push(client);
    try {
      const res = await client.request({ method: 'GET', path: '/' });
      await res.body.text();
      throw new Error('expected the request to fail');
    } catch (err) {
      return err;
    }
  };

  it('a closed port is a retryable connect failure before send', async () => {
    const port = await listen(() => {});
    await new Promise((r) => servers.pop()?.close(r));
    expect(classifyError(await requestError(port))).toEqual(v('retryable', true, 'connect', true));
  });

  it('a server that drops the connection after reading the request is a retryable reset', async () => {
    const port = await listen((socket) => socket.once('data', () => socket.destroy()));
    expect(classifyError(await requestError(port))).toEqual(v('retryable', true, 'reset'));
  });

  it('a server that never answers is a retryable headers timeout', async () => {
    const port = await listen(() => {});
    expect(classifyError(await requestError(port, { headersTimeout: 50 }))).toEqual(v('retryable', true, 'timeout'));
  });
});

describe('classifyBodyEnd', () => {
  it('a body delivered whole is a success (or slow)', () => {
    expect(classifyBodyEnd({ ok: true, bytes: 10 }, policy, facts)).toEqual(v('success', false, 'ok'));
    expect(classifyBodyEnd({ ok: true, bytes: 10 }, slowPolicy, { now: NOW, durationMs: 5_000 })).toEqual(v('success', true, 'slow'));
  });

  it('a stream that broke after the headers went out is a fatal breaker failure', () => {
    const end = { ok: false, bytes: 10, error: withCode('ECONNRESET') };
    expect(classifyBodyEnd(end, policy, facts)).toEqual(v('fatal', true, 'stream_broken'));
    expect(classifyBodyEnd({ ok: false, bytes: 0 }, policy, facts)).toEqual(v('fatal', true, 'stream_broken'));
  });

  it('a client that left mid-stream gives no verdict on the upstream', () => {
    expect(classifyBodyEnd({ ok: false, bytes: 10 }, policy, { now: NOW, clientAborted: true })).toEqual(v('fatal', false, 'aborted'));
    const end = { ok: false, bytes: 10, error: new DOMException('aborted', 'AbortError') };
    expect(classifyBodyEnd(end, policy, facts)).toEqual(v('fatal', false, 'aborted'));
  });

  it('a discarded body (replaced by a retry or fallback) is not classified again', () => {
    expect(classifyBodyEnd({ ok: false, bytes: 0, discarded: true }, policy, facts)).toBeUndefined();
  });
});

describe('MCP tool results', () => {
  const rpc = (body: object) => JSON.stringify({ jsonrpc: '2.0', id: 1, ...body });

  it('a result is ok; result.isError true is a tool error', () => {
    expect(mcpResult(rpc({ result: { content: [{ type: 'text', text: 'hi' }] } }))).toBe('ok');
    expect(mcpResult(rpc({ result: { content: [], isError: false } }))).toBe('ok');
    expect(mcpResult(rpc({ result: { content: [{ type: 'text', text: 'API down' }], isError: true } }))).toBe('tool_error');
  });

  it('an error member with a server code is an rpc error; caller-made codes are the caller’s fault', () => {
    expect(mcpResult(rpc({ error: { code: -32603, message: 'internal' } }))).toBe('rpc_error');
    expect(mcpResult(rpc({ error: { code: -32001, message: 'server' } }))).toBe('rpc_error');
    expect(mcpResult(rpc({ error: { message: 'no code' } }))).toBe('rpc_error');
    for (const code of [-32700, -32600, -32601, -32602]) {
      expect(mcpResult(rpc({ error: { code, message: 'bad call' } }))).toBe('caller_error');
    }
  });

  it('anything that is not a JSON-RPC response is unknown', () => {
    expect(mcpResult('<html>502</html>')).toBe('unknown');
    expect(mcpResult('{"truncated":')).toBe('unknown');
    expect(mcpResult(rpc({ method: 'notifications/progress' }))).toBe('unknown');
    expect(mcpResult('')).toBe('unknown');
  });

  it('a batch is as bad as its worst member', () => {
    const batch = `[${rpc({ result: {} })},${rpc({ result: { isError: true } })}]`;
    expect(mcpResult(batch)).toBe('tool_error');
  });

  it('reads SSE (Streamable HTTP) bodies, skipping notifications, including multi-line data', () => {
    const sse = [
      'event: message',
      `data: ${JSON.stringify({ jsonrpc: '2.0', method: 'notifications/progress', params: { progress: 1 } })}`,
      '',
      'event: message',
      'data: {"jsonrpc":"2.0","id":1,',
      'data: "result":{"content":[],"isError":true}}',
      '',
      '',
    ].join('\n');
    expect(mcpResult(Buffer.from(sse))).toBe('tool_error');
    expect(mcpResult(`data: ${rpc({ result: { content: [] } })}\r\n\r\n`)).toBe('ok');
  });

  it('isMcpToolFailure is true for tool and rpc errors only', () => {
    expect(isMcpToolFailure(rpc({ result: { isError: true } }))).toBe(true);
    expect(isMcpToolFailure(rpc({ error: { code: -32603 } }))).toBe(true);
    expect(isMcpToolFailure(rpc({ error: { code: -32602 } }))).toBe(false);
    expect(isMcpToolFailure(rpc({ result: {} }))).toBe(false);
    expect(isMcpToolFailure('not json')).toBe(false);
  });

  it('classifyMcpResponse: a tool failure inside a 200 counts against the breaker but is not retried', () => {
    expect(classifyMcpResponse(rpc({ result: { isError: true } }), policy, facts)).toEqual(v('success', true, 'tool_error'));
    expect(classifyMcpResponse(rpc({ error: { code: -32000 } }), policy, facts)).toEqual(v('success', true, 'rpc_error'));
    expect(classifyMcpResponse(rpc({ error: { code: -32601 } }), policy, facts)).toEqual(v('success', false, 'ok'));
    expect(classifyMcpResponse(rpc({ result: {} }), slowPolicy, { now: NOW, durationMs: 2_000 })).toEqual(v('success', true, 'slow'));
  });
});
