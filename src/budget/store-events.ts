import type { Logger } from 'pino';
import { budgetAlert } from './alert.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { LeaseEvent } from './lease.js';
import type { FallbackEvent } from './local-fallback-store.js';
import { METRICS, type BudgetStore, type MutableAmounts } from './store.js';

const routeLabel = (scope: { kind: string; id: string }) => (scope.kind === 'route' ? scope.id : '');

/** LocalFallbackStore events → metrics and one log line each (journal size changes only move the gauge). */
export const fallbackEvents =
  (metrics: Metrics, logger: Logger) =>
  (e: FallbackEvent): void => {
    switch (e.type) {
      case 'unavailable':
        metrics.storeUp.set(0);
        logger.error({ error: e.error.message }, 'budget store unreachable: routes follow budget.storeUnavailable (local slice and journal, or refuse)');
        return;
      case 'recovered':
        metrics.storeUp.set(1);
        logger.info({ replayed: e.replayed }, 'budget store back: journal replayed');
        return;
      case 'replayFailed':
        logger.warn({ error: e.error.message, pending: e.pending }, 'journal replay failed; will retry');
        return;
      case 'journal':
        metrics.journalEntries.set(e.entries);
        return;
      case 'journalDropped':
        metrics.journalDropped.labels(e.reason).inc(e.entries);
        metrics.journalDroppedUsd.labels(e.reason).inc(e.usdMicros / 1e6);
        if (e.reason === 'full') {
          logger.warn(
            { entries: e.entries, usd: e.usdMicros / 1e6 },
            'budget journal full (store.journalMaxEntries): oldest charges dropped, Redis will never count them',
          );
        } else logger.error({ entries: e.entries, usd: e.usdMicros / 1e6 }, 'journaled charges dropped at shutdown: the shared store never came back');
    }
  };

/** LeasedStore events → metrics and log lines. Labels: scope kind and route id only (never an agent id). */
export const leaseEvents =
  (metrics: Metrics, logger: Logger) =>
  (e: LeaseEvent): void => {
    switch (e.type) {
      case 'granted':
        metrics.leaseGrants.labels(e.scope.kind, routeLabel(e.scope), e.renewal ? 'renew' : 'acquire').inc();
        logger.debug({ scope: e.scope.kind, id: e.scope.id, window: e.window, usd: e.grant.usdMicros / 1e6, tokens: e.grant.tokens, calls: e.grant.calls, liveHolders: e.liveHolders }, 'budget slice leased');
        return;
      case 'refused':
        metrics.leaseRefusals.labels(e.scope.kind, routeLabel(e.scope), e.reason).inc();
        // An exhausted cap is logged by the budget layer with the refusal; a missing slice is a 503 it does not log.
        if (e.reason === 'no_lease') {
          logger.warn({ scope: e.scope.kind, id: e.scope.id, window: e.window, metric: e.metric, requested: e.metric === 'usdMicros' ? e.requested / 1e6 : e.requested }, 'call refused: the budget store is unreachable and no slice of this cap is left');
        }
        return;
      case 'outageAdmission':
        metrics.leaseOutageAdmissions.labels(e.scope.kind, routeLabel(e.scope), e.onAllowance ? 'allowance' : 'lease').inc();
        metrics.leaseOutageAdmittedUsd.labels(e.scope.kind, routeLabel(e.scope)).inc(e.usdMicros / 1e6);
        return;
      case 'sourceDown':
        // Every window is leased: a lease request that fails is the store failing calls (an OOM Redis answers the
        // kill reads LocalFallbackStore watches, but refuses every lease script).
        metrics.storeUp.set(0);
        logger.error(
          { error: e.error.message },
          'budget leases unreachable: leased caps (route, fleet, agent, workflow) admit only on the slices held until they expire (store.lease), then refuse with 503',
        );
        return;
      case 'sourceUp':
        metrics.storeUp.set(1);
        logger.info('budget leases reachable again: unreported spend reported');
        return;
      case 'alert':
        budgetAlert(metrics, logger, e.crossing);
        return;
      case 'unreportedDropped':
        logger.error(
          { scope: e.scope.kind, id: e.scope.id, window: e.window, usd: e.unreported.usdMicros / 1e6, tokens: e.unreported.tokens, calls: e.unreported.calls },
          'spend on a leased window never reported: the store was unreachable at shutdown',
        );
    }
  };

/**
 * Sets the lease gauges from the store's slices (called before each scrape): one per metric, for windows capping it.
 * Windows sharing the labels (a sidecar's workflows; yesterday's day and today's around midnight) are summed: each
 * would otherwise overwrite the last, and the series would show one workflow picked by map order.
 */
export const refreshLeaseGauge = (store: BudgetStore, metrics: Metrics): void => {
  // Only what is held now: a label set whose slices all went (a sidecar's last workflow went idle) has no series.
  metrics.leaseRemaining.reset();
  metrics.leaseRemainingTokens.reset();
  metrics.leaseRemainingCalls.reset();
  const sums = new Map<string, { labels: readonly [string, string, string]; left: Partial<MutableAmounts> }>();
  for (const v of store.leaseViews?.() ?? []) {
    const labels = [v.scope.kind, v.window, routeLabel(v.scope)] as const;
    const key = labels.join('\0');
    let sum = sums.get(key);
    if (sum === undefined) sums.set(key, (sum = { labels, left: {} }));
    for (const m of METRICS) {
      const left = v.remaining[m];
      if (left !== undefined) sum.left[m] = (sum.left[m] ?? 0) + left;
    }
  }
  for (const { labels, left } of sums.values()) {
    if (left.usdMicros !== undefined) metrics.leaseRemaining.labels(...labels).set(left.usdMicros / 1e6);
    if (left.tokens !== undefined) metrics.leaseRemainingTokens.labels(...labels).set(left.tokens);
    if (left.calls !== undefined) metrics.leaseRemainingCalls.labels(...labels).set(left.calls);
  }
};
