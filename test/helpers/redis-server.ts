import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createConnection } from 'node:net';

/** One `redis-server` process on a fixed loopback port, which can be killed and started again with the same files. */
export interface RedisProcess {
  readonly port: number;
  /** Starts it (again) and waits until it answers PING (a restarted node may still be loading its AOF then). */
  launch(): Promise<void>;
  /** SIGKILL: an outage as a crashed Redis looks (connections reset). Resolves once the process is gone. */
  kill(): Promise<void>;
  /** SIGTERM: a clean shutdown (Redis writes out its AOF). Resolves once the process is gone. */
  shutdown(): Promise<void>;
  /** SIGSTOP / SIGCONT: Redis hangs with connections open, so commands time out instead of failing. */
  pause(): void;
  resume(): void;
  /** The last output of the process, for error messages. */
  output(): string;
}

export const assertRedisInstalled = (): void => {
  if (spawnSync('sh', ['-c', 'command -v redis-server'], { stdio: 'ignore' }).status !== 0) {
    throw new Error('redis-server is not on PATH: install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)');
  }
};

/**
 * Sends one inline command on a fresh socket and resolves with the raw reply ('' when the server does not answer
 * within 500 ms or refuses the connection). For readiness polls only: a client library would retry and hide state.
 */
export const rawCommand = (port: number, command: string): Promise<string> =>
  new Promise((resolve) => {
    const sock = createConnection({ port, host: '127.0.0.1' });
    let data = '';
    const done = () => {
      sock.destroy();
      resolve(data);
    };
    sock.setTimeout(500, done);
    sock.once('error', done);
    sock.once('connect', () => sock.write(`${command}\r\n`));
    sock.on('data', (d: Buffer) => {
      data += d.toString();
      // A bulk reply ($len\r\n...\r\n) is complete once its announced length has arrived; anything else is one line.
      const bulk = /^\$(\d+)\r\n/.exec(data);
      if (bulk ? data.length >= bulk[0].length + Number(bulk[1]) + 2 : data.endsWith('\r\n')) done();
    });
  });

/**
 * Polls `check` every 20 ms until it holds, up to `ms`: a wait on a server's state (it answers, the cluster is ok),
 * which has no event to listen to. `fail` explains the timeout.
 */
export async function pollUntil(what: string, check: () => Promise<boolean>, ms: number, fail: () => string = () => ''): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${what} within ${ms} ms${fail() ? `: ${fail()}` : ''}`);
}

/** A `redis-server` with these arguments on `port` (bound to 127.0.0.1, not started yet). */
export function redisProcess(port: number, args: readonly string[]): RedisProcess {
  let proc: ChildProcess | undefined;
  let out = '';
  const exited = (p: ChildProcess) =>
    new Promise<void>((resolve) => {
      if (p.exitCode !== null || p.signalCode !== null) resolve();
      else p.once('exit', () => resolve());
    });
  return {
    port,
    async launch() {
      out = '';
      const p = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--protected-mode', 'no', '--save', '', ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      proc = p;
      p.stdout?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-4_000)));
      p.stderr?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-4_000)));
      await pollUntil(
        `redis-server did not answer PING on port ${port}`,
        async () => {
          if (p.exitCode !== null) throw new Error(`redis-server exited with ${p.exitCode}: ${out.slice(-2_000)}`);
          // LOADING (a replayed AOF) is an answer too: the caller waits for what it needs.
          return /^(\+PONG|-LOADING)/.test(await rawCommand(port, 'PING'));
        },
        5_000,
        () => out.slice(-2_000),
      );
    },
    async kill() {
      if (!proc) return;
      proc.kill('SIGCONT');
      proc.kill('SIGKILL');
      await exited(proc);
    },
    async shutdown() {
      if (!proc) return;
      proc.kill('SIGCONT');
      proc.kill('SIGTERM');
      await exited(proc);
    },
    pause() {
      proc?.kill('SIGSTOP');
    },
    resume() {
      proc?.kill('SIGCONT');
    },
    output: () => out,
  };
}
