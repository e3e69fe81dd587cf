import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './net.js';

export interface TestRedis {
  url: string;
  port: number;
  /** Shuts the server down and removes its files. */
  stop(): Promise<void>;
  /** SIGKILL: an outage as a crashed Redis looks (connections reset). */
  kill(): void;
  /** Starts it again on the same port (same data when started with `persist`). */
  restart(): Promise<void>;
  /** SIGSTOP: Redis hangs with connections open, so commands time out instead of failing. */
  pause(): void;
  resume(): void;
}

export interface StartRedisOptions {
  /** Append-only file fsynced on every write, so data survives kill() + restart(). Default false. */
  persist?: boolean;
}

const ping = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const sock = createConnection({ port, host: '127.0.0.1' });
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(200, () => done(false));
    sock.once('error', () => done(false));
    sock.once('connect', () => sock.write('PING\r\n'));
    sock.once('data', (d) => done(d.toString().startsWith('+PONG')));
  });

async function waitForPing(port: number, proc: ChildProcess, logs: () => string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`redis-server exited with ${proc.exitCode}: ${logs()}`);
    if (await ping(port)) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`redis-server did not answer PING on port ${port} within 5 s: ${logs()}`);
}

/**
 * Starts a private `redis-server` on a free loopback port (no persistence unless asked), waits until it
 * answers PING. Each test file starts its own, so files can run in parallel.
 */
export async function startRedis(opts: StartRedisOptions = {}): Promise<TestRedis> {
  if (spawnSync('sh', ['-c', 'command -v redis-server'], { stdio: 'ignore' }).status !== 0) {
    throw new Error('redis-server is not on PATH: install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)');
  }
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'fusebox-redis-'));
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--dir', dir, '--protected-mode', 'no'];
  args.push(...(opts.persist ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']));
  let proc: ChildProcess;
  let output = '';
  const launch = async () => {
    output = '';
    proc = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    proc.stdout?.on('data', (d: Buffer) => (output += d.toString()));
    proc.stderr?.on('data', (d: Buffer) => (output += d.toString()));
    await waitForPing(port, proc, () => output.slice(-2_000));
  };
  await launch();
  const exited = () =>
    new Promise<void>((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) resolve();
      else proc.once('exit', () => resolve());
    });
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    async stop() {
      proc.kill('SIGCONT');
      proc.kill('SIGKILL');
      await exited();
      rmSync(dir, { recursive: true, force: true });
    },
    kill() {
      proc.kill('SIGKILL');
    },
    async restart() {
      proc.kill('SIGKILL');
      await exited();
      await launch();
    },
    pause() {
      proc.kill('SIGSTOP');
    },
    resume() {
      proc.kill('SIGCONT');
    },
  };
}
