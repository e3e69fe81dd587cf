import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** One request as the upstream saw it. */
export interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: Buffer;
  /** Resolves when the upstream's request/response pair closed (e.g. the proxy aborted it). */
  closed: Promise<void>;
}

export type Script = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void | Promise<void>;

export interface TestUpstream {
  url: string;
  port: number;
  seen: Seen[];
  /** Requests seen on a path (path without query). */
  count(path: string): number;
  /** Replace or add the behaviour of one path. */
  on(path: string, script: Script): void;
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Default behaviours; a test can add its own with `upstream.on(path, script)`. */
const builtins: Record<string, Script> = {
  '/fast': (_req, res) => json(res, 200, { ok: true }),
  '/echo': (req, res, body) => json(res, 200, { method: req.method, url: req.url, headers: req.headers, body: body.toString('utf8') }),
  '/slow': async (req, res) => {
    const ms = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('ms') ?? 1000);
    await sleep(ms);
    if (!res.destroyed) json(res, 200, { slept: ms });
  },
  '/reset': (req) => {
    req.socket.destroy();
  },
  '/large': (req, res) => {
    const bytes = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('bytes') ?? 1_000_000);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes });
    res.end(Buffer.alloc(bytes, 120));
  },
  '/status': (req, res) => {
    const q = new URL(req.url ?? '/', 'http://x').searchParams;
    const headers: Record<string, string> = {};
    for (const [k, v] of q) if (k !== 'code') headers[k] = v;
    json(res, Number(q.get('code') ?? 500), { status: Number(q.get('code') ?? 500) }, headers);
  },
  '/sse': async (req, res) => {
    const q = new URL(req.url ?? '/', 'http://x').searchParams;
    const n = Number(q.get('n') ?? 3);
    const every = Number(q.get('every') ?? 20);
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    for (let i = 0; i < n && !res.destroyed; i++) {
      res.write(`data: {"i":${i}}\n\n`);
      await sleep(every);
    }
    if (q.get('cut') !== null) {
      res.socket?.destroy();
      return;
    }
    res.end('data: [DONE]\n\n');
  },
};

export const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void => {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
};

let cachedCert: { key: Buffer; cert: Buffer; caFile: string } | undefined;
/** A self-signed certificate for 127.0.0.1/localhost, made once per test run with the machine's openssl. */
export const testCertificate = (): { key: Buffer; cert: Buffer; caFile: string } => {
  if (cachedCert) return cachedCert;
  const dir = join(tmpdir(), `fusebox-test-cert-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  const keyFile = join(dir, 'key.pem');
  const certFile = join(dir, 'cert.pem');
  if (!existsSync(certFile)) {
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
      { stdio: 'ignore' },
    );
  }
  cachedCert = { key: readFileSync(keyFile), cert: readFileSync(certFile), caFile: certFile };
  return cachedCert;
};

/** A real HTTP(S) server on a loopback port that can misbehave on demand. */
export const startUpstream = async (opts: { tls?: boolean } = {}): Promise<TestUpstream> => {
  const scripts = new Map<string, Script>(Object.entries(builtins));
  const seen: Seen[] = [];
  const sockets = new Set<Socket>();
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    let closedResolve!: () => void;
    const closed = new Promise<void>((r) => (closedResolve = r));
    res.once('close', () => closedResolve());
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body, closed });
      const path = (req.url ?? '/').split('?')[0]!;
      const script = scripts.get(path) ?? ((_q, r) => json(r, 404, { error: `test upstream has no script for ${path}` }));
      Promise.resolve(script(req, res, body)).catch(() => res.destroy());
    });
  };
  const server: Server = opts.tls ? createHttpsServer({ key: testCertificate().key, cert: testCertificate().cert }, handler) : createHttpServer(handler);
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    port,
    seen,
    count: (path) => seen.filter((s) => s.url.split('?')[0] === path).length,
    on: (path, script) => scripts.set(path, script),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
};
