import { execFile } from 'node:child_process';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { connect } from 'node:net';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import OpenAI from 'openai';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFusebox, metricValue, type RunningFusebox } from '../helpers/fusebox.js';
import { json, startUpstream, testCertificate, type TestUpstream } from '../helpers/upstream.js';

const run = promisify(execFile);
const rawRequest = (url: string, opts: { method: string; headers: Record<string, string>; body: string }) =>
  new Promise<{ statusCode: number; headers: IncomingHttpHeaders; body: string }>((resolve, reject) => {
    const req = httpRequest(url, { method: opts.method, headers: opts.headers }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ statusCode: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end(opts.body);
  });
const curl = (args: string[]) =>
  run('curl', ['-s', '-S', '--noproxy', '', '-w', '\\n%{http_code}', ...args], { env: { PATH: process.env.PATH ?? '' }, timeout: 10_000 })
    .then(({ stdout }) => {
      const i = stdout.lastIndexOf('\n');
      return { body: stdout.slice(0, i), status: Number(stdout.slice(i + 1)) };
    })
    .catch((err: { stdout?: string; stderr?: string; code?: number }) => ({ body: err.stdout ?? '', status: -1, stderr: err.stderr ?? '', exit: err.code }));

describe('core proxy', () => {
  let up: TestUpstream;
  let tlsUp: TestUpstream;
  let fb: RunningFusebox;

  beforeAll(async () => {
    up = await startUpstream();
    tlsUp = await startUpstream({ tls: true });
    up.on('/v1/chat/completions', (req, res, body) => {
      const parsed = JSON.parse(body.toString()) as { stream?: boolean; model: string };
      if (!parsed.stream) {
        return json(res, 200, {
          id: 'chatcmpl-1',
          object: 'chat.completion',
          created: 1,
          model: parsed.model,
          choices: [{ index: 0, message: { role: 'assistant', content: 'hello' }, finish_reason: 'stop', logprobs: null }],
          usage: { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6 },
        });
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (const word of ['hel', 'lo']) {
        res.write(`data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: parsed.model, choices: [{ index: 0, delta: { content: word }, finish_reason: null }] })}\n\n`);
      }
      res.end('data: [DONE]\n\n');
      return undefined;
    });
    fb = await startFusebox(
      {
        agent: { id: 'agent-7' },
        limits: { maxRequestBodyBytes: 64 * 1024, maxHeaderBytes: 4096 },
        routes: [
          {
            name: 'api',
            match: { pathPrefix: '/api', hosts: ['api.example.test'] },
            upstream: { url: up.url },
            headers: { add: { 'x-added': 'yes' }, remove: ['x-remove-me'] },
            credential: { env: 'FUSEBOX_TEST_KEY' },
            timeouts: { headersMs: 300 },
            // Core behaviour on its own: retries and the breaker have their own tests (resilience.test.ts).
            retry: { enabled: false },
            breaker: { enabled: false },
          },
          { name: 'based', match: { pathPrefix: '/based' }, upstream: { url: `${up.url}/v1` } },
          { name: 'bylocal', match: { hosts: [`127.0.0.1:${up.port}`] }, upstream: { url: up.url }, retry: { enabled: false } },
          { name: 'tls-origination', match: { hosts: ['plain.example.test'] }, upstream: { url: tlsUp.url, tls: { caFile: testCertificate().caFile } } },
          { name: 'tunnel', match: { hosts: [`127.0.0.1:${tlsUp.port}`], connect: 'tunnel' }, upstream: { url: tlsUp.url } },
          { name: 'dead', match: { pathPrefix: '/dead' }, upstream: { url: 'http://127.0.0.1:1' }, retry: { enabled: false } },
          { name: 'nocred', match: { pathPrefix: '/nocred' }, upstream: { url: up.url }, credential: { env: 'FUSEBOX_TEST_UNSET_KEY' } },
        ],
      },
      { env: { ...process.env, FUSEBOX_TEST_KEY: 'sk-upstream-secret-123' } },
    );
  });
  afterAll(async () => {
    await fb?.stop();
    await up?.close();
    await tlsUp?.close();
  });

  it('forwards base-URL calls with the prefix stripped, path and query kept, hop-by-hop and control headers removed', async () => {
    // node:http, not undici: undici refuses to send hop-by-hop headers at all, and this test needs them sent.
    const res = await rawRequest(`${fb.proxyUrl}/api/echo?q=1&x=y`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        connection: 'keep-alive, x-named-hop',
        'x-named-hop': 'drop me',
        'keep-alive': 'timeout=5',
        'proxy-authorization': 'Basic c2VjcmV0',
        'x-fusebox-workflow': 'wf-1',
        'x-remove-me': '1',
        traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      },
      body: JSON.stringify({ hello: 'world' }),
    });
    expect(res.statusCode).toBe(200);
    const echoed = JSON.parse(res.body) as { url: string; method: string; body: string; headers: Record<string, string> };
    expect(echoed.method).toBe('POST');
    expect(echoed.url).toBe('/echo?q=1&x=y');
    expect(echoed.body).toBe('{"hello":"world"}');
    const h = echoed.headers;
    expect(h['x-named-hop']).toBeUndefined();
    expect(h['keep-alive']).toBeUndefined();
    expect(h['proxy-authorization']).toBeUndefined();
    expect(h['x-fusebox-workflow']).toBeUndefined();
    expect(h['x-remove-me']).toBeUndefined();
    expect(h['x-added']).toBe('yes');
    expect(h.traceparent).toBe('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
    expect(h['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.headers['x-request-id']).toBe(h['x-request-id']);
    expect(h.via).toMatch(/^1\.1 fusebox-[0-9a-f]{8}$/);
    expect(h.host).toBe(`127.0.0.1:${up.port}`);
  });

  it('keeps an x-request-id the agent sent', async () => {
    const res = await request(`${fb.proxyUrl}/api/echo`, { headers: { 'x-request-id': 'agent-req-42' } });
    const echoed = (await res.body.json()) as { headers: Record<string, string> };
    expect(echoed.headers['x-request-id']).toBe('agent-req-42');
    expect(res.headers['x-request-id']).toBe('agent-req-42');
  });

  it('replaces the agent credential with the route credential and never logs either', async () => {
    const res = await request(`${fb.proxyUrl}/api/echo?api_key=query-secret-9`, { headers: { authorization: 'Bearer agent-own-key' } });
    const echoed = (await res.body.json()) as { headers: Record<string, string> };
    expect(echoed.headers.authorization).toBe('Bearer sk-upstream-secret-123');
    await fb.app.idle();
    const logs = fb.logText();
    expect(logs).toContain('/echo?api_key=[REDACTED]');
    expect(logs).not.toContain('sk-upstream-secret-123');
    expect(logs).not.toContain('agent-own-key');
    expect(logs).not.toContain('query-secret-9');
  });

  it('joins the upstream base path', async () => {
    up.on('/v1/echo', (req, res) => json(res, 200, { url: req.url }));
    const res = await request(`${fb.proxyUrl}/based/echo`);
    expect(((await res.body.json()) as { url: string }).url).toBe('/v1/echo');
  });

  it('sends a call to exactly the prefix to exactly the upstream base path (MCP Streamable HTTP has one URL)', async () => {
    up.on('/v1', (req, res) => json(res, 200, { url: req.url }));
    const exact = await request(`${fb.proxyUrl}/based`, { method: 'POST', body: '{}' });
    expect(((await exact.body.json()) as { url: string }).url).toBe('/v1');
    const query = await request(`${fb.proxyUrl}/based?session=1`);
    expect(((await query.body.json()) as { url: string }).url).toBe('/v1?session=1');
  });

  it('answers 503 CREDENTIAL_MISSING when the credential variable is unset, without calling the upstream', async () => {
    const before = up.seen.length;
    const res = await request(`${fb.proxyUrl}/nocred/echo`);
    expect(res.statusCode).toBe(503);
    expect(res.headers['x-fusebox-error']).toBe('CREDENTIAL_MISSING');
    const body = (await res.body.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ code: 'CREDENTIAL_MISSING', route: 'nocred', env: 'FUSEBOX_TEST_UNSET_KEY' });
    expect(up.seen.length).toBe(before);
  });

  it('serves the openai SDK in base-URL mode, plain and streaming', async () => {
    const client = new OpenAI({ apiKey: 'agent-side-dummy', baseURL: `${fb.proxyUrl}/based`, maxRetries: 0 });
    const done = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] });
    expect(done.choices[0]?.message.content).toBe('hello');
    expect(done.usage?.total_tokens).toBe(6);
    const stream = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], stream: true });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    expect(text).toBe('hello');
  });

  it('routes absolute-form requests (HTTP_PROXY) by host, with curl -x', async () => {
    const res = await curl(['-x', fb.proxyUrl, 'http://api.example.test/echo?via=proxy']);
    expect(res.status).toBe(200);
    const echoed = JSON.parse(res.body) as { url: string; headers: Record<string, string> };
    expect(echoed.url).toBe('/echo?via=proxy');
    expect(echoed.headers['proxy-connection']).toBeUndefined();
  });

  it('honours HTTP_PROXY for curl and originates TLS for a route that upgrades to https', async () => {
    const res = await run('curl', ['-s', 'http://plain.example.test/echo'], {
      env: { PATH: process.env.PATH ?? '', HTTP_PROXY: fb.proxyUrl, http_proxy: fb.proxyUrl },
    });
    const echoed = JSON.parse(res.stdout) as { url: string };
    expect(echoed.url).toBe('/echo');
    expect(tlsUp.seen.at(-1)?.url).toBe('/echo');
  });

  it('refuses destinations no route allows with 403 DESTINATION_NOT_ALLOWED (never an open proxy)', async () => {
    const res = await curl(['-x', fb.proxyUrl, '-i', 'http://evil.example.test/steal']);
    expect(res.status).toBe(403);
    expect(res.body).toContain('x-fusebox-error: DESTINATION_NOT_ALLOWED');
    expect(res.body).toContain('"code":"DESTINATION_NOT_ALLOWED"');
  });

  it('allows a listed host on its listed ports only (80 and 443 when none is written), in absolute-form too', async () => {
    const before = up.count('/echo');
    const other = await curl(['-x', fb.proxyUrl, 'http://api.example.test:8080/echo']);
    expect(other.status).toBe(403);
    expect(other.body).toContain('destination api.example.test:8080 is not allowed');
    expect(up.count('/echo')).toBe(before);
    expect((await curl(['-x', fb.proxyUrl, 'http://api.example.test:80/echo'])).status).toBe(200);
  });

  it('normalizes other spellings of an address before the allow-list compares them', async () => {
    // `bylocal` lists 127.0.0.1 on the upstream's port: 127.1, 0x7f000001 and [::ffff:127.0.0.1] are that address.
    for (const spelling of ['127.1', '0x7f000001', '[::ffff:127.0.0.1]']) {
      const res = await curl(['-x', fb.proxyUrl, `http://${spelling}:${up.port}/echo`]);
      expect(res.status, spelling).toBe(200);
    }
    const wrongPort = await curl(['-x', fb.proxyUrl, `http://127.1:${up.port + 1}/echo`]);
    expect(wrongPort.status).toBe(403);
  });

  it('answers 404 NO_ROUTE for an origin-form path no route matches', async () => {
    const res = await request(`${fb.proxyUrl}/apix/echo`);
    expect(res.statusCode).toBe(404);
    expect(await res.body.json()).toMatchObject({ code: 'NO_ROUTE', statusCode: 404, error: 'Not Found' });
  });

  it("refuses proxy requests aimed at Fusebox's own ports", async () => {
    const adminPort = new URL(fb.adminUrl).port;
    const res = await curl(['-x', fb.proxyUrl, `http://127.0.0.1:${adminPort}/metrics`]);
    expect(res.status).toBe(403);
    expect(res.body).toContain('PROXY_LOOP');
  });

  it('tunnels CONNECT to an allowed host and port, end-to-end TLS, and counts the tunnel', async () => {
    const res = await curl(['-x', fb.proxyUrl, '--cacert', testCertificate().caFile, `https://127.0.0.1:${tlsUp.port}/echo`]);
    expect(res.status).toBe(200);
    expect((JSON.parse(res.body) as { url: string }).url).toBe('/echo');
    // Bytes are counted when the tunnel closes.
    await fb.waitForLog((l) => l.msg === 'tunnel closed' && l.route === 'tunnel');
    const text = await fb.metricsText();
    expect(metricValue(text, 'fusebox_tunnels_total', { route: 'tunnel', outcome: 'opened' })).toBeGreaterThanOrEqual(1);
    expect(metricValue(text, 'fusebox_tunnel_bytes_total', { route: 'tunnel', direction: 'downstream' })).toBeGreaterThan(100);
  });

  it('refuses CONNECT to a port or host no route allows with 403', async () => {
    const other = await curl(['-x', fb.proxyUrl, '-k', 'https://127.0.0.1:1/']);
    expect(other.status).not.toBe(200);
    expect((other as { stderr?: string }).stderr).toMatch(/403/);
    const raw = await new Promise<string>((resolve) => {
      const s = connect(Number(new URL(fb.proxyUrl).port), '127.0.0.1', () => s.write('CONNECT evil.example.test:443 HTTP/1.1\r\nhost: evil.example.test:443\r\n\r\n'));
      let data = '';
      s.on('data', (c) => (data += c.toString()));
      s.on('close', () => resolve(data));
    });
    expect(raw).toMatch(/^HTTP\/1\.1 403/);
    expect(raw).toContain('"code":"DESTINATION_NOT_ALLOWED"');
  });

  it('answers 502 UPSTREAM_CONNECT_FAILED when the upstream refuses connections', async () => {
    const res = await request(`${fb.proxyUrl}/dead/x`);
    expect(res.statusCode).toBe(502);
    expect(res.headers['x-fusebox-error']).toBe('UPSTREAM_CONNECT_FAILED');
    expect(await res.body.json()).toMatchObject({ route: 'dead', errno: 'ECONNREFUSED' });
  });

  it('answers 502 UPSTREAM_RESET when the upstream resets the connection', async () => {
    const res = await request(`${fb.proxyUrl}/api/reset`);
    expect(res.statusCode).toBe(502);
    expect(res.headers['x-fusebox-error']).toBe('UPSTREAM_RESET');
    await res.body.dump();
  });

  it('answers 504 UPSTREAM_TIMEOUT when response headers do not arrive in time', async () => {
    const res = await request(`${fb.proxyUrl}/api/slow?ms=2000`);
    expect(res.statusCode).toBe(504);
    expect(await res.body.json()).toMatchObject({ code: 'UPSTREAM_TIMEOUT', phase: 'headers' });
  });

  it('refuses a body over the limit with 413 BODY_TOO_LARGE, announced or chunked', async () => {
    const announced = await request(`${fb.proxyUrl}/api/echo`, { method: 'POST', body: Buffer.alloc(70 * 1024) });
    expect(announced.statusCode).toBe(413);
    expect(await announced.body.json()).toMatchObject({ code: 'BODY_TOO_LARGE', limitBytes: 65536 });
    async function* chunks() {
      for (let i = 0; i < 20; i++) yield Buffer.alloc(8 * 1024, 97);
    }
    const chunked = await request(`${fb.proxyUrl}/api/echo`, { method: 'POST', body: Readable.from(chunks()) });
    expect(chunked.statusCode).toBe(413);
    await chunked.body.dump();
  });

  it('refuses oversized headers with 431 HEADERS_TOO_LARGE as JSON', async () => {
    const res = await curl(['-i', '-H', `x-big: ${'a'.repeat(8000)}`, `${fb.proxyUrl}/api/fast`]);
    expect(res.status).toBe(431);
    expect(res.body).toContain('"code":"HEADERS_TOO_LARGE"');
  });

  it('streams SSE without buffering: the first event reaches the agent before the upstream finishes', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    up.on('/gated-sse', async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: first\n\n');
      await gate;
      res.end('data: last\n\n');
    });
    const res = await request(`${fb.proxyUrl}/api/gated-sse`);
    const it = res.body[Symbol.asyncIterator]();
    const first = await it.next();
    expect(String(first.value)).toBe('data: first\n\n');
    release();
    let rest = '';
    for (let n = await it.next(); !n.done; n = await it.next()) rest += String(n.value);
    expect(rest).toBe('data: last\n\n');
  });

  it('aborts the upstream call when the agent disconnects mid-stream', async () => {
    const res = await request(`${fb.proxyUrl}/api/sse?n=200&every=20`);
    const it = res.body[Symbol.asyncIterator]();
    await it.next();
    const seen = up.seen.at(-1)!;
    res.body.destroy();
    // Waits for the event itself: a connection left open fails this test by its timeout.
    await seen.closed;
  });

  it('cuts the agent connection when the upstream breaks mid-stream, and counts it', async () => {
    const res = await request(`${fb.proxyUrl}/api/sse?n=2&every=5&cut=1`);
    await expect(res.body.text()).rejects.toThrow();
    await fb.app.idle();
    expect(metricValue(await fb.metricsText(), 'fusebox_requests_total', { route: 'api', outcome: 'stream_broken' })).toBeGreaterThanOrEqual(1);
  });

  it('exports request, attempt and in-flight metrics with bounded labels, and health endpoints', async () => {
    const text = await fb.metricsText();
    expect(metricValue(text, 'fusebox_requests_total', { route: 'api', method: 'POST', code_class: '2xx', outcome: 'success' })).toBeGreaterThanOrEqual(1);
    expect(metricValue(text, 'fusebox_upstream_attempts_total', { route: 'dead', result: 'UPSTREAM_CONNECT_FAILED' })).toBeGreaterThanOrEqual(1);
    expect(text).toContain('fusebox_inflight_requests{route="api"} 0');
    expect(text).toContain('fusebox_request_duration_seconds_bucket');
    expect(text).toContain('fusebox_process_resident_memory_bytes');
    expect(text).not.toMatch(/wf-1|agent-req-42|sk-upstream/);
    expect((await request(`${fb.adminUrl}/healthz`)).statusCode).toBe(200);
    expect((await request(`${fb.adminUrl}/readyz`)).statusCode).toBe(200);
  });

  it('writes one access log line per call with request id, route, status, duration and bytes', async () => {
    await (await request(`${fb.proxyUrl}/api/echo`, { headers: { 'x-request-id': 'log-line-1', 'x-fusebox-workflow': 'wf-log' } })).body.dump();
    await fb.app.idle();
    const line = fb.logs.find((l) => l.requestId === 'log-line-1' && l.msg === 'request');
    expect(line).toMatchObject({ route: 'api', agent: 'agent-7', workflow: 'wf-log', status: 200, outcome: 'success', mode: 'base-url', attempts: 1 });
    expect(line?.durationMs).toBeGreaterThan(0);
    expect(line?.bytesOut).toBeGreaterThan(0);
  });
});

describe('logs never carry secrets', () => {
  let up: TestUpstream;
  let fb: RunningFusebox;
  const SECRETS = {
    upstreamKey: 'sk-ant-upstream-xkey-777',
    agentKey: 'agent-xkey-secret-555',
    cookie: 'cookie-session-secret-444',
    otherCookie: 'cookie-pref-secret-333',
    token: 'query-token-secret-111',
    signature: 'query-sig-secret-222',
    password: 'query-pass-secret-666',
  };
  beforeAll(async () => {
    up = await startUpstream();
    fb = await startFusebox(
      {
        routes: [
          {
            name: 'xkey',
            match: { pathPrefix: '/xkey' },
            upstream: { url: up.url },
            credential: { env: 'FUSEBOX_TEST_XKEY', header: 'x-api-key', prefix: '' },
            retry: { enabled: false },
            breaker: { enabled: false },
          },
          { name: 'plain', match: { pathPrefix: '/plain' }, upstream: { url: up.url }, retry: { enabled: false }, breaker: { enabled: false } },
        ],
      },
      { env: { ...process.env, FUSEBOX_TEST_XKEY: SECRETS.upstreamKey } },
    );
  });
  afterAll(async () => {
    await fb?.stop();
    await up?.close();
  });

  it('sets an x-api-key credential without a prefix, and logs neither it nor the x-api-key and cookie headers the agent sent', async () => {
    const headers = { 'x-api-key': SECRETS.agentKey, cookie: `session=${SECRETS.cookie}; pref=${SECRETS.otherCookie}` };
    const res = await request(`${fb.proxyUrl}/xkey/echo`, { headers: { ...headers, 'x-request-id': 'xkey-1' } });
    const echoed = (await res.body.json()) as { headers: Record<string, string> };
    expect(echoed.headers['x-api-key']).toBe(SECRETS.upstreamKey);
    expect(echoed.headers.authorization).toBeUndefined();
    // A route without a credential forwards the agent's own key; answers that end in warn lines (an upstream
    // 500, a reset) carry the same headers, so every kind of access line is searched below.
    await (await request(`${fb.proxyUrl}/plain/echo`, { headers })).body.dump();
    await (await request(`${fb.proxyUrl}/plain/status?code=500`, { headers })).body.dump();
    await (await request(`${fb.proxyUrl}/xkey/reset`, { headers })).body.dump();
    await fb.app.idle();
    expect(fb.logs.filter((l) => l.msg === 'request')).toHaveLength(4);
    expect(fb.logs.find((l) => l.requestId === 'xkey-1' && l.msg === 'request')).toMatchObject({ route: 'xkey', status: 200 });
    const text = fb.logText();
    for (const secret of [SECRETS.upstreamKey, SECRETS.agentKey, SECRETS.cookie, SECRETS.otherCookie]) expect(text).not.toContain(secret);
  });

  it('redacts the values of key-like query parameters in the access line and keeps the others', async () => {
    const query = `q=keep-me&token=${SECRETS.token}&X-Amz-Signature=${SECRETS.signature}&password=${SECRETS.password}&page=2`;
    const res = await request(`${fb.proxyUrl}/plain/echo?${query}`, { headers: { 'x-request-id': 'query-1' } });
    // The upstream still gets the real query: only the log is censored.
    expect(((await res.body.json()) as { url: string }).url).toBe(`/echo?${query}`);
    await fb.app.idle();
    const line = fb.logs.find((l) => l.requestId === 'query-1' && l.msg === 'request');
    expect(line?.path).toBe('/echo?q=keep-me&token=[REDACTED]&X-Amz-Signature=[REDACTED]&password=[REDACTED]&page=2');
    const text = fb.logText();
    for (const secret of [SECRETS.token, SECRETS.signature, SECRETS.password]) expect(text).not.toContain(secret);
  });
});

describe('timeouts end to end', () => {
  let up: TestUpstream;
  let fb: RunningFusebox;
  beforeAll(async () => {
    up = await startUpstream();
    // Headers and a first chunk, then silence until the connection is closed.
    up.on('/stall', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first part;');
    });
    // A failure worth retrying that takes 150 ms to arrive: three of them do not fit in a 400 ms call.
    up.on('/slow-503', async (_req, res) => {
      await new Promise((r) => setTimeout(r, 150));
      if (!res.destroyed) json(res, 503, { slow: true });
    });
    fb = await startFusebox({
      routes: [
        { name: 'idle', match: { pathPrefix: '/idle' }, upstream: { url: up.url }, timeouts: { bodyIdleMs: 200 }, retry: { enabled: false }, breaker: { enabled: false } },
        {
          name: 'total',
          match: { pathPrefix: '/total' },
          upstream: { url: up.url },
          timeouts: { totalMs: 400 },
          retry: { maxRetries: 5, baseMs: 1 },
          breaker: { enabled: false },
        },
      ],
    });
  });
  afterAll(async () => {
    await fb?.stop();
    await up?.close();
  });

  it('cuts a body that goes silent for bodyIdleMs: the agent sees a broken stream, the access line says stream_broken', async () => {
    const started = performance.now();
    const res = await request(`${fb.proxyUrl}/idle/stall`, { headers: { 'x-request-id': 'idle-1' } });
    expect(res.statusCode).toBe(200);
    await expect(res.body.text()).rejects.toThrow();
    const elapsed = performance.now() - started;
    // undici runs body timeouts on its coarse timers (~0.5–1 s resolution), so only the bounds are exact.
    expect(elapsed).toBeGreaterThanOrEqual(190);
    // The upstream connection is dropped too, not left hanging.
    await up.seen.at(-1)!.closed;
    await fb.app.idle();
    const line = fb.logs.find((l) => l.requestId === 'idle-1' && l.msg === 'request');
    expect(line).toMatchObject({ route: 'idle', status: 200, outcome: 'stream_broken', level: 40 });
    expect(String(line?.error)).toMatch(/timeout/i);
    expect(metricValue(await fb.metricsText(), 'fusebox_requests_total', { route: 'idle', outcome: 'stream_broken' })).toBe(1);
  });

  it('answers 504 UPSTREAM_TIMEOUT phase total when retries run past timeouts.totalMs', async () => {
    const started = performance.now();
    const res = await request(`${fb.proxyUrl}/total/slow-503`);
    const elapsed = performance.now() - started;
    expect(res.statusCode).toBe(504);
    expect(res.headers['x-fusebox-error']).toBe('UPSTREAM_TIMEOUT');
    expect(await res.body.json()).toMatchObject({ code: 'UPSTREAM_TIMEOUT', phase: 'total', route: 'total' });
    expect(elapsed).toBeGreaterThanOrEqual(390);
    // The deadline covers the whole call: it cut the third attempt, not each attempt on its own.
    expect(up.count('/slow-503')).toBeGreaterThanOrEqual(2);
    expect(up.count('/slow-503')).toBeLessThanOrEqual(3);
  });

  it('cuts a stream still running at timeouts.totalMs', async () => {
    const res = await request(`${fb.proxyUrl}/total/sse?n=100&every=50`, { headers: { 'x-request-id': 'total-sse' } });
    expect(res.statusCode).toBe(200);
    await expect(res.body.text()).rejects.toThrow();
    await fb.app.idle();
    expect(fb.logs.find((l) => l.requestId === 'total-sse' && l.msg === 'request')).toMatchObject({ outcome: 'stream_broken' });
  });
});
