import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runStatus, STATUS_EXIT } from '../../src/cli/status.js';
import type { StatusDocument } from '../../src/http/admin-status.js';
import { runCaptured } from '../helpers/cli.js';
import { startFusebox, type RunningFusebox } from '../helpers/fusebox.js';
import { json, startUpstream, type TestUpstream } from '../helpers/upstream.js';

const ROOT = join(import.meta.dirname, '..', '..');

/** Values that must never leave the sidecar through /admin/status or `fusebox status`. */
const SECRETS = {
  FUSEBOX_TEST_LLM_KEY: 'sk-status-test-credential-1f2e3d',
  FUSEBOX_TEST_HEADER: 'hdr-status-test-secret-9a8b7c',
  FUSEBOX_ADMIN_TOKEN: 'admin-status-test-token-5d4c3b',
};

/** 1000 prompt + 500 completion tokens at $2 / $8 per 1M: $0.006 a call, over the route's $0.005 day cap. */
const USAGE = { prompt_tokens: 1000, completion_tokens: 500, total_tokens: 1500 };

const status = (args: string[]) => runCaptured(runStatus, args, { stdin: Readable.from([]), env: {} });

describe('GET /admin/status and fusebox status against a running sidecar', () => {
  let up: TestUpstream;
  let fb: RunningFusebox;

  const get = (path: string) => fetch(`${fb.proxyUrl}${path}`).then(async (r) => ({ status: r.status, code: r.headers.get('x-fusebox-error'), body: await r.text() }));
  const chat = () =>
    fetch(`${fb.proxyUrl}/llm/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'test-model', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] }),
    }).then(async (r) => ({ status: r.status, code: r.headers.get('x-fusebox-error'), body: await r.text() }));
  const statusJson = async () => {
    const res = await fetch(`${fb.adminUrl}/admin/status`);
    expect(res.status).toBe(200);
    return { text: await res.text(), res };
  };
  const doc = async () => JSON.parse((await statusJson()).text) as StatusDocument;

  beforeAll(async () => {
    up = await startUpstream();
    up.on('/v1/chat/completions', (_req, res, raw) => {
      const body = JSON.parse(raw.toString()) as { model: string };
      json(res, 200, { id: 'c1', object: 'chat.completion', created: 1, model: body.model, choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }], usage: USAGE });
    });
    fb = await startFusebox(
      {
        agent: { id: 'status-agent' },
        routes: [
          {
            name: 'flaky',
            match: { pathPrefix: '/flaky' },
            upstream: { url: up.url },
            // One retry, no wait: the first call's two attempts open the breaker.
            retry: { maxRetries: 1, baseMs: 0 },
            breaker: { consecutiveFailures: 2, resetMs: 600_000, resetJitterPercent: 0 },
            headers: { add: { 'x-upstream-secret': '${FUSEBOX_TEST_HEADER}' } },
          },
          {
            name: 'llm',
            provider: 'openai',
            match: { pathPrefix: '/llm' },
            upstream: { url: up.url },
            credential: { env: 'FUSEBOX_TEST_LLM_KEY' },
            budget: { dailyUsd: 0.005, prices: { 'test-model': { inputPerM: 2, outputPerM: 8 } } },
          },
        ],
      },
      { env: { ...SECRETS } },
    );
  });
  afterAll(async () => {
    await fb?.stop();
    await up?.close();
  });

  it('answers exit 0 while every breaker is closed and no budget is spent, read-only and without a token', async () => {
    const { res } = await statusJson();
    expect(res.headers.get('cache-control')).toBe('no-store');
    const d = await doc();
    expect(d).toMatchObject({ agent: 'status-agent', ready: true, windowSeconds: 60, problems: [], refusals: { total: 0, recent: [] } });
    expect(d.routes.map((r) => r.name)).toEqual(['flaky', 'llm']);
    const r = await status(['--admin', fb.adminUrl]);
    expect(r.code).toBe(STATUS_EXIT.OK);
    expect(r.out).toContain('OK: every breaker closed, no budget spent (exit 0)');
  });

  it('shows the breaker a failing upstream opened, with its next probe, the retry and the refusal; exit 10', async () => {
    expect((await get('/flaky/status?code=503')).status).toBe(503);
    const refused = await get('/flaky/status?code=503');
    expect(refused).toMatchObject({ status: 503, code: 'CIRCUIT_OPEN' });
    await fb.app.idle();

    const d = await doc();
    const flaky = d.routes.find((r) => r.name === 'flaky')!;
    expect(flaky.traffic).toMatchObject({ calls: 2, errors: 2, errorRatePercent: 100, outcomes: { upstream_error: 1, refused: 1 } });
    expect(flaky.latency.samples).toBe(1);
    expect(flaky.latency.p99Ms).toBeGreaterThan(0);
    expect(flaky.retries).toMatchObject({ enabled: true, retried: 1, budgetExhausted: 0, budgets: [{ upstream: 'flaky', windowSeconds: 10 }] });
    expect(flaky.breakers).toEqual([expect.objectContaining({ route: 'flaky', key: 'flaky', state: 'open', failures: 2, lastFailure: 'status_5xx' })]);
    expect(flaky.breakers[0]!.msUntilProbe).toBeGreaterThan(590_000);
    expect(flaky.breakers[0]!.msUntilProbe).toBeLessThanOrEqual(600_000);
    expect(d.problems).toEqual([expect.objectContaining({ kind: 'breaker_open', route: 'flaky', key: 'flaky', state: 'open' })]);
    expect(d.refusals.recent[0]).toMatchObject({ code: 'CIRCUIT_OPEN', status: 503, route: 'flaky', mode: 'base-url' });

    const r = await status(['--admin', fb.adminUrl]);
    expect(r.code).toBe(STATUS_EXIT.BREAKER_OPEN);
    expect(r.out).toMatch(/PROBLEMS \(exit 10\)\n {2}- breaker "flaky" of route "flaky" is open, next probe in \d+\.\d s/);
    expect(r.out).toMatch(/^ {2}flaky +flaky +open +100\.0 % +2 +\d+\.\d s +status_5xx$/m);
    expect(r.out).toMatch(/^ {2}flaky +\d+\.\d\d +100\.0 % +\S+ ms +\S+ ms +1 +\d+ +0 +1 open/m);
    expect(r.out).toMatch(/^ {2}\d\d:\d\d:\d\d\.\d{3} +flaky +503 +CIRCUIT_OPEN +the circuit breaker "flaky"/m);
  });

  it('shows the capped route’s spend against its cap, and the refusal past it; exit 30 with the breaker still open', async () => {
    expect((await chat()).status).toBe(200);
    await fb.app.idle();
    expect(await chat()).toMatchObject({ status: 402, code: 'BUDGET_EXCEEDED' });
    await fb.app.idle();

    const d = await doc();
    const cap = d.budgets.scopes.find((s) => s.scope === 'route' && s.id === 'llm')!;
    expect(cap).toMatchObject({ window: 'day', spentUsd: 0.006, inFlightUsd: 0, limitUsd: 0.005, usedPercent: 120, exhausted: true });
    expect(d.budgets).toMatchObject({ store: 'memory', storeAvailable: true, error: null, kills: [] });
    expect(d.problems.map((p) => p.kind)).toEqual(['breaker_open', 'budget_spent']);
    expect(d.problems[1]).toMatchObject({ scope: 'route', id: 'llm', window: 'day', message: 'route "llm" day budget spent: $0.0060 of $0.0050' });
    expect(d.refusals.recent.map((r) => r.code)).toEqual(['BUDGET_EXCEEDED', 'CIRCUIT_OPEN']);

    const r = await status(['--admin', fb.adminUrl]);
    expect(r.code).toBe(STATUS_EXIT.BOTH);
    expect(r.out).toMatch(/^ {2}route +llm +day +usd +\$0\.0060 +\$0\.0000 +\$0\.0050 +120 % +SPENT$/m);
    const j = await status(['--admin', fb.adminUrl, '--json']);
    expect(j.code).toBe(STATUS_EXIT.BOTH);
    expect((JSON.parse(j.out) as StatusDocument).problems).toHaveLength(2);
  });

  it('exits 20 once the breaker is reset and only the budget is spent', async () => {
    const reset = await fetch(`${fb.adminUrl}/admin/breakers/reset`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${SECRETS.FUSEBOX_ADMIN_TOKEN}` },
      body: JSON.stringify({ route: 'flaky', key: 'flaky' }),
    });
    expect(reset.status).toBe(200);
    const r = await status(['--admin', fb.adminUrl]);
    expect(r.code).toBe(STATUS_EXIT.BUDGET_SPENT);
    expect(r.out).toContain('PROBLEMS (exit 20)');
    expect(r.out).toMatch(/PROBLEMS \(exit 20\)\n {2}- route "llm" day budget spent: \$0\.0060 of \$0\.0050\n\n/);
  });

  it('counts a kill switch on this agent as a problem (exit 20), and a workflow kill only as a listed kill', async () => {
    const admin = (path: string, body: unknown) =>
      fetch(`${fb.adminUrl}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${SECRETS.FUSEBOX_ADMIN_TOKEN}` }, body: JSON.stringify(body) });
    expect((await admin('/admin/kill', { target: 'workflow', id: 'loop-7', reason: 'runaway' })).status).toBe(200);
    expect((await admin('/admin/kill', { target: 'agent', reason: 'incident 42' })).status).toBe(200);
    const d = await doc();
    expect(d.budgets.kills).toEqual(
      expect.arrayContaining([expect.objectContaining({ kind: 'workflow', id: 'loop-7' }), expect.objectContaining({ kind: 'agent', id: 'status-agent', reason: 'incident 42' })]),
    );
    expect(d.problems.filter((p) => p.kind === 'killed')).toEqual([
      { kind: 'killed', target: 'agent', id: 'status-agent', reason: 'incident 42', message: 'kill switch on agent "status-agent": incident 42' },
    ]);
    const r = await status(['--admin', fb.adminUrl]);
    expect(r.code).toBe(STATUS_EXIT.BUDGET_SPENT);
    expect(r.out).toContain('  kill switch: agent "status-agent" since ');
    expect((await admin('/admin/kill/lift', { target: 'agent' })).status).toBe(200);
    expect((await admin('/admin/kill/lift', { target: 'workflow', id: 'loop-7' })).status).toBe(200);
    expect((await doc()).budgets.kills).toEqual([]);
  });

  it('never shows a secret: credential values, headers.add values, the admin token; env var names stay', async () => {
    const { text } = await statusJson();
    const cli = await status(['--admin', fb.adminUrl]);
    for (const secret of Object.values(SECRETS)) {
      expect(text).not.toContain(secret);
      expect(cli.out).not.toContain(secret);
    }
    const config = (JSON.parse(text) as StatusDocument).config as { routes: Array<{ headers: { add: Record<string, string> }; credential?: { env: string } }> };
    expect(config.routes[0]!.headers.add).toEqual({ 'x-upstream-secret': '[REDACTED]' });
    expect(config.routes[1]!.credential).toMatchObject({ env: 'FUSEBOX_TEST_LLM_KEY' });
    // The upstream did get the real header: redaction is for display only.
    expect(up.seen.find((s) => s.url.startsWith('/status'))!.headers['x-upstream-secret']).toBe(SECRETS.FUSEBOX_TEST_HEADER);
  });

  it('documents every field of the document in the README (the live page and scripts read it)', async () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('### Status: `GET /admin/status`'), readme.indexOf('\n## ', readme.indexOf('### Status: `GET /admin/status`')));
    const keys = new Set<string>();
    // `config` is the config schema's (documented with it), `slo` is /admin/slo's, `outcomes` are listed by value.
    const walk = (v: unknown, parent: string) => {
      if (Array.isArray(v)) return v.forEach((x) => walk(x, parent));
      if (v === null || typeof v !== 'object' || ['config', 'slo', 'outcomes'].includes(parent)) return;
      for (const [k, x] of Object.entries(v)) {
        keys.add(k);
        walk(x, k);
      }
    };
    walk(await doc(), '');
    expect(keys.size).toBeGreaterThan(40);
    const missing = [...keys].filter((k) => !new RegExp(`[\`.]${k}[\`.[]`).test(section));
    expect(missing).toEqual([]);
  });

  it('--watch redraws until its signal ends it, and exits with the last view’s status', async () => {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    const stop = new AbortController();
    let out = '';
    const twoViews = new Promise<void>((resolve) => {
      stdout.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.split('fusebox status  ').length - 1 >= 2) resolve();
      });
    });
    const done = runStatus(['--admin', fb.adminUrl, '--watch', '0.5'], { stdin: Readable.from([]), stdout, stderr, signal: stop.signal });
    await twoViews;
    stop.abort();
    expect(await done).toBe(STATUS_EXIT.BUDGET_SPENT);
    // Not a terminal: no screen clearing, one view after the other.
    expect(out).not.toContain('\x1b[');
  });

  it('as a real process: prints the view and exits with its code; --watch stops on SIGINT', async () => {
    const cli = (args: string[]) => spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/main.ts'), 'status', '--admin', fb.adminUrl, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    const finished = (child: ReturnType<typeof cli>) =>
      new Promise<{ code: number | null; out: string }>((resolve) => {
        let out = '';
        child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
        child.on('close', (code) => resolve({ code, out }));
      });

    const once = await finished(cli([]));
    expect(once.code).toBe(STATUS_EXIT.BUDGET_SPENT);
    expect(once.out).toContain('route "llm" day budget spent: $0.0060 of $0.0050');

    const watching = cli(['--watch', '0.5']);
    const result = finished(watching);
    await new Promise<void>((resolve) => {
      let seen = '';
      watching.stdout!.on('data', (c: Buffer) => {
        seen += c.toString();
        if (seen.includes('LAST REFUSALS')) resolve();
      });
    });
    watching.kill('SIGINT');
    const watched = await result;
    expect(watched.code).toBe(STATUS_EXIT.BUDGET_SPENT);
    // Two cold `tsx` starts of the CLI: ~5 s on an idle machine, past the default 20 s on a loaded 2-core one (seen
    // once). Nothing here waits on time: the bound only stops a hung child.
  }, 90_000);
});

describe('fusebox status without a sidecar', () => {
  it('exits 3 with the reason when nothing listens on the admin port', async () => {
    const server = createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address() as { port: number };
    await new Promise<void>((r) => server.close(() => r()));

    const r = await status(['--admin', `127.0.0.1:${port}`]);
    expect(r.code).toBe(STATUS_EXIT.UNREACHABLE);
    expect(r.out).toBe('');
    expect(r.err).toMatch(new RegExp(`^fusebox status: cannot reach the sidecar's admin API at http://127\\.0\\.0\\.1:${port}/admin/status: .*ECONNREFUSED`));
    const j = await status(['--admin', `127.0.0.1:${port}`, '--json']);
    expect(j.code).toBe(STATUS_EXIT.UNREACHABLE);
    expect(JSON.parse(j.out)).toMatchObject({ exitCode: 3 });
  });

  it('exits 3 when the port answers but is not an admin listener (the proxy port)', async () => {
    const up = await startUpstream();
    const fb = await startFusebox({ routes: [{ name: 'r', match: { pathPrefix: '/r' }, upstream: { url: up.url } }] });
    try {
      const r = await status(['--admin', fb.proxyUrl]);
      expect(r.code).toBe(STATUS_EXIT.UNREACHABLE);
      expect(r.err).toContain(`${fb.proxyUrl}/admin/status answered 404 NO_ROUTE, not a Fusebox status document`);
    } finally {
      await fb.stop();
      await up.close();
    }
  });

  it('refuses a bad --admin, --watch or option with exit 2', async () => {
    expect(await status(['--admin', 'ftp://x'])).toMatchObject({ code: 2, err: expect.stringContaining('--admin must be an http:// or https:// URL') });
    expect(await status(['--watch', '0.1'])).toMatchObject({ code: 2, err: expect.stringContaining('--watch takes 0.5 to 3600 seconds, got "0.1"') });
    expect(await status(['--bogus'])).toMatchObject({ code: 2, err: expect.stringContaining('Run "fusebox status --help" for the usage.') });
  });
});
