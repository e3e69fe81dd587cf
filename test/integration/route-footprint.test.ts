// Issue 15: a route that never gets a call costs little. With 500 routes, the sidecar held ~65 KB of heap and
// ArrayBuffers per route before its first call: slots lru-cache allocates up front for the breaker registry and the
// last-good cache (whether lastGood is on or not), and each route's copy of the price table; reading /admin/status
// then gave every route its live window (~20 KB: counts per second and a 1,000-sample latency reservoir). Measured as
// heap used and ArrayBuffer bytes after full GCs, so the figure includes whatever else a route holds (its parsed
// config, its closures: ~12 KB now).
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { gc } from '../helpers/gc.js';
import { buildApp, type Fusebox } from '../../src/app.js';
import { parseConfig } from '../../src/config/load.js';


/** V8's heap used and the ArrayBuffers' backing stores (a typed array's bytes live outside the heap), after full GCs. */
const heapUsedAfterGc = (): number => {
  gc();
  gc();
  const { heapUsed, arrayBuffers } = process.memoryUsage();
  return heapUsed + arrayBuffers;
};

/** A config with `n` plain routes (no provider), as many a tool-heavy config lists. */
const configWith = (n: number) =>
  parseConfig(
    {
      listen: { proxy: { port: 0 }, admin: { port: 0 } },
      routes: Array.from({ length: n }, (_, i) => ({ name: `tool-${i}`, match: { pathPrefix: `/tool-${i}` }, upstream: { url: `http://127.0.0.1:9/${i}` } })),
    },
    'route footprint test',
  );

const apps: Fusebox[] = [];
afterAll(async () => {
  await Promise.all(apps.map((a) => a.shutdown(0)));
});

/** A sidecar built (not listening) with `n` routes whose status document was read once, as the live page reads it. */
const sidecarWith = async (n: number): Promise<void> => {
  const app = await buildApp(configWith(n), { logger: pino({ level: 'silent' }), env: {} });
  apps.push(app);
  expect((await app.admin.inject({ method: 'GET', url: '/admin/status' })).statusCode).toBe(200);
  // The injected response's stream lets go of the document's bytes in an immediate of its own.
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
};

describe('route footprint', () => {
  it('a route that never got a call holds under 20 KB of heap, its status read (it held ~89 KB)', async () => {
    // The first sidecar loads the modules and makes what is made once per process; the second is a sidecar's own cost.
    await sidecarWith(1);
    const base = heapUsedAfterGc();
    await sidecarWith(1);
    const oneRoute = heapUsedAfterGc() - base;
    const before = heapUsedAfterGc();
    const routes = 400;
    await sidecarWith(routes + 1);
    const manyRoutes = heapUsedAfterGc() - before;
    const perRoute = (manyRoutes - oneRoute) / routes;
    expect(perRoute).toBeLessThan(20 * 1024);
  });
});
