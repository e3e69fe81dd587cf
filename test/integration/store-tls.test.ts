import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runGate } from '../../src/cli/gate.js';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { RedisConnection } from '../../src/store/redis-connection.js';
import { readRedisTls } from '../../src/store/redis-tls.js';
import { runCaptured } from '../helpers/cli.js';
import { metricValue, startFusebox, type RunningFusebox } from '../helpers/fusebox.js';
import { freePort } from '../helpers/net.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { startRedisCluster, type TestRedisCluster } from '../helpers/redis-cluster.js';
import { makeTlsFiles, redisTlsArgs, type TestTlsFiles } from '../helpers/tls-files.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

// Redis with TLS as it is usually run in a cluster: a private CA (cert-manager's), and client certificates asked for
// (Redis's default, tls-auth-clients yes). The plain port stays open for the test's own reads.
describe('store.tls: Redis over TLS with a private CA and a client certificate', () => {
  let files: TestTlsFiles;
  let up: TestUpstream;
  let fb: RunningFusebox | undefined;
  beforeAll(async () => {
    files = makeTlsFiles();
    up = await startUpstream();
  });
  afterEach(async () => {
    await fb?.stop();
    fb = undefined;
  });
  afterAll(async () => {
    await up?.close();
    if (files) rmSync(files.dir, { recursive: true, force: true });
  });

  const storeTls = () => ({ caFile: files.caFile, certFile: files.clientCertFile, keyFile: files.clientKeyFile });
  const routes = () => [{ name: 'tool', match: { pathPrefix: '/tool' }, upstream: { url: up.url } }];
  /** `fusebox gate --config` on a config whose store is `url` with store.tls (relative paths: the config's folder). */
  const gateOn = async (url: string) => {
    const file = join(files.dir, 'gate.yaml');
    const store = { kind: 'redis', url, tls: { caFile: 'ca.pem', certFile: 'client.pem', keyFile: 'client.key' } };
    writeFileSync(file, JSON.stringify({ store, routes: [{ name: 'tool', match: { pathPrefix: '/tool' }, upstream: { url: up.url } }] }));
    return runCaptured(runGate, ['--config', file, '--route', 'tool'], { env: {} });
  };
  const call = async (workflow: string) => {
    const res = await request(`${fb!.proxyUrl}/tool/fast`, { headers: { 'x-fusebox-workflow': workflow } });
    await res.body.dump();
    return res.statusCode;
  };

  describe('one Redis', () => {
    let redis: TestRedis;
    let tlsPort: number;
    beforeAll(async () => {
      tlsPort = await freePort();
      redis = await startRedis({ args: redisTlsArgs(files, tlsPort) });
    });
    afterAll(async () => redis?.stop());

    it('enforces a workflow cap through rediss:// and keeps its counters in that Redis', async () => {
      fb = await startFusebox({
        store: { kind: 'redis', url: `rediss://127.0.0.1:${tlsPort}`, tls: storeTls(), keyPrefix: 'tls1' },
        budgets: { workflow: { maxCalls: 2 } },
        routes: routes(),
      });
      expect(await call('w1')).toBe(200);
      expect(await call('w1')).toBe(200);
      expect(await call('w1')).toBe(402);
      await fb.app.idle();
      const plain = new Redis(redis.url);
      try {
        expect((await plain.keys('{tls1:*')).length).toBeGreaterThan(0);
      } finally {
        plain.disconnect();
      }
      expect(metricValue(await fb.metricsText(), 'fusebox_store_up')).toBe(1);
    });

    it('lets `fusebox gate --config` read the counters over the same TLS (not enough data: exit 30, not unreachable: 31)', async () => {
      const r = await gateOn(`rediss://127.0.0.1:${tlsPort}`);
      expect(r.code, r.err).toBe(30);
    });

    it("fails to connect without the CA (Node's public CAs do not know it), saying why", async () => {
      const conn = new RedisConnection({
        url: `rediss://127.0.0.1:${tlsPort}`,
        tls: readRedisTls({ certFile: files.clientCertFile, keyFile: files.clientKeyFile, rejectUnauthorized: true }, '/'),
        reconnect: false,
      });
      try {
        await expect(conn.ready(5_000)).rejects.toThrow(/certificate/);
      } finally {
        await conn.close();
      }
    });

    it('is refused by Redis without a client certificate', async () => {
      const conn = new RedisConnection({ url: `rediss://127.0.0.1:${tlsPort}`, tls: readRedisTls({ caFile: files.caFile, rejectUnauthorized: true }, '/'), reconnect: false });
      try {
        await expect(conn.ready(5_000)).rejects.toThrow();
      } finally {
        await conn.close();
      }
    });
  });

  describe('a Redis Cluster (rediss+cluster://, TLS on the cluster bus too)', () => {
    let cluster: TestRedisCluster;
    beforeAll(async () => {
      cluster = await startRedisCluster({ tls: files });
    }, 60_000);
    afterAll(async () => cluster?.stop());

    it('enforces a workflow cap on every master, each reached over TLS', async () => {
      // An agent's windows sit on its own tag: one agent id per master, so each master serves a sidecar over TLS.
      const agents = new Map<number, string>();
      for (let i = 0; agents.size < cluster.nodes.length && i < 1_000; i++) {
        const node = await cluster.nodeOfKey(`{tls2:a:agent-${i}}`);
        if (!agents.has(node.port)) agents.set(node.port, `agent-${i}`);
      }
      expect(agents.size).toBe(cluster.nodes.length);
      for (const [port, agent] of agents) {
        fb = await startFusebox({
          agent: { id: agent },
          store: { kind: 'redis', url: cluster.tlsUrl!, tls: storeTls(), keyPrefix: 'tls2' },
          budgets: { workflow: { maxCalls: 1 } },
          routes: routes(),
        });
        expect(await call('w')).toBe(200);
        expect(await call('w')).toBe(402);
        expect(metricValue(await fb.metricsText(), 'fusebox_store_up')).toBe(1);
        await fb.stop();
        fb = undefined;
        // The agent's lease keys are on that master (read through its plain port).
        const plain = new Redis({ host: '127.0.0.1', port });
        try {
          expect((await plain.keys(`{tls2:a:${agent}}*`)).length).toBeGreaterThan(0);
        } finally {
          plain.disconnect();
        }
      }
    });

    it('lets `fusebox gate` read a cluster over TLS too', async () => {
      const r = await gateOn(cluster.tlsUrl!);
      expect(r.code, r.err).toBe(30);
    });
  });

  it('says what is wrong with store.tls in the config', () => {
    const parse = (store: Record<string, unknown>) => {
      try {
        parseConfig({ store, routes: [{ name: 'r', match: { pathPrefix: '/r' }, upstream: { url: 'http://127.0.0.1:1' } }] }, 'test config');
        return [];
      } catch (err) {
        return (err as ConfigError).problems;
      }
    };
    expect(parse({ kind: 'redis', url: 'redis://127.0.0.1:6379', tls: { caFile: 'ca.pem' } }).join('\n')).toContain(
      'store.tls: is set but store.url does not use TLS: use rediss:// (or rediss+cluster://), or remove store.tls',
    );
    expect(parse({ kind: 'redis', url: 'rediss://127.0.0.1:6379', tls: { certFile: 'c.pem' } }).join('\n')).toContain('store.tls: certFile and keyFile go together');
    expect(parse({ kind: 'redis', url: 'rediss+cluster://127.0.0.1:7000', tls: { caFile: 'ca.pem' } })).toEqual([]);
  });

  it('does not start on a store.tls file it cannot read, naming it', async () => {
    await expect(
      startFusebox({ store: { kind: 'redis', url: 'rediss://127.0.0.1:1', tls: { caFile: '/nonexistent/ca.pem' } }, routes: routes() }),
    ).rejects.toThrow('store.tls.caFile: cannot read /nonexistent/ca.pem (ENOENT)');
  });
});
