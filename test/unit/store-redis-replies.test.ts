import { describe, expect, it } from 'vitest';
import { COMMIT, RELEASE, RESERVE, SNAPSHOT } from '../../src/budget/redis-scripts.js';

describe('budget script replies', () => {
  it('decodes an admitted reserve into used amounts per window, alert crossings and the commits that rode it', () => {
    expect(RESERVE.decode([1, [[250_000, 10, 1], [0, 0, 1]], [[1, 1, 250_000], [2, 3, 1]], [[0], [1, [[1, 2, 80]]]]])).toEqual({
      admitted: true,
      used: [
        { usdMicros: 250_000, tokens: 10, calls: 1 },
        { usdMicros: 0, tokens: 0, calls: 1 },
      ],
      crossed: [
        { window: 0, metric: 'usdMicros', used: 250_000 },
        { window: 1, metric: 'calls', used: 1 },
      ],
      settled: [
        { charged: false, crossed: [] },
        { charged: true, crossed: [{ window: 0, metric: 'tokens', used: 80 }] },
      ],
    });
  });

  it('decodes a cap refusal with named fields (kills are not the script\'s business: RedisStore keeps a copy)', () => {
    expect(RESERVE.decode([0, 'CAP', 2, 2, 1000, 900, 50, '1764460800000', [[1, []]]])).toEqual({
      admitted: false,
      refusal: 'CAP',
      window: 1,
      metric: 'tokens',
      limit: 1000,
      spent: 900,
      reserved: 50,
      lastSeen: 1_764_460_800_000,
      // A commit that rode a refused reserve landed all the same.
      settled: [{ charged: true, crossed: [] }],
    });
    expect(RESERVE.decode([0, 'CAP', 1, 1, 1, 1, 0, '', []])).toMatchObject({ lastSeen: null, settled: [] });
  });

  it('decodes commit, release and snapshot replies', () => {
    expect(COMMIT.decode([[0], [1, [[1, 2, 80]]]])).toEqual([
      { charged: false, crossed: [] },
      { charged: true, crossed: [{ window: 0, metric: 'tokens', used: 80 }] },
    ]);
    expect(RELEASE.decode(1)).toBeUndefined();
    expect(SNAPSHOT.decode([[1, 2, 3, 4, 5, 6, -1], [0, 0, 0, 0, 0, 0, 1_764_460_800_000]])).toEqual([
      { spent: { usdMicros: 1, tokens: 2, calls: 3 }, reserved: { usdMicros: 4, tokens: 5, calls: 6 }, lastSeen: null },
      { spent: { usdMicros: 0, tokens: 0, calls: 0 }, reserved: { usdMicros: 0, tokens: 0, calls: 0 }, lastSeen: 1_764_460_800_000 },
    ]);
  });

  it('rejects a reply of the wrong shape with an error that says what was wrong, never a NaN or a zero', () => {
    // The flat layout of earlier versions: the windows' used amounts are not an array of triples.
    expect(() => RESERVE.decode([1, 250_000, 10, 1])).toThrow(/used: expected an array, got 250000/);
    // The layout before commits rode reserves: no commits' replies.
    expect(() => RESERVE.decode([1, [], []])).toThrow(/admitted: expected 4 items/);
    expect(() => RESERVE.decode([1, [[250_000, 10]], [], []])).toThrow(/used\[0\]: expected 3 items/);
    expect(() => RESERVE.decode([1, [['a', 10, 1]], [], []])).toThrow(/used\[0\]\.usd: expected an integer, got "a"/);
    expect(() => RESERVE.decode([1, [], [[1, 4, 5]], []])).toThrow(/crossings\[0\]\.metric: expected 1\.\.3, got 4/);
    expect(() => RESERVE.decode([1, [], [], [[2]]])).toThrow(/commits\[0\] charged: expected 2 items/);
    expect(() => RESERVE.decode([0, 'CAP', 0, 1, 1, 1, 0, '', []])).toThrow(/window: expected 1\.\./);
    expect(() => RESERVE.decode([0, 'CAP', 1, 1, 1, 1, 0, 'soon', []])).toThrow(/seen: expected a number, got "soon"/);
    expect(() => RESERVE.decode([0, 'MAYBE'])).toThrow(/expected \{1, used, crossed, commits\} or \{0, 'CAP', \.\.\., commits\}/);
    // Kills left the script: a KILLED reply now comes from a foreign script under the same name.
    expect(() => RESERVE.decode([0, 'KILLED', 'agent:a1', '{}'])).toThrow(/got flag 0 and KILLED/);
    expect(() => RESERVE.decode('OK')).toThrow(/reply: expected an array/);
    expect(() => COMMIT.decode([[1]])).toThrow(/commits\[0\] charged: expected 2 items/);
    expect(() => COMMIT.decode([[0, []]])).toThrow(/commits\[0\] settled before: expected 1 items/);
    expect(() => COMMIT.decode([0])).toThrow(/commits\[0\]: expected an array/);
    expect(() => RELEASE.decode(0)).toThrow(/reply: expected 1\.\.1, got 0/);
    expect(() => SNAPSHOT.decode([1, 2, 3, 4, 5, 6, -1])).toThrow(/windows\[0\]: expected an array/);
  });
});
