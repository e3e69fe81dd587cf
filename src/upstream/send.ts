import type { Dispatcher } from 'undici';
import {
  ClientClosedError,
  ProxyError,
  UpstreamConnectError,
  UpstreamError,
  UpstreamResetError,
  UpstreamTimeoutError,
} from '../errors.js';
import type { CallContext, Handler, HeaderMap } from '../pipeline/types.js';
import { classifyResponse, codesOf, transportFailure, type ClassifyPolicy } from './classify.js';
import type { PoolSet, UpstreamTarget } from './pool.js';

/**
 * The code an error is named by: the first one the transport table knows, preferring undici's wrapped errno
 * (ECONNRESET...) over its generic UND_ERR_SOCKET.
 */
const errCode = (err: unknown): string | undefined => {
  const codes = codesOf(err);
  const known = codes.filter((c) => transportFailure(c) !== undefined);
  return known.find((c) => c !== 'UND_ERR_SOCKET') ?? known[0] ?? codes[0];
};

/**
 * The one place undici and socket errors become Fusebox errors, by the transport table of upstream/classify.ts (so
 * the answer's code and the classifier's verdict always agree): connect, DNS and TLS failures → 502
 * UPSTREAM_CONNECT_FAILED (nothing was sent, safe to retry any method), resets → 502 UPSTREAM_RESET, timeouts → 504
 * UPSTREAM_TIMEOUT with the phase that timed out, anything else (a malformed response...) → 502 UPSTREAM_ERROR.
 */
export const mapUpstreamError = (err: unknown, ctx: Pick<CallContext, 'signal'>, upstream: string): ProxyError => {
  if (err instanceof ProxyError) return err;
  if (ctx.signal.aborted) {
    const reason: unknown = ctx.signal.reason;
    if (reason instanceof ProxyError) return reason;
    return new ClientClosedError('the client closed the connection before the upstream answered', { upstream });
  }
  const code = errCode(err) ?? 'UNKNOWN';
  const cause = { cause: err };
  const failure = transportFailure(code);
  switch (failure?.kind) {
    case 'timeout': {
      const { phase } = failure;
      const message =
        phase === 'connect'
          ? `connecting to ${upstream} timed out`
          : phase === 'headers'
            ? `${upstream} sent no response headers in time`
            : phase === 'body'
              ? `${upstream} went silent mid-body`
              : `${upstream} timed out: ${code}`;
      return new UpstreamTimeoutError(message, { upstream, ...(phase !== undefined ? { phase } : { errno: code }) }, cause);
    }
    case 'connect':
    case 'dns':
    case 'tls':
      return new UpstreamConnectError(`cannot connect to ${upstream}: ${code}`, { upstream, errno: code }, cause);
    case 'reset':
      return new UpstreamResetError(`${upstream} closed the connection: ${code}`, { upstream, errno: code }, cause);
    default:
      return new UpstreamError(`request to ${upstream} failed: ${code}`, { upstream, errno: code }, cause);
  }
};

const flattenHeaders = (h: Record<string, string | string[] | undefined>): HeaderMap => {
  const out: HeaderMap = {};
  for (const k in h) {
    const v = h[k];
    if (v !== undefined && !RESPONSE_HOP_BY_HOP.has(k)) out[k] = v;
  }
  return out;
};

/** Response headers that describe this hop's connection, not the message (RFC 9110 §7.6.1). */
const RESPONSE_HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'trailer', 'proxy-authenticate']);

export interface SendHooks {
  /** Called once per upstream attempt, with its outcome (a status, or the error's code). */
  onAttempt?(target: UpstreamTarget, result: number | ProxyError, ctx: CallContext): void;
}

/** Base path + the rest of the agent's path; an empty rest reaches the base path itself (`/mcp`, not `/mcp/`). */
const upstreamPath = (basePath: string, rest: string): string => {
  const path = basePath + rest;
  return path === '' || path.charCodeAt(0) !== 47 /* / */ ? `/${path}` : path;
};

/** How the send classifies the answers it gets: the route's classifier settings and the clock (Retry-After dates). */
export interface SendClassifier {
  readonly policy: ClassifyPolicy;
  readonly now: () => number;
}

/**
 * The terminal handler: one request to one upstream, streamed both ways, never retried here. Each response leaves
 * with its verdict (`ProxyResponse.verdict`).
 * Uses `dispatcher.request` (not fetch/Web Streams): the benchmark showed fetch costing milliseconds per call.
 */
export const makeSend = (target: UpstreamTarget, pools: PoolSet, classifier: SendClassifier, hooks: SendHooks = {}): Handler => {
  const pool: Dispatcher = pools.get(target);
  const timeouts = target.timeouts;
  return async (req, ctx) => {
    ctx.attempts += 1;
    let body: Dispatcher.DispatchOptions['body'] = null;
    if (req.body.kind === 'buffered') body = req.body.bytes;
    else if (req.body.kind === 'stream') body = req.body.stream;
    try {
      const res = await pool.request({
        method: req.method as Dispatcher.HttpMethod,
        path: upstreamPath(target.basePath, req.path),
        headers: req.headers,
        body,
        signal: ctx.signal,
        headersTimeout: timeouts.headersMs,
        bodyTimeout: timeouts.bodyIdleMs,
        // We retry ourselves, with budgets and jitter; undici must not replay on its own.
        idempotent: false,
        blocking: true,
      });
      hooks.onAttempt?.(target, res.statusCode, ctx);
      const headers = flattenHeaders(res.headers);
      // Classified here, once, where the answer arises; every layer above reads this verdict.
      const verdict = classifyResponse(res.statusCode, headers, classifier.policy, { now: classifier.now() });
      return { statusCode: res.statusCode, headers, body: res.body, observers: [], verdict };
    } catch (err) {
      const mapped = mapUpstreamError(err, ctx, target.origin);
      hooks.onAttempt?.(target, mapped, ctx);
      throw mapped;
    }
  };
};
