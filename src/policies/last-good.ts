import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { RouteConfig } from '../config/schema.js';
import type { BodyObserver, HeaderMap, Layer, ProxyRequest, ProxyResponse } from '../pipeline/types.js';
import type { Metrics } from '../telemetry/metrics.js';
import { isResendable } from './retry.js';

export type LastGoodConfig = RouteConfig['lastGood'];

/** Response headers worth replaying: the ones that say how to read the bytes. */
const KEPT_HEADERS = ['content-type', 'content-encoding'] as const;

export interface LastGoodEntry {
  readonly statusCode: number;
  readonly headers: HeaderMap;
  readonly body: Buffer;
  /** Clock time (ms) it was stored. */
  readonly storedAt: number;
}

const headerText = (h: HeaderMap, name: string): string | undefined => {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
};

/** The cache key of a request: sha256 of method, path and body. Undefined for a streamed body (never cached). */
export const lastGoodKey = (req: ProxyRequest): string | undefined => {
  if (req.body.kind === 'stream') return undefined;
  const hash = createHash('sha256').update(req.method).update('\n').update(req.path).update('\n');
  if (req.body.kind === 'buffered') hash.update(req.body.bytes);
  return hash.digest('hex');
};

/**
 * The last successful answer per (method, path, body) of one route, for the `lastGood` fallback step: bounded in
 * entries (`maxEntries`), in bytes (`maxBodyBytes` each; `maxTotalBytes` together, since 1000 × 1 MiB would be
 * 1 GiB in a sidecar) and in age (`ttlMs`, checked against the injected clock on every read, so tests need no
 * timers).
 */
export class LastGoodCache {
  /**
   * Made on the first answer stored: lru-cache allocates its slots for `maxEntries` up front (~30 KB at the default
   * 1,000), and every route has a cache, remembering or not (issue 15: 500 routes held 15 MB of empty slots).
   */
  private cache: LRUCache<string, LastGoodEntry> | undefined;

  constructor(
    readonly config: LastGoodConfig,
    private readonly now: () => number,
  ) {}

  get(key: string): LastGoodEntry | undefined {
    const entry = this.cache?.get(key);
    if (entry === undefined) return undefined;
    if (this.now() - entry.storedAt > this.config.ttlMs) {
      this.cache?.delete(key);
      return undefined;
    }
    return entry;
  }

  set(key: string, entry: LastGoodEntry): void {
    if (entry.body.length > this.config.maxBodyBytes || entry.body.length > this.config.maxTotalBytes) return;
    this.cache ??= new LRUCache<string, LastGoodEntry>({
      max: this.config.maxEntries,
      maxSize: this.config.maxTotalBytes,
      sizeCalculation: (e) => Math.max(1, e.body.length),
    });
    this.cache.set(key, entry);
  }

  get size(): number {
    return this.cache?.size ?? 0;
  }
}

export interface LastGoodDeps {
  now: () => number;
  metrics: Pick<Metrics, 'lastGood'>;
}

/**
 * Remembers successful (2xx) answers of the route's primary as they stream to the agent, when `lastGood.enabled`.
 * It sits inside the fallback layer, so only answers from the primary are remembered, never a fallback's.
 * Not remembered, unless `includeUnsafe`: SSE streams (a replayed stream would be stale and partial-looking) and
 * answers to non-idempotent tool calls (replaying "payment done" for a payment that did not happen is a lie).
 * An answer is stored only once its body ended whole and within `maxBodyBytes`.
 */
export const lastGoodRecordLayer = (route: RouteConfig, cache: LastGoodCache, deps: LastGoodDeps): Layer => {
  const cfg = route.lastGood;
  if (!cfg.enabled) return (next) => next;
  const stored = deps.metrics.lastGood.labels(route.name, 'stored');
  return (next) => async (req, ctx) => {
    const res = await next(req, ctx);
    if (res.statusCode < 200 || res.statusCode >= 300) return res;
    const type = headerText(res.headers, 'content-type') ?? '';
    if (!cfg.includeUnsafe && (type.startsWith('text/event-stream') || !isResendable(req, route))) return res;
    const key = lastGoodKey(req);
    if (key === undefined) return res;
    res.observers.push(recorder(res, (body) => {
      const headers: HeaderMap = {};
      for (const name of KEPT_HEADERS) {
        const v = res.headers[name];
        if (v !== undefined) headers[name] = v;
      }
      cache.set(key, { statusCode: res.statusCode, headers, body, storedAt: deps.now() });
      stored.inc();
    }, cfg.maxBodyBytes));
    return res;
  };
};

const recorder = (res: ProxyResponse, store: (body: Buffer) => void, maxBytes: number): BodyObserver => {
  let chunks: Buffer[] = [];
  let size = 0;
  let tooLarge = false;
  return {
    onChunk: (chunk) => {
      if (tooLarge) return;
      size += chunk.length;
      if (size > maxBytes) {
        tooLarge = true;
        chunks = [];
      } else chunks.push(chunk);
    },
    onEnd: (end) => {
      if (!end.ok || tooLarge) return;
      store(Buffer.isBuffer(res.body) ? res.body : Buffer.concat(chunks, size));
    },
  };
};

/**
 * The `lastGood` fallback step: the remembered answer to the same request, with `x-fusebox-cache-age` (whole
 * seconds since it was stored); undefined (a miss) when there is none or it is older than `ttlMs`.
 */
export const lastGoodStep =
  (route: RouteConfig, cache: LastGoodCache, deps: LastGoodDeps) =>
  (req: ProxyRequest): Promise<ProxyResponse | undefined> => {
    const key = lastGoodKey(req);
    const entry = key === undefined ? undefined : cache.get(key);
    deps.metrics.lastGood.labels(route.name, entry === undefined ? 'miss' : 'served').inc();
    if (entry === undefined) return Promise.resolve(undefined);
    const ageSeconds = Math.max(0, Math.floor((deps.now() - entry.storedAt) / 1000));
    return Promise.resolve({
      statusCode: entry.statusCode,
      headers: { ...entry.headers, 'x-fusebox-cache-age': String(ageSeconds) },
      body: entry.body,
      observers: [],
    });
  };
