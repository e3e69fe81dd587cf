import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import type { Pool as UndiciPool, errors as UndiciErrors } from 'undici';
import type { TimeoutsConfig, TlsConfig } from '../config/schema.js';

/** What identifies one upstream connection pool: its origin plus the TLS settings used to reach it. */
export interface UpstreamTarget {
  /** Label for metrics and logs (route name, or `<route>/<step>`). */
  name: string;
  /** `https://api.openai.com` */
  origin: string;
  /** Base path from the configured URL, without a trailing slash ('' when none). */
  basePath: string;
  tls: TlsConfig;
  connections: number;
  timeouts: TimeoutsConfig;
}

const requireFromHere = createRequire(import.meta.url);

/** A file of undici's, with an error that names the cause if an upgrade moved it. */
const requireUndici = (file: string): unknown => {
  try {
    return requireFromHere(file);
  } catch (err) {
    throw new Error(`cannot load ${file} (src/upstream/pool.ts loads undici's Pool from its own files; did an undici upgrade move them?): ${(err as Error).message}`, { cause: err });
  }
};

/**
 * undici's Pool alone, from its own files: the package's index also loads fetch, WebSocket, EventSource, the cache
 * and the mocks, which Fusebox never uses: 13 MB of RSS and 2.7 MB of V8 heap in a bare process (`npm run bench:idle
 * -- --deps`). Hazard: the index is also what gives every dispatcher its `request`/`stream`/`pipeline`/`connect`/
 * `upgrade` methods (`Object.assign(Dispatcher.prototype, api)`), so that is done here too; a test process that
 * imports 'undici' anywhere would hide its absence, which is why test/integration/startup-footprint.test.ts calls
 * through this Pool before anything imports the index. The package has no `exports` map; the same test checks these
 * are still the classes the index exports, so an upgrade that moves them fails there, not in production.
 */
const Dispatcher = requireUndici('undici/lib/dispatcher/dispatcher.js') as { prototype: object };
Object.assign(Dispatcher.prototype, requireUndici('undici/lib/api/index.js'));
export const Pool = requireUndici('undici/lib/dispatcher/pool.js') as typeof UndiciPool;
/** undici's error classes (what the index exports as `errors`), from the same files. */
export const undiciErrors = requireUndici('undici/lib/core/errors.js') as typeof UndiciErrors;
type Pool = UndiciPool;

export const parseUpstreamUrl = (url: string): { origin: string; basePath: string } => {
  const u = new URL(url);
  return { origin: u.origin, basePath: u.pathname.replace(/\/+$/, '') };
};

/**
 * One undici Pool per (origin, TLS settings). Our own pools, never the global dispatcher: the global one would
 * honour HTTP_PROXY from Fusebox's environment once `EnvHttpProxyAgent` is installed, and Fusebox must never loop
 * its upstream calls through a proxy (itself, in a pod where HTTP_PROXY is set for every container).
 */
export class PoolSet {
  private readonly pools = new Map<string, Pool>();

  constructor(private readonly baseDir: string) {}

  get(target: UpstreamTarget): Pool {
    const key = `${target.origin}|${target.tls.caFile ?? ''}|${target.tls.rejectUnauthorized}|${target.tls.servername ?? ''}`;
    let pool = this.pools.get(key);
    if (pool === undefined) {
      pool = new Pool(target.origin, {
        connections: target.connections,
        // Keep-alive slightly below common upstream idle timeouts (OpenAI/Cloudflare ~ 60-90 s, nginx 75 s)
        // so we close idle sockets before the server does and never write into a socket it is closing.
        keepAliveTimeout: 30_000,
        keepAliveMaxTimeout: 55_000,
        connect: {
          timeout: target.timeouts.connectMs || undefined,
          rejectUnauthorized: target.tls.rejectUnauthorized,
          ...(target.tls.caFile !== undefined ? { ca: readFileSync(resolve(this.baseDir, target.tls.caFile)) } : {}),
          ...(target.tls.servername !== undefined ? { servername: target.tls.servername } : {}),
        },
      });
      this.pools.set(key, pool);
    }
    return pool;
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.close().catch(() => p.destroy())));
    this.pools.clear();
  }

  /** Sockets are cut mid-flight: only for the end of a grace period. */
  async destroy(): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.destroy()));
    this.pools.clear();
  }
}
