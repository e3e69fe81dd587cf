import { Redis } from 'ioredis';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisStore } from '../../src/budget/redis-store.js';
import { RedisConnection, type StoreCommandError } from '../../src/store/redis-connection.js';
import { defineScript } from '../../src/store/redis-script.js';
import { metricValue, startFusebox, type RunningFusebox } from '../helpers/fusebox.js';
import { COST_USD, PRICES, startLlmUpstream, type LlmUpstream } from '../helpers/llm.js';
import { startRedis } from '../helpers/redis.js';
import { startRedisCluster, type TestRedisCluster } from '../helpers/redis-cluster.js';

const routes = (up: LlmUpstream) => [{ name: 'openai', provider: 'openai', match: { pathPrefix: '/openai' }, upstream: { url: up.url }, budget: { prices: PRICES } }];

const chat = async (fb: RunningFusebox): Promise<number> => {
  const res = await request(`${fb.proxyUrl}/openai/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'test-model', max_tokens: 50, messages: [{ role: 'user', content: 'hello there' }] }),
  });
  await res.body.dump();
  return res.statusCode;
};

const spentToday = async (fb: RunningFusebox): Promise<number | undefined> => {
  const res = await request(`${fb.adminUrl}/admin/budgets`);
  const body = (await res.body.json()) as { scopes: Array<{ scope: string; window: string; spentUsd: number }> };
  expect(res.statusCode, JSON.stringify(body)).toBe(200);
  return body.scopes.find((s) => s.scope === 'agent' && s.window === 'day')?.spentUsd;
};

/** Client connections a node holds for sidecars: ioredis's short-lived slot-refresh connections are named and left out. */
const sidecarConnections = async (port: number): Promise<number> => {
  const raw = new Redis({ port, host: '127.0.0.1', lazyConnect: true });
  try {
    await raw.connect();
    const list = String(await raw.call('CLIENT', 'LIST')).trim().split('\n');
    // The line of this very connection is the one running CLIENT LIST (cmd=client|list).
    return list.filter((l) => !l.includes('refresher') && !l.includes('cmd=client|list')).length;
  } finally {
    raw.disconnect();
  }
};

describe('the shared store on a 3-master Redis Cluster', () => {
  let cluster: TestRedisCluster;
  let up: LlmUpstream;
  beforeAll(async () => {
    [cluster, up] = await Promise.all([startRedisCluster(), startLlmUpstream()]);
  });
  afterAll(async () => {
    await Promise.all([cluster?.stop(), up?.close()]);
  });

  it('keeps budgets and SLO counters on one connection per master per sidecar', async () => {
    const count = () => Promise.all(cluster.nodes.map((n) => sidecarConnections(n.port)));
    const before = await count();
    const fb = await startFusebox({ agent: { id: 'one-conn' }, store: { kind: 'redis', url: cluster.url, keyPrefix: 'oneconn' }, routes: routes(up) });
    try {
      expect(await chat(fb)).toBe(200);
      await fb.app.slo.recorder.flush();
      expect(await count()).toEqual(before.map((n) => n + 1));
    } finally {
      await fb.stop();
    }
  });

  // A real kill and restart: each wait below polls the cluster's state for up to 30 s, so the test has its own bound.
  it('survives a real kill and restart of the node owning its slot: store_up 0 then 1, errors counted by kind and node, every charge reported once', async () => {
    // Keys are hash-tagged per agent and per route: pick an agent whose keys live on the node that holds the route's
    // SLO counters, so killing that one node cuts both the budget store and the SLO flush.
    const sloNode = await cluster.nodeOfKey('{kill:slo:openai}:x');
    let agent = '';
    for (let i = 0; agent === ''; i++) {
      if (i > 200) throw new Error('no agent id hashes to the SLO node');
      if ((await cluster.nodeOfKey(`{kill:a:killed-${i}}:x`)).address === sloNode.address) agent = `killed-${i}`;
    }
    const fb = await startFusebox({
      agent: { id: agent },
      // Every window is leased (a token cap too): the calls of the outage are served from the slice the sidecar holds
      // (or, as the agent's only holder, what was left of its caps), kept, and reported once the node is back.
      store: { kind: 'redis', url: cluster.url, keyPrefix: 'kill', timeoutMs: 200, lease: { reportIntervalMs: 250 } },
      budgets: { agent: { dailyUsd: 10, dailyTokens: 10_000_000 } },
      routes: routes(up),
    });
    const leaseKey = `{kill:a:${agent}}:lease:day:${new Date().toISOString().slice(0, 10)}`;
    const reported = async () => {
      const node = await cluster.nodeOfKey(leaseKey);
      const raw = new Redis({ host: '127.0.0.1', port: node.port });
      try {
        return Number(await raw.hget(leaseKey, 'usd')) / 1e6;
      } finally {
        raw.disconnect();
      }
    };
    try {
      for (let i = 0; i < 3; i++) expect(await chat(fb)).toBe(200);
      await fb.app.idle();
      await expect.poll(async () => metricValue(await fb.metricsText(), 'fusebox_store_up'), { timeout: 30_000, interval: 100 }).toBe(1);
      const owner = sloNode;
      // Only log lines written from here on belong to this outage.
      const killedAt = Date.now();
      const since = (l: Record<string, unknown>) => typeof l.time === 'number' && l.time >= killedAt;
      await owner.kill();
      // Calls keep flowing on the slice held (the agent's only holder: what was left of its caps); the lease layer keeps their spend.
      const during: number[] = [];
      for (let i = 0; i < 4; i++) during.push(await chat(fb));
      expect(during).toEqual([200, 200, 200, 200]);
      await fb.app.idle();
      // The budget store stopped sending once the node's connection dropped (the cluster is not available: local
      // slice); the SLO counters' flush is a command that fails on the dead node, counted and logged by kind and node.
      await fb.app.slo.recorder.flush();
      const failure = await fb.waitForLog((l) => since(l) && typeof l.msg === 'string' && l.msg.startsWith('store command fuseboxSloApply failed'));
      expect(failure).toMatchObject({ level: 50, op: 'fuseboxSloApply', node: owner.address });
      expect(['connection', 'clusterdown']).toContain(failure.kind);
      const text = await fb.metricsText();
      expect(metricValue(text, 'fusebox_store_up')).toBe(0);
      expect(metricValue(text, 'fusebox_store_errors_total', { op: 'fuseboxSloApply', kind: String(failure.kind) })).toBeGreaterThan(0);

      await owner.restart();
      // Nothing was journaled: no call ran a per-call script. The lease layer reports what it kept.
      expect(await fb.waitForLog((l) => since(l) && l.msg === 'budget store back: journal replayed')).toMatchObject({ replayed: 0 });
      await expect.poll(async () => metricValue(await fb.metricsText(), 'fusebox_store_up'), { timeout: 30_000, interval: 100 }).toBe(1);
      // 3 before, 4 during: each reported exactly once to the cluster.
      await expect.poll(reported, { timeout: 30_000, interval: 100 }).toBeCloseTo(7 * COST_USD, 9);
      expect(await spentToday(fb)).toBeCloseTo(7 * COST_USD, 9);
      expect(await chat(fb)).toBe(200);
      await fb.app.idle();
      expect(await spentToday(fb)).toBeCloseTo(8 * COST_USD, 9);
      await fb.stop();
      expect(await reported()).toBeCloseTo(8 * COST_USD, 9);
    } finally {
      await fb.stop();
    }
  }, 120_000);

  it('counts a script whose keys span slots as crossslot, a key-layout bug that marks no node down', async () => {
    const errors: StoreCommandError[] = [];
    const connection = new RedisConnection({ url: cluster.url, keyPrefix: 'xs', onCommandError: (e) => errors.push(e) });
    try {
      await connection.ready(10_000);
      const twoKeys = defineScript('fuseboxTestTwoKeys', "return redis.call('EXISTS', KEYS[1], KEYS[2])", Number);
      await expect(connection.run(twoKeys, ['{a}:x', '{b}:x'], [])).rejects.toThrow(/CROSSSLOT/);
      expect(errors).toEqual([expect.objectContaining({ op: 'fuseboxTestTwoKeys', kind: 'crossslot' })]);
      expect(connection.available()).toBe(true);
    } finally {
      await connection.close();
    }
  });

  it('runs its scripts on a node that forgot them (SCRIPT FLUSH on every master): ioredis loads them per node', async () => {
    const errors: StoreCommandError[] = [];
    const connection = new RedisConnection({ url: cluster.url, keyPrefix: 'flush', onCommandError: (e) => errors.push(e) });
    const store = new RedisStore({ redis: connection, now: Date.now });
    try {
      await connection.ready(10_000);
      const scopes = [{ scope: { kind: 'agent' as const, id: 'a1' }, window: 'day' as const, caps: { usdMicros: 1_000_000 } }];
      const r = await store.reserve({ scopes, estimate: { usdMicros: 500_000, tokens: 0, calls: 1 } });
      if (!r.ok) throw new Error('refused');
      await Promise.all(cluster.nodes.map(async (n) => {
        const raw = new Redis({ host: '127.0.0.1', port: n.port });
        try {
          await raw.script('FLUSH');
        } finally {
          raw.disconnect();
        }
      }));
      await store.commit(r.reservation, { usdMicros: 400_000, tokens: 0 });
      const [u] = await store.snapshot(scopes);
      expect(u?.spent.usdMicros).toBe(400_000);
      expect(errors).toEqual([]);
    } finally {
      await connection.close();
    }
  });

  it('follows MOVED itself, and counts a node that answers with a redirect when reached by a plain redis:// URL', async () => {
    const owner = await cluster.nodeOfKey('{moved}:kills');
    const other = cluster.nodes.find((n) => n !== owner)!;
    const errors: StoreCommandError[] = [];
    const plain = new RedisConnection({ url: `redis://${other.address}`, keyPrefix: 'moved', onCommandError: (e) => errors.push(e) });
    const clustered = new RedisConnection({ url: `redis+cluster://${other.address}`, keyPrefix: 'moved' });
    try {
      await Promise.all([plain.ready(10_000), clustered.ready(10_000)]);
      await expect(new RedisStore({ redis: plain, now: Date.now }).getKills()).rejects.toThrow(/^MOVED \d+ /);
      expect(errors).toEqual([expect.objectContaining({ op: 'kills', kind: 'redirect', node: owner.address })]);
      // The seed is a node that does not own the slot: the cluster client learns the owner and goes there.
      expect(await new RedisStore({ redis: clustered, now: Date.now }).getKills()).toEqual([]);
    } finally {
      await Promise.all([plain.close(), clustered.close()]);
    }
  });
});

describe('a Redis at maxmemory (one node)', () => {
  it('counts OOM refusals by kind and node with store_up 0, refuses a cap it never leased with 503, and serves once Redis has room again', async () => {
    const [redis, up] = await Promise.all([startRedis({ args: ['--maxmemory-policy', 'noeviction'] }), startLlmUpstream()]);
    const fb = await startFusebox({ agent: { id: 'full' }, store: { kind: 'redis', url: redis.url, keyPrefix: 'oom' }, budgets: { agent: { dailyUsd: 10, dailyTokens: 10_000_000 } }, routes: routes(up) });
    const raw = new Redis(redis.url);
    try {
      // At 1 byte every script that may write is refused, the lease script too (at 1 MB, about what an empty Redis
      // uses, a first lease script got through once under load). The agent's caps were never leased,
      // so nothing is admitted on them (issue 14: no slice guessed in an outage).
      await raw.config('SET', 'maxmemory', '1');
      expect(await chat(fb)).toBe(503);
      const refusal = await fb.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('store command fuseboxLeaseAcquire failed (oom)'));
      expect(refusal).toMatchObject({ level: 50, kind: 'oom', node: `127.0.0.1:${redis.port}` });
      const text = await fb.metricsText();
      expect(metricValue(text, 'fusebox_store_errors_total', { op: 'fuseboxLeaseAcquire', kind: 'oom' })).toBeGreaterThan(0);
      expect(metricValue(text, 'fusebox_store_up')).toBe(0);
      await raw.config('SET', 'maxmemory', '0');
      await expect.poll(() => chat(fb), { timeout: 10_000, interval: 100 }).toBe(200);
      expect(metricValue(await fb.metricsText(), 'fusebox_store_up')).toBe(1);
      await fb.app.idle();
      expect(await spentToday(fb)).toBeCloseTo(COST_USD, 9);
    } finally {
      raw.disconnect();
      await fb.stop();
      await Promise.all([redis.stop(), up.close()]);
    }
  });
});
