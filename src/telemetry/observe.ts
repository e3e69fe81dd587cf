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
import { redactPath } from './redact.js';
import type { PendingWork } from '../pipeline/pending.js';
import type { BodyEnd, CallContext, CallFacts, Layer, ProxyRequest } from '../pipeline/types.js';
import type { CallOutcome, LiveStats } from './live.js';
import { codeClass, methodLabel, type Metrics } from './metrics.js';

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

/** The facts of a call that go on its access line (the settlement's usage and cost, the decisions that shaped it). */
const accessFacts = (f: CallFacts) => {
  const s = f.settlement;
  return {
    model: s?.model ?? f.model,
    estimatedUsd: f.estimatedUsd,
    fallbackModel: f.fallbackModel,
    sloAction: f.sloAction,
    faultHeader: f.faultHeader,
    ...(s !== undefined
      ? {
          inputTokens: s.inputTokens,
          cachedInputTokens: s.cachedInputTokens,
          outputTokens: s.outputTokens,
          costUsd: s.costUsdMicros / 1e6,
          usageEstimated: s.estimated || undefined,
        }
      : {}),
  };
};

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
export const observeLayer =
  (deps: ObserveDeps): Layer =>
  (next) =>
  async (req, ctx) => {
    const m = deps.metrics;
    const route = ctx.route.name;
    const startedHr = process.hrtime.bigint();
    const inflight = m.inflight.labels(route);
    inflight.inc();
    deps.inflight.count += 1;
    deps.pending.begin();

    const finish = (status: number, outcome: CallOutcome, end: BodyEnd | undefined, err: ProxyError | undefined) => {
      inflight.dec();
      deps.inflight.count -= 1;
      const seconds = Number(process.hrtime.bigint() - startedHr) / 1e9;
      const bytesIn = ctx.facts.requestBytes ?? 0;
      m.requests.labels(route, methodLabel(req.method), codeClass(status), outcome, ctx.mode).inc();
      m.requestDuration.labels(route).observe(seconds);
      deps.live.call(route, outcome, seconds);
      if (err !== undefined && outcome === 'refused') {
        deps.live.refused({ code: err.code, status: err.statusCode, route, message: err.message, requestId: ctx.requestId, mode: ctx.mode });
      }
      if (bytesIn > 0) m.requestBytes.labels(route).inc(bytesIn);
      if (end !== undefined && end.bytes > 0) m.responseBytes.labels(route).inc(end.bytes);
      writeLine(deps.accessLog, ctx, req, { status, outcome, code: err?.code, seconds, bytesIn, bytesOut: end?.bytes ?? 0, error: end?.error?.message });
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

interface LineFields {
  status: number;
  outcome: CallOutcome;
  code: string | undefined;
  seconds: number;
  bytesIn: number;
  bytesOut: number;
  error: string | undefined;
}

const writeLine = (log: Logger, ctx: CallContext, req: ProxyRequest, f: LineFields): void => {
  const line = {
    requestId: ctx.requestId,
    route: ctx.route.name,
    agent: ctx.agent,
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
    ...accessFacts(ctx.facts),
  };
  if (f.outcome === 'success' || f.outcome === 'refused') log.info(line, 'request');
  else log.warn({ ...line, error: f.error }, 'request');
};
