import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './net.js';
import { assertRedisInstalled, redisProcess } from './redis-server.js';

export interface TestRedis {
  url: string;
  port: number;
  /** Shuts the server down and removes its files. */
  stop(): Promise<void>;
  /** SIGKILL: an outage as a crashed Redis looks (connections reset). */
  kill(): void;
  /** SIGTERM: Redis stops cleanly, its AOF complete; `restart()` starts it again. */
  shutdown(): Promise<void>;
  /** Starts it again on the same port (same data when started with `persist`). */
  restart(): Promise<void>;
  /** SIGSTOP: Redis hangs with connections open, so commands time out instead of failing. */
  pause(): void;
  resume(): void;
}

export interface StartRedisOptions {
  /** Append-only file fsynced on every write, so data survives kill() + restart(). Default false. */
  persist?: boolean;
  /** `--appendfsync` when `persist` (the bench uses `everysec`, as production would). Default `always`. */
  fsync?: 'always' | 'everysec';
  /** More `redis-server` arguments (`--maxmemory`...). */
  args?: readonly string[];
}

/**
 * Starts a private `redis-server` on a free loopback port (no persistence unless asked), waits until it
 * answers PING. Each test file starts its own, so files can run in parallel.
 */
export async function startRedis(opts: StartRedisOptions = {}): Promise<TestRedis> {
  assertRedisInstalled();
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'fusebox-redis-'));
  const persist = opts.persist ? ['--appendonly', 'yes', '--appendfsync', opts.fsync ?? 'always'] : ['--appendonly', 'no'];
  const proc = redisProcess(port, ['--dir', dir, ...persist, ...(opts.args ?? [])]);
  await proc.launch();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    async stop() {
      await proc.kill();
      rmSync(dir, { recursive: true, force: true });
    },
    kill() {
      void proc.kill();
    },
    shutdown: () => proc.shutdown(),
    async restart() {
      await proc.kill();
      await proc.launch();
    },
    pause: () => proc.pause(),
    resume: () => proc.resume(),
  };
}
