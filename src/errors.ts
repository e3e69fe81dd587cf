/**
 * Every answer Fusebox makes itself (as opposed to passing an upstream answer through) is a ProxyError.
 * The HTTP layer turns it into `{statusCode, error, code, message, route, requestId, ...details}` with an
 * `x-fusebox-error: <code>` header, so an agent and its SDK can tell a Fusebox refusal from an upstream answer.
 */
export abstract class ProxyError extends Error {
  /** Stable, SCREAMING_SNAKE; part of the API. */
  abstract readonly code: string;
  abstract readonly statusCode: number;
  /** Extra headers for the refusal (Retry-After, x-should-retry...). */
  headers: Record<string, string> = {};

  constructor(
    message: string,
    readonly details: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

const make = (code: string, statusCode: number) =>
  class extends ProxyError {
    readonly code = code;
    readonly statusCode = statusCode;
  };

export class NoRouteError extends make('NO_ROUTE', 404) {}
export class DestinationNotAllowedError extends make('DESTINATION_NOT_ALLOWED', 403) {}
export class ProxyLoopError extends make('PROXY_LOOP', 403) {}
/** A request inside an intercepted tunnel names another host than the tunnel (RFC 9110 §15.5.20). */
export class MisdirectedRequestError extends make('MISDIRECTED_REQUEST', 421) {}
export class BodyTooLargeError extends make('BODY_TOO_LARGE', 413) {}
export class HeadersTooLargeError extends make('HEADERS_TOO_LARGE', 431) {}
export class BadRequestError extends make('BAD_REQUEST', 400) {}
export class UpstreamConnectError extends make('UPSTREAM_CONNECT_FAILED', 502) {}
export class UpstreamResetError extends make('UPSTREAM_RESET', 502) {}
export class UpstreamTimeoutError extends make('UPSTREAM_TIMEOUT', 504) {}
export class UpstreamError extends make('UPSTREAM_ERROR', 502) {}
export class CredentialMissingError extends make('CREDENTIAL_MISSING', 503) {}
/** The agent went away before the answer; nobody reads this, but metrics and logs need a name for it. */
export class ClientClosedError extends make('CLIENT_CLOSED', 499) {}
export class ShuttingDownError extends make('SHUTTING_DOWN', 503) {}
export class UnauthorizedError extends make('UNAUTHORIZED', 401) {}
export class AdminDisabledError extends make('ADMIN_DISABLED', 403) {}
export class NotFoundError extends make('NOT_FOUND', 404) {}
export class InternalError extends make('INTERNAL', 500) {}
/** The route's (or its MCP tool's, model's...) circuit breaker is open and there is no fallback to take: answered at once, no upstream socket. */
export class CircuitOpenError extends make('CIRCUIT_OPEN', 503) {
  /** An operator forced the breaker open (admin API): Fusebox's own decision, not an upstream that is failing. */
  get forced(): boolean {
    return this.details.state === 'forced_open';
  }
}
/** The primary failed and so did every fallback step; `details.attempts` lists what each one did. */
export class FallbackExhaustedError extends make('FALLBACK_EXHAUSTED', 502) {}

/** An error raised by fastify itself (malformed JSON to the admin API, ...), given our JSON shape. */
export class FrameworkError extends ProxyError {
  constructor(
    readonly code: string,
    readonly statusCode: number,
    message: string,
  ) {
    super(message);
  }
}

/** Did the failure happen before any request byte could have reached the upstream? (Safe to retry any method.) */
export const isBeforeSend = (err: unknown): boolean =>
  err instanceof UpstreamConnectError ||
  (err instanceof UpstreamTimeoutError && err.details.phase === 'connect');
