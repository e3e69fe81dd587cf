import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../proc.js';
import { announce, requiredEnv } from './announce.js';

/**
 * HAProxy, the "physical limit" reference: a C proxy on one thread doing the same job (strip `/bench`, keep-alive
 * both sides, reuse upstream connections, no logging). This wrapper exists so HAProxy follows the same lifecycle
 * as the Node children: it inherits the CPU pin, and is killed when the orchestrator's IPC channel closes.
 */
const upstream = new URL(requiredEnv('BENCH_UPSTREAM'));

const accepts = (port: number) =>
  new Promise<boolean>((resolve) => {
    const sock = connect(port, '127.0.0.1');
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });

const port = await freePort();
const dir = mkdtempSync(join(tmpdir(), 'fusebox-bench-haproxy-'));
const cfg = join(dir, 'haproxy.cfg');
writeFileSync(
  cfg,
  `global
  nbthread 1
  maxconn 4096

defaults
  mode http
  option http-keep-alive
  # Without it HAProxy sends with MSG_MORE while a body is unfinished, holding an SSE event until the next one.
  option http-no-delay
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s

frontend bench
  bind 127.0.0.1:${port}
  default_backend upstream

backend upstream
  http-reuse always
  http-request replace-path ^/bench(/.*) \\1
  server up ${upstream.hostname}:${upstream.port}
`,
);

const child = spawn('haproxy', ['-db', '-f', cfg], { stdio: ['ignore', 'ignore', 'inherit'] });
const cleanup = () => {
  child.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
};
child.once('exit', (code, signal) => {
  console.error(`haproxy exited (${signal ?? code})`);
  rmSync(dir, { recursive: true, force: true });
  process.exit(1);
});

const deadline = Date.now() + 10_000;
while (!(await accepts(port))) {
  if (Date.now() > deadline) {
    cleanup();
    console.error('haproxy did not start listening within 10 s');
    process.exit(1);
  }
  await new Promise((r) => setTimeout(r, 50));
}
if (child.pid === undefined) throw new Error('haproxy did not start');
announce(`http://127.0.0.1:${port}`, { pid: child.pid, onExit: cleanup });
