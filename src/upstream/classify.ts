import type { BreakerConfig, RetryConfig } from '../config/schema.js';
import { isBeforeSend, ProxyError, UpstreamConnectError, UpstreamError, UpstreamResetError, UpstreamTimeoutError } from '../errors.js';
import type { AttemptOutcome, AttemptReason, BodyEnd, ProxyResponse, Verdict } from '../pipeline/types.js';
import { parseRetryDelay, type ResponseHeaders } from './retry-after.js';

export type { AttemptOutcome, AttemptReason, Verdict } from '../pipeline/types.js';

/**
 * The one classifier of upstream attempts (Linkerd's response classifier). A response is classified once, where it
 * arises (the upstream send attaches the verdict to it), and retry, breaker and fallback read that verdict; none of
 * them classifies a status again, so they never disagree.
 *
 * Defaults, from the status matrix:
 * | what                                   | outcome    | breaker failure | reason                |
 * |----------------------------------------|------------|-----------------|-----------------------|
 * | 1xx-3xx                                | success    | no (yes if slow)| ok / slow             |
 * | status in `retryableStatuses` (429...) | retryable  | yes             | status_429/5xx/4xx    |
 * | 500                                    | retryable (the retry layer retries it at most `maxRetriesOn500` times) | yes | status_5xx |
 * | other 5xx                              | fatal      | yes             | status_5xx            |
 * | other 4xx                              | fatal      | no: the caller's fault | status_4xx     |
 * | connect refused / unreachable          | retryable  | yes             | connect (beforeSend)  |
 * | DNS failure                            | retryable  | yes             | dns (beforeSend)      |
 * | TLS certificate rejected               | fatal      | yes             | tls (beforeSend)      |
 * | reset, EPIPE, socket error             | retryable  | yes             | reset                 |
 * | connect/headers/body timeout           | retryable  | yes             | timeout               |
 * | whole-call (`total`) timeout           | fatal      | yes             | timeout               |
 * | malformed response, other upstream error | retryable | yes            | protocol              |
 * | MCP tool failure inside a 2xx          | success    | yes             | tool_error / rpc_error|
 * | stream broken after the commit point   | fatal      | yes             | stream_broken         |
 * | client went away                       | fatal      | no, no verdict  | aborted               |
 * | a Fusebox refusal from an inner layer, | fatal      | no              | local                 |
 * | or a request body we could not send    |            |                 |                       |
 * | anything else (a bug)                  | fatal      | no              | internal              |
 *
 * `retryable` says the failure is transient; whether the request may be sent again (method, idempotency,
 * replayable body, `maxRetriesOn500`, retry budget, deadline) is the retry layer's call, and a transient failure the
 * retries did not cure is what starts the fallback chain. `beforeSend` tells it the upstream cannot have seen a byte,
 * so any method is safe.
 */

/** The route settings the classifier reads; build once per route with `classifyPolicy`. */
export interface ClassifyPolicy {
  readonly retryableStatuses: ReadonlySet<number>;
  /** A call slower than this (ms) is a breaker failure even when it succeeded; undefined: never. */
  readonly slowCallMs: number | undefined;
}

/** The classifier settings of a route (`route.retry`, `route.breaker`), made once at startup. */
export const classifyPolicy = (config: {
  retry: Pick<RetryConfig, 'retryableStatuses'>;
  breaker: Pick<BreakerConfig, 'slowCallMs'>;
}): ClassifyPolicy => ({
  retryableStatuses: new Set(config.retry.retryableStatuses),
  slowCallMs: config.breaker.slowCallMs,
});

/** Facts about one attempt that the status or error alone does not tell. */
export interface AttemptFacts {
  /** Clock time (ms), for HTTP-date Retry-After headers. */
  readonly now: number;
  /** How long the attempt took (ms), for the slow-call rule. */
  readonly durationMs?: number;
}

/** True when `durationMs` is over the slow-call threshold. The breaker uses the same rule for `permit.success(ms)`. */
export const isSlowCall = (durationMs: number | undefined, slowCallMs: number | undefined): boolean =>
  durationMs !== undefined && slowCallMs !== undefined && durationMs > slowCallMs;

const verdict = (outcome: AttemptOutcome, breakerFailure: boolean, reason: AttemptReason, beforeSend = false): Verdict => ({
  outcome,
  breakerFailure,
  reason,
  beforeSend,
});

const succeeded = (policy: ClassifyPolicy, durationMs: number | undefined): Verdict =>
  isSlowCall(durationMs, policy.slowCallMs) ? verdict('success', true, 'slow') : verdict('success', false, 'ok');

const statusReason = (status: number): AttemptReason =>
  status === 429 ? 'status_429' : status >= 500 ? 'status_5xx' : 'status_4xx';

/** Classify an attempt that got response headers. Layers read `verdictOf(res)` instead of calling this again. */
export const classifyResponse = (
  statusCode: number,
  headers: ResponseHeaders,
  policy: ClassifyPolicy,
  facts: AttemptFacts,
): Verdict => {
  if (statusCode < 400) return succeeded(policy, facts.durationMs);
  const reason = statusReason(statusCode);
  // 429 and 5xx say the upstream cannot serve; any status the operator declared retryable is treated as such too.
  const breakerFailure = statusCode >= 500 || statusCode === 429 || policy.retryableStatuses.has(statusCode);
  // A 500 is transient as far as the fallback chain is concerned, whatever the list says; how often this call may
  // retry it is `maxRetriesOn500`, counted by the retry layer.
  const retryable = statusCode === 500 || policy.retryableStatuses.has(statusCode);
  if (!retryable) return verdict('fatal', breakerFailure, reason);
  const retryAfterMs = parseRetryDelay(headers, facts.now);
  const v = verdict('retryable', breakerFailure, reason);
  return retryAfterMs === undefined ? v : { ...v, retryAfterMs };
};

/**
 * The verdict a response carries. One made without a verdict (a static or cached answer, an injected fault, a
 * test's) is classified by the first layer that asks, and keeps that verdict for every layer after it.
 */
export const verdictOf = (res: ProxyResponse, policy: ClassifyPolicy, now: number): Verdict =>
  (res.verdict ??= classifyResponse(res.statusCode, res.headers, policy, { now }));

/** What a transport error code says happened: the one table of undici and socket error codes, for send and classify. */
export type TransportKind = 'connect' | 'dns' | 'tls' | 'reset' | 'timeout' | 'protocol' | 'aborted' | 'local';

export interface TransportFailure {
  readonly kind: TransportKind;
  /** For a timeout: which phase undici timed out in; `connect` means nothing was sent. */
  readonly phase?: 'connect' | 'headers' | 'body';
}

const TRANSPORT_CODES: ReadonlyMap<string, TransportFailure> = new Map<string, TransportFailure>([
  ...['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'EHOSTDOWN', 'ENETDOWN'].map((c) => [c, { kind: 'connect' }] as const),
  ...['ENOTFOUND', 'EAI_AGAIN', 'EAI_FAIL', 'EAI_NONAME'].map((c) => [c, { kind: 'dns' }] as const),
  ...['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_DESTROYED'].map((c) => [c, { kind: 'reset' }] as const),
  ['UND_ERR_CONNECT_TIMEOUT', { kind: 'timeout', phase: 'connect' }],
  ['UND_ERR_HEADERS_TIMEOUT', { kind: 'timeout', phase: 'headers' }],
  ['UND_ERR_BODY_TIMEOUT', { kind: 'timeout', phase: 'body' }],
  ['ETIMEDOUT', { kind: 'timeout' }],
  // The upstream broke HTTP: a body shorter or longer than its content-length, headers too large, a bad 1xx.
  ...['UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'UND_ERR_HEADERS_OVERFLOW', 'UND_ERR_INFO', 'ERR_STREAM_PREMATURE_CLOSE'].map(
    (c) => [c, { kind: 'protocol' }] as const,
  ),
  ...['ABORT_ERR', 'UND_ERR_ABORTED', 'UND_ERR_ABORT'].map((c) => [c, { kind: 'aborted' }] as const),
  // Our side got the request wrong (a request body shorter than its content-length...): not the upstream's fault.
  ...['UND_ERR_REQ_CONTENT_LENGTH_MISMATCH', 'UND_ERR_INVALID_ARG', 'UND_ERR_NOT_SUPPORTED'].map((c) => [c, { kind: 'local' }] as const),
]);
// A rejected certificate does not heal on retry; it still says the upstream (or our trust config) is unusable.
const TLS_CODE = /^(?:CERT_|DEPTH_ZERO_|SELF_SIGNED_|UNABLE_TO_|ERR_TLS_|ERR_SSL_)/;

/** What one error code means, or undefined for a code not in the table. */
export const transportFailure = (code: string): TransportFailure | undefined => {
  const known = TRANSPORT_CODES.get(code);
  if (known !== undefined) return known;
  if (TLS_CODE.test(code)) return { kind: 'tls' };
  if (code.startsWith('HPE_')) return { kind: 'protocol' };
  return undefined;
};

/** `code`s of an error and its causes, outermost first (undici wraps the errno of a socket error in `cause`). */
export const codesOf = (err: unknown): string[] => {
  const codes: string[] = [];
  let e: unknown = err;
  for (let depth = 0; depth < 5 && typeof e === 'object' && e !== null; depth++) {
    const { code, errno } = e as { code?: unknown; errno?: unknown };
    if (typeof code === 'string') codes.push(code);
    // Fusebox errors keep the original code in details.errno.
    if (e instanceof ProxyError && typeof e.details.errno === 'string') codes.push(e.details.errno);
    else if (typeof errno === 'string') codes.push(errno);
    e = (e as { cause?: unknown }).cause;
  }
  return codes;
};

const fromCode = (code: string): Verdict | undefined => {
  const failure = transportFailure(code);
  switch (failure?.kind) {
    case undefined:
      return undefined;
    case 'connect':
    case 'dns':
      return verdict('retryable', true, failure.kind, true);
    case 'tls':
      return verdict('fatal', true, 'tls', true);
    case 'timeout':
      return verdict('retryable', true, 'timeout', failure.phase === 'connect');
    case 'reset':
    case 'protocol':
      return verdict('retryable', true, failure.kind);
    case 'aborted':
      return verdict('fatal', false, 'aborted');
    case 'local':
      return verdict('fatal', false, 'local');
  }
};

const isAbort = (err: unknown): boolean => {
  // send.ts answers a client that went away with Fusebox's ClientClosedError (undici has a class of the same name
  // for a closed pool, which is not an abort); a ProxyError's name is its class name.
  if (err instanceof ProxyError) return err.name === 'ClientClosedError';
  return (err as { name?: unknown } | null)?.name === 'AbortError' || codesOf(err).some((c) => transportFailure(c)?.kind === 'aborted');
};

/**
 * Classify an attempt that ended in an error instead of response headers: a Fusebox `ProxyError`
 * (as `mapUpstreamError` makes them) or a raw undici / socket error.
 */
export const classifyError = (err: unknown): Verdict => {
  if (err instanceof UpstreamTimeoutError) {
    const phase = err.details.phase;
    // The call's whole deadline passed: no time is left for another attempt.
    if (phase === 'total') return verdict('fatal', true, 'timeout');
    return verdict('retryable', true, 'timeout', isBeforeSend(err));
  }
  if (err instanceof UpstreamConnectError || err instanceof UpstreamResetError || err instanceof UpstreamError) {
    for (const code of codesOf(err)) {
      const v = fromCode(code);
      if (v !== undefined && v.reason !== 'aborted') {
        // The Fusebox class is the authority on whether anything was sent; the code only refines the reason.
        return { ...v, beforeSend: isBeforeSend(err) };
      }
    }
    if (err instanceof UpstreamConnectError) return verdict('retryable', true, 'connect', true);
    if (err instanceof UpstreamResetError) return verdict('retryable', true, 'reset');
    return verdict('retryable', true, 'protocol');
  }
  if (isAbort(err)) return verdict('fatal', false, 'aborted');
  // The timeout of AbortSignal.timeout(): a deadline we set on the attempt.
  if ((err as { name?: unknown } | null)?.name === 'TimeoutError') return verdict('retryable', true, 'timeout');
  if (err instanceof ProxyError) return verdict('fatal', false, 'local');
  for (const code of codesOf(err)) {
    const v = fromCode(code);
    if (v !== undefined) return v;
  }
  // Unknown: most likely a bug of ours. Not retried (it would fail again) and not held against the upstream.
  return verdict('fatal', false, 'internal');
};

/**
 * Classify how a response body ended after the commit point (headers already sent to the client), for the breaker
 * and metrics; retries are over by then, so a failure is `fatal`.
 * Returns undefined for a discarded body: that attempt was classified when a retry or fallback replaced it.
 * @param clientAborted the client went away; no verdict on the upstream (the caller should `permit.release()`).
 */
export const classifyBodyEnd = (
  end: BodyEnd,
  policy: ClassifyPolicy,
  facts: AttemptFacts & { readonly clientAborted?: boolean },
): Verdict | undefined => {
  if (end.discarded === true) return undefined;
  if (end.ok) return succeeded(policy, facts.durationMs);
  if (facts.clientAborted === true || (end.error !== undefined && isAbort(end.error))) return verdict('fatal', false, 'aborted');
  return verdict('fatal', true, 'stream_broken');
};

/** What a JSON-RPC (MCP) response body says about the tool call it answers. */
export type McpResult =
  /** `result` without `isError: true`. */
  | 'ok'
  /** `result.isError === true`: the tool ran and failed (MCP "tool execution error"). */
  | 'tool_error'
  /** An `error` member with a server-side code (-32603 internal, -32000..-32099 server errors, anything else). */
  | 'rpc_error'
  /** An `error` member the caller caused: -32700 parse error, -32600 invalid request, -32601 method not found, -32602 invalid params. */
  | 'caller_error'
  /** Not a JSON-RPC response (not JSON, a notification, an empty SSE stream...). */
  | 'unknown';

// Like a 4xx: the agent sent something wrong, the tool is not broken.
const CALLER_RPC_CODES = new Set([-32700, -32600, -32601, -32602]);

const resultOf = (msg: unknown): McpResult => {
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) return 'unknown';
  const m = msg as { error?: unknown; result?: unknown };
  if (m.error !== undefined && m.error !== null) {
    const code = (m.error as { code?: unknown }).code;
    return typeof code === 'number' && CALLER_RPC_CODES.has(code) ? 'caller_error' : 'rpc_error';
  }
  if (m.result === undefined) return 'unknown';
  return (m.result as { isError?: unknown } | null)?.isError === true ? 'tool_error' : 'ok';
};

const SEVERITY: readonly McpResult[] = ['unknown', 'ok', 'caller_error', 'tool_error', 'rpc_error'];
const worst = (a: McpResult, b: McpResult): McpResult => (SEVERITY.indexOf(b) > SEVERITY.indexOf(a) ? b : a);

const parseJson = (text: string): unknown => {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
};

/** JSON-RPC messages in a body: one object, a batch (array), or the `data:` events of an SSE stream (Streamable HTTP). */
const messagesOf = (text: string): unknown[] => {
  const trimmed = text.trimStart();
  if (trimmed.startsWith('{') || trimmed.startsWith('[')) {
    const parsed = parseJson(trimmed);
    return Array.isArray(parsed) ? parsed : [parsed];
  }
  const out: unknown[] = [];
  for (const event of text.split(/\r\n\r\n|\n\n|\r\r/)) {
    const data = event
      .split(/\r\n|\n|\r/)
      .filter((line) => line.startsWith('data:'))
      .map((line) => line.slice(line.startsWith('data: ') ? 6 : 5));
    if (data.length > 0) out.push(parseJson(data.join('\n')));
  }
  return out;
};

/**
 * Read a buffered MCP (JSON-RPC 2.0) response, plain JSON or SSE, and say whether the tool call failed.
 * Per-tool breakers need this because MCP reports tool failures inside an HTTP 200. For a batch or a stream with
 * several responses, the worst one wins.
 */
export const mcpResult = (body: Buffer | string): McpResult => {
  const text = typeof body === 'string' ? body : body.toString('utf8');
  return messagesOf(text).map(resultOf).reduce(worst, 'unknown');
};

/** True when the MCP response reports a tool failure the tool is to blame for (`tool_error` or `rpc_error`). */
export const isMcpToolFailure = (body: Buffer | string): boolean => {
  const r = mcpResult(body);
  return r === 'tool_error' || r === 'rpc_error';
};

/**
 * Classify a 2xx MCP answer by its body: a tool failure is a breaker failure for that tool's breaker, but the HTTP
 * call succeeded and is not retried (a tool call may have side effects).
 */
export const classifyMcpResponse = (body: Buffer | string, policy: ClassifyPolicy, facts: AttemptFacts): Verdict => {
  const r = mcpResult(body);
  if (r === 'tool_error' || r === 'rpc_error') return verdict('success', true, r);
  return succeeded(policy, facts.durationMs);
};
