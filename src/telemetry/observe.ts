import type { Logger } from 'pino';
import {
  ClientClosedError,
  InternalError,
  ProxyError,
  UpstreamConnectError,
  UpstreamError,
  UpstreamResetError,
  UpstreamTimeoutError,
} from '../errors.js';
import { pinoLineWriter } from './pino-line.js';
import { redactPath } from './redact.js';
import type { PendingWork } from '../pipeline/pending.js';
import type { BodyEnd, CallContext, CallMode, Layer, ProxyRequest } from '../pipeline/types.js';
import { counterSeries, gaugeSeries, histogramSeries, type CounterSeries, type GaugeSeries, type HistogramSeries } from './fast-metrics.js';
import { CALL_OUTCOMES, type CallOutcome, type LiveStats } from './live.js';
import { codeClass, KNOWN_METHODS, methodLabel, type Metrics } from './metrics.js';

const errorOutcome = (err: ProxyError): CallOutcome =>
  err instanceof ClientClosedError
    ? 'aborted'
    : err instanceof UpstreamConnectError || err instanceof UpstreamResetError || err instanceof UpstreamTimeoutError || err instanceof UpstreamError
      ? 'failed'
      : 'refused';

const bodyOutcome = (status: number, end: BodyEnd): CallOutcome =>
  !end.ok ? (end.failedBy === 'client' ? 'aborted' : 'stream_broken') : status >= 500 ? 'upstream_error' : 'success';

/** Anything a layer threw, as the answer the agent gets: a ProxyError, or a 500 INTERNAL whose cause is logged. */
export const toProxyError = (err: unknown): ProxyError =>
  err instanceof ProxyError ? err : new InternalError('Fusebox failed to handle this request; see its logs', {}, { cause: err });

export interface ObserveDeps {
  metrics: Metrics;
  /** One line per call: the logger without pino's redaction walk (the line carries no headers, only redacted values). */
  accessLog: Logger;
  /** A call is pending until its line is written: `Fusebox.idle()` and shutdown wait on it. */
  pending: PendingWork;
  /** Calls in flight (the drain waits for them). */
  inflight: { count: number };
  /** The last minute per route and the recent refusals, for `/admin/status`. */
  live: Pick<LiveStats, 'call' | 'refused'>;
}

/**
 * Outermost: every call, whatever ends it, is counted (`fusebox_requests_total` by outcome and mode, duration,
 * bytes) and gets one access line, when its answer's last byte is sent or its error is thrown. Errors that are not
 * Fusebox's own become 500 INTERNAL here, logged with their cause.
 */
export const observeLayer = (deps: ObserveDeps): Layer => {
  const m = deps.metrics;
  // What every call of the route shares, made on its first call (the layer is built per route, and its calls all
  // carry the same route and agent): the metric series of the route, and a pino child, which serializes its
  // bindings once rather than on every line.
  let shared: RouteTelemetry | undefined;
  const telemetryOf = (ctx: CallContext): RouteTelemetry => {
    const route = ctx.route.name;
    if (shared?.route !== route || shared.agent !== ctx.agent) {
      const log = deps.accessLog.child({ route, agent: ctx.agent });
      shared = {
        route,
        agent: ctx.agent,
        inflight: gaugeSeries(m.inflight, route),
        duration: histogramSeries(m.requestDuration, route),
        requestBytes: counterSeries(m.requestBytes, route),
        responseBytes: counterSeries(m.responseBytes, route),
        log,
        line: pinoLineWriter(log),
        requests: new Map(),
      };
    }
    return shared;
  };
  return (next) => async (req, ctx) => {
    const t = telemetryOf(ctx);
    const route = t.route;
    // A double, where hrtime.bigint() allocates a BigInt at each end and one for the difference.
    const startedMs = performance.now();
    const inflight = t.inflight;
    inflight.inc();
    deps.inflight.count += 1;
    deps.pending.begin();

    const finish = (status: number, outcome: CallOutcome, end: BodyEnd | undefined, err: ProxyError | undefined) => {
      inflight.dec();
      deps.inflight.count -= 1;
      const seconds = (performance.now() - startedMs) / 1e3;
      const bytesIn = ctx.facts.requestBytes ?? 0;
      const key = requestsKey(req.method, status, outcome, ctx.mode);
      let requests = t.requests.get(key);
      if (requests === undefined) t.requests.set(key, (requests = counterSeries(m.requests, route, methodLabel(req.method), codeClass(status), outcome, ctx.mode)));
      requests.inc();
      t.duration.observe(seconds);
      deps.live.call(route, outcome, seconds);
      if (err !== undefined && outcome === 'refused') {
        deps.live.refused({ code: err.code, status: err.statusCode, route, message: err.message, requestId: ctx.requestId, mode: ctx.mode });
      }
      if (bytesIn > 0) t.requestBytes.inc(bytesIn);
      if (end !== undefined && end.bytes > 0) t.responseBytes.inc(end.bytes);
      writeLine(t, ctx, req, { status, outcome, code: err?.code, seconds, bytesIn, bytesOut: end?.bytes ?? 0, error: end?.error?.message });
      deps.pending.end();
    };

    let res;
    try {
      res = await next(req, ctx);
    } catch (caught) {
      const err = toProxyError(caught);
      if (err instanceof InternalError) ctx.log.error({ err: caught }, 'internal error while proxying');
      finish(err.statusCode, errorOutcome(err), undefined, err);
      throw err;
    }
    const status = res.statusCode;
    res.observers.push({ onEnd: (end) => finish(status, bodyOutcome(status, end), end, undefined) });
    return res;
  };
};

/** The metric series and the access log (route and agent bound) of one route's calls. */
interface RouteTelemetry {
  readonly route: string;
  readonly agent: string;
  readonly inflight: GaugeSeries;
  readonly duration: HistogramSeries;
  readonly requestBytes: CounterSeries;
  readonly responseBytes: CounterSeries;
  readonly log: Logger;
  /** Writes `log`'s lines in pino's bytes with fewer intermediate strings, when `log` allows (src/telemetry/pino-line.ts). */
  readonly line: ReturnType<typeof pinoLineWriter>;
  /** `fusebox_requests_total` series by `requestsKey`: bounded (methods, statuses, outcomes and modes are). */
  readonly requests: Map<number, CounterSeries>;
}

const MODES: readonly CallMode[] = ['base-url', 'proxy', 'intercept'];

/**
 * One number per (method label, status, outcome, mode), so finding a call's series builds no string. Methods outside
 * KNOWN_METHODS share the OTHER slot, as their label does.
 */
const METHOD_SLOTS = KNOWN_METHODS.length + 1;
const requestsKey = (method: string, status: number, outcome: CallOutcome, mode: CallMode): number => {
  const m = KNOWN_METHODS.indexOf(method);
  return ((status * METHOD_SLOTS + (m < 0 ? KNOWN_METHODS.length : m)) * CALL_OUTCOMES.length + CALL_OUTCOMES.indexOf(outcome)) * MODES.length + MODES.indexOf(mode);
};

interface LineFields {
  status: number;
  outcome: CallOutcome;
  code: string | undefined;
  seconds: number;
  bytesIn: number;
  bytesOut: number;
  error: string | undefined;
}

/**
 * One line per call, `route` and `agent` bound in `log`. One object literal of a fixed shape, which also fixes the
 * fields' order; fields left undefined are skipped (the settlement's on a call that was not billed, `error` on a
 * success).
 */
const writeLine = (t: RouteTelemetry, ctx: CallContext, req: ProxyRequest, f: LineFields): void => {
  const facts = ctx.facts;
  const s = facts.settlement;
  const warn = f.outcome !== 'success' && f.outcome !== 'refused';
  const line = {
    requestId: ctx.requestId,
    workflow: ctx.workflow,
    method: req.method,
    path: redactPath(req.path),
    mode: ctx.mode,
    status: f.status,
    outcome: f.outcome,
    code: f.code,
    attempts: ctx.attempts,
    fallback: ctx.fallbackStep,
    durationMs: Math.round(f.seconds * 1e6) / 1e3,
    bytesIn: f.bytesIn,
    bytesOut: f.bytesOut,
    traceparent: req.headers.traceparent,
    traceId: ctx.trace?.traceId,
    model: s?.model ?? facts.model,
    estimatedUsd: facts.estimatedUsd,
    fallbackModel: facts.fallbackModel,
    sloAction: facts.sloAction,
    faultHeader: facts.faultHeader,
    inputTokens: s?.inputTokens,
    cachedInputTokens: s?.cachedInputTokens,
    outputTokens: s?.outputTokens,
    costUsd: s !== undefined ? s.costUsdMicros / 1e6 : undefined,
    usageEstimated: s?.estimated === true ? true : undefined,
    error: warn ? f.error : undefined,
  };
  const level = warn ? 'warn' : 'info';
  if (t.line === undefined || !t.line(level, line, 'request')) t.log[level](line, 'request');
};
