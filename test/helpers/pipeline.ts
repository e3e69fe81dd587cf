import { pino } from 'pino';
import type { RouteConfig } from '../../src/config/schema.js';
import type { CallContext } from '../../src/pipeline/types.js';

/** mulberry32: a tiny seeded PRNG, so "random" tests are repeatable and a failing run can be replayed. */
export const seeded = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};

/**
 * The context the HTTP layer gives a pipeline call, for layer tests: a silent log, a fresh signal and a deadline
 * no test clock reaches, unless `over` says otherwise.
 */
export const callContext = (route: RouteConfig, over: Partial<CallContext> = {}): CallContext => {
  const controller = new AbortController();
  return {
    requestId: 'req-1',
    route,
    agent: 'a',
    workflow: undefined,
    mode: 'base-url',
    startedAt: 0,
    deadline: 1e12,
    signal: controller.signal,
    abort: (reason: Error) => controller.abort(reason),
    log: pino({ level: 'silent' }),
    attempts: 0,
    facts: {},
    ...over,
  };
};
