import { describe, expect, it } from 'vitest';
import { startFootprint } from '../../bench/servers/footprint.js';

describe('bench footprint (bench:per-call)', () => {
  it('counts the bytes allocated between start and stop, collections included, and the collections it saw', () => {
    const stop = startFootprint();
    // 20,000 arrays of 126 small integers: a 1,024-byte backing store and a 32-byte array object each (~21 MB), dropped
    // as soon as the next one is made, so young-generation collections run in between and must be added back.
    let kept: number[] = [];
    for (let i = 0; i < 20_000; i++) kept = new Array<number>(126).fill(i);
    const f = stop();
    expect(kept).toHaveLength(126);
    expect(f.gcs).toBeGreaterThan(0);
    expect(f.allocatedBytes).toBeGreaterThanOrEqual(20_000 * 1_024);
    // The loop's own bookkeeping and the test runner add a little; a missed collection would remove megabytes.
    expect(f.allocatedBytes).toBeLessThan(20_000 * 1_024 * 1.3);
    expect(f.cpuUs).toBeGreaterThan(0);
  });
});
