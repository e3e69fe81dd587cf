import { describe, expect, it } from 'vitest';
import { refreshLeaseGauge } from '../../src/budget/store-events.js';
import type { BudgetStore, LeaseView } from '../../src/budget/store.js';
import { createMetrics } from '../../src/telemetry/metrics.js';

/** The store as the gauge reads it: its slices' views, nothing else. */
const holding = (views: LeaseView[]) => ({ leaseViews: () => views }) as unknown as BudgetStore;

const workflow = (calls: number): LeaseView => ({ scope: { kind: 'workflow', id: `w${calls}` }, window: 'workflow', remaining: { calls } });

describe('lease gauges', () => {
  it("sum a sidecar's workflows, and drop a label set once none of its slices is held", async () => {
    const metrics = createMetrics({ defaultMetrics: false });
    const series = async () => (await metrics.leaseRemainingCalls.get()).values.map((v) => [v.labels.scope_kind, v.value]);
    refreshLeaseGauge(holding([workflow(3), workflow(4)]), metrics);
    expect(await series()).toEqual([['workflow', 7]]);
    // Both workflows went idle and their slices were dropped: the series goes, not the last sum.
    refreshLeaseGauge(holding([]), metrics);
    expect(await series()).toEqual([]);
  });
});
