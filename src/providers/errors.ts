import type { RouteConfig } from '../config/schema.js';
import type { ErrorCode } from '../errors.js';

/*
 * Fusebox's own answers in the provider's error envelope. The OpenAI and Anthropic SDKs build `err.message`
 * (and `code`, `type`) from their provider's envelope only: given Fusebox's plain shape, the openai SDK shows
 * `402 "Payment Required"` and the agent loses why it was refused. On a route with an LLM `provider`, the
 * refusal is therefore written the way that provider writes its errors, with Fusebox's code where the SDK
 * exposes a code and the whole Fusebox body under `error.fusebox`, so nothing is lost:
 *
 *   OpenAI:    {"error":{"message","type","param":null,"code":"<FUSEBOX_CODE>","fusebox":{…}}}
 *              → err.message "402 <message>", err.code, err.type, err.error.fusebox
 *   Anthropic: {"type":"error","error":{"type","message","details":{"error_code":"<FUSEBOX_CODE>"},"fusebox":{…}},"request_id"}
 *              → err.message "402 {…the body…}" (how this SDK shows every API error), err.apiMessage, err.type,
 *                err.errorCode, err.error.error.fusebox
 *
 * Fusebox codes are SCREAMING_SNAKE, so they never collide with the lower-case `error_code`s the Anthropic SDK
 * maps to special error classes.
 */

/** What the envelope is built from: the refusal's status, code and message, and Fusebox's own body for it. */
export interface FuseboxAnswer {
  readonly statusCode: number;
  readonly code: ErrorCode;
  readonly message: string;
  readonly requestId: string;
  /** Fusebox's own shape of the answer (`errorBody`), carried whole as `error.fusebox`. */
  readonly body: Record<string, unknown>;
}

/**
 * OpenAI `error.type`: `insufficient_quota` is what OpenAI answers when the money is gone (what a cap or the
 * kill switch says too), `invalid_request_error` its type for other 4xx, `server_error` for 5xx.
 */
const openaiType = (status: number): string =>
  status === 402 ? 'insufficient_quota' : status === 429 ? 'rate_limit_exceeded' : status < 500 ? 'invalid_request_error' : 'server_error';

/** Anthropic's documented `error.type` per status (https://docs.anthropic.com/en/api/errors). */
const ANTHROPIC_TYPES: ReadonlyMap<number, string> = new Map([
  [400, 'invalid_request_error'],
  [401, 'authentication_error'],
  [402, 'billing_error'],
  [403, 'permission_error'],
  [404, 'not_found_error'],
  [413, 'request_too_large'],
  [429, 'rate_limit_error'],
  // 503 means "back off and come back" for an open breaker, a draining sidecar or a shed SLO.
  [503, 'overloaded_error'],
  [504, 'timeout_error'],
]);

/** 503s that are a broken setup rather than a reason to back off. */
const NOT_OVERLOAD: ReadonlySet<ErrorCode> = new Set(['CREDENTIAL_MISSING', 'BUDGET_STORE_UNAVAILABLE']);

const anthropicType = (status: number, code: ErrorCode): string =>
  (NOT_OVERLOAD.has(code) ? undefined : ANTHROPIC_TYPES.get(status)) ?? (status < 500 ? 'invalid_request_error' : 'api_error');

/** The answer in `provider`'s error envelope; undefined for routes whose SDKs have none (mcp, none): Fusebox's shape stays. */
export const providerErrorBody = (provider: RouteConfig['provider'] | undefined, a: FuseboxAnswer): Record<string, unknown> | undefined => {
  switch (provider) {
    case 'openai':
      return { error: { message: a.message, type: openaiType(a.statusCode), param: null, code: a.code, fusebox: a.body } };
    case 'anthropic':
      return {
        type: 'error',
        error: { type: anthropicType(a.statusCode, a.code), message: a.message, details: { error_code: a.code }, fusebox: a.body },
        request_id: a.requestId,
      };
    default:
      return undefined;
  }
};
