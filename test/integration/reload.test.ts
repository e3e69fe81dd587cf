import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { tokenizerLoaded } from '../../src/budget/estimate.js';
import { ConfigError, loadConfigFile, parseConfig } from '../../src/config/load.js';
import { metricValue, startFusebox, type RunningFusebox } from '../helpers/fusebox.js';
import { json, startUpstream, testCertificate, type TestUpstream } from '../helpers/upstream.js';

const route = (name: string, url: string, extra: Record<string, unknown> = {}) => ({ name, match: { pathPrefix: `/${name}` }, upstream: { url }, ...extra });
const configOf = (routes: unknown[], extra: Record<string, unknown> = {}) =>
  parseConfig({ listen: { proxy: { port: 0 }, admin: { port: 0 } }, log: { level: 'info' }, routes, ...extra }, 'reloaded config');

const get = async (url: string) => {
  const res = await request(url);
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
};

describe('config reload', () => {
  let up: TestUpstream | undefined;
  let fb: RunningFusebox | undefined;
  afterEach(async () => {
    await fb?.stop();
    await up?.close();
    fb = undefined;
    up = undefined;
  });

  it('adds a route and removes one while a streamed call on the removed route finishes on it', async () => {
    up = await startUpstream();
    fb = await startFusebox({ routes: [route('old', up.url), route('keep', up.url)] });
    const hashBefore = /fusebox_config_info\{[^}]*hash="([0-9a-f]{12})"/.exec(await fb.metricsText())?.[1];
    expect(hashBefore).toBeDefined();

    const stream = await request(`${fb.proxyUrl}/old/sse?n=15&every=20`);
    const chunks = stream.body[Symbol.asyncIterator]();
    // The stream is under way (its first event arrived) when the config changes under it.
    const first = (await chunks.next()).value as Buffer;
    expect(first.toString()).toContain('data: {"i":0}');

    const result = fb.app.reload(configOf([route('keep', up.url), route('new', up.url)]));
    expect(result).toMatchObject({ result: 'ok', unchanged: false, added: ['new'], removed: ['old'], changed: [], freshState: [] });

    expect((await get(`${fb.proxyUrl}/new/fast`)).status).toBe(200);
    expect((await get(`${fb.proxyUrl}/keep/fast`)).status).toBe(200);
    const gone = await get(`${fb.proxyUrl}/old/fast`);
    expect(gone.status).toBe(404);
    expect(gone.headers['x-fusebox-error']).toBe('NO_ROUTE');

    let rest = '';
    for (let c = await chunks.next(); c.done !== true; c = await chunks.next()) rest += (c.value as Buffer).toString();
    expect(rest).toContain('data: {"i":14}');
    expect(rest).toContain('data: [DONE]');
    await fb.waitForLog((l) => l.msg === 'request' && l.route === 'old' && l.outcome === 'success');

    const line = await fb.waitForLog((l) => l.msg === 'config reloaded');
    expect(line).toMatchObject({ added: ['new'], removed: ['old'], previousHash: hashBefore });
    const metrics = await fb.metricsText();
    expect(metricValue(metrics, 'fusebox_config_reloads_total', { result: 'ok' })).toBe(1);
    expect(metrics).toMatch(new RegExp(`fusebox_config_info\\{routes="2",store="memory",agent="local",hash="${String(line.hash)}"\\} 1`));
    expect(metrics).not.toContain(`hash="${hashBefore}"`);
    // Gauges of the removed route are gone rather than frozen at their last value.
    expect(metrics).not.toMatch(/fusebox_breaker_state\{route="old"/);
    expect(metrics).not.toMatch(/fusebox_slo_action\{route="old"/);
    expect(metricValue(metrics, 'fusebox_config_loaded_timestamp_seconds')).toBeGreaterThan(Date.now() / 1000 - 60);
    // The SLO evaluator and the status page follow the new routes.
    expect(fb.app.slo.evaluator.all().map((s) => s.route)).toEqual(['keep', 'new']);
    const status = JSON.parse((await get(`${fb.adminUrl}/admin/status`)).text) as { routes: Array<{ name: string }> };
    expect(status.routes.map((r) => r.name)).toEqual(['keep', 'new']);
  });

  it("keeps an open breaker of a kept route open across the reload; a route whose breaker settings changed starts fresh", async () => {
    up = await startUpstream();
    const flaky = (threshold: number) => route('flaky', up!.url, { retry: { enabled: false }, breaker: { consecutiveFailures: threshold, resetMs: 60_000 } });
    fb = await startFusebox({ routes: [flaky(2), route('other', up.url)] });
    for (let i = 0; i < 2; i++) expect((await get(`${fb.proxyUrl}/flaky/status?code=503`)).status).toBe(503);
    const open = await get(`${fb.proxyUrl}/flaky/fast`);
    expect(open.headers['x-fusebox-error']).toBe('CIRCUIT_OPEN');

    // Same breaker settings, another route changed and one added: the breaker is the same object, still open.
    const kept = fb.app.reload(configOf([flaky(2), route('other', up.url, { stripPrefix: true, timeouts: { connectMs: 1000 } }), route('added', up.url)]));
    expect(kept).toMatchObject({ result: 'ok', added: ['added'], removed: [], changed: ['other'], freshState: [] });
    const still = await get(`${fb.proxyUrl}/flaky/fast`);
    expect(still.status).toBe(503);
    expect(still.headers['x-fusebox-error']).toBe('CIRCUIT_OPEN');
    expect(up.count('/fast')).toBe(0);
    const breakers = JSON.parse((await get(`${fb.adminUrl}/admin/breakers`)).text) as Array<{ route: string; state: string }>;
    expect(breakers.find((b) => b.route === 'flaky')?.state).toBe('open');

    // A changed breaker setting: new breakers (documented: the old state does not fit the new settings).
    const fresh = fb.app.reload(configOf([flaky(3), route('other', up.url), route('added', up.url)]));
    expect(fresh).toMatchObject({ result: 'ok', changed: ['flaky', 'other'], freshState: ['flaky'] });
    // The old breaker's series does not linger as open.
    expect(metricValue(await fb.metricsText(), 'fusebox_breaker_state', { route: 'flaky' })).toBe(0);
    expect((await get(`${fb.proxyUrl}/flaky/fast`)).status).toBe(200);
  });

  it("keeps a kept route's retry budget and last-good answers; a route re-added after removal starts fresh", async () => {
    up = await startUpstream();
    let healthy = true;
    up.on('/flip', (_req, res) => json(res, healthy ? 200 : 503, { healthy }));
    const cached = route('cached', up.url, {
      retry: { maxRetries: 1, baseMs: 1, capMs: 2, budgetPercent: 1, minRetriesPerSecond: 0 },
      lastGood: { enabled: true },
      fallback: [{ type: 'lastGood', name: 'last-good' }],
    });
    fb = await startFusebox({ routes: [cached, route('other', up.url)] });
    for (let i = 0; i < 3; i++) expect((await get(`${fb.proxyUrl}/cached/flip`)).status).toBe(200);
    await fb.waitForLog((l) => l.msg === 'request' && l.route === 'cached' && l.outcome === 'success');
    const budgetOf = async () => {
      const status = JSON.parse((await get(`${fb!.adminUrl}/admin/status`)).text) as { routes: Array<{ name: string; retries: { budgets: Array<{ requestsInWindow: number }> } }> };
      return status.routes.find((r) => r.name === 'cached')?.retries.budgets[0]?.requestsInWindow;
    };
    expect(await budgetOf()).toBe(3);

    expect(fb.app.reload(configOf([cached, route('other', up.url, { stripPrefix: false })]))).toMatchObject({ result: 'ok', changed: ['other'], freshState: [] });
    // The same budget object: the calls before the reload are still in its window.
    expect(await budgetOf()).toBe(3);
    // The remembered answer survived the reload: the failing upstream is answered from it.
    healthy = false;
    const answer = await get(`${fb.proxyUrl}/cached/flip`);
    expect(answer.status).toBe(200);
    expect(answer.headers['x-fusebox-fallback']).toBe('last-good');
    expect(JSON.parse(answer.text)).toEqual({ healthy: true });

    // Removed, then added back: its state was dropped with it.
    fb.app.reload(configOf([route('other', up.url)]));
    expect(fb.app.reload(configOf([cached, route('other', up.url)]))).toMatchObject({ result: 'ok', added: ['cached'] });
    expect(await budgetOf()).toBe(0);
    const nothingKept = await get(`${fb.proxyUrl}/cached/flip`);
    expect(nothingKept.status).not.toBe(200);
    expect(nothingKept.headers['x-fusebox-fallback']).toBeUndefined();
  });

  it('loads the OpenAI tokenizer on a reload only when a route asks for it (budget.tokenizer: o200k)', async () => {
    up = await startUpstream();
    fb = await startFusebox({ routes: [route('r', up.url)] });
    const openai = (extra: Record<string, unknown> = {}) => route('llm', up!.url, { provider: 'openai', ...extra });
    expect(fb.app.reload(configOf([route('r', up.url), openai()]))).toMatchObject({ result: 'ok', added: ['llm'] });
    expect(tokenizerLoaded()).toBe(false);
    expect(fb.app.reload(configOf([route('r', up.url), openai({ budget: { tokenizer: 'o200k' } })]))).toMatchObject({ result: 'ok' });
    expect(tokenizerLoaded()).toBe(true);
  });

  it('keeps the old config serving when the new one is invalid, and logs every problem', async () => {
    up = await startUpstream();
    fb = await startFusebox({ routes: [route('r', up.url)] });
    const dir = mkdtempSync(join(tmpdir(), 'fusebox-reload-'));
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, 'routes:\n  - name: r\n    match: { pathPrefix: /r }\n    upstream: { url: "http://127.0.0.1:1" }\n    retry: { maxRetries: "three" }\n    breaker: { resetMss: 10 }\n');
    let err: unknown;
    try {
      loadConfigFile(file);
    } catch (caught) {
      err = caught;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const problems = (err as ConfigError).problems;
    expect(problems.length).toBe(2);

    const result = fb.app.reload(err as ConfigError);
    expect(result).toEqual({ result: 'invalid', problems });
    for (const problem of problems) await fb.waitForLog((l) => l.msg === `config reload: ${problem}` && l.level === 50);
    expect(await fb.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('config reload failed: 2 problems'))).toMatchObject({ problems });
    expect((await get(`${fb.proxyUrl}/r/fast`)).status).toBe(200);
    const metrics = await fb.metricsText();
    expect(metricValue(metrics, 'fusebox_config_reloads_total', { result: 'invalid' })).toBe(1);
    expect(metricValue(metrics, 'fusebox_config_reloads_total', { result: 'ok' })).toBe(0);

    // What the schema cannot see, a price table that cannot be read, is as invalid.
    const noPrices = fb.app.reload(configOf([route('r', up.url), route('added', up.url)], { budgets: { pricesFile: join(dir, 'missing-prices.yaml') } }));
    expect(noPrices).toMatchObject({ result: 'invalid', problems: [expect.stringContaining('missing-prices.yaml')] });
    expect((await get(`${fb.proxyUrl}/added/fast`)).status).toBe(404);
    expect(metricValue(await fb.metricsText(), 'fusebox_config_reloads_total', { result: 'invalid' })).toBe(2);
  });

  it('refuses a reload that changes a restart-only setting, naming each, and applies none of it', async () => {
    up = await startUpstream();
    fb = await startFusebox({ routes: [route('r', up.url)] });
    const before = fb.app.config;
    const next = configOf([route('r', up.url), route('added', up.url)], { listen: { proxy: { port: 0, host: '0.0.0.0' }, admin: { port: 0 } }, limits: { maxHeaderBytes: 4096 } });
    const result = fb.app.reload(next);
    expect(result).toMatchObject({ result: 'refused', restartOnly: [{ path: 'listen.proxy' }, { path: 'limits.maxHeaderBytes' }] });
    await fb.waitForLog((l) => l.msg === 'config reload refused: listen.proxy, limits.maxHeaderBytes changed (restart to apply); the config in effect keeps serving');
    await fb.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('config reload: listen.proxy changed: the listener is bound at start; restart to apply'));
    expect(fb.app.config).toBe(before);
    expect((await get(`${fb.proxyUrl}/added/fast`)).status).toBe(404);
    expect((await get(`${fb.proxyUrl}/r/fast`)).status).toBe(200);
    expect(metricValue(await fb.metricsText(), 'fusebox_config_reloads_total', { result: 'refused' })).toBe(1);
  });
  it('applies a changed upstream.connections on reload, and closes the old pool once its grace is over', async () => {
    up = await startUpstream();
    // The upstream answers /pair only once two requests are in: with one connection the second would wait behind
    // the first forever, so the pair completes only on a pool that may open two.
    const ports: number[] = [];
    const held: Array<() => void> = [];
    up.on('/pair', (req, res) => {
      ports.push(req.socket.remotePort!);
      held.push(() => json(res, 200, { ok: true }));
      if (held.length === 2) for (const answer of held.splice(0)) answer();
    });
    const oldSockets: Array<Promise<void>> = [];
    up.on('/one', (req, res) => {
      ports.push(req.socket.remotePort!);
      // 'end': the peer (Fusebox) closed it; the upstream's own keep-alive timeout (5 s) would destroy it without one.
      oldSockets.push(new Promise((r) => req.socket.once('end', () => r())));
      json(res, 200, { ok: true });
    });
    const limited = (connections: number) =>
      ({ ...route('r', up!.url), upstream: { url: up!.url, connections }, timeouts: { totalMs: 1_500 }, retry: { enabled: false } });
    fb = await startFusebox({ routes: [limited(1)] });

    const one = await Promise.all([get(`${fb.proxyUrl}/r/one`), get(`${fb.proxyUrl}/r/one`)]);
    expect(one.map((r) => r.status)).toEqual([200, 200]);
    expect(new Set(ports).size).toBe(1);
    ports.length = 0;

    expect(fb.app.reload(configOf([limited(2)]))).toMatchObject({ result: 'ok', changed: ['r'] });
    const line = await fb.waitForLog((l) => l.msg === 'config reloaded');
    expect(line.poolsRetired).toEqual([up.url]);
    const pair = await Promise.all([get(`${fb.proxyUrl}/r/pair`), get(`${fb.proxyUrl}/r/pair`)]);
    expect(pair.map((r) => r.status)).toEqual([200, 200]);
    expect(new Set(ports).size).toBe(2);
    // The retired pool closes its idle socket after the old routes' totalMs (1.5 s), not at keep-alive's 30 s.
    await oldSockets[0];
  });
  it('reads a CA file rotated in place on a reload of the same config, and moves its upstream to a new pool', async () => {
    up = await startUpstream({ tls: true });
    const ca = join(mkdtempSync(join(tmpdir(), 'fusebox-ca-')), 'ca.pem');
    copyFileSync(testCertificate().caFile, ca);
    const tlsRoute = () => ({ ...route('r', up!.url), upstream: { url: up!.url, tls: { caFile: ca } } });
    fb = await startFusebox({ routes: [tlsRoute()] });
    expect((await get(`${fb.proxyUrl}/r/fast`)).status).toBe(200);
    // Same file, same CA bytes: nothing to rebuild.
    expect(fb.app.reload(configOf([tlsRoute()]))).toMatchObject({ result: 'ok', unchanged: true });
    // The Secret behind the file is renewed (here: the same certificate, other bytes); the config file is not touched.
    writeFileSync(ca, `${readFileSync(ca, 'utf8')}\n`);
    expect(fb.app.reload(configOf([tlsRoute()]))).toMatchObject({ result: 'ok', unchanged: false, changed: [] });
    const line = await fb.waitForLog((l) => l.msg === 'config reloaded');
    expect(line.poolsRetired).toEqual([up.url]);
    expect((await get(`${fb.proxyUrl}/r/fast`)).status).toBe(200);
  });
});
