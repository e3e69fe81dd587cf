import { describe, expect, it } from 'vitest';
import { CrossSlotError, sameSlot } from '../../src/store/redis-slots.js';

describe('Redis Cluster slots of a script’s keys', () => {
  it('hashes the {tag} only, as Redis does: one agent’s keys share a slot, two tags (almost always) do not', () => {
    expect(sameSlot(['{fusebox:a:pod-1}:day:2026-11-30', '{fusebox:a:pod-1}:day:2026-11-30:h', '{fusebox:a:pod-1}:wf:w1:e'])).toBe(true);
    expect(sameSlot(['{fusebox:a:pod-1}:day:2026-11-30', '{fusebox:r:openai}:day:2026-11-30'])).toBe(false);
    // Redis's own example: "foo" is slot 12182, "bar" 5061; an empty tag "{}" hashes the whole key.
    expect(sameSlot(['foo', 'bar'])).toBe(false);
    expect(sameSlot(['{}foo', '{}bar'])).toBe(false);
    expect(sameSlot(['{user1000}.following', '{user1000}.followers'])).toBe(true);
    expect(sameSlot([])).toBe(true);
  });

  it('reports a cross-slot script as a TypeError naming the script and the keys (a wiring bug, not an outage)', () => {
    const err = new CrossSlotError('fuseboxReserve', ['{p:a:x}:day:d', '{p:f}:day:d']);
    expect(err).toBeInstanceOf(TypeError);
    expect(err.message).toBe(
      'Redis script fuseboxReserve would touch keys of several cluster slots ({p:a:x}:day:d, {p:f}:day:d); on a cluster every key of one call must share a hash tag',
    );
  });
});
