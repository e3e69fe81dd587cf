import type { IncomingHttpHeaders } from 'node:http';
import { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import {
  ClientClosedError,
  ProxyError,
  UpstreamConnectError,
  UpstreamError,
  UpstreamResetError,
  UpstreamTimeoutError,
} from '../errors.js';
import type { CallContext, HeaderMap, ProxyRequest, ProxyResponse } from '../pipeline/types.js';
import { classifyResponse, codesOf, transportFailure, type ClassifyPolicy } from './classify.js';
import { undiciErrors, type PoolSet, type UpstreamTarget } from './pool.js';

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

const flattenHeaders = (h: IncomingHttpHeaders): HeaderMap => {
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

/** What every attempt to one upstream shares, made once per upstream. */
interface SendSetup {
  readonly target: UpstreamTarget;
  readonly classifier: SendClassifier;
  readonly hooks: SendHooks;
}

/** undici's body size: a chunk of a fast upstream never waits on a smaller buffer. Shared: Readable only reads it. */
const BODY_OPTIONS = { highWaterMark: 64 * 1024 };

/**
 * One upstream attempt, as one object: undici's dispatch handler, the abort listener on the call's signal (as
 * `handleEvent`) and the response body the pipeline reads. undici's `request()` makes each of these separately per
 * call (a handler with its async resource, a promise callback, an abort-listener closure and its disposer, a body
 * stream with its own bookkeeping); this is the same contract in one allocation (bench/README.md, issue 15).
 *
 * Hazards it keeps, as undici's request does: an error is never emitted before anyone can hear it (the pipeline
 * attaches its listeners a few promise hops after the headers: an unheard `'error'` crashes the process), a body
 * destroyed early aborts the upstream request (its socket must not come back to the pool mid-answer), and the agent
 * going away aborts the attempt in every phase, queued, waiting for headers or streaming.
 */
class UpstreamExchange extends Readable implements Dispatcher.DispatchHandler {
  readonly answered: Promise<ProxyResponse>;
  private resolveAnswer!: (res: ProxyResponse) => void;
  private rejectAnswer!: (err: ProxyError) => void;
  private controller: Dispatcher.DispatchController | null = null;
  /** The call was aborted before undici started the request: it is aborted as soon as it starts. */
  private abortedEarly: Error | null = null;
  /** The response headers arrived: from now on failures reach the pipeline through this body. */
  private started = false;
  /** undici is done with this request (ended, failed or aborted): nothing more may be asked of the controller. */
  private settled = false;
  private rejected = false;
  private signal: AbortSignal | null;

  constructor(
    private readonly setup: SendSetup,
    private readonly ctx: CallContext,
    private readonly requestBody: Readable | null,
  ) {
    super(BODY_OPTIONS);
    this.answered = new Promise<ProxyResponse>((resolve, reject) => {
      this.resolveAnswer = resolve;
      this.rejectAnswer = reject;
    });
    const signal = ctx.signal;
    if (signal.aborted) {
      this.signal = null;
      this.abortedEarly = abortReason(signal);
    } else {
      this.signal = signal;
      signal.addEventListener('abort', this);
    }
  }

  /** The call's signal fired: the agent went away, or the deadline passed. */
  handleEvent(): void {
    const reason = abortReason(this.ctx.signal);
    this.stopListening();
    if (this.started) this.destroy(reason);
    else if (this.controller !== null) this.controller.abort(reason);
    else {
      // Still queued for a connection (or connecting): answered now, so a deadline or an agent gone is not kept
      // waiting for other calls to free a connection; undici drops the request unsent when its turn comes.
      this.abortedEarly = reason;
      this.releaseRequestBody(reason);
      this.reject(reason);
    }
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.abortedEarly !== null) controller.abort(this.abortedEarly);
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    if (statusCode < 200) return; // 1xx: informational, the answer follows.
    const { target, classifier, hooks } = this.setup;
    hooks.onAttempt?.(target, statusCode, this.ctx);
    const flat = flattenHeaders(headers);
    // Classified here, once, where the answer arises; every layer above reads this verdict.
    const verdict = classifyResponse(statusCode, flat, classifier.policy, { now: classifier.now() });
    // Set only now: should anything above throw, undici aborts the request and the answer is rejected instead.
    this.started = true;
    this.resolveAnswer({ statusCode, headers: flat, body: this, observers: [], verdict });
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.destroyed && !this.push(chunk)) controller.pause();
  }

  onResponseEnd(): void {
    this.settled = true;
    this.stopListening();
    if (!this.destroyed) this.push(null);
  }

  onResponseError(_controller: Dispatcher.DispatchController | null, error: Error): void {
    this.settled = true;
    this.stopListening();
    this.releaseRequestBody(error);
    if (this.started) this.destroy(error);
    else this.reject(error);
  }

  /** Nobody will read the agent's body for this attempt now: destroyed, and its own listeners hear why. */
  private releaseRequestBody(error: Error): void {
    if (this.requestBody !== null && !this.requestBody.destroyed) {
      this.requestBody.on('error', noop);
      this.requestBody.destroy(error);
    }
  }

  /** The attempt failed before its headers: the answer is the mapped error, once. */
  private reject(error: Error): void {
    if (this.rejected) return;
    this.rejected = true;
    const mapped = mapUpstreamError(error, this.ctx, this.setup.target.origin);
    this.setup.hooks.onAttempt?.(this.setup.target, mapped, this.ctx);
    this.rejectAnswer(mapped);
  }

  override _read(): void {
    this.controller?.resume();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.stopListening();
    // Destroyed before its end: the upstream request is aborted, and readers hear why (as from undici's body).
    const error = err ?? (this.readableEnded ? null : new undiciErrors.RequestAbortedError());
    if (error !== null && !this.settled) {
      this.settled = true;
      this.controller?.abort(error);
    }
    // An error before any reader listens for one would crash the process: give the pipeline's layers (a few
    // promise hops away) the rest of this turn of the event loop to attach theirs.
    if (error !== null && this.listenerCount('error') === 0) setImmediate(callback, error);
    else callback(error);
  }

  private stopListening(): void {
    if (this.signal !== null) {
      this.signal.removeEventListener('abort', this);
      this.signal = null;
    }
  }
}

const noop = (): void => {};

const abortReason = (signal: AbortSignal): Error => {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new undiciErrors.RequestAbortedError();
};

/** One attempt: the request and the headers to send (each attempt sets its own credential and `via`). */
export type SendAttempt = (req: ProxyRequest, headers: HeaderMap, ctx: CallContext) => Promise<ProxyResponse>;

/**
 * The terminal send: one request to one upstream, streamed both ways, never retried here. Each response leaves with
 * its verdict (`ProxyResponse.verdict`). Uses undici's `dispatch` with one handler object per attempt (not fetch or
 * Web Streams: the benchmark showed fetch costing milliseconds per call; not `request`: see `UpstreamExchange`).
 */
export const makeSend = (target: UpstreamTarget, pools: PoolSet, classifier: SendClassifier, hooks: SendHooks = {}): SendAttempt => {
  const pool: Dispatcher = pools.get(target);
  const setup: SendSetup = { target, classifier, hooks };
  const { headersMs, bodyIdleMs } = target.timeouts;
  return (req, headers, ctx) => {
    ctx.attempts += 1;
    const stream = req.body.kind === 'stream' ? req.body.stream : null;
    const body = req.body.kind === 'buffered' ? req.body.bytes : stream;
    const exchange = new UpstreamExchange(setup, ctx, stream);
    pool.dispatch(
      {
        method: req.method as Dispatcher.HttpMethod,
        path: upstreamPath(target.basePath, req.path),
        headers,
        body,
        headersTimeout: headersMs,
        bodyTimeout: bodyIdleMs,
        // We retry ourselves, with budgets and jitter; undici must not replay on its own.
        idempotent: false,
        blocking: true,
      },
      exchange,
    );
    return exchange.answered;
  };
};
