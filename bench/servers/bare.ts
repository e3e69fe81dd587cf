import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool, type Dispatcher } from 'undici';
import { announce, requiredEnv } from './announce.js';

/**
 * The bare floor of bench/per-call.ts: what forwarding alone costs on Node — a `node:http` server and an undici Pool,
 * `/bench` stripped, hop-by-hop headers dropped, both bodies streamed. No routing table, policies, metrics or logs: a
 * per-call figure of Fusebox minus this one is what Fusebox's own code costs.
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
server.listen(0, '127.0.0.1', () => announce(`http://127.0.0.1:${(server.address() as AddressInfo).port}`));
