import { describe, expect, it } from 'vitest';
import type { ErrorCode } from '../../src/errors.js';
import { providerErrorBody, type FuseboxAnswer } from '../../src/providers/errors.js';

const answer = (statusCode: number, code: ErrorCode): FuseboxAnswer => ({
  statusCode,
  code,
  message: `why ${code}`,
  requestId: 'r1',
  body: { statusCode, code, message: `why ${code}`, requestId: 'r1', route: 'chat' },
});

const openaiType = (status: number, code: ErrorCode) => (providerErrorBody('openai', answer(status, code)) as { error: { type: string } }).error.type;
const anthropicType = (status: number, code: ErrorCode) => (providerErrorBody('anthropic', answer(status, code)) as { error: { type: string } }).error.type;

describe('providerErrorBody', () => {
  it('writes the OpenAI envelope with Fusebox’s code in error.code and its whole body in error.fusebox', () => {
    expect(providerErrorBody('openai', answer(402, 'CALL_LIMIT'))).toEqual({
      error: { message: 'why CALL_LIMIT', type: 'insufficient_quota', param: null, code: 'CALL_LIMIT', fusebox: answer(402, 'CALL_LIMIT').body },
    });
  });

  it('writes the Anthropic envelope with Fusebox’s code in error.details.error_code and the request id', () => {
    expect(providerErrorBody('anthropic', answer(503, 'CIRCUIT_OPEN'))).toEqual({
      type: 'error',
      error: { type: 'overloaded_error', message: 'why CIRCUIT_OPEN', details: { error_code: 'CIRCUIT_OPEN' }, fusebox: answer(503, 'CIRCUIT_OPEN').body },
      request_id: 'r1',
    });
  });

  it('picks OpenAI types by status', () => {
    expect(openaiType(402, 'BUDGET_EXCEEDED')).toBe('insufficient_quota');
    expect(openaiType(429, 'SLO_THROTTLED')).toBe('rate_limit_exceeded');
    expect(openaiType(413, 'BODY_TOO_LARGE')).toBe('invalid_request_error');
    expect(openaiType(503, 'CIRCUIT_OPEN')).toBe('server_error');
    expect(openaiType(504, 'UPSTREAM_TIMEOUT')).toBe('server_error');
  });

  it('picks Anthropic types by status; a 503 from a broken setup is api_error, not a reason to back off', () => {
    expect(anthropicType(402, 'KILLED')).toBe('billing_error');
    expect(anthropicType(413, 'BODY_TOO_LARGE')).toBe('request_too_large');
    expect(anthropicType(431, 'HEADERS_TOO_LARGE')).toBe('invalid_request_error');
    expect(anthropicType(429, 'SLO_THROTTLED')).toBe('rate_limit_error');
    expect(anthropicType(503, 'SHUTTING_DOWN')).toBe('overloaded_error');
    expect(anthropicType(503, 'CREDENTIAL_MISSING')).toBe('api_error');
    expect(anthropicType(503, 'BUDGET_STORE_UNAVAILABLE')).toBe('api_error');
    expect(anthropicType(502, 'FALLBACK_EXHAUSTED')).toBe('api_error');
    expect(anthropicType(504, 'UPSTREAM_TIMEOUT')).toBe('timeout_error');
  });

  it('leaves routes without an LLM provider in Fusebox’s shape', () => {
    expect(providerErrorBody('mcp', answer(402, 'CALL_LIMIT'))).toBeUndefined();
    expect(providerErrorBody('none', answer(402, 'CALL_LIMIT'))).toBeUndefined();
    expect(providerErrorBody(undefined, answer(402, 'CALL_LIMIT'))).toBeUndefined();
  });
});
