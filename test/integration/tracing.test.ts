import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { metricValue, startFusebox } from '../helpers/fusebox.js';
import { PRICES, startLlmUpstream, type LlmUpstream } from '../helpers/llm.js';
import { json, startUpstream } from '../helpers/upstream.js';

/** OTLP/JSON as the collector receives it (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding). */
interface OtlpValue {
  stringValue?: string;
  intValue?: number | string;
  doubleValue?: number;
  boolValue?: boolean;
}
interface OtlpAttribute {
  key: string;
  value: OtlpValue;
}
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes: OtlpAttribute[];
  events?: Array<{ name: string; attributes: OtlpAttribute[] }>;
  status?: { code?: number; message?: string };
  startTimeUnixNano: string | number;
}
interface OtlpExport {
  resourceSpans: Array<{ resource: { attributes: OtlpAttribute[] }; scopeSpans: Array<{ spans: OtlpSpan[] }> }>;
}

const SPAN_KIND = { server: 2, client: 3 };
const STATUS_ERROR = 2;

const valueOf = (v: OtlpValue): unknown =>
  v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : undefined) ?? v.doubleValue ?? v.boolValue;
const attrs = (list: OtlpAttribute[] | undefined): Record<string, unknown> => Object.fromEntries((list ?? []).map((a) => [a.key, valueOf(a.value)]));

/**
 * A loopback OTLP/HTTP receiver: it decodes each JSON export and keeps its spans and resource attributes. Protobuf
 * exports are kept as bytes: the SDK's transformer serializes them but does not export a decoder.
 */
const startCollector = async () => {
  const server = await startUpstream();
  const exports: OtlpExport[] = [];
  const protobuf: Buffer[] = [];
  server.on('/v1/traces', (req, res, body) => {
    if (req.headers['content-type'] === 'application/x-protobuf') protobuf.push(body);
    else exports.push(JSON.parse(body.toString('utf8')) as OtlpExport);
    // An empty ExportTraceServiceResponse: full success, in either encoding.
    if (req.headers['content-type'] === 'application/x-protobuf') {
      res.writeHead(200, { 'content-type': 'application/x-protobuf' });
      res.end();
    } else json(res, 200, {});
  });
  const spans = () => exports.flatMap((e) => e.resourceSpans.flatMap((r) => r.scopeSpans.flatMap((s) => s.spans)));
  const resources = () => exports.flatMap((e) => e.resourceSpans.map((r) => attrs(r.resource.attributes)));
  return Object.assign(server, { spans, resources, protobuf, requests: () => server.count('/v1/traces') });
};

/** The environment without any OTEL_ variable of the machine the tests run on. */
const baseEnv = (): NodeJS.ProcessEnv => Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('OTEL_')));

const AGENT_TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const AGENT_SPAN_ID = '00f067aa0ba902b7';
const AGENT_TRACEPARENT = `00-${AGENT_TRACE_ID}-${AGENT_SPAN_ID}-01`;

const llmRoute = (up: LlmUpstream) => ({
  name: 'llm',
  provider: 'openai',
  match: { pathPrefix: '/llm' },
  upstream: { url: up.url },
  credential: { env: 'FB_TRACING_KEY' },
  retry: { maxRetries: 1, baseMs: 10 },
  budget: { prices: PRICES },
  fallback: [{ type: 'upstream', name: 'healthy', url: up.url, model: 'test-model', credential: { env: 'FB_TRACING_KEY' } }],
});

/** `broken-model` always answers 503: two attempts on the primary, then the `healthy` step answers with test-model. */
const callBrokenModel = async (proxyUrl: string, headers: Record<string, string> = {}) => {
  const res = await request(`${proxyUrl}/llm/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer agent-secret-key', ...headers },
    body: JSON.stringify({ model: 'broken-model', messages: [{ role: 'user', content: 'hi' }] }),
  });
  const body = (await res.body.json()) as { model: string };
  return { status: res.statusCode, fallback: res.headers['x-fusebox-fallback'], model: body.model };
};

describe('tracing: OpenTelemetry spans over OTLP/HTTP', () => {
  let up: LlmUpstream;
  let collector: Awaited<ReturnType<typeof startCollector>>;

  beforeAll(async () => {
    up = await startLlmUpstream();
    collector = await startCollector();
  });
  afterAll(async () => {
    await up?.close();
    await collector?.close();
  });

  it('exports one span per call, a child per fallback hop and per attempt, with the retry, budget and GenAI facts, and sends each attempt its own traceparent', async () => {
    const fb = await startFusebox(
      { routes: [llmRoute(up)] },
      {
        env: {
          ...baseEnv(),
          FB_TRACING_KEY: 'upstream-secret-key',
          OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${collector.url}/v1/traces`,
          OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
          OTEL_SERVICE_NAME: 'fusebox-test',
          OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment.name=test,k8s.pod.name=agent-0',
        },
        // Full jitter at half the ceiling: the first retry waits floor(0.5 × 10) = 5 ms.
        random: () => 0.5,
      },
    );
    const seenBefore = up.seen.length;
    const answer = await callBrokenModel(fb.proxyUrl, { traceparent: AGENT_TRACEPARENT, tracestate: 'agent=1' });
    expect(answer).toEqual({ status: 200, fallback: 'healthy', model: 'test-model' });
    const line = await fb.waitForLog((l) => l.msg === 'request' && l.route === 'llm');
    expect(line).toMatchObject({ traceparent: AGENT_TRACEPARENT, traceId: AGENT_TRACE_ID });
    // Every span of the call has ended; shutdown exports what the batch processor still holds, and resolves after.
    await fb.stop();

    const spans = collector.spans();
    expect(spans).toHaveLength(6);
    expect(new Set(spans.map((s) => s.traceId))).toEqual(new Set([AGENT_TRACE_ID]));
    const children = (parent: OtlpSpan) =>
      spans.filter((s) => s.parentSpanId === parent.spanId).sort((a, b) => Number(BigInt(a.startTimeUnixNano) - BigInt(b.startTimeUnixNano)));

    // The call: a child of the agent's span, named by the GenAI convention after the model asked for.
    const call = spans.find((s) => s.parentSpanId === AGENT_SPAN_ID)!;
    expect(call).toMatchObject({ name: 'chat broken-model', kind: SPAN_KIND.server });
    expect(call.status?.code ?? 0).not.toBe(STATUS_ERROR);
    expect(attrs(call.attributes)).toMatchObject({
      'http.request.method': 'POST',
      'url.path': '/v1/chat/completions',
      'http.response.status_code': 200,
      'fusebox.route': 'llm',
      'fusebox.attempts': 3,
      'fusebox.fallback.step': 'healthy',
      'gen_ai.operation.name': 'chat',
      'gen_ai.provider.name': 'openai',
      'gen_ai.system': 'openai',
      'gen_ai.request.model': 'broken-model',
      'gen_ai.response.model': 'test-model',
      // USAGE: 1000 prompt tokens (200 of them cached), 500 completion; 800 × 2 + 200 × 1 + 500 × 8 µUSD.
      'gen_ai.usage.input_tokens': 1000,
      'gen_ai.usage.cache_read.input_tokens': 200,
      'gen_ai.usage.output_tokens': 500,
      'fusebox.cost_usd': 0.0058,
    });
    expect(call.events?.map((e) => e.name)).toEqual(['budget.reserved', 'fallback.hop']);
    expect(attrs(call.events![1]!.attributes)).toEqual({ 'fusebox.fallback.step': 'healthy' });

    // Its hops: the primary, then the fallback step.
    const [primary, healthy, ...noMoreHops] = children(call);
    expect(noMoreHops).toEqual([]);
    expect(primary).toMatchObject({ name: 'hop primary', status: { code: STATUS_ERROR, message: '503' } });
    expect(healthy!.name).toBe('hop healthy');
    expect(attrs(healthy!.attributes)).toMatchObject({ 'fusebox.fallback.step': 'healthy', 'http.response.status_code': 200 });
    expect(primary!.events!.map((e) => [e.name, attrs(e.attributes)])).toEqual([
      ['retry', { 'fusebox.attempt': 1, 'fusebox.delay_ms': 5, 'fusebox.reason': 'status_5xx', 'http.response.status_code': 503 }],
      ['retry.stopped', { 'fusebox.attempt': 2, 'fusebox.reason': 'status_5xx', 'fusebox.outcome': 'limit_reached', 'http.response.status_code': 503 }],
    ]);

    // Two attempts on the primary hop, one on the step: CLIENT spans with the HTTP client convention.
    const primaryAttempts = children(primary!);
    const healthyAttempts = children(healthy!);
    expect(primaryAttempts).toHaveLength(2);
    expect(healthyAttempts).toHaveLength(1);
    for (const attempt of primaryAttempts) {
      expect(attempt).toMatchObject({ name: 'POST llm', kind: SPAN_KIND.client, status: { code: STATUS_ERROR, message: '503' } });
      expect(attrs(attempt.attributes)).toMatchObject({ 'http.response.status_code': 503, 'gen_ai.request.model': 'broken-model', 'error.type': '503' });
    }
    expect(healthyAttempts[0]!).toMatchObject({ name: 'POST llm/healthy', kind: SPAN_KIND.client });
    expect(attrs(healthyAttempts[0]!.attributes)).toMatchObject({
      'http.request.method': 'POST',
      'url.full': `${up.url}/v1/chat/completions`,
      'server.address': '127.0.0.1',
      'server.port': up.port,
      'http.response.status_code': 200,
      'gen_ai.request.model': 'test-model',
      'fusebox.attempt': 3,
    });

    // Each attempt reached the upstream as the parent of whatever it does: the agent's span id is not sent on.
    const sent = up.seen.slice(seenBefore);
    expect(sent.map((s) => s.headers.traceparent)).toEqual([...primaryAttempts, ...healthyAttempts].map((a) => `00-${AGENT_TRACE_ID}-${a.spanId}-01`));
    expect(sent.map((s) => s.headers.tracestate)).toEqual(['agent=1', 'agent=1', 'agent=1']);

    // The resource the variables describe; no credential anywhere in what was exported.
    expect(collector.resources()[0]).toMatchObject({ 'service.name': 'fusebox-test', 'deployment.environment.name': 'test', 'k8s.pod.name': 'agent-0' });
    const exported = JSON.stringify(spans);
    expect(exported).not.toContain('agent-secret-key');
    expect(exported).not.toContain('upstream-secret-key');
    expect(metricValue(await fb.app.metrics.registry.metrics(), 'fusebox_trace_spans_exported_total', { result: 'ok' })).toBe(6);
  });

  it('names an LLM call by its GenAI operation: embeddings and legacy completions are not chat', async () => {
    up.on('/v1/embeddings', (_req, res) => json(res, 200, { object: 'list', data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2] }], model: 'text-embedding-3-small', usage: { prompt_tokens: 8, total_tokens: 8 } }));
    up.on('/v1/completions', (_req, res) => json(res, 200, { id: 'c', object: 'text_completion', created: 1, model: 'gpt-3.5-turbo-instruct', choices: [{ text: 'ok', index: 0, finish_reason: 'stop' }], usage: { prompt_tokens: 4, completion_tokens: 1, total_tokens: 5 } }));
    const fb = await startFusebox(
      { routes: [llmRoute(up)] },
      { env: { ...baseEnv(), FB_TRACING_KEY: 'upstream-secret-key', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${collector.url}/v1/traces`, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' } },
    );
    const post = async (path: string, body: unknown) => {
      const res = await request(`${fb.proxyUrl}/llm${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    };
    await post('/v1/embeddings', { model: 'text-embedding-3-small', input: 'hello' });
    await post('/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: 'say ok', max_tokens: 4 });
    await post('/v1/chat/completions', { model: 'test-model', messages: [{ role: 'user', content: 'hi' }] });
    await fb.stop();
    const server = (path: string) => collector.spans().filter((s) => s.kind === SPAN_KIND.server && attrs(s.attributes)['url.path'] === path).at(-1)!;
    const named = (path: string) => ({ name: server(path).name, operation: attrs(server(path).attributes)['gen_ai.operation.name'] });
    expect(named('/v1/embeddings')).toEqual({ name: 'embeddings text-embedding-3-small', operation: 'embeddings' });
    expect(named('/v1/completions')).toEqual({ name: 'text_completion gpt-3.5-turbo-instruct', operation: 'text_completion' });
    expect(named('/v1/chat/completions')).toEqual({ name: 'chat test-model', operation: 'chat' });
    expect(attrs(server('/v1/embeddings').attributes)['gen_ai.usage.input_tokens']).toBe(8);
  });

  it('records refusals as failed spans with the decision as an event: a budget cap, a breaker that opened, then refused', async () => {
    const collected = collector.spans().length;
    const fb = await startFusebox(
      {
        routes: [
          { ...llmRoute(up), name: 'capped', match: { pathPrefix: '/capped' }, fallback: [], budget: { prices: PRICES, maxRequestUsd: 0.000001 } },
          {
            ...llmRoute(up),
            name: 'fragile',
            match: { pathPrefix: '/fragile' },
            fallback: [],
            retry: { enabled: false },
            breaker: { consecutiveFailures: 1, resetMs: 600_000, resetJitterPercent: 0 },
          },
        ],
      },
      { env: { ...baseEnv(), FB_TRACING_KEY: 'k', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${collector.url}/v1/traces`, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' } },
    );
    const call = async (prefix: string, requestId: string) => {
      const res = await request(`${fb.proxyUrl}${prefix}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-request-id': requestId },
        body: JSON.stringify({ model: 'broken-model', messages: [{ role: 'user', content: 'hi' }] }),
      });
      await res.body.dump();
      return [res.statusCode, res.headers['x-fusebox-error']];
    };
    expect(await call('/capped', 'capped-1')).toEqual([402, 'BUDGET_EXCEEDED']);
    expect(await call('/fragile', 'fragile-1')).toEqual([503, undefined]);
    expect(await call('/fragile', 'fragile-2')).toEqual([503, 'CIRCUIT_OPEN']);
    await fb.waitForLog((l) => l.msg === 'request' && l.requestId === 'fragile-2');
    await fb.stop();

    const spans = collector.spans().slice(collected);
    const callSpan = (requestId: string) => spans.find((s) => attrs(s.attributes)['fusebox.request_id'] === requestId)!;
    const eventsOf = (span: OtlpSpan) => (span.events ?? []).map((e) => [e.name, attrs(e.attributes)]);
    const childrenOf = (span: OtlpSpan) => spans.filter((s) => s.parentSpanId === span.spanId);

    const capped = callSpan('capped-1');
    expect(capped.status).toMatchObject({ code: STATUS_ERROR, message: 'BUDGET_EXCEEDED' });
    expect(attrs(capped.attributes)).toMatchObject({ 'error.type': 'BUDGET_EXCEEDED', 'fusebox.attempts': 0 });
    expect(eventsOf(capped)).toEqual([['budget.refused', { 'error.type': 'BUDGET_EXCEEDED', 'fusebox.budget.scope': 'request', 'fusebox.budget.reason': 'BUDGET_EXCEEDED' }]]);
    expect(childrenOf(capped)).toEqual([]);

    const opened = callSpan('fragile-1');
    expect(opened.status).toMatchObject({ code: STATUS_ERROR, message: '503' });
    expect(eventsOf(opened).map(([name]) => name)).toEqual(['budget.reserved', 'breaker.opened']);
    expect(childrenOf(opened).map((s) => s.name)).toEqual(['POST fragile']);

    const refused = callSpan('fragile-2');
    expect(refused.status).toMatchObject({ code: STATUS_ERROR, message: 'CIRCUIT_OPEN' });
    expect(eventsOf(refused)[1]).toEqual(['breaker.rejected', { 'fusebox.breaker': 'fragile', 'fusebox.breaker.state': 'open', 'fusebox.retry_after_ms': expect.any(Number) }]);
    expect(childrenOf(refused)).toEqual([]);
  });

  it('exports protobuf by default (OTEL_EXPORTER_OTLP_PROTOCOL unset), the spec’s default encoding', async () => {
    const fb = await startFusebox(
      { routes: [{ ...llmRoute(up), fallback: [] }] },
      { env: { ...baseEnv(), FB_TRACING_KEY: 'k', OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, OTEL_SERVICE_NAME: 'fusebox-proto' } },
    );
    const res = await request(`${fb.proxyUrl}/llm/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', traceparent: AGENT_TRACEPARENT },
      body: JSON.stringify({ model: 'test-model', messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    await fb.waitForLog((l) => l.msg === 'request' && l.route === 'llm');
    await fb.stop();
    // The call and its one attempt, protobuf-encoded: the trace id as 16 raw bytes, the names as strings.
    expect(collector.protobuf.length).toBeGreaterThan(0);
    const body = Buffer.concat(collector.protobuf);
    expect(body.includes(Buffer.from(AGENT_TRACE_ID, 'hex'))).toBe(true);
    for (const text of ['fusebox-proto', 'chat test-model', 'POST llm', 'gen_ai.usage.output_tokens']) expect(body.includes(Buffer.from(text))).toBe(true);
    expect(metricValue(await fb.app.metrics.registry.metrics(), 'fusebox_trace_spans_exported_total', { result: 'ok' })).toBe(2);
  });

  it('is off by default and when OTEL_SDK_DISABLED=true: nothing is exported, no traceparent is added, the agent’s passes through untouched', async () => {
    const exportsBefore = collector.requests();
    const fb = await startFusebox(
      { routes: [llmRoute(up)] },
      {
        env: {
          ...baseEnv(),
          FB_TRACING_KEY: 'upstream-secret-key',
          OTEL_SDK_DISABLED: 'true',
          OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${collector.url}/v1/traces`,
        },
      },
    );
    const seenBefore = up.seen.length;
    expect(await callBrokenModel(fb.proxyUrl)).toMatchObject({ status: 200, fallback: 'healthy' });
    expect(await callBrokenModel(fb.proxyUrl, { traceparent: AGENT_TRACEPARENT })).toMatchObject({ status: 200 });
    await fb.waitForLog((l) => l.msg === 'tracing off' && l.why === 'OTEL_SDK_DISABLED=true');
    await fb.stop();
    const sent = up.seen.slice(seenBefore).map((s) => s.headers.traceparent);
    expect(sent).toEqual([undefined, undefined, undefined, AGENT_TRACEPARENT, AGENT_TRACEPARENT, AGENT_TRACEPARENT]);
    // Shutdown would have flushed the spans of a tracing sidecar before resolving.
    expect(collector.requests()).toBe(exportsBefore);
    expect(await fb.app.metrics.registry.metrics()).not.toContain('fusebox_trace_spans_exported_total{');

    const quiet = await startFusebox({ routes: [llmRoute(up)] }, { env: { ...baseEnv(), FB_TRACING_KEY: 'k' } });
    await quiet.stop();
    expect(quiet.logs.some((l) => typeof l.msg === 'string' && l.msg.startsWith('tracing'))).toBe(false);
  });

  it('refuses to start when the variables ask for tracing it cannot do, naming each one', async () => {
    const start = startFusebox(
      { routes: [llmRoute(up)] },
      { env: { ...baseEnv(), OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '2' } },
    );
    await expect(start).rejects.toThrow(/OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported[\s\S]*OTEL_TRACES_SAMPLER_ARG: "2" is not a ratio/);
  });
});
