import { describe, expect, it } from 'vitest';
import { newRequestId } from '../../src/http/request-id.js';

describe('request ids Fusebox makes for calls that came without one', () => {
  it('are version 4 UUIDs (RFC 9562 variant), all different across several refills of the random pool', () => {
    // 256 ids per refill: 2,000 cross seven of them, and a pool not refilled would repeat its ids.
    const ids = Array.from({ length: 2_000 }, () => newRequestId());
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('use every hex digit in every free position: nothing but the version and variant bits is fixed', () => {
    const ids = Array.from({ length: 2_000 }, () => newRequestId());
    for (const at of [0, 7, 9, 15, 20, 35]) {
      expect(new Set(ids.map((id) => id[at])).size, `position ${at}`).toBe(16);
    }
  });
});
