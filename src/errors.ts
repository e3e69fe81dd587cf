/**
 * Every answer Fusebox makes itself (as opposed to passing an upstream answer through) is a ProxyError, complete
 * when it is constructed: a code from the closed list below, the status that code always has, and the response
 * headers of the answer (retry advice included). One writer (src/http/error-answer.ts) turns it into
 * `{statusCode, error, code, message, route, requestId, ...details}` with an `x-fusebox-error: <code>` header, so an
 * agent and its SDK can tell a Fusebox refusal from an upstream answer, whatever the transport.
 *
 * This module imports nothing: every folder may use it.
 */

/** One code's row in the README's error table (test/unit/errors-readme.test.ts keeps the two equal). */
export interface ErrorSpec {
  readonly status: number;
  /** `false`: every answer with this code tells the agent's SDK not to retry on its own (`x-should-retry: false`). */
  readonly sdkRetry?: false;
  /** When Fusebox answers with this code, in the README's words (markdown). */
  readonly when: string;
}

const SPECS = {
  NO_ROUTE: { status: 404, when: 'origin-form path matches no `match.pathPrefix`' },
  DESTINATION_NOT_ALLOWED: { status: 403, when: 'proxy request or CONNECT to a host/port no route lists' },
  PROXY_LOOP: { status: 403, when: "target is Fusebox's own port, or the request already passed this instance (`Via`)" },
  MISDIRECTED_REQUEST: { status: 421, when: "a request inside an intercepted tunnel names another `Host` than the tunnel's" },
  BODY_TOO_LARGE: { status: 413, when: 'request body over `limits.maxRequestBodyBytes` (on the admin API: over 1 MiB)' },
  HEADERS_TOO_LARGE: { status: 431, when: 'header section over `limits.maxHeaderBytes`' },
  CREDENTIAL_MISSING: { status: 503, when: "the route's `credential.env` variable is not set in the sidecar" },
  UPSTREAM_CONNECT_FAILED: { status: 502, when: 'connection refused, DNS failure, TLS verification failure (nothing was sent)' },
  UPSTREAM_RESET: { status: 502, when: 'the upstream closed the connection before answering' },
  UPSTREAM_TIMEOUT: { status: 504, when: '`phase`: `connect`, `headers`, `body` or `total` timed out (a TCP `ETIMEDOUT` has no phase)' },
  SHUTTING_DOWN: { status: 503, when: 'the sidecar is draining' },
  CIRCUIT_OPEN: {
    status: 503,
    sdkRetry: false,
    when: 'the breaker is open and the route has no fallback chain (`Retry-After` unless forced open, `x-fusebox-breaker`, `x-should-retry: false`)',
  },
  FALLBACK_EXHAUSTED: { status: 502, sdkRetry: false, when: 'every fallback step failed; the body lists each attempt (`x-should-retry: false`)' },
  BUDGET_EXCEEDED: {
    status: 402,
    sdkRetry: false,
    when: 'a USD or token cap would be passed: refused before the call is sent (`x-should-retry: false`, `Retry-After` when the window resets within the hour)',
  },
  CALL_LIMIT: { status: 402, sdkRetry: false, when: 'a call cap (`maxCalls`) is reached: refused before the call is sent (`x-should-retry: false`)' },
  KILLED: { status: 402, sdkRetry: false, when: 'the kill switch stopped the agent, the workflow or everything (`x-should-retry: false`)' },
  BUDGET_STORE_UNAVAILABLE: { status: 503, when: 'the shared store is down and the route says `storeUnavailable: closed`' },
  SLO_BUDGET_EXHAUSTED: { status: 503, sdkRetry: false, when: "the route's error budget is spent and its SLO action is `shed` (`x-should-retry: false`)" },
  SLO_THROTTLED: { status: 429, when: "the route's SLO action is `throttle` and the call is over `throttleRps` (`Retry-After`)" },
  BAD_REQUEST: { status: 400, when: 'a malformed request Fusebox must read (a non-numeric `content-length`, a bad admin call body)' },
  UPSTREAM_ERROR: {
    status: 502,
    when: 'the upstream broke HTTP (a body that does not match its length, a malformed answer) or failed in a way none of the codes above names',
  },
  CLIENT_CLOSED: { status: 499, when: 'the agent went away before the answer (logged and counted; nobody reads the body)' },
  UNAUTHORIZED: { status: 401, when: 'admin call that changes state without the right bearer token (`WWW-Authenticate: Bearer`)' },
  ADMIN_DISABLED: {
    status: 403,
    when: 'admin call that changes state while the variable `listen.admin.tokenEnv` names (default `FUSEBOX_ADMIN_TOKEN`) is unset or empty',
  },
  NOT_FOUND: { status: 404, when: 'admin API: no such endpoint, route or breaker (a breaker exists once a call used it), or no pod CA' },
  INTERNAL: { status: 500, when: 'Fusebox itself failed: a bug (on a proxied call, logged with its cause)' },
} as const satisfies Record<string, ErrorSpec>;

/** Every code Fusebox answers with: stable, SCREAMING_SNAKE, part of the API (`code` and `x-fusebox-error`). */
export type ErrorCode = keyof typeof SPECS;

/** The codes, in the README table's order, with their status, SDK retry advice and when they are used. */
export const ERROR_CODES: Readonly<Record<ErrorCode, ErrorSpec>> = SPECS;

/** Response header naming the state of the breaker that answered, when it no longer admits every call. */
export const BREAKER_HEADER = 'x-fusebox-breaker';

/** What the answer tells the agent (and its SDK) about trying again. */
export interface RetryAdvice {
  /** Wait (ms) after which another call may succeed: `Retry-After`, in whole seconds, at least 1. */
  readonly afterMs?: number;
  /** `false`: the agent's SDK should not retry on its own (`x-should-retry: false`, obeyed by the OpenAI and Anthropic SDKs). */
  readonly sdkRetry?: boolean;
}

export interface ProxyErrorOptions extends ErrorOptions {
  /** Added to the code's own advice (`sdkRetry` from the table). */
  readonly retry?: RetryAdvice;
  /** Other headers of the answer (`www-authenticate`, `x-fusebox-breaker`). */
  readonly headers?: Readonly<Record<string, string>>;
}

const adviceHeaders = (advice: RetryAdvice): Record<string, string> => ({
  ...(advice.afterMs !== undefined ? { 'retry-after': String(Math.max(1, Math.ceil(advice.afterMs / 1000))) } : {}),
  ...(advice.sdkRetry !== undefined ? { 'x-should-retry': String(advice.sdkRetry) } : {}),
});

export abstract class ProxyError<C extends ErrorCode = ErrorCode> extends Error {
  /** The code's status, from the table: a code never answers with two statuses. */
  readonly statusCode: number;
  readonly retry: RetryAdvice;
  /** Headers of the answer besides those every error answer has (content type, `x-fusebox-error`...). Frozen. */
  readonly headers: Readonly<Record<string, string>>;

  constructor(
    readonly code: C,
    message: string,
    /** Facts for the answer's body. Never secrets: they are built from config names and request facts. */
    readonly details: Record<string, unknown> = {},
    options: ProxyErrorOptions = {},
  ) {
    const { retry, headers, ...errorOptions } = options;
    super(message, errorOptions);
    this.name = new.target.name;
    const spec: ErrorSpec = ERROR_CODES[code];
    this.statusCode = spec.status;
    this.retry = { ...(spec.sdkRetry !== undefined ? { sdkRetry: spec.sdkRetry } : {}), ...retry };
    this.headers = Object.freeze({ ...adviceHeaders(this.retry), ...headers });
  }

  /**
   * This error with more answer headers: a copy, never a change, since whoever threw it may still hold it. The
   * breaker layer uses it to say that the failing attempt opened the breaker.
   */
  withHeaders(headers: Readonly<Record<string, string>>): this {
    return Object.create(Object.getPrototypeOf(this) as object, {
      ...Object.getOwnPropertyDescriptors(this),
      // Node's `stack` is an accessor bound to the original error: copy its text.
      stack: { value: this.stack, writable: true, configurable: true },
      headers: { value: Object.freeze({ ...this.headers, ...headers }), enumerable: true },
    }) as this;
  }
}

/** The class of one code, as fastify's `createError` makes them: `new NoRouteError(message, details?, options?)`. */
const make = <C extends ErrorCode>(code: C) =>
  class extends ProxyError<C> {
    constructor(message: string, details?: Record<string, unknown>, options?: ProxyErrorOptions) {
      super(code, message, details, options);
    }
  };

export class NoRouteError extends make('NO_ROUTE') {}
export class DestinationNotAllowedError extends make('DESTINATION_NOT_ALLOWED') {}
export class ProxyLoopError extends make('PROXY_LOOP') {}
/** A request inside an intercepted tunnel names another host than the tunnel (RFC 9110 §15.5.20). */
export class MisdirectedRequestError extends make('MISDIRECTED_REQUEST') {}
export class BodyTooLargeError extends make('BODY_TOO_LARGE') {}
export class HeadersTooLargeError extends make('HEADERS_TOO_LARGE') {}
export class BadRequestError extends make('BAD_REQUEST') {}
export class UpstreamConnectError extends make('UPSTREAM_CONNECT_FAILED') {}
export class UpstreamResetError extends make('UPSTREAM_RESET') {}
export class UpstreamTimeoutError extends make('UPSTREAM_TIMEOUT') {}
export class UpstreamError extends make('UPSTREAM_ERROR') {}
export class CredentialMissingError extends make('CREDENTIAL_MISSING') {}
/** The agent went away before the answer; nobody reads this, but metrics and logs need a name for it. */
export class ClientClosedError extends make('CLIENT_CLOSED') {}
export class ShuttingDownError extends make('SHUTTING_DOWN') {}
export class UnauthorizedError extends make('UNAUTHORIZED') {}
export class AdminDisabledError extends make('ADMIN_DISABLED') {}
export class NotFoundError extends make('NOT_FOUND') {}
export class InternalError extends make('INTERNAL') {}
/** The primary failed and so did every fallback step; `details.attempts` lists what each one did. */
export class FallbackExhaustedError extends make('FALLBACK_EXHAUSTED') {}
/** The shared budget store cannot be reached and the route says `storeUnavailable: closed`. */
export class StoreUnavailableError extends make('BUDGET_STORE_UNAVAILABLE') {}
/**
 * The route's error budget is spent (or it burns too fast) and its SLO action is `shed`: fail fast instead of
 * adding load to a failing upstream.
 */
export class SloBudgetExhaustedError extends make('SLO_BUDGET_EXHAUSTED') {}

/** The route's SLO action is `throttle` and this second's share of calls is used up. */
export class SloThrottledError extends ProxyError<'SLO_THROTTLED'> {
  constructor(message: string, retryAfterSeconds: number, details: Record<string, unknown> = {}) {
    super('SLO_THROTTLED', message, { ...details, retryAfterSeconds }, { retry: { afterMs: retryAfterSeconds * 1000 } });
  }
}

/** The codes of a budget refusal: a cap, a call cap, the kill switch. */
export type BudgetRefusalCode = Extract<ErrorCode, 'BUDGET_EXCEEDED' | 'CALL_LIMIT' | 'KILLED'>;

/** A budget refusal: 402 (not 429, which every SDK retries), never retried by the agent's SDK. */
export class BudgetRefusedError extends ProxyError<BudgetRefusalCode> {}

/** What refused the call: the breaker's key and state, and how long until it lets a probe through. */
export interface CircuitOpenDetails {
  readonly breaker?: string;
  readonly state?: 'open' | 'half_open' | 'forced_open';
  /** Until the breaker admits a probe; none when an operator forced it open (nothing will probe). */
  readonly retryAfterMs?: number;
  readonly [fact: string]: unknown;
}

/**
 * The route's (or its MCP tool's, model's...) circuit breaker is open and there is no fallback to take: answered at
 * once, no upstream socket. Its headers follow from the details: `Retry-After` from `retryAfterMs`, `x-fusebox-breaker`
 * from `state`.
 */
export class CircuitOpenError extends ProxyError<'CIRCUIT_OPEN'> {
  declare readonly details: CircuitOpenDetails;
  constructor(message: string, details: CircuitOpenDetails = {}, options: ProxyErrorOptions = {}) {
    super('CIRCUIT_OPEN', message, details, {
      ...options,
      retry: { ...(details.retryAfterMs !== undefined ? { afterMs: details.retryAfterMs } : {}), ...options.retry },
      headers: { ...(details.state !== undefined ? { [BREAKER_HEADER]: details.state } : {}), ...options.headers },
    });
  }

  /** An operator forced the breaker open (admin API): Fusebox's own decision, not an upstream that is failing. */
  get forced(): boolean {
    return this.details.state === 'forced_open';
  }
}

/** Did the failure happen before any request byte could have reached the upstream? (Safe to retry any method.) */
export const isBeforeSend = (err: unknown): boolean =>
  err instanceof UpstreamConnectError ||
  (err instanceof UpstreamTimeoutError && err.details.phase === 'connect');
