import type { BudgetEvents } from '../policies/budget.js';
import type { Metrics } from './metrics.js';

/** Budget decisions → metrics and one log line each. Unknown models are logged once per route and model. */
export const budgetEvents = (m: Metrics): BudgetEvents => {
  const warnedModels = new Set<string>();
  // Two children made once: labels() makes a child per call.
  const storeSeconds = { reserve: m.storeSeconds.labels('reserve'), commit: m.storeSeconds.labels('commit') };
  return {
    refused: (route, r, ctx, err) => {
      m.budgetRejections.labels(r.scopeKind, r.reason).inc();
      ctx.log.warn({ code: err.code, ...err.details }, `call refused: ${err.message}`);
    },
    alert: (route, c, ctx) => {
      m.budgetAlerts.labels(c.scope.kind, c.metric === 'usdMicros' ? 'usd' : c.metric).inc();
      const unit = (n: number) => (c.metric === 'usdMicros' ? n / 1e6 : n);
      ctx.log.warn(
        { scope: c.scope.kind, scopeId: c.scope.id, window: c.window, metric: c.metric === 'usdMicros' ? 'usd' : c.metric, percent: c.percent, used: unit(c.used), limit: unit(c.limit) },
        `budget alert: ${c.scope.kind} ${c.scope.id} used ${c.percent}% of its ${c.window} cap`,
      );
    },
    settled: (route, s, ctx) => {
      const u = s.usage;
      m.tokens.labels(route, s.model, 'input').inc(u.inputTokens);
      m.tokens.labels(route, s.model, 'cached_input').inc(u.cachedInputTokens);
      m.tokens.labels(route, s.model, 'output').inc(u.outputTokens);
      if (u.reasoningTokens > 0) m.tokens.labels(route, s.model, 'reasoning').inc(u.reasoningTokens);
      m.cost.labels(route, s.model).inc(s.costMicros / 1e6);
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
      m.storeErrors.labels(op).inc();
      ctx.log.error({ op, error: err instanceof Error ? err.message : String(err) }, `budget store ${op} failed`);
    },
  };
};

