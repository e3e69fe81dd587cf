import { copyFileSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Anthropic from '@anthropic-ai/sdk';
import { Redis } from 'ioredis';
import OpenAI from 'openai';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { metricValue, startFusebox, type RunningFusebox } from '../helpers/fusebox.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { COST_USD, PRICES, startLlmUpstream } from '../helpers/llm.js';
import type { TestUpstream } from '../helpers/upstream.js';

const llmUpstream = startLlmUpstream;

const llmRoutes = (up: TestUpstream, extra: Record<string, unknown> = {}) => [
  { name: 'openai', provider: 'openai', match: { pathPrefix: '/openai' }, upstream: { url: up.url }, budget: { prices: PRICES, ...extra } },
  { name: 'anthropic', provider: 'anthropic', match: { pathPrefix: '/anthropic' }, upstream: { url: up.url }, budget: { prices: PRICES, ...extra } },
  { name: 'tool', match: { pathPrefix: '/tool' }, upstream: { url: up.url } },
];

/** Fusebox's own body of a refusal on an LLM route, carried inside the provider's error envelope. */
const fuseboxBody = async (res: { body: { json(): Promise<unknown> } }): Promise<Record<string, unknown>> =>
  ((await res.body.json()) as { error: { fusebox: Record<string, unknown> } }).error.fusebox;

const chat = (fb: RunningFusebox, headers: Record<string, string> = {}, maxTokens = 50) =>
  request(`${fb.proxyUrl}/openai/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'test-model', max_tokens: maxTokens, messages: [{ role: 'user', content: 'hello there' }] }),
  });

describe('token and cost metering', () => {
  let up: Awaited<ReturnType<typeof llmUpstream>>;
  let fb: RunningFusebox;
  beforeAll(async () => {
    up = await llmUpstream();
    fb = await startFusebox({ routes: llmRoutes(up) });
  });
  afterAll(async () => {
    await fb?.stop();
    await up?.close();
  });

  it('charges exactly the price-table arithmetic for OpenAI answers, plain and streamed (usage asked for by Fusebox, read, kept from the agent)', async () => {
    const client = new OpenAI({ apiKey: 'x', baseURL: `${fb.proxyUrl}/openai/v1`, maxRetries: 0 });
    await client.chat.completions.create({ model: 'test-model', messages: [{ role: 'user', content: 'hi' }] });
    const stream = await client.chat.completions.create({ model: 'test-model', messages: [{ role: 'user', content: 'hi' }], stream: true });
    let sawUsage = false;
    for await (const chunk of stream) if (chunk.usage) sawUsage = true;
    expect(sawUsage).toBe(false);
    expect(up.bodies.at(-1)).toMatchObject({ stream_options: { include_usage: true } });
    await fb.app.idle();
    const text = await fb.metricsText();
    expect(metricValue(text, 'fusebox_cost_usd_total', { route: 'openai', model: 'test-model' })).toBeCloseTo(2 * COST_USD, 9);
    expect(metricValue(text, 'fusebox_tokens_total', { route: 'openai', model: 'test-model', type: 'input' })).toBe(1600);
    expect(metricValue(text, 'fusebox_tokens_total', { route: 'openai', model: 'test-model', type: 'cached_input' })).toBe(400);
    expect(metricValue(text, 'fusebox_tokens_total', { route: 'openai', model: 'test-model', type: 'output' })).toBe(1000);
  });

  it('charges Anthropic answers read from JSON and from the event stream', async () => {
    const client = new Anthropic({ apiKey: 'x', baseURL: `${fb.proxyUrl}/anthropic`, maxRetries: 0 });
    await client.messages.create({ model: 'test-model', max_tokens: 600, messages: [{ role: 'user', content: 'hi' }] });
    const stream = client.messages.stream({ model: 'test-model', max_tokens: 600, messages: [{ role: 'user', content: 'hi' }] });
    const final = await stream.finalMessage();
    expect(final.usage.output_tokens).toBe(500);
    await fb.app.idle();
    expect(metricValue(await fb.metricsText(), 'fusebox_cost_usd_total', { route: 'anthropic', model: 'test-model' })).toBeCloseTo(2 * COST_USD, 9);
  });

  it('prices an unknown model at the default price, labels it "other" and counts it', async () => {
    const res = await request(`${fb.proxyUrl}/openai/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'mystery-model-9', messages: [{ role: 'user', content: 'hi' }] }),
    });
    await res.body.dump();
    await fb.app.idle();
    const text = await fb.metricsText();
    // Default price $15 / $75 per 1M: 1000 × 15 + 500 × 75 = 52,500 µUSD (cached priced as input when no cached price).
    expect(metricValue(text, 'fusebox_cost_usd_total', { route: 'openai', model: 'other' })).toBeCloseTo(0.0525, 9);
    expect(metricValue(text, 'fusebox_unknown_model_total', { route: 'openai' })).toBe(1);
    expect(text).not.toContain('mystery-model-9');
  });
});

/** The agent's day spend, µUSD, as a memory store's snapshot file has it: what a restart starts from (0 until written). */
const agentDayInFile = (snapshotPath: string): number => {
  try {
    const file = JSON.parse(readFileSync(snapshotPath, 'utf8')) as { counters: Array<[string, { spent: { usdMicros: number } }]> };
    return file.counters.find(([key]) => key.startsWith('agent:') && key.includes(':day:'))?.[1].spent.usdMicros ?? 0;
  } catch {
    return 0;
  }
};

describe('caps', () => {
  let up: Awaited<ReturnType<typeof llmUpstream>>;
  const running: RunningFusebox[] = [];
  const start = async (raw: Record<string, unknown>, env: NodeJS.ProcessEnv = {}) => {
    const fb = await startFusebox(raw, { env: { ...process.env, FUSEBOX_ADMIN_TOKEN: 'admin-secret', ...env } });
    running.push(fb);
    return fb;
  };
  beforeAll(async () => {
    up = await llmUpstream();
  });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((f) => f.stop()));
  });
  afterAll(async () => up?.close());

  it('refuses a request whose estimate is over maxRequestUsd with 402, before contacting the upstream', async () => {
    const fb = await start({ routes: llmRoutes(up, { maxRequestUsd: 0.001 }) });
    const before = up.seen.length;
    const res = await chat(fb, {}, 1000);
    expect(res.statusCode).toBe(402);
    expect(res.headers['x-should-retry']).toBe('false');
    expect(res.headers['x-fusebox-error']).toBe('BUDGET_EXCEEDED');
    expect(await fuseboxBody(res)).toMatchObject({ code: 'BUDGET_EXCEEDED', scope: 'request', unit: 'usd', limit: 0.001 });
    expect(up.seen.length).toBe(before);
  });

  it('stops a workflow at maxCalls, tool calls included: the (N+1)th call gets 402 CALL_LIMIT', async () => {
    const fb = await start({ budgets: { workflow: { maxCalls: 3 } }, routes: llmRoutes(up) });
    const wf = { 'x-fusebox-workflow': 'loop-1' };
    expect((await chat(fb, wf)).statusCode).toBe(200);
    expect((await request(`${fb.proxyUrl}/tool/fast`, { headers: wf })).statusCode).toBe(200);
    expect((await chat(fb, wf)).statusCode).toBe(200);
    const fourth = await request(`${fb.proxyUrl}/tool/fast`, { headers: wf });
    expect(fourth.statusCode).toBe(402);
    expect(await fourth.body.json()).toMatchObject({ code: 'CALL_LIMIT', scope: 'workflow', scopeId: 'loop-1', limit: 3 });
    // Another workflow is not affected, and the workflow id never reaches the upstream.
    expect((await request(`${fb.proxyUrl}/tool/fast`, { headers: { 'x-fusebox-workflow': 'other' } })).statusCode).toBe(200);
    expect(up.seen.every((s) => s.headers['x-fusebox-workflow'] === undefined)).toBe(true);
    expect(metricValue(await fb.metricsText(), 'fusebox_budget_rejections_total', { scope_kind: 'workflow', reason: 'CALL_LIMIT' })).toBe(1);
  });

  it('keeps spend across a restart of a memory-store sidecar with a snapshot', async () => {
    const snapshotPath = join(mkdtempSync(join(tmpdir(), 'fusebox-snap-')), 'spend.json');
    const cfg = { store: { snapshotPath }, budgets: { agent: { dailyUsd: 1 } }, routes: llmRoutes(up) };
    const first = await start(cfg);
    for (let i = 0; i < 3; i++) await (await chat(first)).body.dump();
    await first.app.idle();
    await first.stop();
    running.splice(running.indexOf(first), 1);
    const second = await start(cfg);
    const budgets = (await (await request(`${second.adminUrl}/admin/budgets`)).body.json()) as { scopes: Array<{ scope: string; window: string; spentUsd: number }> };
    expect(budgets.scopes.find((s) => s.scope === 'agent' && s.window === 'day')?.spentUsd).toBeCloseTo(3 * COST_USD, 9);
  });

  it('puts a memory-store sidecar\'s spend in its snapshot within a second or so, so a crash (no shutdown report) loses no more', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fusebox-crash-'));
    const snapshotPath = join(dir, 'spend.json');
    const fb = await start({ store: { snapshotPath, snapshotIntervalMs: 50 }, budgets: { agent: { dailyUsd: 1 } }, routes: llmRoutes(up) });
    for (let i = 0; i < 3; i++) await (await chat(fb)).body.dump();
    // Leased spend reaches the memory store at the next background tick (1 s), then the file at the next save; with
    // the 20 s Redis default this waited 20 s, and a crash meanwhile lost it.
    await expect.poll(() => agentDayInFile(snapshotPath), { timeout: 10_000, interval: 50 }).toBe(Math.round(3 * COST_USD * 1e6));
    // A crash: the first sidecar never stops (no shutdown report); a new one starts from a copy of its file.
    const crashed = join(dir, 'after-crash.json');
    copyFileSync(snapshotPath, crashed);
    const second = await start({ store: { snapshotPath: crashed }, budgets: { agent: { dailyUsd: 1 } }, routes: llmRoutes(up) });
    const budgets = (await (await request(`${second.adminUrl}/admin/budgets`)).body.json()) as { scopes: Array<{ scope: string; window: string; spentUsd: number }> };
    expect(budgets.scopes.find((s) => s.scope === 'agent' && s.window === 'day')?.spentUsd).toBeCloseTo(3 * COST_USD, 9);
  });

  it('does not alert again after a restart from its snapshot: the marks are saved with the spend', async () => {
    const snapshotPath = join(mkdtempSync(join(tmpdir(), 'fusebox-alerted-')), 'spend.json');
    // 5.8 m$ a call against $0.02: the third call crosses 75 %.
    const cfg = { store: { snapshotPath, snapshotIntervalMs: 50 }, budgets: { agent: { dailyUsd: 0.02 } }, routes: llmRoutes(up) };
    const alerts = async (fb: RunningFusebox) => metricValue(await fb.metricsText(), 'fusebox_budget_alerts_total', { scope_kind: 'agent', metric: 'usd' });
    const first = await start(cfg);
    for (let i = 0; i < 3; i++) await (await chat(first)).body.dump();
    await expect.poll(() => alerts(first), { timeout: 10_000, interval: 50 }).toBe(1);
    await first.stop();
    running.splice(running.indexOf(first), 1);
    const second = await start(cfg);
    await (await chat(second)).body.dump();
    // The fourth call's spend is reported (its slice was leased, and the report checks the percent again)...
    await expect.poll(() => agentDayInFile(snapshotPath), { timeout: 10_000, interval: 50 }).toBe(Math.round(4 * COST_USD * 1e6));
    // ...and the window, already alerted before the restart, is not alerted twice.
    expect(await alerts(second)).toBe(0);
    expect(second.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('budget alert'))).toEqual([]);
  });

  it('alerts a memory-store sidecar within a second or so of the call that crossed budgets.alertPercent, with no further call', async () => {
    // 5.8 m$ a call against $0.02: two calls are 58 %, the third 87 %.
    const fb = await start({ budgets: { agent: { dailyUsd: 0.02 } }, routes: llmRoutes(up) });
    const alerts = async () => metricValue(await fb.metricsText(), 'fusebox_budget_alerts_total', { scope_kind: 'agent', metric: 'usd' });
    for (let i = 0; i < 2; i++) await (await chat(fb)).body.dump();
    await fb.app.idle();
    expect(await alerts()).toBe(0);
    await (await chat(fb)).body.dump();
    await expect.poll(alerts, { timeout: 10_000, interval: 50 }).toBe(1);
    expect(fb.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('budget alert'))).toMatchObject([{ scope: 'agent', window: 'day', metric: 'usd', percent: 75, limit: 0.02 }]);
  });

  it('refuses a request whose estimate is over maxRequestTokens with 402 (scope request, unit tokens), before contacting the upstream', async () => {
    const fb = await start({ routes: llmRoutes(up, { maxRequestTokens: 200 }) });
    const before = up.seen.length;
    const res = await chat(fb, {}, 1000);
    expect(res.statusCode).toBe(402);
    expect(res.headers['x-should-retry']).toBe('false');
    expect(res.headers['x-fusebox-error']).toBe('BUDGET_EXCEEDED');
    const body = (await fuseboxBody(res)) as { requested: number };
    expect(body).toMatchObject({ code: 'BUDGET_EXCEEDED', scope: 'request', scopeId: 'openai', unit: 'tokens', limit: 200 });
    // prompt tokens + the 1000 output tokens the call allows itself
    expect(body.requested).toBeGreaterThan(1000);
    expect(up.seen.length).toBe(before);
    // Under the cap the same route calls the upstream: it is the token count that refused, nothing else.
    const small = await chat(fb, {}, 50);
    expect(small.statusCode).toBe(200);
    await small.body.dump();
    expect(up.seen.length).toBe(before + 1);
    expect(metricValue(await fb.metricsText(), 'fusebox_budget_rejections_total', { scope_kind: 'request', reason: 'BUDGET_EXCEEDED' })).toBe(1);
  });

  it('adds Retry-After to a 402 whose window resets within the hour, and leaves it off when the reset is further away', async () => {
    let clock = Date.parse('2026-11-20T12:00:00.000Z');
    const fb = await startFusebox(
      { budgets: { agent: { dailyTokens: 100 }, workflow: { maxCalls: 1, idleTtlMs: 600_000 } }, routes: llmRoutes(up) },
      { env: { ...process.env }, now: () => clock },
    );
    running.push(fb);

    // Day cap at noon: the window resets in 12 h, not worth an agent's wait.
    const noon = await chat(fb, {}, 1000);
    expect(noon.statusCode).toBe(402);
    expect(noon.headers['retry-after']).toBeUndefined();
    expect(await fuseboxBody(noon)).toMatchObject({ code: 'BUDGET_EXCEEDED', scope: 'agent', window: 'day', unit: 'tokens', resetsAt: '2026-11-21T00:00:00.000Z' });

    clock = Date.parse('2026-11-20T23:30:00.000Z');
    const late = await chat(fb, {}, 1000);
    expect(late.statusCode).toBe(402);
    expect(late.headers['retry-after']).toBe('1800');
    await late.body.dump();

    // A reset under a second away still asks for a whole second (0 would mean "retry now").
    clock = Date.parse('2026-11-20T23:59:59.400Z');
    const lastSecond = await chat(fb, {}, 1000);
    expect(lastSecond.headers['retry-after']).toBe('1');
    await lastSecond.body.dump();

    // A workflow window ends idleTtlMs after the workflow was last seen (here: 10 min − 1 min idle = 540 s).
    clock = Date.parse('2026-11-21T08:00:00.000Z');
    const wf = { 'x-fusebox-workflow': 'wf-ttl' };
    const first = await request(`${fb.proxyUrl}/tool/fast`, { headers: wf });
    expect(first.statusCode).toBe(200);
    await first.body.dump();
    clock += 60_000;
    const second = await request(`${fb.proxyUrl}/tool/fast`, { headers: wf });
    expect(second.statusCode).toBe(402);
    expect(second.headers['retry-after']).toBe('540');
    expect(await second.body.json()).toMatchObject({ code: 'CALL_LIMIT', scope: 'workflow', scopeId: 'wf-ttl', resetsAt: '2026-11-21T08:10:00.000Z' });
  });

  it('passes an OpenAI request body through byte for byte when includeStreamUsage is false', async () => {
    // Odd spacing, key order and an integer above 2^53: any re-serialisation would change these bytes.
    const raw = '{ "stream" : true,"model":"test-model","seed":12345678901234567890,\n "messages":[{"role":"user","content":"hi"}],"max_tokens":50}';
    const send = async (fb: RunningFusebox) => {
      const res = await request(`${fb.proxyUrl}/openai/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: raw });
      expect(res.statusCode).toBe(200);
      await res.body.text();
      return up.seen.at(-1)!.body;
    };
    const off = await start({ routes: llmRoutes(up, { includeStreamUsage: false }) });
    expect((await send(off)).equals(Buffer.from(raw))).toBe(true);
    // The default route does rewrite the same body, so the comparison above can tell the two apart.
    const on = await start({ routes: llmRoutes(up) });
    const rewritten = (await send(on)).toString('utf8');
    expect(rewritten).not.toBe(raw);
    expect(rewritten).toContain('"include_usage":true');
  });
});

describe('a fleet sharing one Redis', () => {
  let up: Awaited<ReturnType<typeof llmUpstream>>;
  let redis: TestRedis;
  const running: RunningFusebox[] = [];
  const start = async (raw: Record<string, unknown>) => {
    const fb = await startFusebox(raw, { env: { ...process.env, FUSEBOX_ADMIN_TOKEN: 'admin-secret' } });
    running.push(fb);
    return fb;
  };
  beforeAll(async () => {
    up = await llmUpstream();
    redis = await startRedis({ persist: true });
  });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((f) => f.stop()));
  });
  afterAll(async () => {
    await up?.close();
    await redis?.stop();
  });

  it('50 concurrent calls worth 3× the budget through two sidecars: spend stays within the cap, the rest get 402', async () => {
    // Each call reserves its estimate (prompt + 500 max output tokens at $8/M ≈ 4.1 m$) and really costs 5.8 m$
    // — more than estimated, so the stated bound applies: cap + Σ in-flight (actual − estimate).
    const cfg = {
      agent: { id: 'fleet-agent' },
      // Reports every 250 ms, so the check below need not wait the default 10 s for the other sidecar's spend. A
      // command timeout far above the default 250 ms: this test is about the cap, not about timeouts, and on a loaded
      // machine a timed-out command sends a call to the local fallback (the likely cause of one failure under load).
      store: { kind: 'redis', url: redis.url, keyPrefix: 'cap50', timeoutMs: 5_000, lease: { reportIntervalMs: 250 } },
      budgets: { fleet: { dailyUsd: 0.1 } },
      routes: llmRoutes(up),
    };
    const a = await start(cfg);
    const b = await start(cfg);
    const results = await Promise.all(
      Array.from({ length: 50 }, async (_, i) => {
        const res = await chat(i % 2 === 0 ? a : b, {}, 500);
        await res.body.dump();
        return res.statusCode;
      }),
    );
    await Promise.all([a.app.idle(), b.app.idle()]);
    const ok = results.filter((s) => s === 200).length;
    const refused = results.filter((s) => s === 402).length;
    expect(ok + refused).toBe(50);
    expect(refused).toBeGreaterThan(0);
    // Each sidecar reports its spend on the leased fleet cap within store.lease.reportIntervalMs.
    const fleet = await vi.waitFor(
      async () => {
        const budgets = (await (await request(`${a.adminUrl}/admin/budgets`)).body.json()) as { scopes: Array<{ scope: string; window: string; spentUsd: number }> };
        const f = budgets.scopes.find((s) => s.scope === 'fleet' && s.window === 'day')!;
        expect(f.spentUsd).toBeCloseTo(ok * COST_USD, 9);
        return f;
      },
      { timeout: 10_000, interval: 50 },
    );
    const estimate = (await fuseboxBody(await chat(a, { 'x-request-id': 'probe' }, 500))) as { code?: string };
    expect(estimate.code).toBe('BUDGET_EXCEEDED');
    // Bound: every admitted call's estimate fit under the cap; each can overshoot by (actual − estimate).
    const perCallOvershoot = COST_USD - 0.0041;
    expect(fleet.spentUsd).toBeLessThanOrEqual(0.1 + ok * perCallOvershoot + 1e-9);
  });

  it('stops a workflow loop run through two sidecars at exactly maxCalls from leased slices of calls: every other call gets 402 CALL_LIMIT', async () => {
    // One agent id on two sidecars (replicas), one workflow: 30 concurrent calls, 10 allowed fleet-wide.
    const cfg = { agent: { id: 'looper' }, store: { kind: 'redis', url: redis.url, keyPrefix: 'loop2', timeoutMs: 5_000 }, budgets: { workflow: { maxCalls: 10 } }, routes: llmRoutes(up) };
    const a = await start(cfg);
    const b = await start(cfg);
    const raw = new Redis(redis.url);
    try {
      const answers = await Promise.all(
        Array.from({ length: 30 }, async (_, i) => {
          const res = await chat(i % 2 === 0 ? a : b, { 'x-fusebox-workflow': 'loop-2' });
          if (res.statusCode === 200) {
            await res.body.dump();
            return { status: 200 };
          }
          return { status: res.statusCode, body: await fuseboxBody(res) };
        }),
      );
      expect(answers.filter((x) => x.status === 200)).toHaveLength(10);
      const refused = answers.filter((x) => x.status !== 200);
      expect(refused).toHaveLength(20);
      for (const r of refused) expect(r).toMatchObject({ status: 402, body: { code: 'CALL_LIMIT', scope: 'workflow', scopeId: 'loop-2', limit: 10 } });
      await Promise.all([a.app.idle(), b.app.idle()]);
      await Promise.all([a.stop(), b.stop()]);
      // Served from the workflow's lease hash on the agent's slot: no per-call counters were written.
      expect(await raw.hget('{loop2:a:looper}:lease:wf:loop-2', 'calls')).toBe('10');
      expect(await raw.exists('{loop2:a:looper}:wf:loop-2')).toBe(0);
    } finally {
      raw.disconnect();
    }
  });

  it('a kill switch set through one sidecar stops it at once and the other within its kill refresh time; lifting it restores service', async () => {
    const cfg = { agent: { id: 'killable' }, store: { kind: 'redis', url: redis.url, keyPrefix: 'kill' }, routes: llmRoutes(up) };
    const a = await start(cfg);
    const b = await start(cfg);
    const status = async (f: { proxyUrl: string }) => {
      const res = await request(`${f.proxyUrl}/tool/fast`);
      await res.body.dump();
      return res.statusCode;
    };
    // Both have served a call, so both hold a copy of the (empty) kill set.
    expect(await status(a)).toBe(200);
    expect(await status(b)).toBe(200);
    const unauth = await request(`${a.adminUrl}/admin/kill`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ target: 'global' }) });
    expect(unauth.statusCode).toBe(401);
    await unauth.body.dump();
    const set = await request(`${a.adminUrl}/admin/kill`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer admin-secret' },
      body: JSON.stringify({ target: 'agent', reason: 'runaway loop' }),
    });
    expect(set.statusCode).toBe(200);
    await set.body.dump();
    expect(await status(a)).toBe(402);
    // The other sidecar re-reads the kills once its copy is older than killRefreshMs (1 s).
    await vi.waitFor(async () => expect(await status(b)).toBe(402), { timeout: 10_000, interval: 50 });
    const killed = await request(`${b.proxyUrl}/tool/fast`);
    expect(killed.statusCode).toBe(402);
    expect(await killed.body.json()).toMatchObject({ code: 'KILLED', scope: 'agent', scopeId: 'killable' });
    const lift = await request(`${b.adminUrl}/admin/kill/lift`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer admin-secret' },
      body: JSON.stringify({ target: 'agent' }),
    });
    expect(await lift.body.json()).toMatchObject({ lifted: true });
    expect(await status(b)).toBe(200);
    await vi.waitFor(async () => expect(await status(a)).toBe(200), { timeout: 10_000, interval: 50 });
  });

  it('keeps budgets and SLO counters on one Redis connection per sidecar, and closes it at shutdown', async () => {
    const raw = new Redis(redis.url);
    const connections = async () => String(await raw.call('CLIENT', 'LIST')).trim().split('\n').length;
    try {
      const before = await connections();
      const fb = await start({ agent: { id: 'one-conn' }, store: { kind: 'redis', url: redis.url, keyPrefix: 'oneconn' }, routes: llmRoutes(up) });
      await (await chat(fb)).body.dump();
      await fb.app.slo.recorder.flush();
      // The agent's windows (uncapped) are leased: their spend is reported by the first background tick.
      await expect.poll(() => raw.keys('{oneconn:a:one-conn}:lease:*'), { timeout: 5_000, interval: 20 }).not.toEqual([]);
      expect(await raw.keys('{oneconn:slo:*')).not.toEqual([]);
      expect(await connections()).toBe(before + 1);
      await fb.stop();
      // The server drops a connection just after answering its QUIT.
      for (let i = 0; i < 50 && (await connections()) > before; i++) await new Promise((r) => setTimeout(r, 10));
      expect(await connections()).toBe(before);
    } finally {
      raw.disconnect();
    }
  });

  it('serves a token-capped agent in a workflow with maxCalls from leased slices: no per-call script, spend reported by shutdown', async () => {
    const raw = new Redis(redis.url);
    // Before issue 14's multi-metric leases a token cap or a workflow window ran a reserve and a commit script per
    // call (commits riding the next reserve with commitDelayMs). Now every window is leased: nothing rides.
    const fb = await start({
      agent: { id: 'rider' },
      store: { kind: 'redis', url: redis.url, keyPrefix: 'ride', commitDelayMs: 30_000 },
      budgets: { agent: { dailyTokens: 1_000_000_000 }, workflow: { maxCalls: 1_000 } },
      routes: llmRoutes(up),
    });
    const day = new Date().toISOString().slice(0, 10);
    const lease = async (key: string) => {
      const [usd, calls] = await raw.hmget(key, 'usd', 'calls');
      return [Number(usd) / 1e6, Number(calls)];
    };
    try {
      for (let i = 0; i < 4; i++) await (await chat(fb, { 'x-fusebox-workflow': 'task-1' })).body.dump();
      await fb.app.idle();
      const text = await fb.metricsText();
      expect(metricValue(text, 'fusebox_store_commits_total', { sent: 'ridden' }) + metricValue(text, 'fusebox_store_commits_total', { sent: 'alone' })).toBe(0);
      expect(await raw.exists(`{ride:a:rider}:day:${day}`, '{ride:a:rider}:wf:task-1')).toBe(0);
      await (await chat(fb, { 'x-fusebox-workflow': 'task-1' })).body.dump();
      await fb.stop();
      // Shutdown gives every slice back with the spend not yet reported: the day's and the workflow's, 5 calls each.
      const [usd, calls] = await lease(`{ride:a:rider}:lease:day:${day}`);
      expect(usd).toBeCloseTo(5 * COST_USD, 9);
      expect(calls).toBe(5);
      expect(await lease('{ride:a:rider}:lease:wf:task-1')).toEqual([expect.closeTo(5 * COST_USD, 9), 5]);
    } finally {
      raw.disconnect();
    }
  });

  it("alerts once per cap of an agent's day when the spend two sidecars report crosses budgets.alertPercent: one metric and one log line each, with no further call", async () => {
    // Each call costs 5.8 m$ and 1,500 tokens. 12 calls are 69.6 % of $0.1 and 72 % of 25,000 tokens; one more call
    // crosses 75 % of both. Both sidecars spend past the crossing before reporting, so both reports see the window
    // past 75 %: the lease script's mark is what keeps it to one alert.
    const cfg = {
      agent: { id: 'alerted' },
      // A report at every background tick (1 s) while there is spend: the alert comes from a report, not a call.
      store: { kind: 'redis', url: redis.url, keyPrefix: 'alert', timeoutMs: 5_000, lease: { reportIntervalMs: 1 } },
      budgets: { agent: { dailyUsd: 0.1, dailyTokens: 25_000 } },
      routes: llmRoutes(up),
    };
    const a = await start(cfg);
    const b = await start(cfg);
    const call = async (fb: RunningFusebox) => {
      const res = await chat(fb);
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    };
    /** What a sidecar shows of the agent's day: the store's figures plus its own unreported spend. */
    const day = async (fb: RunningFusebox) => {
      const budgets = (await (await request(`${fb.adminUrl}/admin/budgets`)).body.json()) as { scopes: Array<{ scope: string; window: string; calls: number; spentTokens: number }> };
      const d = budgets.scopes.find((s) => s.scope === 'agent' && s.window === 'day')!;
      return { calls: d.calls, tokens: d.spentTokens };
    };
    const alerts = async (metric: string) =>
      metricValue(await a.metricsText(), 'fusebox_budget_alerts_total', { scope_kind: 'agent', metric }) + metricValue(await b.metricsText(), 'fusebox_budget_alerts_total', { scope_kind: 'agent', metric });
    /** Both sidecars show all `n` calls: each has seen the other's report, so every call's spend is in Redis. */
    const reported = (n: number) =>
      expect.poll(async () => [await day(a), await day(b)], { timeout: 10_000, interval: 50 }).toEqual([{ calls: n, tokens: n * 1_500 }, { calls: n, tokens: n * 1_500 }]);

    for (let i = 0; i < 6; i++) {
      await call(a);
      await call(b);
    }
    await reported(12);
    expect([await alerts('usd'), await alerts('tokens')]).toEqual([0, 0]);

    await call(a);
    await call(b);
    await reported(14);
    // The report that landed first crossed both caps; its sidecar says so when the answer arrives, with no call to
    // carry it (before, it waited for that sidecar's next call, so an agent that stopped at 80 % was never alerted).
    await expect.poll(async () => [await alerts('usd'), await alerts('tokens')], { timeout: 10_000, interval: 50 }).toEqual([1, 1]);
    // Shutdown reports and hands the slices back: the later reports find the window marked and alert nothing more.
    await Promise.all([a.stop(), b.stop()]);
    const lines = [...a.logs, ...b.logs].filter((l) => typeof l.msg === 'string' && l.msg.startsWith('budget alert'));
    const crossedAt = 13;
    expect(lines.map(({ level, scope, scopeId, window, metric, percent, used, limit }) => ({ level, scope, scopeId, window, metric, percent, used, limit })).sort((x, y) => String(x.metric).localeCompare(String(y.metric)))).toEqual([
      { level: 40, scope: 'agent', scopeId: 'alerted', window: 'day', metric: 'tokens', percent: 75, used: crossedAt * 1_500, limit: 25_000 },
      { level: 40, scope: 'agent', scopeId: 'alerted', window: 'day', metric: 'usd', percent: 75, used: expect.closeTo(crossedAt * COST_USD, 9), limit: 0.1 },
    ]);
    const metrics = await Promise.all([a, b].map((f) => f.app.metrics.registry.metrics()));
    expect(metrics.map((t) => metricValue(t, 'fusebox_budget_alerts_total', { scope_kind: 'agent', metric: 'usd' })).reduce((x, y) => x + y)).toBe(1);
    expect(metrics.map((t) => metricValue(t, 'fusebox_budget_alerts_total', { scope_kind: 'agent', metric: 'tokens' })).reduce((x, y) => x + y)).toBe(1);
  });

  it("shows what is left of each capped metric's slice on /metrics: USD, tokens and calls, summed over a sidecar's workflows, absent where nothing is capped", async () => {
    // Caps below the smallest slices ($0.05, 10,000 tokens, 10 calls): a sidecar alone on a window holds all that is
    // left of it, so what its slice has left is the cap less the spend, before the tick's report and after it alike.
    const fb = await start({
      agent: { id: 'gauged' },
      store: { kind: 'redis', url: redis.url, keyPrefix: 'gauged', timeoutMs: 5_000 },
      budgets: { agent: { dailyUsd: 0.04, dailyTokens: 9_000 }, workflow: { tokens: 4_000, maxCalls: 5 } },
      routes: llmRoutes(up),
    });
    // Each call: 5.8 m$ and 1,500 tokens. Two in workflow w1, one in w2: three on the agent's day.
    for (const wf of ['w1', 'w1', 'w2']) {
      const res = await chat(fb, { 'x-fusebox-workflow': wf });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    await fb.app.idle();
    const text = await fb.metricsText();
    const left = (metric: string, labels: Record<string, string>) => metricValue(text, `fusebox_budget_lease_remaining_${metric}`, labels);
    const agentDay = { scope_kind: 'agent', window: 'day', route: '' };
    const workflows = { scope_kind: 'workflow', window: 'workflow', route: '' };
    expect(left('usd', agentDay)).toBeCloseTo(0.04 - 3 * COST_USD, 9);
    expect(left('tokens', agentDay)).toBe(9_000 - 3 * 1_500);
    // w1 has 1,000 tokens and 3 calls left, w2 2,500 and 4.
    expect(left('tokens', workflows)).toBe(1_000 + 2_500);
    expect(left('calls', workflows)).toBe(3 + 4);
    // Only windows capping the metric have a series: the agent's day caps no calls, the workflows no USD, its month
    // (uncapped, only counted) nothing.
    const series = (metric: string) =>
      text
        .split('\n')
        .filter((l) => l.startsWith(`fusebox_budget_lease_remaining_${metric}{`))
        .map((l) => l.slice(l.indexOf('{'), l.lastIndexOf(' ')))
        .sort();
    expect(series('usd')).toEqual(['{scope_kind="agent",window="day",route=""}']);
    expect(series('tokens')).toEqual(['{scope_kind="agent",window="day",route=""}', '{scope_kind="workflow",window="workflow",route=""}']);
    expect(series('calls')).toEqual(['{scope_kind="workflow",window="workflow",route=""}']);
  });

  it('keeps serving within caps while Redis is down (local mode), then replays every charge', async () => {
    const cfg = { agent: { id: 'outage' }, store: { kind: 'redis', url: redis.url, keyPrefix: 'outage', timeoutMs: 100 }, budgets: { agent: { dailyUsd: 1 } }, routes: llmRoutes(up) };
    const fb = await start(cfg);
    for (let i = 0; i < 2; i++) await (await chat(fb)).body.dump();
    redis.kill();
    const during: number[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await chat(fb);
      await res.body.dump();
      during.push(res.statusCode);
    }
    expect(during).toEqual([200, 200, 200]);
    expect(metricValue(await fb.metricsText(), 'fusebox_store_up')).toBe(0);
    await redis.restart();
    await expect.poll(async () => metricValue(await fb.metricsText(), 'fusebox_store_up'), { timeout: 5000, interval: 100 }).toBe(1);
    const budgets = (await (await request(`${fb.adminUrl}/admin/budgets`)).body.json()) as { scopes: Array<{ scope: string; window: string; spentUsd: number }> };
    expect(budgets.scopes.find((s) => s.scope === 'agent' && s.window === 'day')?.spentUsd).toBeCloseTo(5 * COST_USD, 9);
  });

  it('spends only its leased slice of a fleet cap while Redis is down; a sidecar started in the outage answers 503 on it', async () => {
    const cfg = {
      agent: { id: 'lease-a' },
      store: { kind: 'redis', url: redis.url, keyPrefix: 'lease', timeoutMs: 100, lease: { reportIntervalMs: 200 } },
      budgets: { fleet: { dailyUsd: 1 } },
      routes: llmRoutes(up),
    };
    const a = await start(cfg);
    // The first call leases a slice of the fleet cap and is settled before the outage. (reportIntervalMs 200: B's
    // view of A's spend after the outage comes within the poll below.)
    await (await chat(a)).body.dump();
    await a.app.idle();
    redis.kill();
    await expect.poll(async () => metricValue(await a.metricsText(), 'fusebox_store_up'), { timeout: 5000, interval: 20 }).toBe(0);
    // What is left of the slice at the cut. Read now, not assumed: a report between the first call and the kill may
    // have renewed it to a slice sized by that call's spend rate (larger than the $0.05 minimum).
    const leftAtCut = metricValue(await a.metricsText(), 'fusebox_budget_lease_remaining_usd', { scope_kind: 'fleet', window: 'day' });
    expect(leftAtCut).toBeGreaterThan(3 * COST_USD);
    // A slice is never more than what was left of the cap (one call spent of $1).
    expect(leftAtCut).toBeLessThanOrEqual(1 - COST_USD + 1e-9);
    const during: number[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await chat(a);
      await res.body.dump();
      during.push(res.statusCode);
    }
    expect(during).toEqual([200, 200, 200]);
    const text = await a.metricsText();
    expect(metricValue(text, 'fusebox_budget_lease_outage_admissions_total', { scope_kind: 'fleet', route: '', on: 'lease' })).toBe(3);
    // Every window of these calls is leased (the agent's are uncapped): nothing is journaled, the spend waits in the
    // leases until Redis is back.
    expect(metricValue(text, 'fusebox_store_journal_entries')).toBe(0);
    // The outage spent out of the slice held at the cut, and nothing else: exactly the three calls' cost came off it.
    const left = metricValue(text, 'fusebox_budget_lease_remaining_usd', { scope_kind: 'fleet', window: 'day' });
    expect(left).toBeCloseTo(leftAtCut - 3 * COST_USD, 6);

    const b = await start({ ...cfg, agent: { id: 'lease-b' } });
    const refused = await chat(b);
    expect(refused.statusCode).toBe(503);
    expect(await fuseboxBody(refused)).toMatchObject({ code: 'BUDGET_STORE_UNAVAILABLE', scope: 'fleet', window: 'day' });
    expect(metricValue(await b.metricsText(), 'fusebox_budget_lease_refusals_total', { scope_kind: 'fleet', route: '', reason: 'no_lease' })).toBe(1);

    await redis.restart();
    // A reports its outage spend once Redis is back: B (no spend of its own yet) sees all four of A's calls.
    const fleetSpent = async (fb: typeof b) => {
      const body = (await (await request(`${fb.adminUrl}/admin/budgets`)).body.json()) as { scopes?: Array<{ scope: string; window: string; spentUsd: number }> };
      return body.scopes?.find((s) => s.scope === 'fleet' && s.window === 'day')?.spentUsd;
    };
    await expect.poll(() => fleetSpent(b), { timeout: 10_000, interval: 100 }).toBeCloseTo(4 * COST_USD, 9);
    // B reconnects on its own schedule.
    await expect.poll(async () => metricValue(await b.metricsText(), 'fusebox_store_up'), { timeout: 5000, interval: 100 }).toBe(1);
    const after = await chat(b);
    expect(after.statusCode).toBe(200);
    await after.body.dump();
  });

  it('answers 503 BUDGET_STORE_UNAVAILABLE on a storeUnavailable: closed route while Redis is down, without calling the upstream', async () => {
    // Its own Redis: this one is killed and never comes back.
    const own = await startRedis();
    try {
      const fb = await start({
        agent: { id: 'closed' },
        store: { kind: 'redis', url: own.url, keyPrefix: 'closed', timeoutMs: 100 },
        routes: [
          { name: 'strict', match: { pathPrefix: '/strict' }, upstream: { url: up.url }, budget: { storeUnavailable: 'closed' } },
          { name: 'lenient', match: { pathPrefix: '/lenient' }, upstream: { url: up.url } },
        ],
      });
      // The sidecar waits for Redis before it listens, so even its very first call is served, not refused.
      const first = await request(`${fb.proxyUrl}/strict/fast`);
      expect(first.statusCode).toBe(200);
      await first.body.dump();
      expect(metricValue(await fb.metricsText(), 'fusebox_store_up')).toBe(1);
      own.kill();
      // A call whose windows are all leased sends Redis nothing, so the outage shows once the connection drops.
      await expect.poll(async () => metricValue(await fb.metricsText(), 'fusebox_store_up'), { timeout: 5_000, interval: 20 }).toBe(0);
      const before = up.count('/fast');
      const refused = await request(`${fb.proxyUrl}/strict/fast`);
      expect(refused.statusCode).toBe(503);
      expect(refused.headers['x-fusebox-error']).toBe('BUDGET_STORE_UNAVAILABLE');
      expect(await refused.body.json()).toMatchObject({ code: 'BUDGET_STORE_UNAVAILABLE', route: 'strict' });
      expect(up.count('/fast')).toBe(before);
      // Same outage, default `local` route: served from the local slice, so the 503 above is the route's choice.
      const lenient = await request(`${fb.proxyUrl}/lenient/fast`);
      expect(lenient.statusCode).toBe(200);
      await lenient.body.dump();
      expect(up.count('/fast')).toBe(before + 1);
    } finally {
      await own.stop();
    }
  });
});
