import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command, ReadyMessage, Reply } from './servers/announce.js';
import type { Footprint } from './servers/footprint.js';

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

/** The core the server under test gets to itself, and the one shared by the load generator and the upstream. */
export const PROXY_CPU = 0;
export const LOAD_CPU = 1;

export const hasCommand = (cmd: string): boolean => {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

/** Whether something accepts TCP connections at host:port (a synchronous probe, for `unavailable()` checks). */
export const canConnect = (host: string, port: number): boolean => {
  const probe = `require('node:net').connect(${port}, ${JSON.stringify(host)}).on('connect', () => process.exit(0)).on('error', () => process.exit(1)); setTimeout(() => process.exit(1), 1000);`;
  try {
    execFileSync(process.execPath, ['-e', probe], { stdio: 'ignore', timeout: 3000 });
    return true;
  } catch {
    return false;
  }
};

/** Pinning needs two cores and `taskset`; without them everything shares the machine (and the report says so). */
export const canPin = cpus().length >= 2 && hasCommand('taskset');

const pinned = (cpu: number, cmd: string, args: string[]): [string, string[]] =>
  canPin ? ['taskset', ['-c', String(cpu), cmd, ...args]] : [cmd, args];

/** Move this process (all its threads, including the metronome worker started later) to `cpu`. */
export const pinSelf = (cpu: number): void => {
  if (canPin) execFileSync('taskset', ['-a', '-cp', String(cpu), String(process.pid)], { stdio: 'ignore' });
};

const live = new Set<ChildProcess>();

/** Kill every child still running. Synchronous so it can run from an 'exit' handler. */
export const killAll = (): void => {
  for (const c of live) c.kill('SIGKILL');
  live.clear();
};

const track = (child: ChildProcess): ChildProcess => {
  live.add(child);
  child.once('exit', () => live.delete(child));
  return child;
};

export interface ServerChild {
  url: string;
  /** Admin listener (Fusebox only): `/metrics`. */
  adminUrl?: string;
  /** Process whose CPU time and RSS are read. */
  pid: number;
  /** Send a command (see servers/announce.ts) and wait for its reply (a footprint for `measure-stop`); rejects on error or after `timeoutMs` (10 s). */
  command(c: DistributiveOmit<Command, 'id'>, timeoutMs?: number): Promise<Footprint | undefined>;
  stop(): Promise<void>;
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** Each server script compiled once per run, by its name. */
const compiledServers = new Map<string, string>();

/**
 * `bench/servers/<script>` as one plain ES module (its relative imports bundled, packages left to Node), under dist/
 * so packages resolve from the repo's node_modules. The children run it without tsx: tsx's loader runs on a thread
 * of its own, with its own V8 isolate, which added ~17 MB of RSS and 5 threads to every measured server.
 */
export const compiledServer = (script: string): string => {
  let out = compiledServers.get(script);
  if (out === undefined) {
    out = join(REPO_ROOT, 'dist', 'bench', 'servers', script.replace(/\.ts$/, '.mjs'));
    // tsx's own esbuild (its native binary), already installed for the bench's TypeScript.
    const esbuild = join(REPO_ROOT, 'node_modules', 'esbuild', 'bin', 'esbuild');
    const entry = join(REPO_ROOT, 'bench', 'servers', script);
    execFileSync(esbuild, [entry, '--bundle', '--platform=node', '--format=esm', '--packages=external', `--outfile=${out}`, '--log-level=warning'], { stdio: ['ignore', 'ignore', 'inherit'] });
    compiledServers.set(script, out);
  }
  return out;
};

/**
 * Start `bench/servers/<script>` under Node 24 as plain JS (compiledServer), pinned to `cpu` (and started through `wrap`: in a
 * memory cgroup, bench/pod.ts), and wait for its ready message. Its stdout goes to /dev/null (Fusebox's access log), stderr is kept for error messages.
 */
export const startServer = (
  script: string,
  cpu: number,
  env: Record<string, string>,
  timeoutMs = 20_000,
  wrap: (cmd: string, args: string[]) => [string, string[]] = (cmd, args) => [cmd, args],
): Promise<ServerChild> => {
  const [cmd, args] = wrap(...pinned(cpu, process.execPath, [compiledServer(script)]));
  const child = track(
    spawn(cmd, args, {
      cwd: REPO_ROOT,
      env: { ...process.env, ...env, NODE_ENV: 'production' },
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    }),
  );
  let stderr = '';
  child.stderr?.on('data', (b: Buffer) => {
    stderr = (stderr + b.toString('utf8')).slice(-4000);
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  };
  let nextId = 1;
  const command = (c: DistributiveOmit<Command, 'id'>, timeoutMs = 10_000) =>
    new Promise<Footprint | undefined>((resolve, reject) => {
      const id = nextId++;
      const onReply = (m: Reply) => {
        if (m.id !== id) return;
        clearTimeout(t);
        child.off('message', onReply);
        if (m.error !== undefined) reject(new Error(`${script}: ${m.error}`));
        else resolve(m.footprint);
      };
      const t = setTimeout(() => {
        child.off('message', onReply);
        reject(new Error(`${script}: no reply to ${c.cmd} within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      child.on('message', onReply);
      child.send({ ...c, id } as Command);
    });
  let ready = false;
  return new Promise<ServerChild>((resolve, reject) => {
    const fail = (why: string) => {
      if (ready) return;
      clearTimeout(timer);
      void stop();
      reject(new Error(`${script}: ${why}${stderr ? `\n${stderr.trim()}` : ''}`));
    };
    const timer = setTimeout(() => fail(`not ready within ${timeoutMs} ms`), timeoutMs);
    child.once('exit', (code, signal) => fail(`exited (${signal ?? code}) before it was ready`));
    child.once('message', (m: ReadyMessage) => {
      clearTimeout(timer);
      ready = true;
      resolve({ url: m.url, pid: m.pid, ...(m.adminUrl !== undefined ? { adminUrl: m.adminUrl } : {}), stop, command });
    });
  });
};

/** Run a command pinned to `cpu` and collect its stdout. Bounded by `timeoutMs`. */
export const runPinned = (cpu: number, cmd: string, args: string[], timeoutMs: number): Promise<string> => {
  const [c, a] = pinned(cpu, cmd, args);
  const child = track(spawn(c, a, { stdio: ['ignore', 'pipe', 'pipe'] }));
  let out = '';
  let err = '';
  child.stdout?.on('data', (b: Buffer) => (out += b.toString('utf8')));
  child.stderr?.on('data', (b: Buffer) => (err += b.toString('utf8')));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args.join(' ')} failed (${signal ?? code}): ${err.trim()}`));
    });
  });
};

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** User + system CPU seconds used so far by a process (all its threads). */
export const cpuSeconds = (pid: number): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may contain spaces; fields after it are fixed. utime, stime are fields 14, 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
};

/** Resident set size in bytes. */
export const rssBytes = (pid: number): number => {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m?.[1] !== undefined ? Number(m[1]) * 1024 : NaN;
};

/** Busy and total jiffies of one core, from /proc/stat. */
export const coreTimes = (cpu: number): { busy: number; total: number } => {
  const line = readFileSync('/proc/stat', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`cpu${cpu} `));
  const v = (line ?? '').trim().split(/\s+/).slice(1).map(Number);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return { busy: total - idle, total };
};

export const cpuModel = (): string => {
  const m = existsSync('/proc/cpuinfo') ? /model name\s*:\s*(.+)/.exec(readFileSync('/proc/cpuinfo', 'utf8')) : null;
  return m?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown';
};

/**
 * A throwaway redis-server on a free port, pinned to `cpu`, persisting nothing; killed with every other child.
 * Resolves with its URL once it accepts connections.
 */
export const startRedis = async (cpu: number): Promise<string> => {
  const port = await freePort();
  const [cmd, args] = pinned(cpu, 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
  track(spawn(cmd, args, { stdio: 'ignore' }));
  const deadline = Date.now() + 10_000;
  while (!canConnect('127.0.0.1', port)) {
    if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not start within 10 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return `redis://127.0.0.1:${port}`;
};

/** A port nothing listens on right now (the OS picks it; a race with other processes is possible but harmless here). */
export const freePort = (): Promise<number> =>
  new Promise<number>((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
