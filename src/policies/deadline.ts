import { UpstreamTimeoutError } from '../errors.js';
import type { Layer } from '../pipeline/types.js';

/**
 * `timeouts.totalMs`: the whole call — every retry, fallback hop and the streamed answer — must end in time. When the
 * timer fires the call is aborted (attempts in flight and a body still streaming alike) with UPSTREAM_TIMEOUT phase
 * `total`; the timer is cleared when the answer's body ends.
 */
export const deadlineLayer = (): Layer => (next) => async (req, ctx) => {
  const totalMs = ctx.route.timeouts.totalMs;
  if (totalMs <= 0) return next(req, ctx);
  const timer = setTimeout(() => ctx.abort(new UpstreamTimeoutError(`the call took longer than ${totalMs} ms (timeouts.totalMs)`, { phase: 'total' })), totalMs);
  let res;
  try {
    res = await next(req, ctx);
  } catch (err) {
    clearTimeout(timer);
    throw err;
  }
  res.observers.push({ onEnd: () => clearTimeout(timer) });
  return res;
};
