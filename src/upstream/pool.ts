import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import type { Pool as UndiciPool, errors as UndiciErrors } from 'undici';
import { readConfiguredFile } from '../config/load.js';
import type { TimeoutsConfig, TlsConfig } from '../config/schema.js';

/** One upstream as a route sends to it: what its connection pool is made with (see PoolSet), and its name and base path. */
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
 * -- --deps`). The index is also what gives dispatchers their `request`/`stream`/`pipeline` methods; Fusebox needs
 * none of them (send.ts calls `dispatch`), and test/integration/startup-footprint.test.ts dispatches through this
 * Pool before anything imports the index. The package has no `exports` map; the same test checks these are still
 * the classes the index exports, so an upgrade that moves them fails there, not in production.
 */
export const Pool = requireUndici('undici/lib/dispatcher/pool.js') as typeof UndiciPool;
/** undici's error classes (what the index exports as `errors`), from the same files. */
export const undiciErrors = requireUndici('undici/lib/core/errors.js') as typeof UndiciErrors;
type Pool = UndiciPool;

const digest = (bytes: Buffer): string => createHash('sha256').update(bytes).digest('hex');

export const parseUpstreamUrl = (url: string): { origin: string; basePath: string } => {
  const u = new URL(url);
  return { origin: u.origin, basePath: u.pathname.replace(/\/+$/, '') };
};

/**
 * One undici Pool per (origin, connection settings). Our own pools, never the global dispatcher: the global one would
 * honour HTTP_PROXY from Fusebox's environment once `EnvHttpProxyAgent` is installed, and Fusebox must never loop
 * its upstream calls through a proxy (itself, in a pod where HTTP_PROXY is set for every container).
 *
 * A pool is made with its settings (connections, connect timeout, TLS, the CA file's bytes) and keeps them, so they
 * are all in its key: a reload that raises `connections` or rotates the CA file behind `tls.caFile` gets a new pool
 * rather than the old one unchanged. A reload marks which pools its generation got ({@link beginGeneration}); the
 * others are retired ({@link retireUnused}): out of the set at once, closed once no call of the previous generation
 * can still send on them.
 */
export class PoolSet {
  private readonly pools = new Map<string, Pool>();
  /** Keys got since the generation being built began. */
  private gotten = new Set<string>();
  /** Keys of the pools made since the generation being built began (closed again if it is abandoned). */
  private made = new Set<string>();
  private readonly retiring = new Set<{ pool: Pool; timer: NodeJS.Timeout }>();
  /**
   * The sha256 of each `tls.caFile` the generation in effect read (resolved path → digest): a reload compares them
   * (caFilesChanged). The generation being built fills its own map, which replaces this one only if it is kept.
   */
  private caDigests = new Map<string, string>();
  private building: Map<string, string> | undefined;

  constructor(private readonly baseDir: string) {}

  get(target: UpstreamTarget): Pool {
    const caFile = target.tls.caFile;
    const ca = caFile !== undefined ? readConfiguredFile(this.baseDir, caFile, `${target.name}: tls.caFile`) : undefined;
    const caDigest = ca === undefined ? '' : digest(ca);
    if (caFile !== undefined) (this.building ?? this.caDigests).set(resolve(this.baseDir, caFile), caDigest);
    const { origin, connections, tls } = target;
    const key = `${origin}|${connections}|${target.timeouts.connectMs}|${caDigest}|${tls.rejectUnauthorized}|${tls.servername ?? ''}`;
    this.gotten.add(key);
    let pool = this.pools.get(key);
    if (pool === undefined) {
      pool = new Pool(origin, {
        connections,
        // Keep-alive slightly below common upstream idle timeouts (OpenAI/Cloudflare ~ 60-90 s, nginx 75 s)
        // so we close idle sockets before the server does and never write into a socket it is closing.
        keepAliveTimeout: 30_000,
        keepAliveMaxTimeout: 55_000,
        connect: {
          timeout: target.timeouts.connectMs || undefined,
          rejectUnauthorized: tls.rejectUnauthorized,
          ...(ca !== undefined ? { ca } : {}),
          ...(tls.servername !== undefined ? { servername: tls.servername } : {}),
        },
      });
      this.pools.set(key, pool);
      this.made.add(key);
    }
    return pool;
  }

  /**
   * Whether a CA file read for a pool holds other bytes now (a certificate rotated in place, as a mounted Secret is):
   * a reload of an unchanged config file then rebuilds, so the new CA is read. A file that cannot be read counts as
   * changed: the rebuild says why.
   */
  caFilesChanged(): boolean {
    for (const [path, was] of this.caDigests) {
      try {
        if (digest(readFileSync(path)) !== was) return true;
      } catch {
        return true;
      }
    }
    return false;
  }

  /** A generation is about to be built: the pools it gets from here on are the ones it uses. */
  beginGeneration(): void {
    this.gotten = new Set();
    this.made = new Set();
    this.building = new Map();
  }

  /** The generation being built failed (a reload found it invalid): the pools made for it alone are closed. */
  abandonGeneration(): void {
    for (const key of this.made) {
      const pool = this.pools.get(key);
      this.pools.delete(key);
      pool?.close().catch(() => pool.destroy());
    }
    this.made = new Set();
    // Its CA digests go too: the generation in effect still uses what it read (a rotation it missed stays changed).
    this.building = undefined;
  }

  /**
   * The generation built since {@link beginGeneration} is in effect: every pool it did not get leaves the set now and
   * is closed (gracefully: requests it holds finish) after `graceMs`, the longest a call of the previous generation
   * can still be running and send a retry or a fallback hop on it. Returns the origins retired, for the reload's log line.
   */
  retireUnused(graceMs: number): string[] {
    if (this.building !== undefined) {
      this.caDigests = this.building;
      this.building = undefined;
    }
    const origins: string[] = [];
    for (const [key, pool] of this.pools) {
      if (this.gotten.has(key)) continue;
      this.pools.delete(key);
      origins.push(key.slice(0, key.indexOf('|')));
      const entry = {
        pool,
        timer: setTimeout(() => {
          this.retiring.delete(entry);
          pool.close().catch(() => pool.destroy());
        }, graceMs),
      };
      // A retired pool must not keep the process alive; shutdown closes it with the rest.
      entry.timer.unref();
      this.retiring.add(entry);
    }
    return origins;
  }

  /** Pools in use (retired ones not counted). */
  get size(): number {
    return this.pools.size;
  }

  async close(): Promise<void> {
    await Promise.all(this.takeAll().map((p) => p.close().catch(() => p.destroy())));
  }

  /** Sockets are cut mid-flight: only for the end of a grace period. */
  async destroy(): Promise<void> {
    await Promise.all(this.takeAll().map((p) => p.destroy()));
  }

  /** Every pool, retired ones included, out of the set. */
  private takeAll(): Pool[] {
    const all = [...this.pools.values()];
    for (const r of this.retiring) {
      clearTimeout(r.timer);
      all.push(r.pool);
    }
    this.pools.clear();
    this.retiring.clear();
    return all;
  }
}
