import {
  DiagLogLevel,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  defaultTextMapGetter,
  defaultTextMapSetter,
  diag,
  trace,
  type Attributes,
  type Context,
  type Span,
  type Tracer,
} from '@opentelemetry/api';
import { ExportResultCode, W3CTraceContextPropagator, type ExportResult } from '@opentelemetry/core';
import { defaultResource, resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  TracerProvider,
  type ReadableSpan,
  type Sampler,
  type SpanExporter,
} from '@opentelemetry/sdk-trace';
import {
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVER_PORT,
  ATTR_URL_FULL,
  ATTR_URL_PATH,
} from '@opentelemetry/semantic-conventions';
import type { Logger } from 'pino';
import type { ProxyError } from '../errors.js';
import { settledWithin } from '../pipeline/sleep.js';
import type { BodyEnd, CallContext, CallTrace, Handler, Layer, ProxyRequest, ProxyResponse, TraceAttributes } from '../pipeline/types.js';
import { requestInfo } from '../providers/request.js';
import { openAiOperation, type OpenAiOperation } from '../providers/openai.js';
import type { Metrics } from './metrics.js';
import { toProxyError } from './observe.js';
import { redactPath, redactUrl } from './redact.js';
import type { SamplerSettings, TracingSettings } from './tracing-env.js';

/**
 * The GenAI semantic conventions are still "development": their constants live in the package's `incubating` entry,
 * which its README says to copy rather than import (it changes in minor releases, and it is large to load).
 */
const GEN_AI = {
  operation: 'gen_ai.operation.name',
  provider: 'gen_ai.provider.name',
  /** Deprecated in favour of gen_ai.provider.name, still what many backends group LLM calls by. */
  system: 'gen_ai.system',
  requestModel: 'gen_ai.request.model',
  responseModel: 'gen_ai.response.model',
  inputTokens: 'gen_ai.usage.input_tokens',
  cachedInputTokens: 'gen_ai.usage.cache_read.input_tokens',
  outputTokens: 'gen_ai.usage.output_tokens',
} as const;

const propagator = new W3CTraceContextPropagator();

/** What the pipeline is given when tracing is on: one layer and two wrappers, placed by src/pipeline/build.ts. */
export interface Tracing {
  /** Opens the call's span (a SERVER span, child of the agent's `traceparent`), ended when the answer's last byte is sent. */
  callLayer: Layer;
  /** A fallback hop (the primary, or a step) as a child span of the call, ended with the hop's answer. */
  hop<T extends ProxyResponse | undefined>(step: string, primary: boolean, handler: (req: ProxyRequest, ctx: CallContext) => Promise<T>): (req: ProxyRequest, ctx: CallContext) => Promise<T>;
  /** One CLIENT span per upstream attempt; its context replaces the agent's `traceparent` on the request sent. */
  attempts(upstream: { name: string; url: string }, handler: Handler): Handler;
  /** Export what is queued and stop; bounded by `timeoutMs`. */
  shutdown(timeoutMs: number): Promise<void>;
}

/** The spans of one call. Hops run one after another, so "the current hop" is one field. */
class CallSpans implements CallTrace {
  private hopSpan: Span | undefined;
  private hopContext: Context | undefined;
  readonly context: Context;

  constructor(
    readonly tracer: Tracer,
    readonly span: Span,
    /** The GenAI operation the request path names, on LLM routes: the call span's name and `gen_ai.operation.name`. */
    readonly operation: OpenAiOperation | undefined,
  ) {
    this.context = trace.setSpan(ROOT_CONTEXT, span);
  }

  get traceId(): string {
    return this.span.spanContext().traceId;
  }

  event(name: string, attributes: TraceAttributes): void {
    (this.hopSpan ?? this.span).addEvent(name, defined(attributes));
  }

  /** Where an attempt's span hangs: the current hop, else the call. */
  get attemptParent(): Context {
    return this.hopContext ?? this.context;
  }

  enterHop(span: Span): void {
    this.hopSpan = span;
    this.hopContext = trace.setSpan(this.context, span);
  }

  leaveHop(span: Span): void {
    if (this.hopSpan !== span) return;
    this.hopSpan = undefined;
    this.hopContext = undefined;
  }
}

const defined = (attributes: TraceAttributes): Attributes => {
  const out: Attributes = {};
  for (const k in attributes) {
    const v = attributes[k];
    if (v !== undefined) out[k] = v;
  }
  return out;
};

const failWith = (span: Span, code: string): void => {
  span.setAttribute(ATTR_ERROR_TYPE, code);
  span.setStatus({ code: SpanStatusCode.ERROR, message: code });
};

/** Ends `span` when the response's body ends (sent, broken, or discarded for a retry or a fallback). */
const endWithBody = (res: ProxyResponse, span: Span, onEnd?: (end: BodyEnd) => void): void => {
  res.observers.push({
    onEnd: (end) => {
      onEnd?.(end);
      if (end.discarded) span.setAttribute('fusebox.discarded', true);
      else if (!end.ok && end.failedBy === 'upstream') failWith(span, 'stream_broken');
      span.end();
    },
  });
};

const isLlm = (ctx: CallContext) => ctx.route.provider === 'openai' || ctx.route.provider === 'anthropic';

/** The GenAI attributes of a settled LLM call, and its name (`<operation> <model>`, the GenAI convention's). */
const describeLlmCall = (span: Span, ctx: CallContext, operation: OpenAiOperation): void => {
  const provider = ctx.route.provider;
  const f = ctx.facts;
  const s = f.settlement;
  span.setAttributes(
    defined({
      [GEN_AI.operation]: operation,
      [GEN_AI.provider]: provider,
      [GEN_AI.system]: provider,
      [GEN_AI.requestModel]: f.model,
      [GEN_AI.responseModel]: s?.model,
      // The convention counts cached prompt tokens in input_tokens, and again apart.
      [GEN_AI.inputTokens]: s === undefined ? undefined : s.inputTokens + s.cachedInputTokens,
      [GEN_AI.cachedInputTokens]: s?.cachedInputTokens,
      [GEN_AI.outputTokens]: s?.outputTokens,
      'fusebox.cost_usd': s === undefined ? undefined : s.costUsdMicros / 1e6,
      'fusebox.usage_estimated': s?.estimated === true ? true : undefined,
    }),
  );
  if (f.model !== undefined) span.updateName(`${operation} ${f.model}`);
};

const endCall = (spans: CallSpans, ctx: CallContext, status: number | undefined, err: ProxyError | undefined): void => {
  const span = spans.span;
  span.setAttributes(
    defined({
      [ATTR_HTTP_RESPONSE_STATUS_CODE]: status,
      'fusebox.attempts': ctx.attempts,
      'fusebox.fallback.step': ctx.fallbackStep,
      'fusebox.slo.action': ctx.facts.sloAction,
    }),
  );
  if (isLlm(ctx)) describeLlmCall(span, ctx, spans.operation ?? 'chat');
  if (err !== undefined) failWith(span, err.code);
  else if (status !== undefined && status >= 500) failWith(span, String(status));
  span.end();
};

const samplerOf = (s: SamplerSettings): Sampler => {
  const root = s.root === 'always_off' ? new AlwaysOffSampler() : s.root === 'traceidratio' ? new TraceIdRatioBasedSampler(s.ratio) : new AlwaysOnSampler();
  return s.parentBased ? new ParentBasedSampler({ root }) : root;
};

/**
 * Counts what the exporter sent and what it failed to (`fusebox_trace_spans_exported_total`), and says so in the
 * log: the SDK only tells its own diagnostics channel, which nobody reads.
 */
const countingExporter = (inner: SpanExporter, metrics: Metrics, logger: Logger, endpoint: string): SpanExporter => ({
  export(spans: ReadableSpan[], done: (result: ExportResult) => void) {
    inner.export(spans, (result) => {
      const ok = result.code === ExportResultCode.SUCCESS;
      metrics.traceSpansExported.labels(ok ? 'ok' : 'failed').inc(spans.length);
      if (!ok) logger.warn({ spans: spans.length, endpoint, error: result.error?.message }, 'trace export failed: these spans are lost; check the OTLP endpoint');
      done(result);
    });
  },
  shutdown: () => inner.shutdown(),
  forceFlush: () => inner.forceFlush?.() ?? Promise.resolve(),
});

const makeExporter = async (settings: TracingSettings): Promise<SpanExporter> => {
  // Headers, timeout, compression and certificates come from the OTEL_EXPORTER_OTLP_* variables, read by the exporter.
  const { OTLPTraceExporter } =
    settings.protocol === 'http/json' ? await import('@opentelemetry/exporter-trace-otlp-http') : await import('@opentelemetry/exporter-trace-otlp-proto');
  return new OTLPTraceExporter({ url: settings.endpoint });
};

/**
 * Start the OpenTelemetry SDK. This module is imported (and the SDK loaded, some megabytes) only when the
 * environment turns tracing on; with it off the pipeline has no tracing layer at all and `ctx.trace` stays unset.
 * The provider is not registered globally: Fusebox passes its contexts explicitly, so it needs no context manager
 * (no AsyncLocalStorage on the hot path) and leaves the process's global tracer alone.
 */
export const startTracing = async (settings: TracingSettings, deps: { metrics: Metrics; logger: Logger }): Promise<Tracing> => {
  const { metrics, logger } = deps;
  // The SDK's own complaints (a dropped batch, a bad header variable) reach the log instead of nowhere. Only the
  // messages of errors passed along: other arguments may be a request's options, headers (and a key) included.
  const errorsOf = (args: unknown[]) => args.flatMap((a) => (a instanceof Error ? [a.message] : []));
  diag.setLogger(
    {
      error: (message, ...args) => logger.error({ errors: errorsOf(args) }, `opentelemetry: ${message}`),
      warn: (message, ...args) => logger.warn({ errors: errorsOf(args) }, `opentelemetry: ${message}`),
      info: () => {},
      debug: () => {},
      verbose: () => {},
    },
    { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true },
  );
  const exporter = countingExporter(await makeExporter(settings), metrics, logger, redactUrl(settings.endpoint));
  const provider = new TracerProvider({
    resource: defaultResource().merge(resourceFromAttributes(settings.resource)),
    sampler: samplerOf(settings.sampler),
    spanProcessors: [new BatchSpanProcessor({ exporter, ...settings.batch })],
  });
  const tracer = provider.getTracer('fusebox');
  for (const result of ['ok', 'failed']) metrics.traceSpansExported.labels(result).inc(0);

  const callLayer: Layer = (next) => async (req, ctx) => {
    // The agent's traceparent (if any) makes this call part of the agent's trace; an invalid one starts a new trace.
    const parent = propagator.extract(ROOT_CONTEXT, req.headers, defaultTextMapGetter);
    const span = tracer.startSpan(
      `fusebox ${ctx.route.name}`,
      {
        kind: SpanKind.SERVER,
        attributes: defined({
          [ATTR_HTTP_REQUEST_METHOD]: req.method,
          // The path only: a query can carry keys (redactPath would keep its other values, which say nothing here).
          [ATTR_URL_PATH]: redactPath(req.path.split('?', 1)[0]!),
          'fusebox.route': ctx.route.name,
          'fusebox.mode': ctx.mode,
          'fusebox.request_id': ctx.requestId,
          'fusebox.agent': ctx.agent,
          'fusebox.workflow': ctx.workflow,
        }),
      },
      parent,
    );
    const spans = new CallSpans(tracer, span, ctx.route.provider === 'openai' ? openAiOperation(req.path) : isLlm(ctx) ? 'chat' : undefined);
    ctx.trace = spans;
    let res;
    try {
      res = await next(req, ctx);
    } catch (caught) {
      endCall(spans, ctx, undefined, toProxyError(caught));
      throw caught;
    }
    const status = res.statusCode;
    res.observers.push({
      onEnd: (end) => {
        if (!end.ok && end.failedBy === 'upstream') span.setAttribute('fusebox.stream_broken', true);
        endCall(spans, ctx, status, undefined);
      },
    });
    return res;
  };

  const hop: Tracing['hop'] = (step, primary, handler) => async (req, ctx) => {
    const calls = ctx.trace;
    if (!(calls instanceof CallSpans)) return handler(req, ctx);
    if (!primary) calls.event('fallback.hop', { 'fusebox.fallback.step': step });
    const span = calls.tracer.startSpan(`hop ${step}`, { attributes: { 'fusebox.fallback.step': step, 'fusebox.fallback.primary': primary } }, calls.context);
    calls.enterHop(span);
    let res;
    try {
      res = await handler(req, ctx);
    } catch (caught) {
      failWith(span, toProxyError(caught).code);
      span.end();
      throw caught;
    } finally {
      calls.leaveHop(span);
    }
    if (res === undefined) {
      span.setAttribute('fusebox.fallback.miss', true);
      span.end();
    } else {
      span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, res.statusCode);
      if (res.statusCode >= 500) failWith(span, String(res.statusCode));
      endWithBody(res, span);
    }
    return res;
  };

  const attempts: Tracing['attempts'] = (upstream, handler) => {
    const origin = new URL(upstream.url);
    const base = { [ATTR_SERVER_ADDRESS]: origin.hostname, [ATTR_SERVER_PORT]: Number(origin.port || (origin.protocol === 'https:' ? 443 : 80)), 'fusebox.upstream': upstream.name };
    const originText = origin.origin + origin.pathname.replace(/\/+$/, '');
    return async (req, ctx) => {
      const calls = ctx.trace;
      if (!(calls instanceof CallSpans)) return handler(req, ctx);
      const model = isLlm(ctx) && req.body.kind === 'buffered' ? requestInfo(req.body.bytes).model : undefined;
      const span = calls.tracer.startSpan(
        `${req.method} ${upstream.name}`,
        {
          kind: SpanKind.CLIENT,
          attributes: defined({
            ...base,
            [ATTR_HTTP_REQUEST_METHOD]: req.method,
            [ATTR_URL_FULL]: originText + redactPath(req.path),
            'fusebox.attempt': ctx.attempts + 1,
            [GEN_AI.requestModel]: model,
          }),
        },
        calls.attemptParent,
      );
      // This attempt is the upstream's parent: the agent's traceparent and tracestate are replaced, not forwarded.
      const headers = { ...req.headers };
      delete headers.traceparent;
      delete headers.tracestate;
      propagator.inject(trace.setSpan(ROOT_CONTEXT, span), headers, defaultTextMapSetter);
      let res;
      try {
        res = await handler({ ...req, headers }, ctx);
      } catch (caught) {
        failWith(span, toProxyError(caught).code);
        span.end();
        throw caught;
      }
      span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, res.statusCode);
      // The HTTP client convention: any 4xx or 5xx fails the client span.
      if (res.statusCode >= 400) failWith(span, String(res.statusCode));
      endWithBody(res, span);
      return res;
    };
  };

  logger.info(
    { endpoint: redactUrl(settings.endpoint), protocol: settings.protocol, sampler: settings.sampler, resource: settings.resource },
    'tracing on: spans are exported over OTLP/HTTP',
  );

  return {
    callLayer,
    hop,
    attempts,
    async shutdown(timeoutMs) {
      try {
        if (!(await settledWithin(provider.shutdown(), timeoutMs))) logger.warn({ timeoutMs }, 'tracing: the last spans were not exported in time at shutdown');
      } catch (err) {
        logger.warn({ error: (err as Error).message }, 'tracing: shutdown failed; the last spans may be lost');
      }
    },
  };
};
