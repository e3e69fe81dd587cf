import type { Logger } from 'pino';
import type { AlertCrossing } from './store.js';
import type { Metrics } from '../telemetry/metrics.js';

/**
 * The one writer of a budget alert: `fusebox_budget_alerts_total` and a warn line naming the scope, window, metric and
 * figures. A leased window's crossing comes from a lease report (LeasedStore's `alert` event, logged on the process
 * logger); a per-call store's with the call that crossed it (on the call's logger, so with its request id).
 */
export const budgetAlert = (m: Metrics, log: Pick<Logger, 'warn'>, c: AlertCrossing): void => {
  const metric = c.metric === 'usdMicros' ? 'usd' : c.metric;
  m.budgetAlerts.labels(c.scope.kind, metric).inc();
  const unit = (n: number) => (c.metric === 'usdMicros' ? n / 1e6 : n);
  const used = unit(c.used);
  const limit = unit(c.limit);
  log.warn(
    { scope: c.scope.kind, scopeId: c.scope.id, window: c.window, windowId: c.windowId, metric, percent: c.percent, used, limit },
    `budget alert: ${c.scope.kind} ${c.scope.id} passed ${c.percent}% of its ${c.window} ${metric} cap (${used} of ${limit})`,
  );
};
