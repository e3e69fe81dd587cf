import { describe, expect, it } from 'vitest';
import {
  BudgetRefusedError,
  CircuitOpenError,
  ERROR_CODES,
  FallbackExhaustedError,
  NoRouteError,
  ProxyError,
  SloThrottledError,
  UnauthorizedError,
  UpstreamResetError,
} from '../../src/errors.js';

describe('ProxyError', () => {
  it('takes its status from the code table and has no extra headers by default', () => {
    const err = new NoRouteError('no route', { path: '/x' });
    expect(err).toMatchObject({ code: 'NO_ROUTE', statusCode: 404, name: 'NoRouteError', details: { path: '/x' }, retry: {}, headers: {} });
    expect(err).toBeInstanceOf(ProxyError);
  });

  it('writes retry advice as headers at construction: Retry-After in whole seconds (at least 1), x-should-retry', () => {
    expect(new FallbackExhaustedError('all failed', {}, { retry: { afterMs: 1_001 } }).headers).toEqual({ 'retry-after': '2', 'x-should-retry': 'false' });
    expect(new BudgetRefusedError('KILLED', 'killed', {}, { retry: { afterMs: 20 } }).headers).toEqual({ 'retry-after': '1', 'x-should-retry': 'false' });
    expect(new SloThrottledError('throttled', 1).headers).toEqual({ 'retry-after': '1' });
    expect(new UnauthorizedError('token', {}, { headers: { 'www-authenticate': 'Bearer' } }).headers).toEqual({ 'www-authenticate': 'Bearer' });
  });

  it('gives every budget refusal 402 and x-should-retry: false, whatever its code', () => {
    for (const code of ['BUDGET_EXCEEDED', 'CALL_LIMIT', 'KILLED'] as const) {
      expect(new BudgetRefusedError(code, 'no', {})).toMatchObject({ code, statusCode: 402, headers: { 'x-should-retry': 'false' } });
    }
  });

  it('CIRCUIT_OPEN: Retry-After from the wait until the probe, x-fusebox-breaker from the state; none when forced open', () => {
    const open = new CircuitOpenError('open', { breaker: 'chat', state: 'open', retryAfterMs: 9_500 });
    expect(open.headers).toEqual({ 'retry-after': '10', 'x-should-retry': 'false', 'x-fusebox-breaker': 'open' });
    expect(open.forced).toBe(false);
    const forced = new CircuitOpenError('forced', { breaker: 'chat', state: 'forced_open' });
    expect(forced.headers).toEqual({ 'x-should-retry': 'false', 'x-fusebox-breaker': 'forced_open' });
    expect(forced.forced).toBe(true);
  });

  it('headers cannot be changed once built', () => {
    const err = new NoRouteError('no route');
    expect(() => {
      (err.headers as Record<string, string>)['x-late'] = '1';
    }).toThrow(TypeError);
  });

  it('withHeaders returns a copy with more headers and leaves the thrown error as it was', () => {
    const cause = new Error('ECONNRESET');
    const err = new UpstreamResetError('reset', { errno: 'ECONNRESET' }, { cause });
    const copy = err.withHeaders({ 'x-fusebox-breaker': 'open' });
    expect(copy).not.toBe(err);
    expect(copy).toBeInstanceOf(UpstreamResetError);
    expect(copy).toMatchObject({ code: 'UPSTREAM_RESET', statusCode: 502, message: 'reset', details: { errno: 'ECONNRESET' }, headers: { 'x-fusebox-breaker': 'open' } });
    expect(copy.cause).toBe(cause);
    expect(copy.stack).toBe(err.stack);
    expect(err.headers).toEqual({});
  });

  it('lists a status and a README line for every code', () => {
    for (const [code, spec] of Object.entries(ERROR_CODES)) {
      expect(code).toMatch(/^[A-Z][A-Z_]+$/);
      expect(spec.status).toBeGreaterThanOrEqual(400);
      expect(spec.when.length).toBeGreaterThan(10);
    }
  });
});
