import { describe, expect, it } from 'vitest';
import {
  bucketKey,
  routeOfBucketKey,
  writerKey,
  coverSince,
  coverWindow,
  DAY_MS,
  HOUR_MS,
  latencyField,
  latencyQuantileMs,
  MINUTE_MS,
  minuteIndex,
  retentionMs,
  sumFields,
  ttlSeconds,
  windowFirstMinute,
} from '../../src/slo/buckets.js';

// 2025-01-15 12:30:30 UTC
const T = Date.UTC(2025, 0, 15, 12, 30, 30);
const M = minuteIndex(T);

describe('bucket keys and retention', () => {
  it('names keys with a per-route Redis Cluster hash tag (prefix and route), then the tier and index', () => {
    expect(bucketKey('fusebox', { route: 'chat', tier: 'm', index: 123 })).toBe('{fusebox:slo:chat}:m:123');
    expect(bucketKey('team-a', { route: 'chat', tier: 'd', index: 20103 })).toBe('{team-a:slo:chat}:d:20103');
    // A route's writer marks share its buckets' slot: the script applying a flush touches one slot.
    expect(writerKey('fusebox', 'chat', 'w1')).toBe('{fusebox:slo:chat}:w:w1');
  });

  it('finds the route of a bucket key, and of nothing else', () => {
    expect(routeOfBucketKey('fusebox', '{fusebox:slo:chat.v2}:d:20103')).toBe('chat.v2');
    expect(routeOfBucketKey('fusebox', '{fusebox:slo:chat}:w:w1')).toBeUndefined();
    expect(routeOfBucketKey('fusebox', '{other:slo:chat}:d:1')).toBeUndefined();
    expect(routeOfBucketKey('fusebox', '{fusebox:slo}:published')).toBeUndefined();
    // The previous layout, still read while its buckets live.
    expect(routeOfBucketKey('fusebox', '{fusebox}:slo:chat:d:20103')).toBe('chat');
    expect(routeOfBucketKey('fusebox', '{fusebox}:slo:w:w1')).toBeUndefined();
  });

  it('keeps minute buckets 6 h 10 min, hour buckets the SLO window (at least 3 days) plus 1 h, day buckets the window plus a day', () => {
    expect(retentionMs('m', 30)).toBe(6 * HOUR_MS + 10 * MINUTE_MS);
    expect(retentionMs('h', 30)).toBe(30 * DAY_MS + HOUR_MS);
    expect(retentionMs('h', 1)).toBe(3 * DAY_MS + HOUR_MS);
    expect(retentionMs('d', 30)).toBe(31 * DAY_MS);
  });

  it('sets a TTL counted from the end of the bucket, never below 1 s', () => {
    // The current minute ends in 29.5 s; plus 6 h 10 min.
    expect(ttlSeconds({ route: 'r', tier: 'm', index: M }, 30, T)).toBe(30 + 6 * 3600 + 600);
    expect(ttlSeconds({ route: 'r', tier: 'm', index: M - 1000 }, 30, T)).toBe(1);
  });
});

describe('windows', () => {
  it('a 5-minute window is the current minute bucket and the 4 before it', () => {
    expect(windowFirstMinute(5 * MINUTE_MS, T)).toBe(M - 4);
    expect(coverWindow('r', 5 * MINUTE_MS, T).map((r) => `${r.tier}${r.index - M}`)).toEqual(['m-4', 'm-3', 'm-2', 'm-1', 'm0']);
  });

  it('a window reaching past an hour boundary reads whole hours from the boundary on', () => {
    // 1 h = minutes 11:31..12:30: 29 minutes of the 11 o'clock hour, then the 12 o'clock hour bucket.
    const refs = coverWindow('r', HOUR_MS, T);
    expect(refs).toHaveLength(30);
    expect(refs[0]).toEqual({ route: 'r', tier: 'm', index: M - 59 });
    expect(refs[28]).toEqual({ route: 'r', tier: 'm', index: M - 31 });
    expect(refs[29]).toEqual({ route: 'r', tier: 'h', index: Math.floor(T / HOUR_MS) });
  });

  it('windows over 6 h are hour-aligned and use day buckets in the middle', () => {
    // 3 d = the last 72 hour buckets: 2025-01-12 13:00 .. 2025-01-15 12:00.
    const first = windowFirstMinute(3 * DAY_MS, T);
    expect(first * MINUTE_MS).toBe(Date.UTC(2025, 0, 12, 13));
    const refs = coverWindow('r', 3 * DAY_MS, T);
    const hours = refs.filter((r) => r.tier === 'h').length;
    const days = refs.filter((r) => r.tier === 'd').map((r) => new Date(r.index * DAY_MS).toISOString().slice(0, 10));
    expect(hours).toBe(11); // 13:00..23:00 of the 12th
    expect(days).toEqual(['2025-01-13', '2025-01-14', '2025-01-15']);
    expect(refs.some((r) => r.tier === 'm')).toBe(false);
  });

  it('covers 30 days with at most 23 hour buckets and 30 day buckets', () => {
    const refs = coverWindow('r', 30 * DAY_MS, T);
    expect(refs.filter((r) => r.tier === 'h').length).toBeLessThanOrEqual(23);
    expect(refs.filter((r) => r.tier === 'd').length).toBeLessThanOrEqual(30);
  });

  it('covers every minute from the first up to now exactly once', () => {
    for (const first of [M - 1, M - 61, M - 359, M - 3 * 1440 - 7]) {
      const covered = new Set<number>();
      for (const r of coverSince('r', first, T)) {
        const size = { m: 1, h: 60, d: 1440 }[r.tier];
        for (let i = 0; i < size; i++) {
          const minute = r.index * size + i;
          if (minute > M) continue;
          expect(covered.has(minute)).toBe(false);
          covered.add(minute);
        }
      }
      expect(covered.size).toBe(M - first + 1);
      expect(Math.min(...covered)).toBe(first);
    }
  });
});

describe('latency histogram', () => {
  it('files a latency under the first bound at or above it, or the overflow bucket', () => {
    expect(latencyField(5)).toBe('l0');
    expect(latencyField(6)).toBe('l1');
    expect(latencyField(5000)).toBe('l9');
    expect(latencyField(600_001)).toBe('l16');
  });

  it('interpolates a quantile inside its bucket like histogram_quantile', () => {
    // 90 calls ≤ 1 s (bucket 500-1000 ms), 10 calls in 2.5-5 s. p99 rank 99 is 9th of 10 in (2500, 5000].
    const f = sumFields([{ l7: 90 }, { l9: 10 }]);
    expect(latencyQuantileMs(f, 0.99)).toBeCloseTo(2500 + 2500 * (9 / 10), 6);
    // p50 rank 50 is 50th of 90 in (500, 1000].
    expect(latencyQuantileMs(f, 0.5)).toBeCloseTo(500 + 500 * (50 / 90), 6);
    expect(latencyQuantileMs({ l16: 3 }, 0.99)).toBe(600_000);
    expect(latencyQuantileMs({}, 0.99)).toBeUndefined();
  });
});
