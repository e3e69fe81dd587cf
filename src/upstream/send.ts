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
import type { PoolSet, UpstreamTarget } from './pool.js';

const CONNECT_FAILURES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EADDRNOTAVAIL',
  'CERT_HAS_EXPIRED',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);
const RESETS = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH']);

const errCode = (err: unknown): string | undefined => {
  const e = err as { code?: unknown; cause?: { code?: unknown } } | undefined;
  if (typeof e?.code === 'string' && e.code !== 'UND_ERR_SOCKET') return e.code;
  // undici wraps socket errors; the cause holds the errno (ECONNRESET...).
  if (typeof e?.cause?.code === 'string') return e.cause.code;
  return typeof e?.code === 'string' ? e.code : undefined;
};

/**
 * The one place undici and socket errors become Fusebox errors: connect failures → 502 UPSTREAM_CONNECT_FAILED
 * (nothing was sent, safe to retry any method), resets → 502 UPSTREAM_RESET, timeouts → 504 UPSTREAM_TIMEOUT
 * with the phase that timed out.
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
  if (code === 'UND_ERR_CONNECT_TIMEOUT') {
    return new UpstreamTimeoutError(`connecting to ${upstream} timed out`, { upstream, phase: 'connect' }, cause);
  }
  if (code === 'UND_ERR_HEADERS_TIMEOUT') {
    return new UpstreamTimeoutError(`${upstream} sent no response headers in time`, { upstream, phase: 'headers' }, cause);
  }
  if (code === 'UND_ERR_BODY_TIMEOUT') {
    return new UpstreamTimeoutError(`${upstream} went silent mid-body`, { upstream, phase: 'body' }, cause);
  }
  if (CONNECT_FAILURES.has(code)) {
    return new UpstreamConnectError(`cannot connect to ${upstream}: ${code}`, { upstream, errno: code }, cause);
  }
  if (RESETS.has(code)) {
    return new UpstreamResetError(`${upstream} closed the connection: ${code}`, { upstream, errno: code }, cause);
  }
  return new UpstreamError(`request to ${upstream} failed: ${code}`, { upstream, errno: code }, cause);
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

/**
 * The terminal handler: one request to one upstream, streamed both ways, never retried here.
 * Uses `dispatcher.request` (not fetch/Web Streams): the benchmark showed fetch costing milliseconds per call.
 */
export const makeSend = (target: UpstreamTarget, pools: PoolSet, hooks: SendHooks = {}): Handler => {
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
      return { statusCode: res.statusCode, headers: flattenHeaders(res.headers), body: res.body, observers: [] };
    } catch (err) {
      const mapped = mapUpstreamError(err, ctx, target.origin);
      hooks.onAttempt?.(target, mapped, ctx);
      throw mapped;
    }
  };
};
