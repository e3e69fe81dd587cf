import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { metricValue, startFusebox, type RunningFusebox } from '../helpers/fusebox.js';
import { json, startUpstream, type TestUpstream } from '../helpers/upstream.js';

/*
 * What an agent's SDK sees through Fusebox must be what it would see talking to the provider directly:
 * Fusebox's own refusals in the provider's error envelope, no stream chunk the agent did not ask for, and no
 * charge for calls that cannot be billed. Real SDK clients, a real loopback upstream, the real app.
 */

/** µUSD per token = USD per 1M tokens: easy arithmetic. */
const PRICES = { 'test-model': { inputPerM: 2, outputPerM: 8, cachedInputPerM: 1 } };
/** Every answer reports 1000 prompt (200 cached) and 500 completion tokens: 800·2 + 200·1 + 500·8 = 5800 µUSD. */
const USAGE = { prompt_tokens: 1000, completion_tokens: 500, total_tokens: 1500, prompt_tokens_details: { cached_tokens: 200 } };
const COST_USD = 0.0058;

interface FakeLlm extends TestUpstream {
  /** Answer every LLM call with this status and an error body in the provider's shape, while set. */
  failWith: number | undefined;
  /** Request bodies as received, in order. */
  bodies: Array<Record<string, unknown>>;
  /** Cut the connection after the first streamed chunk, while set. */
  cutStreams: boolean;
  /** While set, a stream waits for it after its first chunk (an answer still being generated). */
  hold: Promise<void> | undefined;
  /** End streams cleanly after this many bytes of the rest (the chunks after the first), mid-event, while set. */
  endAfter: number | undefined;
}

const BASE = { id: 'chatcmpl-1', created: 1, model: 'test-model' };
/** A content chunk of the fake LLM's stream, as sent (before the usage was asked for: `"usage":null`). */
const sseChunk = (word: string) => `data: ${JSON.stringify({ ...BASE, object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: word }, finish_reason: null }], usage: null })}\n\n`;
const usageEvent = `data: ${JSON.stringify({ ...BASE, object: 'chat.completion.chunk', choices: [], usage: USAGE })}\n\n`;

const fakeLlm = async (): Promise<FakeLlm> => {
  const up = await startUpstream();
  const llm = Object.assign(up, {
    failWith: undefined as number | undefined,
    bodies: [] as Array<Record<string, unknown>>,
    cutStreams: false,
    hold: undefined as Promise<void> | undefined,
    endAfter: undefined as number | undefined,
  });
  up.on('/v1/chat/completions', async (_req, res, raw) => {
    const body = JSON.parse(raw.toString()) as { model: string; stream?: boolean; stream_options?: { include_usage?: boolean } };
    llm.bodies.push(body);
    if (llm.failWith !== undefined) return json(res, llm.failWith, { error: { message: 'the upstream itself is down', type: 'server_error', param: null, code: null } });
    const base = { ...BASE, model: body.model };
    if (!body.stream) {
      return json(res, 200, { ...base, object: 'chat.completion', choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop', logprobs: null }], usage: USAGE });
    }
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    const first = sseChunk('hello');
    if (llm.cutStreams) {
      // Cut once the headers and this chunk are on the wire: a failure after the commit point.
      res.write(first, () => res.socket?.destroy());
      return undefined;
    }
    res.write(first);
    if (llm.hold) await llm.hold;
    if (res.destroyed) return undefined;
    let rest = sseChunk(' world');
    if (body.stream_options?.include_usage) rest += usageEvent;
    rest += 'data: [DONE]\n\n';
    res.end(llm.endAfter === undefined ? rest : rest.slice(0, llm.endAfter));
    return undefined;
  });
  up.on('/v1/messages', (_req, res, raw) => {
    const body = JSON.parse(raw.toString()) as { model: string };
    llm.bodies.push(body);
    if (llm.failWith !== undefined) return json(res, llm.failWith, { type: 'error', error: { type: 'api_error', message: 'the upstream itself is down' } });
    const usage = { input_tokens: 800, output_tokens: 500, cache_read_input_tokens: 200, cache_creation_input_tokens: 0 };
    return json(res, 200, { id: 'msg_1', type: 'message', role: 'assistant', model: body.model, content: [{ type: 'text', text: 'ok' }], stop_reason: 'end_turn', stop_sequence: null, usage });
  });
  up.on('/v1/models', (_req, res) => json(res, 200, { object: 'list', data: [{ id: 'test-model', object: 'model', created: 1, owned_by: 'test' }] }));
  return llm;
};

/**
 * Reads until `ok` holds, for at most `ms`, and returns the last reading (the caller's assertion then says what
 * was wrong). Settlement runs when the upstream body ends, which the client may see after it has every byte.
 */
const eventually = async <T>(read: () => Promise<T>, ok: (value: T) => boolean, ms = 5_000): Promise<T> => {
  const until = Date.now() + ms;
  for (;;) {
    const value = await read();
    if (ok(value) || Date.now() > until) return value;
    await new Promise((r) => setImmediate(r));
  }
};

const waitForMetrics = (fb: RunningFusebox, ok: (text: string) => boolean): Promise<string> => eventually(() => fb.metricsText(), ok);

type OpenAIError = InstanceType<typeof OpenAI.APIError>;
type AnthropicError = InstanceType<typeof Anthropic.APIError>;

const hi = [{ role: 'user' as const, content: 'hi' }];

describe("Fusebox's own answers in the provider's error envelope", () => {
  let llm: FakeLlm;
  let fb: RunningFusebox;
  const breaker = { consecutiveFailures: 2, resetMs: 600_000 };
  beforeAll(async () => {
    llm = await fakeLlm();
    fb = await startFusebox({
      budgets: { workflow: { maxCalls: 1 } },
      routes: [
        { name: 'oa', provider: 'openai', match: { pathPrefix: '/openai' }, upstream: { url: llm.url }, retry: { enabled: false }, breaker, budget: { prices: PRICES } },
        { name: 'an', provider: 'anthropic', match: { pathPrefix: '/anthropic' }, upstream: { url: llm.url }, retry: { enabled: false }, breaker, budget: { prices: PRICES } },
        { name: 'tool', match: { pathPrefix: '/tool' }, upstream: { url: llm.url } },
      ],
    });
  });
  afterAll(async () => {
    await fb?.stop();
    await llm?.close();
  });

  const openai = (workflow?: string) =>
    new OpenAI({ apiKey: 'x', baseURL: `${fb.proxyUrl}/openai/v1`, maxRetries: 0, defaultHeaders: workflow ? { 'x-fusebox-workflow': workflow } : {} });
  const anthropic = (workflow?: string) =>
    new Anthropic({ apiKey: 'x', baseURL: `${fb.proxyUrl}/anthropic`, maxRetries: 0, defaultHeaders: workflow ? { 'x-fusebox-workflow': workflow } : {} });

  it('a cap 402 reaches the openai SDK with its message, code CALL_LIMIT and type insufficient_quota', async () => {
    const client = openai('oa-loop');
    await client.chat.completions.create({ model: 'test-model', messages: hi });
    const err = (await client.chat.completions.create({ model: 'test-model', messages: hi }).catch((e: unknown) => e)) as OpenAIError;
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect(err.status).toBe(402);
    expect(err.message).toBe('402 workflow "oa-loop" reached its limit of 1 calls');
    expect(err.code).toBe('CALL_LIMIT');
    expect(err.type).toBe('insufficient_quota');
    expect(err.headers?.get('x-fusebox-error')).toBe('CALL_LIMIT');
    expect(err.requestID).toBeTruthy();
    // Fusebox's own body, whole, for whoever wants the details.
    expect((err.error as { fusebox: unknown }).fusebox).toMatchObject({
      statusCode: 402,
      code: 'CALL_LIMIT',
      route: 'oa',
      requestId: err.requestID,
      scope: 'workflow',
      scopeId: 'oa-loop',
      limit: 1,
    });
  });

  it('a cap 402 reaches the anthropic SDK as billing_error, with its message and code', async () => {
    const client = anthropic('an-loop');
    await client.messages.create({ model: 'test-model', max_tokens: 50, messages: hi });
    const err = (await client.messages.create({ model: 'test-model', max_tokens: 50, messages: hi }).catch((e: unknown) => e)) as AnthropicError;
    expect(err).toBeInstanceOf(Anthropic.APIError);
    expect(err.status).toBe(402);
    // This SDK shows every API error as the status and the JSON body; the message is in it, and alone in apiMessage.
    expect(err.message).toContain('workflow \\"an-loop\\" reached its limit of 1 calls');
    expect(err.apiMessage).toBe('workflow "an-loop" reached its limit of 1 calls');
    expect(err.type).toBe('billing_error');
    expect(err.errorCode).toBe('CALL_LIMIT');
    expect(err.headers?.get('x-fusebox-error')).toBe('CALL_LIMIT');
    const body = err.error as { type: string; request_id: string; error: { fusebox: Record<string, unknown> } };
    expect(body.type).toBe('error');
    expect(body.error.fusebox).toMatchObject({ code: 'CALL_LIMIT', route: 'an', scopeId: 'an-loop', requestId: body.request_id });
  });

  it('the upstream’s own errors pass through untouched; the open breaker’s 503 reaches the openai SDK with its message and code', async () => {
    llm.failWith = 500;
    try {
      const client = openai();
      for (let i = 0; i < 2; i++) {
        const upstream = (await client.chat.completions.create({ model: 'test-model', messages: hi }).catch((e: unknown) => e)) as OpenAIError;
        expect(upstream.status).toBe(500);
        expect(upstream.message).toBe('500 the upstream itself is down');
        expect(upstream.headers?.get('x-fusebox-error')).toBeNull();
      }
      const seen = llm.bodies.length;
      const err = (await client.chat.completions.create({ model: 'test-model', messages: hi }).catch((e: unknown) => e)) as OpenAIError;
      expect(err.status).toBe(503);
      expect(err.code).toBe('CIRCUIT_OPEN');
      expect(err.type).toBe('server_error');
      expect(err.headers?.get('x-fusebox-error')).toBe('CIRCUIT_OPEN');
      expect(err.message).toMatch(/^503 .*circuit breaker.* open/i);
      expect((err.error as { fusebox: unknown }).fusebox).toMatchObject({ code: 'CIRCUIT_OPEN', route: 'oa', state: 'open' });
      expect(llm.bodies.length).toBe(seen);
    } finally {
      llm.failWith = undefined;
    }
  });

  it('the open breaker’s 503 reaches the anthropic SDK as overloaded_error, with its message and code', async () => {
    llm.failWith = 500;
    try {
      const client = anthropic();
      for (let i = 0; i < 2; i++) {
        const upstream = (await client.messages.create({ model: 'test-model', max_tokens: 50, messages: hi }).catch((e: unknown) => e)) as AnthropicError;
        expect(upstream.status).toBe(500);
        expect(upstream.apiMessage).toBe('the upstream itself is down');
        expect(upstream.headers?.get('x-fusebox-error')).toBeNull();
      }
      const err = (await client.messages.create({ model: 'test-model', max_tokens: 50, messages: hi }).catch((e: unknown) => e)) as AnthropicError;
      expect(err.status).toBe(503);
      expect(err.type).toBe('overloaded_error');
      expect(err.errorCode).toBe('CIRCUIT_OPEN');
      expect(err.apiMessage).toMatch(/circuit breaker.* open/i);
      expect(err.message).toContain(JSON.stringify(err.apiMessage).slice(1, -1));
      expect(err.headers?.get('x-fusebox-error')).toBe('CIRCUIT_OPEN');
    } finally {
      llm.failWith = undefined;
    }
  });

  it('routes without an LLM provider keep Fusebox’s own shape', async () => {
    const wf = { 'x-fusebox-workflow': 'tool-loop' };
    await (await request(`${fb.proxyUrl}/tool/fast`, { headers: wf })).body.dump();
    const res = await request(`${fb.proxyUrl}/tool/fast`, { headers: wf });
    expect(res.statusCode).toBe(402);
    expect(await res.body.json()).toMatchObject({ statusCode: 402, code: 'CALL_LIMIT', route: 'tool', scopeId: 'tool-loop' });
  });
});

describe('the usage chunk Fusebox asks for stays with Fusebox', () => {
  let llm: FakeLlm;
  let fb: RunningFusebox;
  beforeAll(async () => {
    llm = await fakeLlm();
    fb = await startFusebox({ routes: [{ name: 'oa', provider: 'openai', match: { pathPrefix: '/openai' }, upstream: { url: llm.url }, budget: { prices: PRICES } }] });
  });
  afterAll(async () => {
    await fb?.stop();
    await llm?.close();
  });

  const client = () => new OpenAI({ apiKey: 'x', baseURL: `${fb.proxyUrl}/openai/v1`, maxRetries: 0 });
  const cost = (text: string) => metricValue(text, 'fusebox_cost_usd_total', { route: 'oa', model: 'test-model' });

  it('the loop written against OpenAI directly works unchanged, and the call is still metered from the removed chunk', async () => {
    const before = cost(await fb.metricsText());
    const stream = await client().chat.completions.create({ model: 'test-model', messages: hi, stream: true });
    let text = '';
    // Exactly what works against api.openai.com when the agent did not ask for usage: every chunk has a choice.
    for await (const c of stream) text += c.choices[0]!.delta.content ?? '';
    expect(text).toBe('hello world');
    expect(llm.bodies.at(-1)).toMatchObject({ stream: true, stream_options: { include_usage: true } });

    const metrics = await waitForMetrics(fb, (t) => cost(t) > before);
    expect(cost(metrics) - before).toBeCloseTo(COST_USD, 9);
    expect(metricValue(metrics, 'fusebox_tokens_total', { route: 'oa', model: 'test-model', type: 'output' })).toBe(500);
    expect(metricValue(metrics, 'fusebox_usage_estimated_total', { route: 'oa' })).toBe(0);
  });

  it('sends the agent the upstream stream byte for byte without that one event: framing intact, [DONE] kept', async () => {
    const res = await request(`${fb.proxyUrl}/openai/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'test-model', messages: hi, stream: true }),
    });
    expect(res.headers['content-type']).toBe('text/event-stream');
    const body = await res.body.text();
    const events = body.split('\n\n');
    expect(events.at(-1)).toBe('');
    expect(events.at(-2)).toBe('data: [DONE]');
    expect(events.slice(0, -2).map((e) => (JSON.parse(e.slice('data: '.length)) as { choices: unknown[] }).choices.length)).toEqual([1, 1]);
    expect(body).not.toContain('"prompt_tokens"');
  });

  it('passes the usage chunk to an agent that asked for it, and sends its stream_options as written', async () => {
    const before = cost(await fb.metricsText());
    const stream = await client().chat.completions.create({ model: 'test-model', messages: hi, stream: true, stream_options: { include_usage: true } });
    const usage: unknown[] = [];
    for await (const c of stream) if (c.usage) usage.push({ choices: c.choices, usage: c.usage });
    expect(usage).toEqual([{ choices: [], usage: USAGE }]);
    expect(llm.bodies.at(-1)).toMatchObject({ stream_options: { include_usage: true } });
    const metrics = await waitForMetrics(fb, (t) => cost(t) > before);
    expect(cost(metrics) - before).toBeCloseTo(COST_USD, 9);
  });

  const streamed = () =>
    request(`${fb.proxyUrl}/openai/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'test-model', messages: hi, stream: true }),
    });

  it('sends each event on as it arrives: the first reaches the agent while the upstream is still generating', async () => {
    let release!: () => void;
    llm.hold = new Promise<void>((r) => (release = r));
    try {
      const res = await streamed();
      const it = res.body[Symbol.asyncIterator]();
      const first = String((await it.next()).value);
      expect(first).toMatch(/^data: \{.*"content":"hello".*\}\n\n$/);
      release();
      let rest = '';
      for (let n = await it.next(); !n.done; n = await it.next()) rest += String(n.value);
      expect(rest).toContain('" world"');
      expect(rest).not.toContain('"prompt_tokens"');
      expect(rest.endsWith('data: [DONE]\n\n')).toBe(true);
    } finally {
      llm.hold = undefined;
    }
  });

  it('an agent that goes away mid-stream closes the upstream call, and the call is settled from the bytes seen', async () => {
    const estimated = (t: string) => metricValue(t, 'fusebox_usage_estimated_total', { route: 'oa' });
    const aborted = (t: string) => metricValue(t, 'fusebox_requests_total', { route: 'oa', outcome: 'aborted' });
    const text = await fb.metricsText();
    const before = estimated(text);
    const abortedBefore = aborted(text);
    llm.hold = new Promise<void>(() => {});
    try {
      const res = await streamed();
      const it = res.body[Symbol.asyncIterator]();
      await it.next();
      const seen = llm.seen.at(-1)!;
      res.body.destroy();
      // Waits for the event itself: an upstream call left open fails this test by its timeout.
      await seen.closed;
    } finally {
      llm.hold = undefined;
    }
    const metrics = await waitForMetrics(fb, (t) => estimated(t) > before);
    expect(estimated(metrics) - before).toBe(1);
    expect(aborted(await waitForMetrics(fb, (t) => aborted(t) > abortedBefore)) - abortedBefore).toBe(1);
  });

  it('a stream the upstream ends cleanly mid-event: an unfinished chunk reaches the agent as sent, an unfinished usage chunk is read and removed', async () => {
    const world = sseChunk(' world');
    llm.endAfter = 30;
    try {
      expect(await (await streamed()).body.text()).toBe(sseChunk('hello') + world.slice(0, 30));
      const before = cost(await fb.metricsText());
      // The usage chunk's data line is complete, its blank line never comes.
      llm.endAfter = world.length + usageEvent.length - 1;
      expect(await (await streamed()).body.text()).toBe(sseChunk('hello') + world);
      const metrics = await waitForMetrics(fb, (t) => cost(t) > before);
      expect(cost(metrics) - before).toBeCloseTo(COST_USD, 9);
    } finally {
      llm.endAfter = undefined;
    }
  });

  it('a stream the upstream cuts is still cut for the agent, and settled from the bytes seen', async () => {
    const estimated = (t: string) => metricValue(t, 'fusebox_usage_estimated_total', { route: 'oa' });
    const before = estimated(await fb.metricsText());
    llm.cutStreams = true;
    try {
      const res = await request(`${fb.proxyUrl}/openai/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'test-model', messages: hi, stream: true }),
      });
      expect(res.statusCode).toBe(200);
      await expect(res.body.text()).rejects.toThrow();
    } finally {
      llm.cutStreams = false;
    }
    const metrics = await waitForMetrics(fb, (t) => estimated(t) > before);
    expect(estimated(metrics) - before).toBe(1);
    expect(metricValue(metrics, 'fusebox_requests_total', { route: 'oa', outcome: 'stream_broken' })).toBe(1);
  });
});

describe('calls that cannot be billed', () => {
  let llm: FakeLlm;
  let fb: RunningFusebox;
  beforeAll(async () => {
    llm = await fakeLlm();
    fb = await startFusebox({
      budgets: { workflow: { maxCalls: 3 } },
      // 5000 µUSD: one chat call's estimate (~450 µUSD) fits, its real cost (5800 µUSD) spends the cap.
      routes: [{ name: 'oa', provider: 'openai', match: { pathPrefix: '/openai' }, upstream: { url: llm.url }, budget: { prices: PRICES, dailyUsd: 0.005 } }],
    });
  });
  afterAll(async () => {
    await fb?.stop();
    await llm?.close();
  });

  const client = (headers: Record<string, string> = {}) => new OpenAI({ apiKey: 'x', baseURL: `${fb.proxyUrl}/openai/v1`, maxRetries: 0, defaultHeaders: headers });
  const routeDay = async () => {
    const res = await request(`${fb.adminUrl}/admin/budgets`);
    const all = (await res.body.json()) as { scopes: Array<{ scope: string; window: string; spentUsd: number; inFlightUsd: number; calls: number }> };
    return all.scopes.find((s) => s.scope === 'route' && s.window === 'day')!;
  };

  it('GET /v1/models answers 200 again and again under a small usd cap, holds nothing, and is no unknown model, even once the cap is spent', async () => {
    for (let i = 0; i < 5; i++) expect((await client().models.list()).data.map((m) => m.id)).toEqual(['test-model']);
    expect(await eventually(routeDay, (d) => d.calls === 5)).toMatchObject({ spentUsd: 0, inFlightUsd: 0, calls: 5 });

    // Spend the cap for real: the next chat call is refused, a models list still is not.
    await client().chat.completions.create({ model: 'test-model', max_tokens: 50, messages: hi });
    const cost = (t: string) => metricValue(t, 'fusebox_cost_usd_total', { route: 'oa', model: 'test-model' });
    expect(cost(await waitForMetrics(fb, (t) => cost(t) > 0))).toBeCloseTo(COST_USD, 9);
    const refused = (await client().chat.completions.create({ model: 'test-model', max_tokens: 50, messages: hi }).catch((e: unknown) => e)) as OpenAIError;
    expect(refused.status).toBe(402);
    expect(refused.code).toBe('BUDGET_EXCEEDED');
    expect((await client().models.list()).data).toHaveLength(1);

    const text = await fb.metricsText();
    expect(metricValue(text, 'fusebox_unknown_model_total', { route: 'oa' })).toBe(0);
    expect(metricValue(text, 'fusebox_cost_usd_total', { route: 'oa', model: 'other' })).toBe(0);
    expect(fb.logText()).not.toContain('is not in the price table');
    expect(fb.logs.filter((l) => l.msg === 'request' && l.path === '/v1/models').map((l) => l.status)).toEqual([200, 200, 200, 200, 200, 200]);
  });

  it('a call cap still counts them: the 4th GET /v1/models of a workflow capped at 3 calls gets 402 CALL_LIMIT', async () => {
    const wf = client({ 'x-fusebox-workflow': 'lister' });
    for (let i = 0; i < 3; i++) await wf.models.list();
    const err = (await wf.models.list().catch((e: unknown) => e)) as OpenAIError;
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect(err.status).toBe(402);
    expect(err.code).toBe('CALL_LIMIT');
    expect(err.message).toBe('402 workflow "lister" reached its limit of 3 calls');
    expect(llm.count('/v1/models')).toBe(6 + 3);
  });
});
