import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { X509Certificate } from 'node:crypto';
import { ProxyAgent, request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { metricValue, startFusebox, type RunningFusebox } from '../helpers/fusebox.js';
import { COST_USD, PRICES, startLlmUpstream, type LlmUpstream } from '../helpers/llm.js';
import { startUpstream, testCertificate, type TestUpstream } from '../helpers/upstream.js';

const run = promisify(execFile);
const FIXTURES = fileURLToPath(new URL('../fixtures/clients/', import.meta.url));
const OPENAI_SDK = pathToFileURL(createRequire(import.meta.url).resolve('openai')).href;
const AGENT_KEY = 'sk-agent-own-key';
const SIDECAR_KEY = 'sk-sidecar-key-9f3';

/**
 * Agents that know nothing of Fusebox but the proxy variables and the pod CA, against a fake OpenAI on HTTPS with
 * its own CA (which Fusebox verifies) reached as `api.openai.com`, and a tool API reached as `tools.test`. No DNS
 * is needed: the proxy resolves names, and Fusebox sends each route to its configured upstream.
 */
interface Rig {
  fb: RunningFusebox;
  llm: LlmUpstream;
  tool: TestUpstream;
  caDir: string;
  /** The environment an injected agent container gets. */
  agentEnv: NodeJS.ProcessEnv;
}

const startRig = async (extra: Record<string, unknown> = {}): Promise<Rig> => {
  const llm = await startLlmUpstream({ tls: true });
  const tool = await startUpstream();
  const caDir = mkdtempSync(join(tmpdir(), 'fusebox-ca-'));
  const fb = await startFusebox(
    {
      budgets: { workflow: { maxCalls: 3 } },
      // Short, so the test of a client that abandons its handshake does not wait long; loopback handshakes take ms.
      intercept: { ca: { outDir: caDir }, handshakeTimeoutMs: 2_000 },
      routes: [
        {
          name: 'openai',
          provider: 'openai',
          match: { pathPrefix: '/openai', hosts: ['api.openai.com'] },
          upstream: { url: llm.url, tls: { caFile: testCertificate().caFile } },
          credential: { env: 'FUSEBOX_TEST_OPENAI_KEY' },
          retry: { baseMs: 1, capMs: 5 },
          breaker: { keyBy: 'model', consecutiveFailures: 2 },
          budget: { prices: PRICES },
        },
        {
          name: 'tools',
          match: { hosts: ['tools.test'] },
          upstream: { url: tool.url },
          retry: { enabled: false },
          breaker: { consecutiveFailures: 2 },
        },
      ],
      ...extra,
    },
    { env: { ...process.env, FUSEBOX_TEST_OPENAI_KEY: SIDECAR_KEY } },
  );
  const agentEnv: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    HTTP_PROXY: fb.proxyUrl,
    HTTPS_PROXY: fb.proxyUrl,
    http_proxy: fb.proxyUrl,
    https_proxy: fb.proxyUrl,
    NODE_USE_ENV_PROXY: '1',
    NODE_EXTRA_CA_CERTS: join(caDir, 'ca.crt'),
    SSL_CERT_FILE: join(caDir, 'ca-bundle.crt'),
    REQUESTS_CA_BUNDLE: join(caDir, 'ca-bundle.crt'),
    CURL_CA_BUNDLE: join(caDir, 'ca-bundle.crt'),
  };
  return { fb, llm, tool, caDir, agentEnv };
};

const stopRig = async (rig: Rig | undefined) => {
  if (!rig) return;
  await rig.fb.stop();
  await rig.llm.close();
  await rig.tool.close();
  rmSync(rig.caDir, { recursive: true, force: true });
};

interface Step {
  url: string;
  method?: string;
  headers?: Record<string, string>;
  body?: string;
}
interface StepResult {
  status: number;
  error: string | null;
  body?: string;
}

const chat = (scheme: string, workflow: string, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}): Step => ({
  url: `${scheme}://api.openai.com/v1/chat/completions`,
  method: 'POST',
  headers: { 'content-type': 'application/json', authorization: `Bearer ${AGENT_KEY}`, 'x-fusebox-workflow': workflow, ...headers },
  body: JSON.stringify({ model: 'test-model', messages: [{ role: 'user', content: 'hi' }], ...extra }),
});

/** The policy checks every client goes through, as plain HTTP steps. */
const policySteps = (scheme: string): Step[] => [
  chat(scheme, 'wf-1', {}, { 'x-test-fail-once': `${scheme}-json` }), // 503 once, retried
  chat(scheme, 'wf-1', { stream: true }), // streamed, usage read from the SSE
  chat(scheme, 'wf-1'),
  chat(scheme, 'wf-1'), // the 4th call of the workflow: over maxCalls 3
  { url: `${scheme}://tools.test/status?code=503` },
  { url: `${scheme}://tools.test/status?code=503` }, // the breaker opens (2 consecutive failures)
  { url: `${scheme}://tools.test/status?code=503` }, // answered at once, the tool is not called
];

type Client = (steps: Step[], env: NodeJS.ProcessEnv) => Promise<StepResult[]>;

const nodeFetch: Client = async (steps, env) => {
  const { stdout } = await run(process.execPath, [join(FIXTURES, 'fetch-steps.mjs'), JSON.stringify(steps)], { env, timeout: 30_000 });
  return JSON.parse(stdout) as StepResult[];
};
const pythonUrllib: Client = async (steps, env) => {
  const { stdout } = await run('python3', [join(FIXTURES, 'urllib-steps.py'), JSON.stringify(steps)], { env, timeout: 30_000 });
  return JSON.parse(stdout) as StepResult[];
};
const curlClient: Client = async (steps, env) => {
  const results: StepResult[] = [];
  for (const s of steps) {
    const args = ['-s', '-S', '-D', '-', '-X', s.method ?? 'GET', s.url];
    for (const [k, v] of Object.entries(s.headers ?? {})) args.push('-H', `${k}: ${v}`);
    if (s.body !== undefined) args.push('--data-binary', s.body);
    const { stdout } = await run('curl', args, { env, timeout: 30_000 }).catch((err: { stdout?: string; stderr?: string }) => ({ stdout: `HTTP/1.1 000 ${err.stderr ?? ''}\r\n\r\n` }));
    // -D - prints every header block (a CONNECT's 200 first): the answer is the last one.
    const blocks = stdout.split(/\r\n\r\n/);
    let head = '';
    let at = 0;
    blocks.forEach((block, i) => {
      if (!/^HTTP\/[\d.]+ \d{3}/.test(block)) return;
      head = block;
      at = i;
    });
    const status = Number(/^HTTP\/[\d.]+ (\d{3})/.exec(head)?.[1] ?? 0);
    const error = /^x-fusebox-error: (.+)$/im.exec(head)?.[1]?.trim() ?? null;
    results.push({ status, error, body: blocks.slice(at + 1).join('\r\n\r\n') });
  }
  return results;
};

const CLIENTS: Array<[string, Client]> = [
  ['Node fetch (NODE_USE_ENV_PROXY=1, NODE_EXTRA_CA_CERTS)', nodeFetch],
  ['curl (HTTPS_PROXY, CURL_CA_BUNDLE = the written bundle)', curlClient],
  ['Python urllib (HTTPS_PROXY, SSL_CERT_FILE = the written bundle)', pythonUrllib],
];

/** Money is settled when a body ends, a moment after the client has read it: wait for that, then read the figure. */
const settledCost = async (fb: RunningFusebox): Promise<number> => {
  await fb.app.idle();
  return metricValue(await fb.metricsText(), 'fusebox_cost_usd_total', { route: 'openai', model: 'test-model' });
};

describe.each(CLIENTS)('%s through the proxy variables only', (_name, client) => {
  let rig: Rig | undefined;
  afterEach(async () => {
    await stopRig(rig);
    rig = undefined;
  });

  it.each(['https', 'http'])('%s:// URLs get retries, the credential, usage and cost, the call cap and the breaker', async (scheme) => {
    rig = await startRig();
    const r = await client(policySteps(scheme), rig.agentEnv);
    expect(r.map((x) => x.status)).toEqual([200, 200, 200, 402, 503, 503, 503]);
    expect(r[1]!.body).toContain('data: [DONE]');
    expect(r[3]!.error).toBe('CALL_LIMIT');
    expect(r.slice(4).map((x) => x.error)).toEqual([null, null, 'CIRCUIT_OPEN']);

    // The upstreams: one 503 retried, the 4th call never sent, the dead tool called twice, never the agent's key.
    expect(rig.llm.count('/v1/chat/completions')).toBe(4);
    expect(rig.llm.seen.map((s) => s.headers.authorization)).toEqual(Array(4).fill(`Bearer ${SIDECAR_KEY}`));
    expect(rig.tool.count('/status')).toBe(2);

    // Node's fetch tunnels http:// too (CONNECT host:80); curl and Python send absolute-form requests for http://.
    const mode = scheme === 'https' || client === nodeFetch ? 'intercept' : 'proxy';
    const text = await rig.fb.metricsText();
    expect(metricValue(text, 'fusebox_requests_total', { route: 'openai', code_class: '2xx', mode })).toBe(3);
    expect(metricValue(text, 'fusebox_retries_total', { route: 'openai', outcome: 'retried' })).toBe(1);
    expect(await settledCost(rig.fb)).toBeCloseTo(3 * COST_USD, 9);
    expect(metricValue(await rig.fb.metricsText(), 'fusebox_tokens_total', { route: 'openai', type: 'output' })).toBe(1500);
    // Fusebox asked for the stream's usage itself.
    expect(rig.llm.bodies.find((b) => b.stream === true)).toMatchObject({ stream_options: { include_usage: true } });
  });
});

describe('the openai SDK with its default https:// base URL and its own key', () => {
  let rig: Rig | undefined;
  afterAll(() => stopRig(rig));

  it('gets retries, the sidecar credential, usage and cost, the call cap and the breaker', async () => {
    rig = await startRig();
    const { stdout } = await run(process.execPath, [join(FIXTURES, 'openai-sdk.mjs'), OPENAI_SDK, 'wf-sdk'], { env: rig.agentEnv, timeout: 30_000 });
    const out = JSON.parse(stdout) as Record<string, { status?: number; fuseboxError?: string; content?: string } | string>;
    expect(out.json).toMatchObject({ content: 'ok', usage: { prompt_tokens: 1000, completion_tokens: 500 } });
    expect(out.stream).toMatchObject({ content: 'ok' });
    expect(out.third).toBe('ok');
    expect(out.overCap).toMatchObject({ status: 402, fuseboxError: 'CALL_LIMIT' });
    // The breaker of broken-model opened on its first call's two attempts (503, retried, 503): the second is refused.
    expect(out.broken1).toMatchObject({ status: 503 });
    expect(out.broken2).toMatchObject({ status: 503, fuseboxError: 'CIRCUIT_OPEN' });
    expect(rig.llm.bodies.filter((b) => b.model === 'broken-model')).toHaveLength(2);
    expect(rig.llm.seen.map((s) => s.headers.authorization)).toEqual(Array(6).fill(`Bearer ${SIDECAR_KEY}`));
    expect(await settledCost(rig.fb)).toBeCloseTo(3 * COST_USD, 9);
    const text = await rig.fb.metricsText();
    // The first call was answered 503 once and retried: the upstream saw it twice.
    expect(rig.llm.seen.filter((s) => s.headers['x-test-fail-once'] === 'wf-sdk-json')).toHaveLength(2);
    expect(metricValue(text, 'fusebox_requests_total', { route: 'openai', code_class: '2xx', mode: 'intercept' })).toBe(3);
  });
});

/** Open a CONNECT tunnel by hand: resolves with the socket once Fusebox answered, and that answer's status line. */
const openTunnel = (proxyUrl: string, authority: string): Promise<{ socket: Socket; status: number; head: string }> =>
  new Promise((resolve, reject) => {
    const u = new URL(proxyUrl);
    const socket = connect(Number(u.port), u.hostname, () => socket.write(`CONNECT ${authority} HTTP/1.1\r\nhost: ${authority}\r\n\r\n`));
    let got = '';
    const onData = (c: Buffer) => {
      got += c.toString('latin1');
      const end = got.indexOf('\r\n\r\n');
      if (end === -1) return;
      socket.off('data', onData);
      resolve({ socket, status: Number(got.slice(9, 12)), head: got });
    };
    socket.on('data', onData);
    socket.once('error', reject);
  });

/** Read everything a socket sends until it closes. */
const readAll = (socket: Socket | import('node:tls').TLSSocket): Promise<string> =>
  new Promise((resolve) => {
    let data = '';
    socket.on('data', (c: Buffer) => (data += c.toString()));
    socket.on('error', () => undefined);
    socket.once('close', () => resolve(data));
  });

describe('interception: the CA, the allow-list and bad input', () => {
  let rig: Rig;
  let caPem: string;
  beforeAll(async () => {
    rig = await startRig();
    caPem = readFileSync(join(rig.caDir, 'ca.crt'), 'utf8');
  });
  afterAll(() => stopRig(rig));

  it('writes the CA and a bundle with the system roots before it listens, and shows the CA on /admin/ca', async () => {
    const ca = new X509Certificate(caPem);
    expect(ca.ca).toBe(true);
    const bundle = readFileSync(join(rig.caDir, 'ca-bundle.crt'), 'utf8');
    expect(bundle).toContain(caPem.trim());
    expect(bundle.match(/BEGIN CERTIFICATE/g)!.length).toBeGreaterThan(100);
    const info = (await (await fetch(`${rig.fb.adminUrl}/admin/ca`)).json()) as Record<string, unknown>;
    expect(info).toMatchObject({ source: 'generated', fingerprintSha256: ca.fingerprint256, notAfter: new Date(ca.validTo).toISOString() });
    expect(info.permitted).toEqual(expect.arrayContaining(['DNS:api.openai.com', 'DNS:tools.test']));
    expect((await fetch(`${rig.fb.adminUrl}/readyz`)).status).toBe(200);
    expect(metricValue(await rig.fb.metricsText(), 'fusebox_intercept_ca_expiry_timestamp_seconds')).toBe(Math.floor(new Date(ca.validTo).getTime() / 1000));
  });

  it('serves many requests on one kept-alive tunnel with one TLS handshake', async () => {
    const opened = async () => metricValue(await rig.fb.metricsText(), 'fusebox_tunnels_total', { route: 'tools', mode: 'intercept', outcome: 'opened' });
    const before = await opened();
    const t = await openTunnel(rig.fb.proxyUrl, 'tools.test:443');
    const s = tlsConnect({ socket: t.socket, servername: 'tools.test', ca: caPem, ALPNProtocols: ['h2', 'http/1.1'] });
    await new Promise((r) => s.once('secureConnect', r));
    // HTTP/1.1 inside (Node's HTTP/1 parser serves the tunnel), even to a client that prefers h2.
    expect(s.alpnProtocol).toBe('http/1.1');
    const answer = readAll(s);
    const get = (close: boolean) => `GET /fast HTTP/1.1\r\nhost: tools.test\r\n${close ? 'connection: close\r\n' : ''}\r\n`;
    s.write(get(false) + get(false) + get(true));
    expect((await answer).match(/HTTP\/1\.1 200 OK/g)).toHaveLength(3);
    expect(await opened()).toBe(before + 1);
  });

  it('counts an intercepted tunnel as open while it is, and no longer once it closes', async () => {
    const open = async () => metricValue(await rig.fb.metricsText(), 'fusebox_tunnels_open', { route: 'tools' });
    const opened = async () => metricValue(await rig.fb.metricsText(), 'fusebox_tunnels_total', { route: 'tools', mode: 'intercept', outcome: 'opened' });
    const [open0, opened0] = [await open(), await opened()];
    const t = await openTunnel(rig.fb.proxyUrl, 'tools.test:443');
    const s = tlsConnect({ socket: t.socket, servername: 'tools.test', ca: caPem });
    await new Promise((r) => s.once('secureConnect', r));
    expect(await open()).toBe(open0 + 1);
    // The server counts the handshake when its side completes, which may come just after the client's.
    await vi.waitFor(async () => expect(await opened()).toBe(opened0 + 1));
    s.destroy();
    await vi.waitFor(async () => expect(await open()).toBe(open0));
  });

  it('resumes the TLS session of a client that comes back on a new tunnel (no new signature)', async () => {
    const handshake = async (session?: Buffer) => {
      const t = await openTunnel(rig.fb.proxyUrl, 'tools.test:443');
      const s = tlsConnect({ socket: t.socket, servername: 'tools.test', ca: caPem, ...(session !== undefined ? { session } : {}) });
      // TLS 1.3 sends its tickets after the handshake: the first one is what a client keeps for next time.
      const ticket = new Promise<Buffer>((r) => s.once('session', r));
      await new Promise((r) => s.once('secureConnect', r));
      const reused = s.isSessionReused();
      // The server sends its tickets with the first bytes it writes after the handshake: ask for something.
      const answer = readAll(s);
      s.write('GET /fast HTTP/1.1\r\nhost: tools.test\r\nconnection: close\r\n\r\n');
      expect(await answer).toMatch(/^HTTP\/1\.1 200/);
      return { reused, ticket };
    };
    const first = await handshake();
    expect(first.reused).toBe(false);
    expect((await handshake(await first.ticket)).reused).toBe(true);
  });

  it('refuses CONNECT to a host or port no route lists, and mints nothing for it', async () => {
    const minted = rig.fb.app.ca!.leavesCached;
    for (const authority of ['evil.test:443', 'api.openai.com:8443', 'tools.test:22']) {
      const t = await openTunnel(rig.fb.proxyUrl, authority);
      expect(t.status, authority).toBe(403);
      expect(t.head).toContain('DESTINATION_NOT_ALLOWED');
      t.socket.destroy();
    }
    expect(rig.fb.app.ca!.leavesCached).toBe(minted);
  });

  it('refuses a TLS client that asks for another name than the tunnel (SNI), and never signs it', async () => {
    const t = await openTunnel(rig.fb.proxyUrl, 'api.openai.com:443');
    const failed = new Promise<Error>((resolve) => {
      const s = tlsConnect({ socket: t.socket, servername: 'evil.test', ca: caPem }, () => resolve(new Error('handshake succeeded')));
      s.once('error', resolve);
    });
    expect((await failed).message).not.toBe('handshake succeeded');
    await vi.waitFor(async () => expect(metricValue(await rig.fb.metricsText(), 'fusebox_intercept_tls_failures_total', { route: 'openai', reason: 'sni_mismatch' })).toBe(1));
    expect(rig.fb.logText()).toContain('the client asked for evil.test inside a tunnel to api.openai.com:443');
  });

  it('answers 421 MISDIRECTED_REQUEST to a request whose Host is not the tunnel\'s', async () => {
    const toolCalls = rig.tool.count('/fast');
    const t = await openTunnel(rig.fb.proxyUrl, 'api.openai.com:443');
    const s = tlsConnect({ socket: t.socket, servername: 'api.openai.com', ca: caPem });
    await new Promise((r) => s.once('secureConnect', r));
    const answer = readAll(s);
    s.write('GET /fast HTTP/1.1\r\nhost: tools.test\r\nconnection: close\r\n\r\n');
    const text = await answer;
    expect(text).toMatch(/^HTTP\/1\.1 421/);
    expect(text).toContain('"code":"MISDIRECTED_REQUEST"');
    expect(rig.tool.count('/fast')).toBe(toolCalls);
  });

  it('serves a request whose Host names the tunnel in any spelling (case, explicit default port, trailing dot), and refuses another port', async () => {
    const t = await openTunnel(rig.fb.proxyUrl, 'tools.test:443');
    const s = tlsConnect({ socket: t.socket, servername: 'tools.test', ca: caPem });
    await new Promise((r) => s.once('secureConnect', r));
    const answer = readAll(s);
    const get = (host: string, close = false) => `GET /fast HTTP/1.1\r\nhost: ${host}\r\n${close ? 'connection: close\r\n' : ''}\r\n`;
    s.write(get('tools.test') + get('TOOLS.Test') + get('tools.test:443') + get('tools.test.') + get('tools.test:8443', true));
    const statuses = [...(await answer).matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => m[1]);
    expect(statuses).toEqual(['200', '200', '200', '200', '421']);
  });

  it('counts and logs once a client that does not trust the pod CA, with what to do', async () => {
    // curl (OpenSSL) refuses the certificate during the handshake, with an alert.
    for (let i = 0; i < 2; i++) {
      const failed = await run('curl', ['-s', '-S', 'https://tools.test/fast'], { env: { PATH: process.env.PATH, HTTPS_PROXY: rig.fb.proxyUrl }, timeout: 10_000 }).catch(
        (err: { code?: number }) => err,
      );
      expect((failed as { code?: number }).code).toBe(60); // curl: peer certificate cannot be authenticated
    }
    // Node's TLS client checks after the handshake and closes without an alert.
    for (let i = 0; i < 2; i++) {
      const t = await openTunnel(rig.fb.proxyUrl, 'api.openai.com:443');
      const err = await new Promise<Error & { code?: string }>((resolve) => {
        const s = tlsConnect({ socket: t.socket, servername: 'api.openai.com' }, () => resolve(new Error('handshake succeeded')));
        s.once('error', resolve);
      });
      expect(err.code).toBe('SELF_SIGNED_CERT_IN_CHAIN');
    }
    await vi.waitFor(async () => {
      const text = await rig.fb.metricsText();
      expect(metricValue(text, 'fusebox_intercept_tls_failures_total', { route: 'tools', reason: 'client_rejected_certificate' })).toBe(2);
      expect(metricValue(text, 'fusebox_intercept_tls_failures_total', { route: 'openai', reason: 'closed_without_request' })).toBe(2);
    }, { timeout: 15_000, interval: 50 });
    const rejected = rig.fb.logs.filter((l) => String(l.msg).startsWith("client rejected Fusebox's certificate for tools.test"));
    expect(rejected).toHaveLength(1);
    expect(rejected[0]!.msg).toContain('SSL_CERT_FILE');
    expect(rejected[0]!.msg).toContain('match.connect: tunnel');
    const closed = rig.fb.logs.filter((l) => String(l.msg).startsWith('a client closed its tunnel to api.openai.com during or right after the TLS handshake'));
    expect(closed).toHaveLength(1);
    expect(closed[0]!.msg).toContain('NODE_EXTRA_CA_CERTS');
  });

  it('closes a tunnel whose client sends garbage instead of HTTP or TLS, and keeps serving', async () => {
    const plain = await openTunnel(rig.fb.proxyUrl, 'tools.test:80');
    const plainAnswer = readAll(plain.socket);
    plain.socket.write('\x00\x01\x02 not http at all\r\n\r\n');
    expect(await plainAnswer).toMatch(/^HTTP\/1\.1 400[\s\S]*"code":"BAD_REQUEST"/);

    const tls = await openTunnel(rig.fb.proxyUrl, 'tools.test:443');
    const tlsAnswer = readAll(tls.socket);
    tls.socket.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 6, 7, 8, 9]));
    await tlsAnswer;
    await vi.waitFor(async () => expect(metricValue(await rig.fb.metricsText(), 'fusebox_intercept_tls_failures_total', { route: 'tools', reason: 'tls_error' })).toBe(1));

    const agent = new ProxyAgent({ uri: rig.fb.proxyUrl, requestTls: { ca: caPem } });
    const res = await request('https://tools.test/fast', { dispatcher: agent });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    await agent.close();
  });
});

describe('a route in tunnel mode', () => {
  let fb: RunningFusebox;
  let tlsUp: TestUpstream;
  beforeAll(async () => {
    tlsUp = await startUpstream({ tls: true });
    fb = await startFusebox(
      {
        routes: [
          {
            name: 'pinned',
            provider: 'openai',
            match: { hosts: [`127.0.0.1:${tlsUp.port}`], connect: 'tunnel' },
            upstream: { url: tlsUp.url },
            credential: { env: 'FUSEBOX_TEST_OPENAI_KEY' },
          },
        ],
      },
      { env: { ...process.env, FUSEBOX_TEST_OPENAI_KEY: SIDECAR_KEY } },
    );
  });
  afterAll(async () => {
    await fb?.stop();
    await tlsUp?.close();
  });

  it('splices end to end (the destination\'s own certificate), counts it, warns at startup what it bypasses, and makes no CA', async () => {
    const { stdout } = await run('curl', ['-s', '-S', '--cacert', testCertificate().caFile, `https://127.0.0.1:${tlsUp.port}/echo`], {
      env: { PATH: process.env.PATH, HTTPS_PROXY: fb.proxyUrl },
      timeout: 10_000,
    });
    expect((JSON.parse(stdout) as { headers: Record<string, string> }).headers.authorization).toBeUndefined();
    await vi.waitFor(async () => expect(metricValue(await fb.metricsText(), 'fusebox_tunnels_total', { route: 'pinned', mode: 'tunnel', outcome: 'opened' })).toBe(1));
    const warning = fb.logs.find((l) => String(l.msg).includes('match.connect is tunnel'));
    expect(warning?.msg).toContain('credential (FUSEBOX_TEST_OPENAI_KEY), openai usage metering and cost');
    expect(fb.app.ca).toBeUndefined();
    expect((await fetch(`${fb.adminUrl}/admin/ca`)).status).toBe(404);
  });
});

describe('IPv6 destinations', () => {
  it('tunnels CONNECT [::1]:port to a route listing [::1]:port', async () => {
    const { createServer } = await import('node:http');
    const server = createServer((_req, res) => res.end('v6 ok'));
    await new Promise<void>((r) => server.listen(0, '::1', r));
    const port = (server.address() as import('node:net').AddressInfo).port;
    const fb = await startFusebox({ routes: [{ name: 'v6', match: { hosts: [`[::1]:${port}`] }, upstream: { url: `http://[::1]:${port}` } }] });
    try {
      const t = await openTunnel(fb.proxyUrl, `[::1]:${port}`);
      expect(t.status).toBe(200);
      const answer = readAll(t.socket);
      t.socket.write(`GET / HTTP/1.1\r\nhost: [::1]:${port}\r\nconnection: close\r\n\r\n`);
      expect(await answer).toContain('v6 ok');
    } finally {
      await fb.stop();
      server.close();
    }
  });
});

describe('the pod CA at start and over time', () => {
  it('refuses to start with a CA file it cannot read, naming the file (never a fall back to splicing)', async () => {
    const missing = join(tmpdir(), 'fusebox-no-such-ca.pem');
    await expect(
      startFusebox({
        intercept: { ca: { certFile: missing, keyFile: missing } },
        routes: [{ name: 'tools', match: { hosts: ['tools.test'] }, upstream: { url: 'http://127.0.0.1:9' } }],
      }),
    ).rejects.toThrow(new RegExp(`${missing.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}.*ENOENT`));
  });

  it('turns /readyz to 503 once the CA has expired, and says so in the log', async () => {
    let now = Date.now();
    const fb = await startFusebox(
      { intercept: { ca: { validityDays: 1 } }, routes: [{ name: 'tools', match: { hosts: ['tools.test'] }, upstream: { url: 'http://127.0.0.1:9' } }] },
      { now: () => now },
    );
    try {
      expect((await fetch(`${fb.adminUrl}/readyz`)).status).toBe(200);
      now += 2 * 86_400_000;
      expect((await fetch(`${fb.adminUrl}/readyz`)).status).toBe(503);
      expect(((await (await fetch(`${fb.adminUrl}/admin/ca`)).json()) as { daysLeft: number }).daysLeft).toBeLessThan(0);
    } finally {
      await fb.stop();
    }
    // A one-day CA is under the 14-day warning from its first minute: said at startup.
    expect(fb.logs.some((l) => String(l.msg).startsWith('the pod CA expires soon'))).toBe(true);
  });
});
