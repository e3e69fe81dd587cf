import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import { ClientClosedError, DestinationNotAllowedError, NoRouteError, ProxyLoopError, ShuttingDownError, type ProxyError } from '../errors.js';
import { isLocalHost, normalizeHost, urlPort } from '../net/address.js';
import type { BuiltRoute } from '../pipeline/build.js';
import { Call } from '../pipeline/context.js';
import type { CallMode, ProxyRequest } from '../pipeline/types.js';
import { callChannels, type CallAnswerMessage, type CallErrorMessage, type CallStartMessage } from '../telemetry/channels.js';
import type { LiveStats } from '../telemetry/live.js';
import type { Metrics } from '../telemetry/metrics.js';
import { toProxyError } from '../telemetry/observe.js';
import { redactPath } from '../telemetry/redact.js';
import { sendError } from './error-answer.js';
import { splitRequestHeaders } from './headers.js';
import { lingeringClose } from './lingering-close.js';
import { newRequestId } from './request-id.js';
import { sendResponse } from './respond.js';
import type { RouteTable } from './route-table.js';

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
  /** Ports of this instance, to refuse proxy requests aimed back at Fusebox. */
  ownPorts: Set<number>;
}

export interface ProxyDeps {
  config: Config;
  routes: RouteTable<BuiltRoute>;
  metrics: Metrics;
  /** The recent-refusals ring of `/admin/status`. */
  live: Pick<LiveStats, 'refused'>;
  logger: Logger;
  now: () => number;
  state: ProxyState;
  via: string;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * Answer a call refused before it reached a route's pipeline: counted, shown on the status page, logged. A function
 * of its own, not a closure in the handler: most calls are never refused and should not make one.
 */
const refuse = (raw: ForwardRequest, res: ServerResponse, deps: ProxyDeps, requestId: string, err: ProxyError, closeConnection = false): void => {
  const forward = raw[FORWARD_TARGET]?.url;
  const mode: CallMode = raw[FORWARD_TARGET]?.mode ?? 'base-url';
  const method = raw.method ?? 'GET';
  deps.metrics.refusals.labels(err.code).inc();
  deps.live.refused({ code: err.code, status: err.statusCode, route: undefined, message: err.message, requestId, mode });
  sendError(res, err, { requestId }, closeConnection);
  deps.logger.info(
    { requestId, method, target: forward ? `${forward.host}${redactPath(forward.pathname)}` : redactPath(raw.url ?? ''), status: err.statusCode, code: err.code },
    'request refused',
  );
};

/**
 * The HTTP adapter for one proxied call, in any mode: base-URL (origin-form, matched by path prefix), HTTP_PROXY
 * (absolute-form, matched by host and port) or inside an intercepted tunnel. It refuses what no route allows, turns
 * the socket into a call (context, headers, the agent going away), runs the route's pipeline (src/pipeline/build.ts:
 * every policy, the metrics and the access line are layers there) and writes the answer or the error. It writes the
 * answer itself because the response must stream with backpressure past the layers' body observers.
 */
export const handleProxyRequest = async (raw: ForwardRequest, res: ServerResponse, deps: ProxyDeps): Promise<void> => {
  const incomingId = raw.headers['x-request-id'];
  const requestId = typeof incomingId === 'string' && REQUEST_ID.test(incomingId) ? incomingId : newRequestId();
  const forward = raw[FORWARD_TARGET]?.url;
  const mode: CallMode = raw[FORWARD_TARGET]?.mode ?? 'base-url';
  const method = raw.method ?? 'GET';

  if (!deps.state.accepting) return refuse(raw, res, deps, requestId, new ShuttingDownError('Fusebox is shutting down; retry on the new instance'), true);
  const via = raw.headers.via;
  if (via !== undefined && (Array.isArray(via) ? via.join(',') : via).includes(deps.via)) {
    return refuse(raw, res, deps, requestId, new ProxyLoopError('this request already passed through this Fusebox (Via header): a route points back at Fusebox'));
  }

  // --- route: the allow-list decides, nothing else reaches a socket ---
  let built: BuiltRoute | undefined;
  let path: string;
  if (forward !== undefined) {
    const port = urlPort(forward);
    // WHATWG parsing already lower-cased the name and spelled IPv4 out (127.1 → 127.0.0.1); only an IPv6 literal
    // (an IPv4-mapped one reaches the IPv4 address) or a trailing dot needs the rest of the normalization.
    const h = forward.hostname;
    const host = h.startsWith('[') || h.endsWith('.') ? (normalizeHost(h) ?? h) : h;
    if (isLocalHost(host) && deps.state.ownPorts.has(port)) {
      return refuse(raw, res, deps, requestId, new ProxyLoopError(`refusing to proxy to Fusebox's own port ${port}`));
    }
    path = forward.pathname + forward.search;
    built = deps.routes.byHost(host, port, path);
    if (built === undefined) {
      return refuse(
        raw,
        res,
        deps,
        requestId,
        new DestinationNotAllowedError(`destination ${host}:${port} is not allowed: no route lists this host and port (match.hosts; a host without a port allows 80 and 443)`, {
          destination: `${host}:${port}`,
        }),
      );
    }
  } else {
    const match = deps.routes.byPrefix(raw.url ?? '/');
    if (match === undefined) {
      return refuse(
        raw,
        res,
        deps,
        requestId,
        new NoRouteError(`no route matches path ${redactPath(raw.url ?? '/').split('?')[0]}; routes are matched by match.pathPrefix`),
      );
    }
    built = match.route;
    path = match.path;
  }
  const route = built.config;

  // --- the socket, as a call ---
  const { headers, control } = splitRequestHeaders(raw.headers);
  headers['x-request-id'] = requestId;
  const ctx = new Call({ requestId, route, agent: deps.config.agent.id, workflow: control.workflow, mode, startedAt: deps.now(), faultHeader: control.fault, log: deps.logger });
  // The agent going away aborts the upstream call: nobody would read the answer (and an LLM would bill it).
  const onClientGone = () => {
    if (!res.writableFinished) ctx.abort(new ClientClosedError('the client closed the connection'));
  };
  // `on`, not `once`: removed in `finally` either way, and `once` wraps the listener per call.
  res.on('close', onClientGone);
  const request: ProxyRequest = { method, path, headers, body: { kind: 'unread', source: raw } };
  if (callChannels.start.hasSubscribers) callChannels.start.publish({ call: ctx, request } satisfies CallStartMessage);
  try {
    const answer = await built.handler(request, ctx);
    if (callChannels.answer.hasSubscribers) callChannels.answer.publish({ call: ctx, response: answer } satisfies CallAnswerMessage);
    await sendResponse(res, answer, requestId, ctx.fallbackStep);
  } catch (caught) {
    // The observer (outermost layer) has counted and logged it and made it a ProxyError.
    const err = toProxyError(caught);
    if (callChannels.error.hasSubscribers) callChannels.error.publish({ call: ctx, error: err } satisfies CallErrorMessage);
    // 413 with the body unread: close, or Node would read the rest of a huge upload to reuse the socket; a staged
    // close, so the agent reads the 413 rather than a reset.
    if (err.statusCode === 413) lingeringClose(raw, res);
    sendError(res, err, { requestId, route: route.name, provider: route.provider }, err.statusCode === 413);
  } finally {
    res.off('close', onClientGone);
  }
};
