import { once } from 'node:events';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { SloSchema } from '../../src/config/schema.js';
import { bucketKey, minuteIndex, retentionMs } from '../../src/slo/buckets.js';
import { assessSlo } from '../../src/slo/burn.js';
import { MemoryCounterStore, RedisCounterStore } from '../../src/slo/counter-store.js';
import { SloRecorder, type SloEvent } from '../../src/slo/recorder.js';
import { RedisConnection } from '../../src/store/redis-connection.js';
import { objectiveOf, sloSpecOf } from '../../src/slo/spec.js';
import { readSloWindows } from '../../src/slo/windows.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

const T = Date.UTC(2025, 0, 15, 12, 30, 30);
const specs = [sloSpecOf('chat', SloSchema.parse({})), sloSpecOf('tools', SloSchema.parse({}))];

let redis: TestRedis;
const opened: RedisConnection[] = [];
let prefixSeq = 0;

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await Promise.all(opened.map((c) => c.close()));
  await redis?.stop();
});

const redisStore = (keyPrefix: string, timeoutMs = 500) => {
  const connection = new RedisConnection({ url: redis.url, keyPrefix, timeoutMs });
  opened.push(connection);
  return new RedisCounterStore(connection);
};

/** A sidecar: its own Redis client and recorder, on a shared clock. */
const sidecar = (keyPrefix: string, clock: { t: number }, name: string) => {
  const store = redisStore(keyPrefix);
  const recorder = new SloRecorder({ store, routes: specs, now: () => clock.t, flushIntervalMs: 1000, writerId: `${keyPrefix}-${name}` });
  return { store, recorder };
};

/** Resolves when the client is (back) in `ready`: on its event, not on a polling deadline. */
const waitReady = async (s: RedisCounterStore) => {
  if (s.redis.client.status !== 'ready') await once(s.redis.client, 'ready');
};

describe('SLO counters in a shared Redis', () => {
  it('two sidecars sharing one Redis produce fleet counters equal to the sum of their traffic', async () => {
    const prefix = `fleet${prefixSeq++}`;
    const clock = { t: T - 3 * 60_000 };
    const a = sidecar(prefix, clock, 'a');
    const b = sidecar(prefix, clock, 'b');
    const both = new MemoryCounterStore({ now: () => clock.t });
    const reference = new SloRecorder({ store: both, routes: specs, now: () => clock.t, flushIntervalMs: 1000 });
    await Promise.all([a.store.ready(2_000), b.store.ready(2_000)]);

    const traffic: Array<[typeof a, string, SloEvent, number]> = [
      [a, 'chat', { availability: 'good', latencyMs: 800, costUsdMicros: 40_000 }, 300],
      [a, 'chat', { availability: 'bad', latencyMs: 30_000 }, 7],
      [b, 'chat', { availability: 'good', latencyMs: 7_000, costUsdMicros: 200_000 }, 120],
      [b, 'chat', { availability: 'bad', latencyMs: 100 }, 13],
      [b, 'tools', { availability: 'good', latencyMs: 20 }, 50],
      [a, 'chat', { availability: 'skip', refused: true }, 4],
    ];
    for (let minute = 0; minute < 3; minute++) {
      for (const [car, route, event, n] of traffic) {
        for (let i = 0; i < n; i++) {
          car.recorder.record(route, event);
          reference.record(route, event);
        }
      }
      await Promise.all([a.recorder.flush(), b.recorder.flush(), reference.flush()]);
      clock.t += 60_000;
    }
    expect(a.recorder.stats()).toMatchObject({ pendingBatches: 0, lastFlushOk: true });

    const reader = redisStore(prefix);
    await reader.ready(2_000);
    const fleet = await readSloWindows(reader, 'chat', 30, clock.t);
    const expected = await readSloWindows(both, 'chat', 30, clock.t);
    expect(fleet).toEqual(expected);
    expect(fleet['5m']).toMatchObject({ ag: 3 * 420, ab: 3 * 20, lb: 3 * 127, r: 3 * 4, cn: 3 * 420, cs: 3 * (300 * 40_000 + 120 * 200_000) });
    const availability = assessSlo(fleet, objectiveOf(specs[0]!, 'availability'));
    expect(availability.burnRates['1h']).toBeCloseTo(60 / 1320 / 0.005, 9);
    expect((await readSloWindows(reader, 'tools', 30, clock.t))['1h']).toEqual({ ag: 150, lg: 150, l2: 150 });
  });

  it('gives each bucket a TTL of its retention past its end', async () => {
    const prefix = `ttl${prefixSeq++}`;
    const clock = { t: T };
    const { recorder, store } = sidecar(prefix, clock, 'a');
    await store.ready(2_000);
    recorder.record('chat', { availability: 'good' });
    await recorder.flush();
    const ttl = await store.redis.client.ttl(bucketKey(prefix, { route: 'chat', tier: 'm', index: minuteIndex(T) }));
    expect(ttl).toBe(30 + retentionMs('m', 30) / 1000);
    const dayTtl = await store.redis.client.ttl(bucketKey(prefix, { route: 'chat', tier: 'd', index: Math.floor(T / 86_400_000) }));
    expect(dayTtl).toBeGreaterThan(30 * 86_400);
    expect(dayTtl).toBeLessThanOrEqual(32 * 86_400);
  });

  it('applies a batch once even when it is sent twice, per writer', async () => {
    const prefix = `once${prefixSeq++}`;
    const store = redisStore(prefix);
    await store.ready(2_000);
    const ref = { route: 'chat', tier: 'm', index: minuteIndex(T) } as const;
    const batch = { seq: 1, writes: [{ ref, ttlSeconds: 600, fields: { ag: 5, ab: 1 } }] };
    await store.write('w1', [batch]);
    await store.write('w1', [batch, { seq: 2, writes: [{ ref, ttlSeconds: 600, fields: { ag: 1 } }] }]);
    await store.write('w2', [batch]);
    expect(await store.read([ref])).toEqual([{ ag: 11, ab: 2 }]);
  });

  it('adds in the buckets of the previous layout ({prefix}:slo:<route>:…), so an upgrade keeps the SLO windows; their routes are known', async () => {
    const prefix = `legacy${prefixSeq++}`;
    const clock = { t: T };
    const { recorder, store } = sidecar(prefix, clock, 'a');
    await store.ready(2_000);
    // What a sidecar of the previous version wrote: minute, hour and day buckets under the one `{prefix}` tag.
    const minute = minuteIndex(T);
    for (const key of [`{${prefix}}:slo:chat:m:${minute}`, `{${prefix}}:slo:chat:h:${Math.floor(minute / 60)}`, `{${prefix}}:slo:chat:d:${Math.floor(minute / 1440)}`]) {
      await store.redis.client.hset(key, { ag: 90, ab: 10 });
    }
    await store.redis.client.hset(`{${prefix}}:slo:old-only:d:${Math.floor(minute / 1440)}`, { ag: 1 });
    for (let i = 0; i < 5; i++) recorder.record('chat', { availability: 'bad', latencyMs: 10 });
    await recorder.flush();
    const windows = await readSloWindows(store, 'chat', 30, T);
    expect(assessSlo(windows, objectiveOf(specs[0]!, 'availability')).events).toMatchObject({ '5m': { good: 90, bad: 15 }, budget: { good: 90, bad: 15 } });
    expect(await store.routes()).toEqual(['chat', 'old-only']);
  });

  it('reads a route without buckets of the previous layout in one EXISTS besides its HGETALLs', async () => {
    const prefix = `nolegacy${prefixSeq++}`;
    const store = redisStore(prefix);
    await store.ready(2_000);
    const seen: string[] = [];
    // A standalone Redis here (MONITOR is a single-node command).
    const monitor = await (store.redis.client as Redis).monitor();
    monitor.on('monitor', (_t: string, args: string[]) => {
      if (args.some((a) => a.includes(`${prefix}`)) || args[1] === 'legacy-done') seen.push(args[0]!.toLowerCase());
    });
    try {
      const ref = (index: number) => ({ route: 'chat', tier: 'm', index }) as const;
      expect(await store.read([ref(1), ref(2), ref(3)])).toEqual([{}, {}, {}]);
      await new Promise<void>((resolve) => {
        monitor.on('monitor', (_t: string, args: string[]) => args[1] === 'legacy-done' && resolve());
        void store.redis.client.echo('legacy-done');
      });
    } finally {
      monitor.disconnect();
    }
    expect(seen.sort()).toEqual(['echo', 'exists', 'hgetall', 'hgetall', 'hgetall']);
  });

  it('keeps the counts while Redis is down and writes them once it is back, without waiting on the hot path', async () => {
    const prefix = `down${prefixSeq++}`;
    const clock = { t: T };
    const { recorder, store } = sidecar(prefix, clock, 'a');
    await store.ready(2_000);
    recorder.record('chat', { availability: 'good' });
    await recorder.flush();
    const closed = once(store.redis.client, 'close');
    redis.kill();
    await closed;
    recorder.record('chat', { availability: 'bad' });
    const started = Date.now();
    await recorder.flush();
    // Bounded by the command timeout (500 ms), not by ioredis' reconnect loop; the margin is for a loaded machine.
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(recorder.stats()).toMatchObject({ pendingBatches: 1, lastFlushOk: false });
    await redis.restart();
    await waitReady(store);
    // The server lost its data with the restart (no persistence): only what is written after it counts.
    recorder.record('chat', { availability: 'good' });
    await recorder.flush();
    expect(recorder.stats()).toMatchObject({ pendingBatches: 0, lastFlushOk: true });
    expect((await store.read([{ route: 'chat', tier: 'm', index: minuteIndex(T) }]))[0]).toEqual({ ab: 1, ag: 1 });
  });

  it('does not count twice a flush that timed out on a hung Redis but ran when it woke up', async () => {
    const prefix = `hung${prefixSeq++}`;
    const clock = { t: T };
    const store = redisStore(prefix, 200);
    const recorder = new SloRecorder({ store, routes: specs, now: () => clock.t, flushIntervalMs: 1000, writerId: 'hung-a' });
    await store.ready(2_000);
    recorder.record('chat', { availability: 'bad' });
    redis.pause();
    try {
      const started = Date.now();
      await recorder.flush();
      // Bounded by the command timeout (200 ms) while Redis is paused (it would otherwise wait for ever).
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(recorder.stats().pendingBatches).toBe(1);
    } finally {
      redis.resume();
    }
    // Redis now runs the timed-out script (wait until its count shows); the retry carries the same sequence number
    // and is skipped.
    await waitReady(store);
    const ref = { route: 'chat', tier: 'm', index: minuteIndex(T) } as const;
    await vi.waitFor(async () => expect(await store.read([ref])).toEqual([{ ab: 1 }]), { timeout: 10_000, interval: 20 });
    await recorder.flush();
    expect(recorder.stats()).toMatchObject({ pendingBatches: 0, lastFlushOk: true });
    expect((await store.read([{ route: 'chat', tier: 'm', index: minuteIndex(T) }]))[0]).toEqual({ ab: 1 });
  });
});
