import { describe, expect, it } from 'vitest';
import { budgetScopes, killFieldsFor, overCap } from '../../src/budget/store.js';
import { BudgetsSchema, RouteBudgetSchema } from '../../src/config/schema.js';

describe('budget scopes from config', () => {
  it('lists agent day and month, the workflow, the route day and the fleet day and month, with caps in integer units', () => {
    const budgets = BudgetsSchema.parse({
      agent: { dailyUsd: 25, monthlyUsd: 500, dailyTokens: 1_000_000 },
      workflow: { usd: 10, maxCalls: 50, idleTtlMs: 3_600_000 },
      fleet: { dailyUsd: 500.5, monthlyUsd: 9_000 },
    });
    const scopes = budgetScopes(budgets, { budget: RouteBudgetSchema.parse({ dailyUsd: 0.000001 }) }, { agent: 'pod-1', route: 'openai', workflow: 'w1' });
    expect(scopes).toEqual([
      { scope: { kind: 'agent', id: 'pod-1' }, window: 'day', caps: { usdMicros: 25_000_000, tokens: 1_000_000 } },
      { scope: { kind: 'agent', id: 'pod-1' }, window: 'month', caps: { usdMicros: 500_000_000 } },
      { scope: { kind: 'workflow', id: 'w1', agent: 'pod-1' }, window: 'workflow', caps: { usdMicros: 10_000_000, calls: 50 }, idleTtlMs: 3_600_000 },
      { scope: { kind: 'route', id: 'openai' }, window: 'day', caps: { usdMicros: 1 } },
      { scope: { kind: 'fleet', id: 'all' }, window: 'day', caps: { usdMicros: 500_500_000 } },
      { scope: { kind: 'fleet', id: 'all' }, window: 'month', caps: { usdMicros: 9_000_000_000 } },
    ]);
    expect(killFieldsFor(scopes)).toEqual(['global', 'agent:pod-1', 'workflow:w1']);
  });

  it('has no workflow scope without a workflow id, and uncapped scopes are still counted', () => {
    const scopes = budgetScopes(BudgetsSchema.parse({}), { budget: RouteBudgetSchema.parse({}) }, { agent: 'local', route: 'r' });
    expect(scopes.map((s) => [s.scope.kind, s.window, s.caps])).toEqual([
      ['agent', 'day', {}],
      ['agent', 'month', {}],
      ['route', 'day', {}],
      ['fleet', 'day', {}],
      ['fleet', 'month', {}],
    ]);
  });

  it('refuses what would pass the cap, and anything once the cap is used up', () => {
    expect(overCap(90, 10, 100)).toBe(false);
    expect(overCap(90, 11, 100)).toBe(true);
    expect(overCap(100, 0, 100)).toBe(true);
    expect(overCap(99, 0, 100)).toBe(false);
  });
});
