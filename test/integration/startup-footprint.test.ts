import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import Fastify from 'fastify';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { buildApp, type Fusebox } from '../../src/app.js';
import { loadConfigFile } from '../../src/config/load.js';
import { lazySchemaCompilers } from '../../src/http/schema-compilers.js';
import { Pool, undiciErrors } from '../../src/upstream/pool.js';

/**
 * What an idle sidecar loads (issue 15): each test file runs in its own process (vitest's forks pool), so Node's
 * CommonJS module cache holds what this file's sidecar loaded, and nothing else's.
 */
const loaded = () => Object.keys(createRequire(import.meta.url).cache);
const anyUnder = (paths: string[], dir: string) => paths.some((p) => p.includes(`/node_modules/${dir}`));

const REPO = join(import.meta.dirname, '..', '..');
let app: Fusebox | undefined;
afterAll(async () => app?.shutdown(0));

describe('startup footprint', () => {
  it('a sidecar on config/example.yaml loads neither fastify\'s schema compilers (ajv, fast-json-stringify), undici\'s fetch and WebSocket, ioredis, nor an X.509 library', async () => {
    const { config } = loadConfigFile(join(REPO, 'config', 'example.yaml'), { POD_NAME: 'footprint-test' });
    const onPortZero = { ...config, listen: { proxy: { ...config.listen.proxy, port: 0 }, admin: { ...config.listen.admin, port: 0 } } };
    app = await buildApp(onPortZero, { logger: pino({ level: 'silent' }), env: {} });
    const { adminUrl } = await app.listen();
    expect((await fetch(`${adminUrl}/readyz`)).status).toBe(200);
    expect((await fetch(`${adminUrl}/metrics`)).status).toBe(200);

    // Through undici's Pool as the sidecar loads it (without the package's index), by `dispatch` as send.ts calls it.
    const upstream = createServer((_req, res) => res.end('pooled'));
    await new Promise<void>((done) => upstream.listen(0, '127.0.0.1', done));
    const pool = new Pool(`http://127.0.0.1:${(upstream.address() as AddressInfo).port}`);
    try {
      const body = await new Promise<string>((resolveBody, reject) => {
        const chunks: Buffer[] = [];
        pool.dispatch(
          { method: 'GET', path: '/' },
          {
            onRequestStart: () => {},
            onResponseStart: () => {},
            onResponseData: (_c, chunk: Buffer) => void chunks.push(chunk),
            onResponseEnd: () => resolveBody(Buffer.concat(chunks).toString()),
            onResponseError: (_c, err: Error) => reject(err),
          },
        );
      });
      expect(body).toBe('pooled');
    } finally {
      await pool.close();
      upstream.close();
    }

    const paths = loaded();
    // The sidecar itself is in the cache: the check sees what it loads.
    expect(anyUnder(paths, 'fastify/')).toBe(true);
    expect(anyUnder(paths, 'undici/lib/dispatcher/pool.js')).toBe(true);
    expect(anyUnder(paths, 'ajv/')).toBe(false);
    expect(anyUnder(paths, 'fast-json-stringify/index.js')).toBe(false);
    expect(anyUnder(paths, 'undici/index.js')).toBe(false);
    expect(anyUnder(paths, 'undici/lib/web/')).toBe(false);
    expect(anyUnder(paths, 'ioredis/')).toBe(false);
    // The example routes list hosts, so the pod CA is made and leaves are minted at start: with node:crypto and
    // src/intercept/der.ts, not @peculiar/x509 (with tsyringe, reflect-metadata and the @peculiar/asn1-* packages).
    expect(app.ca?.leavesCached).toBe(3);
    for (const dir of ['@peculiar/', 'tsyringe/', 'reflect-metadata/', 'asn1js/', 'pvtsutils/']) expect(anyUnder(paths, dir), dir).toBe(false);
  });

  // After the test above: importing the package's index is what that test checks the sidecar does not do.
  it('undici\'s Pool loaded from its own file is the class the package exports (an upgrade that moves it fails here)', async () => {
    const undici = await import('undici');
    expect(Pool).toBe(undici.Pool);
    expect(Pool.prototype).toBeInstanceOf(undici.Dispatcher);
    expect(undiciErrors).toBe(undici.errors);
  });

  it('a fastify route that declares a schema still gets it compiled and enforced: ajv loads then', async () => {
    const admin = Fastify({ logger: false, schemaController: { compilersFactory: lazySchemaCompilers() } });
    admin.post('/checked', { schema: { body: { type: 'object', required: ['n'], properties: { n: { type: 'integer' } } }, response: { 200: { type: 'object', properties: { n: { type: 'integer' } } } } } }, async (req) => ({ n: (req.body as { n: number }).n, dropped: 'by the response schema' }));
    try {
      const bad = await admin.inject({ method: 'POST', url: '/checked', payload: { n: 'x' } });
      expect(bad.statusCode).toBe(400);
      const good = await admin.inject({ method: 'POST', url: '/checked', payload: { n: 3 } });
      expect(good.json()).toEqual({ n: 3 });
      expect(anyUnder(loaded(), 'ajv/')).toBe(true);
    } finally {
      await admin.close();
    }
  });
});
