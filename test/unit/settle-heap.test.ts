import { getHeapSpaceStatistics } from 'node:v8';
import { describe, expect, it } from 'vitest';
import { settleHeap } from '../../src/cli/settle-heap.js';

const newSpaceMiB = () => getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')!.space_size / 2 ** 20;

describe('settleHeap', () => {
  it('gives back the young generation a burst of surviving allocations grew, and leaves no gc() behind', () => {
    // What a start does: many objects allocated fast that survive their first collections.
    const kept: object[] = [];
    for (let i = 0; i < 400_000; i++) kept.push({ i, s: `x${i}` });
    expect(newSpaceMiB()).toBeGreaterThan(1);

    expect(settleHeap()).toBe(true);

    expect(newSpaceMiB()).toBeLessThanOrEqual(1);
    expect(kept.length).toBe(400_000); // live objects stay
    expect((globalThis as { gc?: unknown }).gc).toBeUndefined();
  });
});
