import type { Logger } from 'pino';
import type { RouteConfig } from '../config/schema.js';
import { BREAKER_HEADER, CircuitOpenError, ProxyError } from '../errors.js';
import type { BodyObserver, Layer, ProxyRequest } from '../pipeline/types.js';
import { mcpToolName } from '../providers/mcp.js';
import { requestInfo } from '../providers/request.js';
import type { Metrics } from '../telemetry/metrics.js';
import { classifyBodyEnd, classifyError, classifyMcpResponse, classifyPolicy, verdictOf } from '../upstream/classify.js';
import { BreakerRegistry } from './breaker-registry.js';
import { settlePermit, type BreakerPermit, type BreakerState } from './circuit-breaker.js';

/** `fusebox_breaker_state` values; an admin override reads as the state it forces. */
export const BREAKER_STATE_VALUE: Record<BreakerState, number> = { closed: 0, forced_closed: 0, half_open: 1, open: 2, forced_open: 2 };

/** Longest breaker key kept; model and tool names come from requests. */
const MAX_KEY_LENGTH = 128;
/** Most of an MCP answer read to find a tool failure inside a 200 (JSON or SSE). Larger answers count as their status says. */
const MCP_SCAN_BYTES = 1024 * 1024;

export interface BreakerDeps {
  now: () => number;
  random: () => number;
  logger: Logger;
  metrics: Pick<Metrics, 'breakerState' | 'breakerForced' | 'breakerTransitions' | 'breakerRejections'>;
}

export interface Breakers {
  /** The route's breakers, for the admin API. */
  registry: BreakerRegistry;
  layer: Layer;
  /**
   * Would the breaker of this request admit a call at clock time `at`? Takes no probe and changes nothing: the retry
   * layer asks before it backs off, so it never waits for (or counts) a retry the breaker will refuse.
   */
  wouldAdmit(req: ProxyRequest, at: number): boolean;
}

/** What one breaker of a route guards, as configured (`breaker.keyBy`); MCP routes default to one breaker per tool. */
export const breakerKeyBy = (route: Pick<RouteConfig, 'breaker' | 'provider'>) => route.breaker.keyBy ?? (route.provider === 'mcp' ? 'tool' : 'route');

/**
 * Circuit breakers for one chain (a route's primary, or one fallback upstream): a registry of breakers keyed per
 * `breaker.keyBy`, and the layer that asks the request's breaker before each attempt.
 *
 * Refused: 503 CIRCUIT_OPEN at once (no upstream socket) with `Retry-After` (time until the probe; none when an
 * operator forced it open, since nothing will probe) and `x-should-retry: false`, which the OpenAI and Anthropic
 * SDKs obey instead of retrying on their own.
 * Admitted: the attempt's status settles the permit when it is a failure (5xx, 429); anything else is settled when
 * its body ends, so a stream that breaks after the commit point, a slow call, or an MCP tool failure inside a 200
 * still counts. A body the pipeline discards (a retry or fallback replaced it) releases the permit without a verdict.
 *
 * @param fixedKey one breaker for the whole chain under this key (a fallback upstream: `<route>/<step>`).
 * @param kept the registry of the same chain before a config reload, reused so its breakers keep their state; the
 *   caller passes it only when the route's breaker settings are unchanged (see `RouteState` in pipeline/build.ts).
 */
export const makeBreakers = (route: RouteConfig, deps: BreakerDeps, fixedKey?: string, kept?: BreakerRegistry): Breakers => {
  const cfg = route.breaker;
  const policy = classifyPolicy(route);
  const { breakerState: gauge, breakerForced: forced, breakerTransitions: transitions } = deps.metrics;
  const rejections = deps.metrics.breakerRejections.labels(route.name);
  const log = deps.logger;

  const registry = kept ?? new BreakerRegistry({
    breaker: { ...cfg, probeLeaseMs: route.timeouts.totalMs },
    maxKeys: cfg.maxKeys,
    now: deps.now,
    random: deps.random,
    onTransition: (key, from, to, reason, lastFailure) => {
      gauge.labels(route.name, key).set(BREAKER_STATE_VALUE[to]);
      forced.labels(route.name, key).set(to === 'forced_open' || to === 'forced_closed' ? 1 : 0);
      transitions.labels(route.name, to).inc();
      const line = { route: route.name, key, from, to, reason, lastFailure };
      if (to === 'open' || to === 'forced_open') log.warn(line, 'breaker transition');
      else log.info(line, 'breaker transition');
    },
    // The gauge's key label is bounded only because evicted keys leave it too.
    onEvict: (key) => {
      gauge.remove(route.name, key);
      forced.remove(route.name, key);
    },
  });
  if (!cfg.enabled) return { registry, layer: (next) => next, wouldAdmit: () => true };

  const keyBy = breakerKeyBy(route);
  const keyOf = (req: ProxyRequest): string => {
    if (fixedKey !== undefined) return fixedKey;
    const body = req.body.kind === 'buffered' ? req.body.bytes : undefined;
    let key: string | undefined;
    if (keyBy === 'model') key = requestInfo(body).model;
    else if (keyBy === 'tool') key = mcpToolName(body);
    // A body we cannot read (streamed, not JSON, not a tool call) falls under the route's own breaker.
    return (key ?? route.name).slice(0, MAX_KEY_LENGTH);
  };
  const mcp = route.provider === 'mcp';

  const layer: Layer = (next) => async (req, ctx) => {
    const key = keyOf(req);
    const fresh = registry.peek(key) === undefined;
    const breaker = registry.get(key);
    const admission = breaker.tryAcquire();
    if (fresh) {
      gauge.labels(route.name, key).set(0);
      forced.labels(route.name, key).set(0);
    }
    if (!admission.allowed) {
      rejections.inc();
      const { state, retryAfterMs } = admission;
      ctx.trace?.event('breaker.rejected', { 'fusebox.breaker': key, 'fusebox.breaker.state': state, 'fusebox.retry_after_ms': retryAfterMs });
      // Forced open (an operator's override) has no probe to wait for: no retryAfterMs, so no Retry-After.
      throw new CircuitOpenError(
        `the circuit breaker "${key}" of route "${route.name}" is ${state.replace('_', '-')}: the upstream was not called`,
        { breaker: key, state, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) },
      );
    }
    const { permit } = admission;
    const started = deps.now();
    let res;
    try {
      res = await next(req, ctx);
    } catch (err) {
      settlePermit(permit, classifyError(err), deps.now() - started);
      // This attempt opened the breaker: the agent gets the upstream's failure, told the breaker is now open.
      if (err instanceof ProxyError && breaker.state() === 'open') {
        ctx.trace?.event('breaker.opened', { 'fusebox.breaker': key });
        throw err.withHeaders({ [BREAKER_HEADER]: 'open' });
      }
      throw err;
    }
    const verdict = verdictOf(res, policy, deps.now());
    if (verdict.breakerFailure) {
      permit.failure(verdict.reason);
      if (breaker.state() === 'open') {
        ctx.trace?.event('breaker.opened', { 'fusebox.breaker': key });
        res.headers[BREAKER_HEADER] = 'open';
      }
    } else res.observers.push(settleAtBodyEnd(permit, started, mcp));
    return res;
  };

  const wouldAdmit = (req: ProxyRequest, at: number): boolean => registry.peek(keyOf(req))?.wouldAdmit(at) ?? true;

  const settleAtBodyEnd = (permit: BreakerPermit, started: number, scanMcp: boolean): BodyObserver => {
    let chunks: Buffer[] = [];
    let size = 0;
    let overflow = false;
    return {
      onChunk: scanMcp
        ? (chunk) => {
            if (overflow) return;
            size += chunk.length;
            if (size > MCP_SCAN_BYTES) {
              overflow = true;
              chunks = [];
            } else chunks.push(chunk);
          }
        : undefined,
      onEnd: (end) => {
        const now = deps.now();
        const durationMs = now - started;
        let verdict = classifyBodyEnd(end, policy, { now, durationMs, clientAborted: end.failedBy === 'client' });
        if (verdict === undefined) return permit.release();
        // MCP reports a tool's failure inside a 200: the tool's breaker must count it.
        if (scanMcp && end.ok && !overflow) verdict = classifyMcpResponse(Buffer.concat(chunks, size), policy, { now, durationMs });
        settlePermit(permit, verdict, durationMs);
      },
    };
  };

  return { registry, layer, wouldAdmit };
};
