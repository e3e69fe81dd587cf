import { spawn, spawnSync, type ChildProcessByStdio } from 'node:child_process';
import { existsSync, mkdtempSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import type { Readable } from 'node:stream';
import { delimiter, dirname, join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { RELOAD_REQUESTED } from '../../src/cli/run.js';
import { startFusebox } from '../helpers/fusebox.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

describe('graceful shutdown', () => {
  let up: TestUpstream | undefined;
  afterEach(async () => up?.close());

  it('turns not-ready, lets an in-flight stream finish within the grace period, then stops', async () => {
    up = await startUpstream();
    const fb = await startFusebox({ routes: [{ name: 'r', match: { pathPrefix: '/r' }, upstream: { url: up.url } }] });
    const res = await request(`${fb.proxyUrl}/r/sse?n=10&every=30`);
    const text = res.body.text();
    const stopped = fb.app.shutdown(5000);
    const ready = await request(`${fb.adminUrl}/readyz`);
    expect(ready.statusCode).toBe(503);
    await ready.body.dump();
    expect(await text).toContain('data: [DONE]');
    await stopped;
    await expect(request(`${fb.proxyUrl}/r/fast`)).rejects.toThrow(/ECONNREFUSED/);
  });

  it('cuts calls still running when the grace period ends', async () => {
    up = await startUpstream();
    const fb = await startFusebox({ routes: [{ name: 'r', match: { pathPrefix: '/r' }, upstream: { url: up.url } }] });
    const res = await request(`${fb.proxyUrl}/r/sse?n=1000&every=20`);
    const text = res.body.text();
    const t0 = Date.now();
    await fb.app.shutdown(300);
    // The stream would run 20 s: ending well before that is the grace period cutting it (margin for a loaded machine).
    expect(Date.now() - t0).toBeLessThan(10_000);
    await expect(text).rejects.toThrow();
    expect(fb.logs.some((l) => l.msg === 'grace period over: cutting the calls still running')).toBe(true);
  });
});

/**
 * A Node older than 24 on this machine, if any: the first `node` on PATH outside node_modules (npm puts the project's
 * own Node 24, the `node` dev dependency, first on PATH).
 */
const OLD_NODE = (() => {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const bin = join(dir, 'node');
    if (dir.includes('node_modules') || !existsSync(bin)) continue;
    const version = spawnSync(bin, ['--version'], { encoding: 'utf8' }).stdout?.trim() ?? '';
    if (Number(/^v(\d+)\./.exec(version)?.[1] ?? 99) < 24) return { bin, version };
  }
  return undefined;
})();

type Log = Record<string, unknown>;

/**
 * The child's JSON log lines as they arrive. `next(match)` resolves with the first line (already seen or to come)
 * that matches, and rejects when the child exits without writing one: tests wait on the line, never on a delay.
 */
const logsOf = (child: ChildProcessByStdio<null, Readable, Readable>) => {
  const lines: Log[] = [];
  const waiters = new Set<() => void>();
  let partial = '';
  let exited = false;
  child.stdout.on('data', (c: Buffer) => {
    const parts = (partial + c.toString()).split('\n');
    partial = parts.pop()!;
    for (const line of parts) if (line.startsWith('{')) lines.push(JSON.parse(line) as Log);
    for (const w of [...waiters]) w();
  });
  child.on('exit', () => {
    exited = true;
    for (const w of [...waiters]) w();
  });
  const next = (match: (l: Log) => boolean, what: string) =>
    new Promise<Log>((resolve, reject) => {
      const check = () => {
        const hit = lines.find(match);
        if (hit === undefined && !exited) return;
        waiters.delete(check);
        if (hit !== undefined) resolve(hit);
        else reject(new Error(`the process exited (${String(child.exitCode ?? child.signalCode)}) without logging ${what}`));
      };
      waiters.add(check);
      check();
    });
  return { next };
};

// Each test starts the CLI cold through tsx (seconds under load; one test ran past the default 20 s once with 14 other
// files in parallel). Nothing waits on time: the bound only stops a hung child.
describe('fusebox CLI', { timeout: 90_000 }, () => {
  const cli = (args: string[], env: NodeJS.ProcessEnv = {}) =>
    spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const collect = (child: ReturnType<typeof cli>) =>
    new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      let out = '';
      let err = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      child.stderr.on('data', (c: Buffer) => (err += c.toString()));
      child.on('close', (code) => resolve({ code, out, err }));
    });

  it('check-config names every problem with its path and exits 1', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fusebox-cfg-'));
    const file = join(dir, 'bad.yaml');
    writeFileSync(
      file,
      ['routes:', '  - name: "bad name"', '    match: {}', '    upstream: { url: "ftp://x" }', '    retry: { baseMs: fast }', '    tiemouts: {}'].join('\n'),
    );
    const r = await collect(cli(['check-config', file]));
    expect(r.code).toBe(1);
    expect(r.err).toContain(`${file}:2:11: routes[0].name: must be 1-64 letters`);
    expect(r.err).toContain(`${file}:3:5: routes[0] (name "bad name").match: needs \`pathPrefix\``);
    expect(r.err).toContain(`${file}:4:22: routes[0] (name "bad name").upstream.url: must be an absolute http:// or https:// URL`);
    expect(r.err).toContain(`${file}:5:22: routes[0] (name "bad name").retry.baseMs: expected number, got string`);
    expect(r.err).toContain(`${file}:6:5: routes[0] (name "bad name"): unknown key "tiemouts" (did you mean "timeouts"?)`);
  });

  it('check-config accepts the example config', async () => {
    const r = await collect(cli(['check-config', 'config/example.yaml']));
    expect(r.err).toBe('');
    expect(r.out).toContain('config/example.yaml: valid (3 routes: openai, anthropic, github)');
    expect(r.code).toBe(0);
  });

  it('refuses to start on a bad config, before listening', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fusebox-cfg-'));
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, 'routes: []\n');
    const r = await collect(cli(['--config', file]));
    expect(r.code).toBe(1);
    expect(r.err).toContain('invalid config, not starting');
    expect(r.err).toContain('routes: needs at least one route');
  });

  it('refuses to start when the OTEL_* variables ask for tracing it cannot do, before listening', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fusebox-cfg-'));
    const file = join(dir, 'ok.yaml');
    writeFileSync(file, 'listen: { proxy: { port: 0 }, admin: { port: 0 } }\nroutes:\n  - { name: r, match: { pathPrefix: /r }, upstream: { url: "http://127.0.0.1:9" } }\n');
    const r = await collect(cli(['--config', file], { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }));
    expect(r.code).toBe(1);
    expect(r.err).toContain('invalid config or environment, not starting');
    expect(r.err).toContain('OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported');
    expect(r.out).not.toContain('fusebox listening');
  });

  it('runs from a config file, gives back the young generation startup grew once listening, and exits 0 on SIGTERM', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fusebox-cfg-'));
    const file = join(dir, 'ok.yaml');
    writeFileSync(file, 'log: { level: debug }\nlisten: { proxy: { port: 0 }, admin: { port: 0 } }\nroutes:\n  - { name: r, match: { pathPrefix: /r }, upstream: { url: "http://127.0.0.1:9" } }\n');
    const child = cli(['--config', file]);
    const done = collect(child);
    const logs = logsOf(child);
    // A whole line, not a chunk: the text could be split across two reads.
    await logs.next((l) => l.msg === 'fusebox listening', 'that it listens');
    // Issue 15: the idle footprint (src/cli/settle-heap.ts).
    await logs.next((l) => l.msg === 'heap settled after start', 'that it settled its heap');
    child.kill('SIGTERM');
    const r = await done;
    expect(r.code).toBe(0);
    expect(r.out).toContain('"msg":"stopped"');
  });

  it('writes the access line of every call of a burst answered just before SIGTERM, the last line included', async () => {
    const upstream = await startUpstream();
    try {
      const dir = mkdtempSync(join(tmpdir(), 'fusebox-cfg-'));
      const file = join(dir, 'ok.yaml');
      writeFileSync(file, `listen: { proxy: { port: 0 }, admin: { port: 0 } }\nroutes:\n  - { name: r, match: { pathPrefix: /r }, upstream: { url: "${upstream.url}" } }\n`);
      const child = cli(['--config', file]);
      const done = collect(child);
      const listening = await logsOf(child).next((l) => l.msg === 'fusebox listening', 'that it listens');
      // 300 lines (~150 KiB): dozens of batches, the last one still waiting when the signal comes.
      const ids = await Promise.all(
        Array.from({ length: 300 }, async (_, i) => {
          const id = `burst-${i}`;
          const res = await request(`${String(listening.proxy)}/r/fast`, { headers: { 'x-request-id': id } });
          await res.body.dump();
          expect(res.statusCode).toBe(200);
          return id;
        }),
      );
      child.kill('SIGTERM');
      const r = await done;
      expect(r.code).toBe(0);
      const lines = r.out.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Log);
      const logged = new Set(lines.filter((l) => l.msg === 'request').map((l) => l.requestId));
      expect(ids.filter((id) => !logged.has(id))).toEqual([]);
      expect(lines.at(-1)?.msg).toBe('stopped');
    } finally {
      await upstream.close();
    }
  });

  it('writes readable lines instead of JSON for a person (FUSEBOX_LOG_FORMAT=pretty, the default on a terminal)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fusebox-cfg-'));
    const file = join(dir, 'ok.yaml');
    writeFileSync(file, 'listen: { proxy: { port: 0 }, admin: { port: 0 } }\nroutes:\n  - { name: r, match: { pathPrefix: /r }, upstream: { url: "http://127.0.0.1:9" } }\n');
    const child = cli(['--config', file], { FUSEBOX_LOG_FORMAT: 'pretty' });
    const done = collect(child);
    let out = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('fusebox listening')) resolve();
      });
      child.once('exit', () => reject(new Error(`exited before listening: ${out}`)));
    });
    child.kill('SIGTERM');
    expect((await done).code).toBe(0);
    const line = out.split('\n').find((l) => l.includes('fusebox listening'))!;
    expect(line).toMatch(/^\[\d\d:\d\d:\d\d\.\d{3}\] .*INFO.*: fusebox listening/);
    expect(out).toMatch(/^\s+proxy: "http:\/\/127\.0\.0\.1:\d+"/m);
  });

  /** `fusebox run` on a config file of routes `a`, ... to `upstream`; `config(names)` writes such a file's text. */
  const runWithRoutes = async (upstream: TestUpstream, args: string[]) => {
    const config = (routes: string[]) =>
      `listen: { proxy: { port: 0 }, admin: { port: 0 } }\nroutes:\n${routes.map((r) => `  - { name: ${r}, match: { pathPrefix: /${r} }, upstream: { url: "${upstream.url}" } }\n`).join('')}`;
    const file = join(mkdtempSync(join(tmpdir(), 'fusebox-cfg-')), 'fusebox.yaml');
    writeFileSync(file, config(['a']));
    const child = cli(['--config', file, ...args]);
    const done = collect(child);
    const logs = logsOf(child);
    const listening = await logs.next((l) => l.msg === 'fusebox listening', 'that it listens');
    return { file, config, child, done, logs, listening };
  };

  it('reloads the config file on SIGHUP: a new route serves, an invalid file is logged and the old config kept; SIGTERM still drains and exits 0', async () => {
    const upstream = await startUpstream();
    try {
      const { file, config, child, done, logs, listening } = await runWithRoutes(upstream, []);
      const proxy = String(listening.proxy);
      const status = async (path: string) => {
        const res = await request(`${proxy}${path}`);
        await res.body.dump();
        return res.statusCode;
      };
      expect(await status('/b/fast')).toBe(404);

      writeFileSync(file, config(['a', 'b']));
      child.kill('SIGHUP');
      expect(await logs.next((l) => l.msg === RELOAD_REQUESTED, 'that a reload was requested')).toMatchObject({ trigger: 'SIGHUP', file });
      expect(await logs.next((l) => l.msg === 'config reloaded', 'that the config was reloaded')).toMatchObject({ added: ['b'], removed: [] });
      expect(await status('/b/fast')).toBe(200);

      writeFileSync(file, config(['a', 'b']).replace('port: 0 }, admin', 'port: "x" }, admin'));
      child.kill('SIGHUP');
      const failed = await logs.next((l) => typeof l.msg === 'string' && l.msg.startsWith('config reload failed: 1 problem'), 'the failed reload');
      expect(failed.problems).toEqual([expect.stringMatching(/listen\.proxy\.port/)]);
      expect(await status('/b/fast')).toBe(200);

      child.kill('SIGTERM');
      const r = await done;
      expect(r.code).toBe(0);
      expect(r.out).toContain('"msg":"stopped"');
    } finally {
      await upstream.close();
    }
  });

  it('with --watch-config, reloads when the file changes (an editor saving by rename included)', async () => {
    const upstream = await startUpstream();
    try {
      const { file, config, child, done, logs, listening } = await runWithRoutes(upstream, ['--watch-config']);
      const dir = dirname(file);
      await logs.next((l) => l.msg === 'watching the config file: a change reloads it', 'that it watches');
      // Written aside and renamed over the file, as editors and ConfigMap updates do.
      writeFileSync(join(dir, 'fusebox.yaml.tmp'), config(['a', 'c']));
      renameSync(join(dir, 'fusebox.yaml.tmp'), file);
      expect(await logs.next((l) => l.msg === RELOAD_REQUESTED, 'that the change was seen')).toMatchObject({ trigger: 'watch' });
      expect(await logs.next((l) => l.msg === 'config reloaded', 'that the config was reloaded')).toMatchObject({ added: ['c'] });
      const res = await request(`${String(listening.proxy)}/c/fast`);
      await res.body.dump();
      expect(res.statusCode).toBe(200);
      child.kill('SIGTERM');
      expect((await done).code).toBe(0);
    } finally {
      await upstream.close();
    }
  });

  it('check-config --help prints its usage instead of reading a file named --help', async () => {
    const r = await collect(cli(['check-config', '--help']));
    expect(r).toMatchObject({ code: 0, err: '' });
    expect(r.out).toMatch(/^Usage: fusebox check-config FILE\n/);
  });

  it.skipIf(OLD_NODE === undefined)(`on an older Node (${OLD_NODE?.version ?? 'none on PATH'}) says which Node it needs and exits 1, before loading anything`, async () => {
    const child = spawn(OLD_NODE!.bin, ['--import', 'tsx', 'src/main.ts', 'check-config', 'config/example.yaml'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const r = await collect(child);
    expect(r.err).toMatch(new RegExp(`^Fusebox needs Node ≥ 24; you have ${OLD_NODE!.version.replaceAll('.', '\\.')}\\.\n`));
    expect(r.err).not.toContain('TypeError');
    expect(r).toMatchObject({ code: 1, out: '' });
  });
});
