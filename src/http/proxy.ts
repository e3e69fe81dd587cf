import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import {
  ClientClosedError,
  DestinationNotAllowedError,
  InternalError,
  NoRouteError,
  ProxyError,
  ProxyLoopError,
  ShuttingDownError,
  UpstreamConnectError,
  UpstreamError,
  UpstreamResetError,
  UpstreamTimeoutError,
} from '../errors.js';
import type { BuiltRoute } from '../pipeline/build.js';
import type { BodyEnd, CallContext, CallFacts, ProxyRequest } from '../pipeline/types.js';
import type { PendingWork } from '../pipeline/pending.js';
import { codeClass, methodLabel, type Metrics } from '../telemetry/metrics.js';
import { readRequestBody } from './body.js';
import { isLocalHost, normalizeHost, urlPort } from '../net/address.js';
import { lingeringClose } from './lingering-close.js';
import { redactPath, splitRequestHeaders } from './headers.js';
import { sendError } from './error-answer.js';
import { sendResponse } from './respond.js';
import type { RouteTable } from './route-table.js';

/** How a call reached Fusebox: a label on metrics and access-log lines. */
export type CallMode = 'base-url' | 'proxy' | 'intercept';

/** Where a proxy-mode request goes: set by the server's URL rewrite (absolute-form) or by the tunnel that carried it. */
export interface ForwardTarget {
  url: URL;
  mode: 'proxy' | 'intercept';
}

export const FORWARD_TARGET = Symbol('fusebox.forwardTarget');
export type ForwardRequest = IncomingMessage & { [FORWARD_TARGET]?: ForwardTarget };

export interface ProxyState {
  /** false once draining: new calls get 503 SHUTTING_DOWN. */
  accepting: boolean;
  inflight: number;
  /** Ports of this instance, to refuse proxy requests aimed back at Fusebox. */
  ownPorts: Set<number>;
}

export interface ProxyDeps {
  config: Config;
  routes: RouteTable<BuiltRoute>;
  metrics: Metrics;
  logger: Logger;
  /** One line per request: `logger` without the redaction walk, for a line that carries no headers. */
  accessLog: Logger;
  now: () => number;
  state: ProxyState;
  via: string;
  /** A call counts as pending from routing until its access line is written (`Fusebox.idle()`). */
  pending: PendingWork;
}

type Outcome = 'success' | 'upstream_error' | 'failed' | 'refused' | 'aborted' | 'stream_broken';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

const errorOutcome = (err: ProxyError): Outcome =>
  err instanceof ClientClosedError
    ? 'aborted'
    : err instanceof UpstreamConnectError || err instanceof UpstreamResetError || err instanceof UpstreamTimeoutError || err instanceof UpstreamError
      ? 'failed'
      : 'refused';

const toProxyError = (err: unknown): ProxyError =>
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

/** Lazily made child logger: most calls never log a decision, and a pino child costs a serialization. */
class Context implements CallContext {
  attempts = 0;
  fallbackStep?: string;
  readonly facts: CallFacts = {};
  private child?: Logger;
  constructor(
    readonly requestId: string,
    readonly route: BuiltRoute['config'],
    readonly agent: string,
    readonly workflow: string | undefined,
    readonly startedAt: number,
    readonly deadline: number,
    readonly signal: AbortSignal,
    private readonly base: Logger,
  ) {}
  get log(): Logger {
    this.child ??= this.base.child({ requestId: this.requestId, route: this.route.name, workflow: this.workflow });
    return this.child;
  }
}

/**
 * Handle one proxied call, in either mode: base-URL (origin-form, matched by path prefix) or HTTP_PROXY
 * (absolute-form, matched by host). Writes the answer itself (the fastify reply is hijacked) because the
 * response must stream with backpressure and observers, and errors must keep one JSON shape.
 */
export const handleProxyRequest = async (raw: ForwardRequest, res: ServerResponse, deps: ProxyDeps): Promise<void> => {
  const started = deps.now();
  const startedHr = process.hrtime.bigint();
  const incomingId = raw.headers['x-request-id'];
  const requestId = typeof incomingId === 'string' && REQUEST_ID.test(incomingId) ? incomingId : randomUUID();
  const forward = raw[FORWARD_TARGET]?.url;
  const mode: CallMode = raw[FORWARD_TARGET]?.mode ?? 'base-url';
  const method = raw.method ?? 'GET';

  const refuse = (err: ProxyError, closeConnection = false) => {
    deps.metrics.refusals.labels(err.code).inc();
    sendError(res, err, { requestId }, closeConnection);
    deps.logger.info(
      { requestId, method, target: forward ? `${forward.host}${redactPath(forward.pathname)}` : redactPath(raw.url ?? ''), status: err.statusCode, code: err.code },
      'request refused',
    );
  };

  if (!deps.state.accepting) return refuse(new ShuttingDownError('Fusebox is shutting down; retry on the new instance'), true);
  const via = raw.headers.via;
  if (via !== undefined && (Array.isArray(via) ? via.join(',') : via).includes(deps.via)) {
    return refuse(new ProxyLoopError('this request already passed through this Fusebox (Via header): a route points back at Fusebox'));
  }

  // --- route: the allow-list decides, nothing else reaches a socket ---
  let built: BuiltRoute | undefined;
  let path: string;
  if (forward !== undefined) {
    const port = urlPort(forward);
    const host = normalizeHost(forward.hostname) ?? forward.hostname;
    if (isLocalHost(host) && deps.state.ownPorts.has(port)) {
      return refuse(new ProxyLoopError(`refusing to proxy to Fusebox's own port ${port}`));
    }
    path = forward.pathname + forward.search;
    built = deps.routes.byHost(host, port, path);
    if (built === undefined) {
      return refuse(
        new DestinationNotAllowedError(`destination ${host}:${port} is not allowed: no route lists this host and port (match.hosts; a host without a port allows 80 and 443)`, {
          destination: `${host}:${port}`,
        }),
      );
    }
  } else {
    const match = deps.routes.byPrefix(raw.url ?? '/');
    if (match === undefined) {
      return refuse(
        new NoRouteError(`no route matches path ${redactPath(raw.url ?? '/').split('?')[0]}; routes are matched by match.pathPrefix`),
      );
    }
    built = match.route;
    path = match.path;
  }
  const route = built.config;

  // --- per-call context ---
  const { headers, control } = splitRequestHeaders(raw.headers);
  headers['x-request-id'] = requestId;
  const controller = new AbortController();
  const totalMs = route.timeouts.totalMs;
  const deadlineTimer =
    totalMs > 0
      ? setTimeout(
          () => controller.abort(new UpstreamTimeoutError(`the call took longer than ${totalMs} ms (timeouts.totalMs)`, { phase: 'total' })),
          totalMs,
        )
      : undefined;
  // The agent going away aborts the upstream call: nobody would read the answer (and an LLM would bill it).
  const onClientGone = () => {
    if (!res.writableFinished) controller.abort(new ClientClosedError('the client closed the connection'));
  };
  res.once('close', onClientGone);

  const ctx = new Context(requestId, route, deps.config.agent.id, control.workflow, started, started + (totalMs || 1e12), controller.signal, deps.logger);
  if (control.fault !== undefined) ctx.facts.faultHeader = control.fault;

  const m = deps.metrics;
  const inflight = m.inflight.labels(route.name);
  inflight.inc();
  deps.state.inflight += 1;
  deps.pending.begin();

  let status: number | undefined;
  let outcome: Outcome;
  let end: BodyEnd | undefined;
  let bytesIn = 0;
  let errCode: string | undefined;
  try {
    const body = await readRequestBody(raw, { maxBytes: deps.config.limits.maxRequestBodyBytes, bufferBytes: route.retry.bufferBytes });
    if (body.kind === 'buffered') {
      bytesIn = body.bytes.length;
      // Layers may rewrite a buffered body (model rewrite, stream usage); undici sets the length of what is sent.
      delete headers['content-length'];
    }
    else if (body.kind === 'stream') bytesIn = body.length ?? 0;
    const request: ProxyRequest = { method, path, headers, body };
    const answer = await built.handler(request, ctx);
    status = answer.statusCode;
    const extra: Record<string, string> = { 'x-request-id': requestId };
    if (ctx.fallbackStep !== undefined) extra['x-fusebox-fallback'] = ctx.fallbackStep;
    end = await sendResponse(res, answer, extra);
    outcome = !end.ok ? (end.failedBy === 'client' ? 'aborted' : 'stream_broken') : status >= 500 ? 'upstream_error' : 'success';
  } catch (caught) {
    const err = toProxyError(caught);
    status = err.statusCode;
    errCode = err.code;
    outcome = errorOutcome(err);
    if (err instanceof InternalError) ctx.log.error({ err: caught }, 'internal error while proxying');
    // 413 with the body unread: close, or Node would read the rest of a huge upload to reuse the socket; a staged
    // close, so the agent reads the 413 rather than a reset.
    if (err.statusCode === 413) lingeringClose(raw, res);
    sendError(res, err, { requestId, route: route.name, provider: route.provider }, err.statusCode === 413);
  } finally {
    if (deadlineTimer !== undefined) clearTimeout(deadlineTimer);
    res.off('close', onClientGone);
    inflight.dec();
    deps.state.inflight -= 1;
  }

  const seconds = Number(process.hrtime.bigint() - startedHr) / 1e9;
  m.requests.labels(route.name, methodLabel(method), codeClass(status), outcome, mode).inc();
  m.requestDuration.labels(route.name).observe(seconds);
  if (bytesIn > 0) m.requestBytes.labels(route.name).inc(bytesIn);
  if (end !== undefined && end.bytes > 0) m.responseBytes.labels(route.name).inc(end.bytes);

  const line = {
    requestId,
    route: route.name,
    agent: ctx.agent,
    workflow: ctx.workflow,
    method,
    path: redactPath(path),
    mode,
    status,
    outcome,
    code: errCode,
    attempts: ctx.attempts,
    fallback: ctx.fallbackStep,
    durationMs: Math.round(seconds * 1e6) / 1e3,
    bytesIn,
    bytesOut: end?.bytes ?? 0,
    traceparent: raw.headers.traceparent,
    ...accessFacts(ctx.facts),
  };
  if (outcome === 'success' || outcome === 'refused') deps.accessLog.info(line, 'request');
  else deps.accessLog.warn({ ...line, error: end?.error?.message }, 'request');
  deps.pending.end();
};
