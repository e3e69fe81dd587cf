import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createRequire } from 'node:module';
import { ProxyAgent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/**
 * A "proxy" on loopback that records every connection it gets and answers 502: any client that honours the
 * proxy variables lands here instead of at the upstream.
 */
interface Trap {
  url: string;
  /** First line of what each connection sent (`GET http://... HTTP/1.1`, `CONNECT host:port HTTP/1.1`). */
  lines: string[];
  connections: number;
  close(): Promise<void>;
}

const startTrap = async (): Promise<Trap> => {
  const sockets = new Set<Socket>();
  const trap = { url: '', lines: [] as string[], connections: 0 };
  const server: Server = createServer((s) => {
    trap.connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    s.once('data', (d: Buffer) => {
      trap.lines.push(d.toString('latin1').split('\r\n')[0]!);
      s.end('HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  trap.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return Object.assign(trap, {
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  });
};

const run = (child: ChildProcess) =>
  new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    let out = '';
    let err = '';
    child.stdout?.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr?.on('data', (c: Buffer) => (err += c.toString()));
    child.on('close', (code) => resolve({ code, out, err }));
  });

describe('the proxy variables in Fusebox’s own environment', () => {
  let trap: Trap;
  let up: TestUpstream;
  let dir: string;
  let fusebox: ChildProcess | undefined;
  let proxyUrl: string;
  let env: NodeJS.ProcessEnv;
  let fuseboxOutput = '';

  beforeAll(async () => {
    trap = await startTrap();
    up = await startUpstream();
    dir = mkdtempSync(join(tmpdir(), 'fusebox-envproxy-'));
    // Set from the start, as in a pod where the injector gives every container (the sidecar too) these variables.
    env = {
      ...process.env,
      HTTP_PROXY: trap.url,
      HTTPS_PROXY: trap.url,
      http_proxy: trap.url,
      https_proxy: trap.url,
      ALL_PROXY: trap.url,
      all_proxy: trap.url,
      NODE_USE_ENV_PROXY: '1',
    };
    // A NO_PROXY inherited from the machine could exempt loopback and make the trap unreachable for everyone.
    delete env.NO_PROXY;
    delete env.no_proxy;
    const file = join(dir, 'fusebox.yaml');
    writeFileSync(
      file,
      [
        'listen: { proxy: { port: 0 }, admin: { port: 0 } }',
        'routes:',
        `  - { name: base, match: { pathPrefix: /up }, upstream: { url: "${up.url}" }, retry: { enabled: false } }`,
        `  - { name: byhost, match: { hosts: [upstream.test] }, upstream: { url: "${up.url}" }, retry: { enabled: false } }`,
        `  - { name: tunnel, match: { hosts: ["127.0.0.1:${up.port}"] }, upstream: { url: "${up.url}" } }`,
      ].join('\n'),
    );
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/main.ts'), '--config', file], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    fusebox = child;
    child.stderr.on('data', (c: Buffer) => (fuseboxOutput += c.toString()));
    proxyUrl = await new Promise<string>((resolve, reject) => {
      child.on('exit', (code) => reject(new Error(`fusebox exited with ${code} before listening: ${fuseboxOutput}`)));
      child.stdout.on('data', (c: Buffer) => {
        fuseboxOutput += c.toString();
        for (const line of fuseboxOutput.split('\n')) {
          if (!line.includes('"fusebox listening"')) continue;
          resolve((JSON.parse(line) as { proxy: string }).proxy);
        }
      });
    });
  });

  afterAll(async () => {
    if (fusebox && fusebox.exitCode === null && fusebox.signalCode === null) {
      const exited = new Promise((r) => fusebox!.once('exit', r));
      fusebox.kill('SIGKILL');
      await exited;
    }
    await up?.close();
    await trap?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('never send Fusebox’s upstream calls through them, though they divert any client that honours them', async () => {
    // Base-URL mode, GET and POST.
    const a = await request(`${proxyUrl}/up/fast`);
    expect(a.statusCode).toBe(200);
    expect(await a.body.json()).toEqual({ ok: true });
    const b = await request(`${proxyUrl}/up/echo`, { method: 'POST', body: 'hello' });
    expect(b.statusCode).toBe(200);
    expect(await b.body.json()).toMatchObject({ method: 'POST', body: 'hello' });
    // Proxy mode: an absolute-form request routed by host (Fusebox forwards it through its own pool).
    const byHost = new ProxyAgent({ uri: proxyUrl, proxyTunnel: false });
    const c = await request('http://upstream.test/echo', { dispatcher: byHost });
    expect(c.statusCode).toBe(200);
    expect(((await c.body.json()) as { headers: Record<string, string> }).headers.via).toMatch(/fusebox/);
    // CONNECT tunnel (Fusebox dials the target itself).
    const tunnel = new ProxyAgent({ uri: proxyUrl, proxyTunnel: true });
    const d = await request(`${up.url}/fast`, { dispatcher: tunnel });
    expect(d.statusCode).toBe(200);
    await d.body.dump();
    await Promise.all([byHost.close(), tunnel.close()]);

    expect(up.count('/fast')).toBe(2);
    expect(up.count('/echo')).toBe(2);
    expect(trap.lines).toEqual([]);
    expect(trap.connections).toBe(0);

    // Positive control: the same environment in a process under the same Node diverts undici's
    // EnvHttpProxyAgent (what Fusebox's pools would be if they honoured the variables), fetch and node:http
    // (NODE_USE_ENV_PROXY) into the trap, so a Fusebox that honoured them would have failed the check above.
    const undiciUrl = pathToFileURL(createRequire(import.meta.url).resolve('undici')).href;
    const control = `
      import http from 'node:http';
      import { request, EnvHttpProxyAgent } from ${JSON.stringify(undiciUrl)};
      const target = process.argv[1];
      try { const r = await request(target + '/ctl-undici', { dispatcher: new EnvHttpProxyAgent() }); console.log('undici', r.statusCode); await r.body.dump(); }
      catch (e) { console.log('undici error', e.message); }
      try { const r = await fetch(target + '/ctl-fetch'); console.log('fetch', r.status); } catch (e) { console.log('fetch error', e.cause?.code ?? e.message); }
      await new Promise((done) => http.get(target + '/ctl-http', (r) => { console.log('http', r.statusCode); r.resume(); r.on('end', done); }).on('error', (e) => { console.log('http error', e.message); done(); }));
    `;
    const r = await run(spawn(process.execPath, ['--input-type=module', '-e', control, up.url], { env, stdio: ['ignore', 'pipe', 'pipe'] }));
    expect(r.err).toBe('');
    expect(r.out).toContain('undici 502');
    expect(r.out).toContain('http 502');
    expect(up.seen.filter((s) => s.url.startsWith('/ctl-'))).toEqual([]);
    expect(trap.lines).toEqual(
      expect.arrayContaining([`GET ${up.url}/ctl-undici HTTP/1.1`, `GET ${up.url}/ctl-http HTTP/1.1`, `CONNECT 127.0.0.1:${up.port} HTTP/1.1`]),
    );
    expect(trap.connections).toBe(3);
  });
});
