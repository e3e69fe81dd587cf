import type { BudgetEvents } from '../policies/budget.js';
import { classifyRedisError } from '../store/redis-errors.js';
import { budgetAlert } from '../budget/alert.js';
import { counterSeries, histogramSeries, type CounterSeries } from './fast-metrics.js';
import type { Metrics } from './metrics.js';

/** Budget decisions → metrics and one log line each. Unknown models are logged once per route and model. */
export const budgetEvents = (m: Metrics): BudgetEvents => {
  const warnedModels = new Set<string>();
  const storeSeconds = { reserve: histogramSeries(m.storeSeconds, 'reserve'), commit: histogramSeries(m.storeSeconds, 'commit') };
  const settledByRoute = new Map<string, Map<string, SettledMetrics>>();
  const settledMetrics = (route: string, model: string): SettledMetrics => {
    let byModel = settledByRoute.get(route);
    if (byModel === undefined) settledByRoute.set(route, (byModel = new Map()));
    let s = byModel.get(model);
    if (s === undefined) {
      s = {
        input: counterSeries(m.tokens, route, model, 'input'),
        cachedInput: counterSeries(m.tokens, route, model, 'cached_input'),
        output: counterSeries(m.tokens, route, model, 'output'),
        reasoning: counterSeries(m.tokens, route, model, 'reasoning'),
        cost: counterSeries(m.cost, route, model),
      };
      byModel.set(model, s);
    }
    return s;
  };
  return {
    refused: (route, r, ctx, err) => {
      m.budgetRejections.labels(r.scopeKind, r.reason).inc();
      ctx.trace?.event('budget.refused', { 'error.type': err.code, 'fusebox.budget.scope': r.scopeKind, 'fusebox.budget.reason': r.reason });
      ctx.log.warn({ code: err.code, ...err.details }, `call refused: ${err.message}`);
    },
    alert: (route, c, ctx) => budgetAlert(m, ctx.log, c),
    settled: (route, s, ctx) => {
      const u = s.usage;
      // Labels are bounded (route names, models of the price table or `other`), so these maps are too.
      const c = settledMetrics(route, s.model);
      c.input.inc(u.inputTokens);
      c.cachedInput.inc(u.cachedInputTokens);
      c.output.inc(u.outputTokens);
      if (u.reasoningTokens > 0) c.reasoning.inc(u.reasoningTokens);
      c.cost.inc(s.costMicros / 1e6);
      if (u.estimated) m.usageEstimated.labels(route).inc();
      if (!s.modelKnown) {
        m.unknownModels.labels(route).inc();
        const key = `${route}|${u.model ?? ''}`;
        if (!warnedModels.has(key) && warnedModels.size < 1000) {
          warnedModels.add(key);
          ctx.log.warn({ model: u.model }, `model "${u.model ?? '(none)'}" is not in the price table: charged at budgets.defaultPrice`);
        }
      }
    },
    storeOp: (op, seconds) => storeSeconds[op].observe(seconds),
    storeError: (route, op, err, ctx) => {
      const kind = classifyRedisError(err);
      m.storeErrors.labels(op, kind).inc();
      ctx.log.error({ op, kind, error: err instanceof Error ? err.message : String(err) }, `budget store ${op} failed (${kind})`);
    },
  };
};


/** The series a settlement adds to, per route and model. */
interface SettledMetrics {
  readonly input: CounterSeries;
  readonly cachedInput: CounterSeries;
  readonly output: CounterSeries;
  readonly reasoning: CounterSeries;
  readonly cost: CounterSeries;
}
