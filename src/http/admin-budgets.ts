import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { Config } from '../config/schema.js';
import { budgetScopes, type BudgetStore, type Kill, type KillTarget, type ScopeBudget, type ScopeUsage } from '../budget/store.js';
import { BadRequestError } from '../errors.js';
import type { Metrics } from '../telemetry/metrics.js';
import { refreshLeaseGauge } from '../budget/store-events.js';

const KillBody = z.strictObject({
  target: z.enum(['global', 'agent', 'workflow']),
  /** Agent or workflow id; omitted for `global`. For `agent`, defaults to this sidecar's agent. */
  id: z.string().min(1).max(256).optional(),
  reason: z.string().max(500).optional(),
});

const killTarget = (body: z.infer<typeof KillBody>, agent: string): KillTarget => {
  if (body.target === 'global') return { kind: 'global' };
  if (body.target === 'agent') return { kind: 'agent', id: body.id ?? agent };
  if (body.id === undefined) throw new BadRequestError('a workflow kill needs "id": the x-fusebox-workflow value');
  return { kind: 'workflow', id: body.id };
};

const usd = (micros: number | undefined) => (micros === undefined ? null : micros / 1e6);

/** One scope window as the admin API shows it: settled spend, what in-flight calls hold, caps (null: uncapped). */
export const budgetView = (u: ScopeUsage) => ({
  scope: u.scope.kind,
  id: u.scope.id,
  window: u.window,
  windowId: u.windowId,
  spentUsd: usd(u.spent.usdMicros),
  spentTokens: u.spent.tokens,
  calls: u.spent.calls,
  inFlightUsd: usd(u.reserved.usdMicros),
  inFlightTokens: u.reserved.tokens,
  inFlightCalls: u.reserved.calls,
  limitUsd: usd(u.caps.usdMicros),
  limitTokens: u.caps.tokens ?? null,
  limitCalls: u.caps.calls ?? null,
  resetsAt: u.resetAt === null ? null : new Date(u.resetAt).toISOString(),
});

/** A kill switch as the admin API shows it. */
export const killView = (k: Kill) => ({ ...k.target, reason: k.reason, at: new Date(k.at).toISOString() });

/** The agent, route and fleet windows this sidecar reports (workflow ones only on request: ids are unbounded). */
export const reportedScopes = (config: Config, workflow?: string): ScopeBudget[] => {
  const seen = new Set<string>();
  const out: ScopeBudget[] = [];
  for (const route of config.routes) {
    for (const s of budgetScopes(config.budgets, route, { agent: config.agent.id, route: route.name, ...(workflow ? { workflow } : {}) })) {
      const k = `${s.scope.kind}:${s.scope.id}:${s.window}`;
      if (!seen.has(k)) {
        seen.add(k);
        out.push(s);
      }
    }
  }
  return out;
};

/** Refresh the budget gauges from the store (called before each scrape: the store is the truth, fleet-wide). */
export const refreshBudgetGauges = async (config: Config, store: BudgetStore, metrics: Metrics): Promise<void> => {
  metrics.storeUp.set(store.available() ? 1 : 0);
  refreshLeaseGauge(store, metrics);
  if (!store.available()) return;
  const usage = await store.snapshot(reportedScopes(config));
  for (const u of usage) {
    if (u.scope.kind === 'workflow') continue;
    const labels = [u.scope.kind, u.window, u.scope.kind === 'route' ? u.scope.id : ''] as const;
    metrics.budgetSpent.labels(...labels).set(u.spent.usdMicros / 1e6);
    if (u.caps.usdMicros !== undefined) metrics.budgetLimit.labels(...labels).set(u.caps.usdMicros / 1e6);
  }
};

/**
 * Budget admin API. Reads: `GET /admin/budgets[?workflow=ID]` (spend, in-flight holds, limits and reset times
 * per scope window, fleet-wide), `GET /admin/kills`. Changes (bearer token, checked by admin.ts):
 * `POST /admin/kill {"target": "global"|"agent"|"workflow", "id"?, "reason"?}` stores a kill switch in the shared
 * store (every sidecar sharing it obeys on its next call), `POST /admin/kill/lift` with the same target lifts it.
 */
export const registerAdminBudgets = (app: FastifyInstance, deps: { readonly config: Config; store: BudgetStore; logger: Logger }): void => {
  // `deps.config` is read per request: a config reload replaces it.
  const { store, logger } = deps;
  app.get<{ Querystring: { workflow?: string } }>('/admin/budgets', async (req) => {
    const workflow = typeof req.query.workflow === 'string' && req.query.workflow !== '' ? req.query.workflow : undefined;
    const usage = await store.snapshot(reportedScopes(deps.config, workflow));
    return { storeAvailable: store.available(), scopes: usage.map(budgetView) };
  });
  app.get('/admin/kills', async () => (await store.getKills()).map(killView));
  app.post('/admin/kill', async (req) => {
    const parsed = KillBody.safeParse(req.body);
    if (!parsed.success) throw new BadRequestError('expected {"target": "global"|"agent"|"workflow", "id"?: string, "reason"?: string}');
    const target = killTarget(parsed.data, deps.config.agent.id);
    await store.setKill(target, parsed.data.reason ?? 'set by the admin API');
    logger.warn({ target, reason: parsed.data.reason }, 'kill switch set');
    return { killed: target };
  });
  app.post('/admin/kill/lift', async (req) => {
    const parsed = KillBody.safeParse(req.body);
    if (!parsed.success) throw new BadRequestError('expected {"target": "global"|"agent"|"workflow", "id"?: string}');
    const target = killTarget(parsed.data, deps.config.agent.id);
    const lifted = await store.clearKill(target);
    logger.warn({ target, lifted }, 'kill switch lifted');
    return { lifted, target };
  });
};
