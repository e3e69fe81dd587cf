import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import { createSecureContext, TLSSocket } from 'node:tls';
import { Pool, type Dispatcher } from 'undici';
import { announce, requiredEnv } from './announce.js';

/**
 * The bare floor of bench/per-call.ts: what forwarding alone costs on Node — a `node:http` server and an undici Pool,
 * `/bench` stripped, hop-by-hop headers dropped, both bodies streamed. No routing table, policies, metrics or logs: a
 * per-call figure of Fusebox minus this one is what Fusebox's own code costs.
 * With `BENCH_TLS_DIR` (a folder holding `key.pem` and its self-signed `ca.crt`), it also answers `CONNECT` the way
 * Fusebox intercepts a tunnel — 200, a server `TLSSocket` on the client socket with that certificate, the decrypted
 * requests handed to the same `node:http` server — with no allow-list, minting or checks: the floor of interception.
 */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'trailer', 'host']);
const pool = new Pool(requiredEnv('BENCH_UPSTREAM'), { connections: 64, keepAliveTimeout: 60_000 });

const server = createServer({ noDelay: true, keepAliveTimeout: 72_000, requestTimeout: 0 }, (req, res) => {
  const headers: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) headers[k] = v;
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  pool
    .request({ method: req.method as Dispatcher.HttpMethod, path: (req.url ?? '/').replace(/^\/bench/, '') || '/', headers, body: hasBody ? req : null })
    .then(
      (up) => {
        const out: Record<string, string | string[]> = {};
        for (const [k, v] of Object.entries(up.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
        res.writeHead(up.statusCode, out);
        if (String(out['content-type'] ?? '').startsWith('text/event-stream')) res.flushHeaders();
        up.body.pipe(res);
      },
      (err: Error) => {
        res.writeHead(502).end(err.message);
      },
    );
});
const tlsDir = process.env.BENCH_TLS_DIR;
if (tlsDir !== undefined) {
  const secureContext = createSecureContext({ key: readFileSync(join(tlsDir, 'key.pem')), cert: readFileSync(join(tlsDir, 'ca.crt')) });
  server.on('connect', (_req, socket: Socket, head: Buffer) => {
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    if (head.length > 0) socket.unshift(head);
    const tls = new TLSSocket(socket, { isServer: true, secureContext, ALPNProtocols: ['http/1.1'] });
    tls.on('error', () => tls.destroy());
    server.emit('connection', tls);
  });
}
server.listen(0, '127.0.0.1', () => announce(`http://127.0.0.1:${(server.address() as AddressInfo).port}`));
