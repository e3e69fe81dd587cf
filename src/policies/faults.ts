import type { FaultsConfig } from '../config/schema.js';
import { UpstreamResetError } from '../errors.js';
import type { Layer } from '../pipeline/types.js';
import { sleep } from '../pipeline/sleep.js';

export type FaultKind = 'abort' | 'delay' | 'reset';

export interface FaultPlan {
  abort?: number;
  delayMs?: number;
  reset?: boolean;
}

/**
 * Parse `x-fusebox-fault`: comma- or semicolon-separated `abort=<status>`, `delay=<ms>`, `reset`.
 * Unknown or malformed parts are ignored (a chaos header must never break a real call by a typo).
 */
export const parseFaultHeader = (value: string): FaultPlan => {
  const plan: FaultPlan = {};
  for (const part of value.split(/[;,]/)) {
    const [rawKey, rawValue] = part.split('=', 2).map((s) => s.trim());
    const n = Number(rawValue);
    if (rawKey === 'abort' && Number.isInteger(n) && n >= 100 && n <= 599) plan.abort = n;
    else if (rawKey === 'delay' && Number.isInteger(n) && n > 0 && n <= 600_000) plan.delayMs = n;
    else if (rawKey === 'reset') plan.reset = true;
  }
  return plan;
};

export interface FaultDeps {
  random: () => number;
  onFault: (kind: FaultKind) => void;
}

/**
 * Envoy-style fault injection, per attempt, just above the upstream send: an injected failure goes through the
 * same classification, retries, breaker and fallback as a real one, so a team sees how the whole stack and its
 * agent behave when a tool dies. Off unless `faults.enabled`.
 */
export const faultsLayer = (config: FaultsConfig, deps: FaultDeps): Layer => {
  if (!config.enabled) return (next) => next;
  const roll = (percent: number | undefined) => percent !== undefined && deps.random() * 100 < percent;
  return (next) => async (req, ctx) => {
    const fromHeader =
      config.headerControl && ctx.facts.faultHeader !== undefined ? parseFaultHeader(ctx.facts.faultHeader) : {};
    const delayMs = fromHeader.delayMs ?? (roll(config.delay?.percent) ? config.delay!.ms : undefined);
    if (delayMs !== undefined) {
      deps.onFault('delay');
      await sleep(delayMs, ctx.signal);
    }
    const abort = fromHeader.abort ?? (roll(config.abort?.percent) ? config.abort!.status : undefined);
    if (abort !== undefined) {
      deps.onFault('abort');
      const body = Buffer.from(JSON.stringify({ error: 'fault injected by Fusebox', status: abort }));
      return { statusCode: abort, headers: { 'content-type': 'application/json', 'x-fusebox-fault': 'abort' }, body, observers: [] };
    }
    if (fromHeader.reset === true || roll(config.reset?.percent)) {
      deps.onFault('reset');
      throw new UpstreamResetError('fault injected by Fusebox: connection reset', { fault: 'reset' });
    }
    return next(req, ctx);
  };
};
