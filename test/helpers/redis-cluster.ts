import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './net.js';
import { assertRedisInstalled, pollUntil, rawCommand, redisProcess, type RedisProcess } from './redis-server.js';
import { redisTlsArgs, type TestTlsFiles } from './tls-files.js';

/** One master of a {@link TestRedisCluster}. */
export interface ClusterNode {
  readonly port: number;
  /** `127.0.0.1:port`: how the cluster (and ioredis, and our logs) name it. */
  readonly address: string;
  /** SIGKILL: the node crashes with connections open; its slots become unreachable. Resolves once it is gone. */
  kill(): Promise<void>;
  /** Starts the killed node again with its nodes.conf and AOF; resolves once the cluster is `ok` again. */
  restart(): Promise<void>;
  /** INFO of this node (a section name, or all), raw. */
  info(section?: string): Promise<string>;
}

export interface TestRedisCluster {
  /** `redis+cluster://` URL with every master as a seed. */
  readonly url: string;
  /** With `tls`: `rediss+cluster://` URL of every master's TLS port (the ports the cluster then announces). */
  readonly tlsUrl?: string;
  readonly nodes: readonly ClusterNode[];
  /** The master serving a key's slot now (CLUSTER KEYSLOT + CLUSTER NODES' slot ranges). */
  nodeOfKey(key: string): Promise<ClusterNode>;
  /** Resolves once every master reports `cluster_state:ok`. */
  waitOk(ms?: number): Promise<void>;
  /** Kills every node and removes their files. */
  stop(): Promise<void>;
}

export interface StartClusterOptions {
  /** Masters. Default 3 (a Redis Cluster needs at least 3 to create slots with redis-cli). */
  masters?: number;
  /** `--appendfsync` (AOF is always on, so a restarted node keeps its data). Default `always` (tests); the bench passes `everysec`. */
  fsync?: 'always' | 'everysec';
  /** `cluster-node-timeout`, ms: how long a dead master goes unnoticed before the cluster says CLUSTERDOWN. Default 2000. */
  nodeTimeoutMs?: number;
  /** More `redis-server` arguments for every node. */
  args?: readonly string[];
  /**
   * A TLS port on every node as well (client certificates required), and TLS on the cluster bus (`tls-cluster yes`),
   * so the cluster announces the TLS ports. The plain ports stay open for the helper's own checks.
   */
  tls?: TestTlsFiles;
}

const clusterOk = async (port: number) => (await rawCommand(port, 'CLUSTER INFO')).includes('cluster_state:ok');

/**
 * Starts a Redis Cluster of `masters` `redis-server --cluster-enabled yes` processes on free loopback ports (cluster
 * bus ports chosen free too), each in its own folder with AOF on, assigns the 16384 slots with `redis-cli --cluster
 * create` and waits until every node says `cluster_state:ok`. No replicas: a killed master's slots stay down until it
 * is restarted, which is the outage the tests want.
 */
export async function startRedisCluster(opts: StartClusterOptions = {}): Promise<TestRedisCluster> {
  assertRedisInstalled();
  const masters = opts.masters ?? 3;
  const root = mkdtempSync(join(tmpdir(), 'fusebox-cluster-'));
  const procs: RedisProcess[] = [];
  const tlsPorts: number[] = [];
  const waitOk = (ms = 15_000) =>
    pollUntil('the cluster did not report cluster_state:ok on every node', async () => (await Promise.all(procs.map((p) => clusterOk(p.port)))).every(Boolean), ms, () =>
      procs.map((p) => `${p.port}: ${p.output().slice(-300)}`).join('\n'),
    );
  try {
    for (let i = 0; i < masters; i++) {
      const port = await freePort();
      const busPort = await freePort();
      const dir = join(root, String(port));
      mkdirSync(dir);
      const tls = opts.tls ? [...redisTlsArgs(opts.tls, await freePort()), '--tls-cluster', 'yes'] : [];
      if (opts.tls) tlsPorts.push(Number(tls[1]));
      const proc = redisProcess(port, [
        '--dir',
        dir,
        '--cluster-enabled',
        'yes',
        '--cluster-config-file',
        'nodes.conf',
        '--cluster-port',
        String(busPort),
        '--cluster-node-timeout',
        String(opts.nodeTimeoutMs ?? 2_000),
        '--appendonly',
        'yes',
        '--appendfsync',
        opts.fsync ?? 'always',
        ...tls,
        ...(opts.args ?? []),
      ]);
      procs.push(proc);
      await proc.launch();
    }
    const create = spawnSync('redis-cli', ['--cluster', 'create', ...procs.map((p) => `127.0.0.1:${p.port}`), '--cluster-replicas', '0', '--cluster-yes'], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    if (create.status !== 0) throw new Error(`redis-cli --cluster create failed (${create.status}): ${create.stdout}${create.stderr}`);
    await waitOk();
  } catch (err) {
    await Promise.all(procs.map((p) => p.kill()));
    rmSync(root, { recursive: true, force: true });
    throw err;
  }
  const nodes: ClusterNode[] = procs.map((p) => ({
    port: p.port,
    address: `127.0.0.1:${p.port}`,
    kill: () => p.kill(),
    async restart() {
      await p.kill();
      await p.launch();
      await waitOk();
    },
    info: async (section) => {
      const reply = await rawCommand(p.port, section ? `INFO ${section}` : 'INFO');
      return reply.replace(/^\$\d+\r\n/, '');
    },
  }));
  return {
    url: `redis+cluster://${nodes.map((n) => n.address).join(',')}`,
    ...(opts.tls && { tlsUrl: `rediss+cluster://${tlsPorts.map((p) => `127.0.0.1:${p}`).join(',')}` }),
    nodes,
    waitOk,
    async nodeOfKey(key) {
      for (const n of nodes) {
        const slotReply = await rawCommand(n.port, `CLUSTER KEYSLOT ${key}`);
        const slot = /^:(\d+)/.exec(slotReply);
        if (!slot) continue;
        const table = await rawCommand(n.port, 'CLUSTER NODES');
        for (const line of table.split('\n')) {
          const f = line.trim().split(' ');
          if (!f[2]?.includes('master')) continue;
          const owns = f.slice(8).some((r) => {
            const [a, b] = r.split('-').map(Number);
            return Number(slot[1]) >= a! && Number(slot[1]) <= (b ?? a!);
          });
          const port = Number(/:(\d+)@/.exec(f[1] ?? '')?.[1]);
          const owner = owns ? nodes.find((x) => x.port === port) : undefined;
          if (owner) return owner;
        }
      }
      throw new Error(`no live node knows the owner of ${key}`);
    },
    async stop() {
      await Promise.all(procs.map((p) => p.kill()));
      rmSync(root, { recursive: true, force: true });
    },
  };
}
