import type { BudgetsConfig, RouteConfig } from '../config/schema.js';
import { asksForTokens, estimateRequest, type RequestEstimate } from '../budget/estimate.js';
import { costMicroUsd, type PriceBook } from '../budget/prices.js';
import {
  budgetScopes,
  type AlertCrossing,
  type BudgetStore,
  type Refusal,
  type Reservation,
  type ScopeBudget,
} from '../budget/store.js';
import { BudgetRefusedError, ProxyError, StoreUnavailableError } from '../errors.js';
import { createUsageMeter, DEFAULT_MAX_JSON_BYTES, isEventStream, type UsageMeter } from '../providers/meter.js';
import { createUsageChunkFilter } from '../providers/openai.js';
import { withStreamUsage } from '../providers/request.js';
import type { Usage } from '../providers/usage.js';
import type { BodyEnd, BodyRewrite, CallContext, CallSettlement, Layer, ProxyRequest, ProxyResponse } from '../pipeline/types.js';
import type { PendingWork } from '../pipeline/pending.js';

/** Windows resetting within this long get a Retry-After; a day away is not worth an agent's wait. */
const RETRY_AFTER_HORIZON_MS = 3_600_000;
const usd = (micros: number) => Math.round(micros) / 1e6;

const unitOf = (metric: Refusal['metric']) => (metric === 'usdMicros' ? 'usd' : (metric ?? 'usd'));
const inUnit = (metric: Refusal['metric'], n: number) => (metric === 'usdMicros' ? usd(n) : n);

/** A refusal of the store, or of the route's per-request caps (scope `request`, the route's name as id). */
type RefusalOf = Omit<Refusal, 'scope'> & { readonly scope: { readonly kind: Refusal['scope']['kind'] | 'request'; readonly id: string } };

export const refusalError = (r: RefusalOf, now: number): BudgetRefusedError => {
  const unit = unitOf(r.metric);
  const where = r.scope.kind === 'global' ? 'everything' : `${r.scope.kind} "${r.scope.id}"`;
  const message =
    r.reason === 'KILLED'
      ? `${where} was stopped by the kill switch${r.killReason ? `: ${r.killReason}` : ''}; an operator must lift it`
      : r.reason === 'CALL_LIMIT'
        ? `${where} reached its limit of ${r.limit} calls`
        : `${where} ${r.window ?? ''} ${unit} budget is spent: limit ${inUnit(r.metric, r.limit)}, spent ${inUnit(r.metric, r.spent)}, held by calls in flight ${inUnit(r.metric, r.reserved)}, this call needs up to ${inUnit(r.metric, r.requested)}`;
  const details = {
    scope: r.scope.kind,
    scopeId: r.scope.id,
    ...(r.window ? { window: r.window } : {}),
    ...(r.reason !== 'KILLED' ? { unit, limit: inUnit(r.metric, r.limit), spent: inUnit(r.metric, r.spent), reserved: inUnit(r.metric, r.reserved), requested: inUnit(r.metric, r.requested) } : {}),
    resetsAt: r.resetAt === null ? null : new Date(r.resetAt).toISOString(),
  };
  const waitMs = r.resetAt === null ? undefined : r.resetAt - now;
  const retry = waitMs !== undefined && waitMs <= RETRY_AFTER_HORIZON_MS ? { afterMs: waitMs } : {};
  return new BudgetRefusedError(r.reason, message.replace(/\s+/g, ' '), details, { retry });
};

export interface BudgetLayerDeps {
  store: BudgetStore;
  prices: PriceBook;
  budgets: BudgetsConfig;
  now: () => number;
  /** Every decision of this layer, for metrics and logs (wired in build.ts). */
  events: BudgetEvents;
  /** Commits and releases still on their way to the store: shutdown waits for them before closing it. */
  pending: PendingWork;
}

export interface Settlement {
  model: string;
  modelKnown: boolean;
  usage: Usage;
  costMicros: number;
}

export interface BudgetEvents {
  refused(route: string, refusal: { scopeKind: string; reason: string }, ctx: CallContext, err: BudgetRefusedError): void;
  alert(route: string, crossing: AlertCrossing, ctx: CallContext): void;
  settled(route: string, s: Settlement, ctx: CallContext): void;
  storeError(route: string, op: 'reserve' | 'commit' | 'release', err: unknown, ctx: CallContext): void;
  /** How long a store operation took (the hot-path cost of a shared store). */
  storeOp(op: 'reserve' | 'commit', seconds: number): void;
}

const since = (start: bigint) => Number(process.hrtime.bigint() - start) / 1e9;

const isLlm = (route: RouteConfig) => route.provider === 'openai' || route.provider === 'anthropic';

/** The estimate a call reserves: prompt tokens plus allowed output at the model's prices (zero for tool calls). */
const estimateCall = (route: RouteConfig, req: ProxyRequest): RequestEstimate | undefined => {
  if (!isLlm(route)) return undefined;
  const body = req.body.kind === 'buffered' ? req.body.bytes : undefined;
  return estimateRequest(route.provider, body, {
    defaultMaxOutputTokens: route.budget.defaultMaxOutputTokens,
    tokenizer: route.budget.tokenizer,
    ...(req.body.kind === 'stream' && req.body.length !== undefined ? { contentLength: req.body.length } : {}),
    path: req.path,
  });
};

/**
 * Token and cost caps, outermost in the pipeline: a call is refused before any money is spent when its
 * estimate would break a cap (per request, agent, workflow, route, fleet) or a kill switch is on; otherwise the
 * estimate is held in the store, the answer's real usage is read as its bytes pass, and the hold is settled
 * with the real cost when the body ends — including a stream the agent or the upstream broke off (then from
 * the bytes seen, marked estimated). An error before any answer returns the hold.
 */
export const budgetLayer = (route: RouteConfig, deps: BudgetLayerDeps): Layer => {
  const { store, prices, budgets, now, events, pending } = deps;
  const metered = isLlm(route);
  const provider = route.provider === 'anthropic' ? 'anthropic' : 'openai';
  const perRequest = route.budget;
  // A call without a workflow is counted in the same scope windows as every other such call of this route and agent:
  // one list, which the store pins to its windows once a day rather than once a call (src/budget/memory-store.ts).
  let shared: { agent: string; scopes: ScopeBudget[] } | undefined;
  const scopesOf = (ctx: CallContext): ScopeBudget[] => {
    if (ctx.workflow !== undefined) return budgetScopes(budgets, route, { agent: ctx.agent, route: route.name, workflow: ctx.workflow });
    if (shared?.agent !== ctx.agent) shared = { agent: ctx.agent, scopes: budgetScopes(budgets, route, { agent: ctx.agent, route: route.name }) };
    return shared.scopes;
  };

  return (next) => async (req, ctx) => {
    const estimate = estimateCall(route, req);
    // An LLM call with no model, no prompt and no body left unread cannot be billed (GET /v1/models): it holds no
    // money and no money or token cap refuses it; call caps still count it. (A tool call is another matter: it is
    // work the agent does, so a spent scope refuses it, see store.ts.)
    const unbillable = estimate !== undefined && req.body.kind !== 'stream' && !asksForTokens(estimate);
    const model = estimate?.model;
    const price = prices.lookup(model);
    const priced = estimate !== undefined && !unbillable;
    const estTokens = priced ? estimate.inputTokens + estimate.maxOutputTokens : 0;
    const estMicros = priced ? costMicroUsd({ inputTokens: estimate.inputTokens, cachedInputTokens: 0, outputTokens: estimate.maxOutputTokens }, price.price) : 0;
    if (priced) {
      ctx.facts.model = model;
      ctx.facts.estimatedUsd = usd(estMicros);
    }

    const refuseRequest = (metric: 'usdMicros' | 'tokens', limit: number, requested: number) => {
      const err = refusalError({ reason: 'BUDGET_EXCEEDED', scope: { kind: 'request', id: route.name }, metric, limit, spent: 0, reserved: 0, requested, resetAt: null }, now());
      events.refused(route.name, { scopeKind: 'request', reason: 'BUDGET_EXCEEDED' }, ctx, err);
      throw err;
    };
    if (perRequest.maxRequestUsd !== undefined && estMicros > perRequest.maxRequestUsd * 1e6) {
      refuseRequest('usdMicros', Math.round(perRequest.maxRequestUsd * 1e6), estMicros);
    }
    if (perRequest.maxRequestTokens !== undefined && estTokens > perRequest.maxRequestTokens) {
      refuseRequest('tokens', perRequest.maxRequestTokens, estTokens);
    }

    const allScopes = scopesOf(ctx);
    const scopes = unbillable ? callCapsOnly(allScopes) : allScopes;
    let reservation: Reservation;
    const reserveStart = process.hrtime.bigint();
    try {
      const result = await store.reserve({
        scopes,
        estimate: { usdMicros: estMicros, tokens: estTokens, calls: 1 },
        // The hold outlives the call: reaped only if this sidecar dies before settling it.
        ttlMs: route.timeouts.totalMs + 60_000,
        onUnavailable: route.budget.storeUnavailable,
      });
      events.storeOp('reserve', since(reserveStart));
      if (!result.ok) {
        const err = refusalError(result.refusal, now());
        events.refused(route.name, { scopeKind: result.refusal.scope.kind, reason: result.refusal.reason }, ctx, err);
        throw err;
      }
      reservation = result.reservation;
      ctx.trace?.event('budget.reserved', { 'fusebox.estimated_usd': usd(estMicros), 'fusebox.estimated_tokens': estTokens, 'fusebox.budget.scopes': scopes.length });
      for (const c of result.crossed) events.alert(route.name, c, ctx);
    } catch (err) {
      if (err instanceof ProxyError) throw err;
      // The store failed in a way its own fallback did not absorb: refuse rather than spend uncounted money.
      events.storeError(route.name, 'reserve', err, ctx);
      throw new StoreUnavailableError('the budget store failed; the call was not sent', { route: route.name }, { cause: err });
    }

    let request = req;
    let usageAdded = false;
    if (metered && req.body.kind === 'buffered') {
      // Usage is read from the bytes as they pass, so they must not be compressed.
      const headers = { ...req.headers, 'accept-encoding': 'identity' };
      const withUsage = route.provider === 'openai' && route.budget.includeStreamUsage ? withStreamUsage(req.body.bytes) : undefined;
      usageAdded = withUsage !== undefined;
      request = { ...req, headers, body: withUsage ? { kind: 'buffered', bytes: withUsage } : req.body };
    } else if (metered) {
      request = { ...req, headers: { ...req.headers, 'accept-encoding': 'identity' } };
    }

    // The SLO layer reads the call's cost from this, whenever the settlement happens.
    let settled: (s: CallSettlement | undefined) => void = () => {};
    if (metered) ctx.facts.settled = new Promise((resolve) => (settled = resolve));

    let answer;
    try {
      answer = await next(request, ctx);
    } catch (err) {
      pending.track(store.release(reservation)).catch((e: unknown) => events.storeError(route.name, 'release', e, ctx));
      settled(undefined);
      throw err;
    }

    const contentType = firstHeader(answer.headers['content-type']);
    const meter = metered ? createUsageMeter(provider, contentType) : undefined;
    const settle = (end: BodyEnd) => {
      const usage = meter?.finish(estimate?.inputTokens) ?? ZERO_USAGE;
      // An answer that broke off with no usage reported is charged from what was seen; a clean answer without
      // usage (an error body, a models list) costs nothing.
      const charged = !end.ok && meter && usage === ZERO_USAGE && estimate ? { ...ZERO_USAGE, inputTokens: estimate.inputTokens, estimated: true } : usage;
      const match = charged.model !== undefined ? prices.lookup(charged.model) : price;
      const costMicros = costMicroUsd(charged, match.price);
      const tokens = charged.inputTokens + charged.cachedInputTokens + charged.outputTokens;
      const commitStart = process.hrtime.bigint();
      pending
        .track(store.commit(reservation, { usdMicros: costMicros, tokens }))
        .then((r) => {
          events.storeOp('commit', since(commitStart));
          r.crossed.forEach((c) => events.alert(route.name, c, ctx));
        })
        .catch((e: unknown) => events.storeError(route.name, 'commit', e, ctx));
      // A call that could not be billed and whose answer reported nothing to bill is no unknown model's call.
      if (metered && !(unbillable && billsNothing(charged))) {
        const settlement: CallSettlement = {
          model: charged.model,
          inputTokens: charged.inputTokens,
          cachedInputTokens: charged.cachedInputTokens,
          outputTokens: charged.outputTokens,
          costUsdMicros: costMicros,
          estimated: charged.estimated,
        };
        ctx.facts.settlement = settlement;
        events.settled(route.name, { model: match.label, modelKnown: match.known, usage: charged, costMicros }, ctx);
        settled(settlement);
      } else settled(undefined);
    };
    // The usage chunk is the agent's only when the agent asked for it; one Fusebox added is read, then removed.
    if (meter && usageAdded && answer.statusCode < 300 && isEventStream(contentType)) {
      const stripped = withoutUsageChunk(answer, meter);
      stripped.observers.push({ onEnd: settle });
      return stripped;
    }
    answer.observers.push(meter ? { onChunk: (c) => meter.push(c), onEnd: settle } : { onEnd: settle });
    return answer;
  };
};

/**
 * The answer with the usage-only chunk removed from its event stream as it is sent (`ProxyResponse.rewrite`: no
 * Transform or pipeline per call); `meter` still reads every byte as the upstream sent it. The length changes, so
 * any `content-length` goes (the stream is sent chunked).
 */
const withoutUsageChunk = (answer: ProxyResponse, meter: UsageMeter): ProxyResponse => {
  const filter = createUsageChunkFilter(DEFAULT_MAX_JSON_BYTES);
  const headers = { ...answer.headers };
  delete headers['content-length'];
  const rewrite: BodyRewrite = {
    push(chunk) {
      meter.push(chunk);
      return filter.push(chunk);
    },
    end: () => filter.end(),
  };
  return { ...answer, headers, rewrite };
};

/** The scopes with only their call caps: what a call that cannot be billed is checked against. */
const callCapsOnly = (scopes: readonly ScopeBudget[]): ScopeBudget[] =>
  scopes.map((s) => ({ ...s, caps: s.caps.calls === undefined ? {} : { calls: s.caps.calls } }));

const billsNothing = (u: Usage): boolean => u.model === undefined && u.inputTokens + u.cachedInputTokens + u.outputTokens === 0;

const ZERO_USAGE: Usage = Object.freeze({ inputTokens: 0, outputTokens: 0, cachedInputTokens: 0, reasoningTokens: 0, estimated: false });

const firstHeader = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);
