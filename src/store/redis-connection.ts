import calculateSlot from 'cluster-key-slot';
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import { classifyRedisError, type StoreErrorKind } from './redis-errors.js';
import { RedisReplyError, type RedisScript } from './redis-script.js';
import type { RedisTlsOptions } from './redis-tls.js';
import { describeRedisTarget, nodeName, parseRedisUrl, type RedisTarget } from './redis-url.js';

/** How to reach the Redis every shared store of a process uses (config `store`). */
export interface RedisConnectionOptions {
  /**
   * `redis://` or `rediss://` (one Redis), or `redis+cluster://host:port,host:port` / `rediss+cluster://...` (a Redis
   * Cluster, given by seed nodes) (config `store.url`; see redis-url.ts).
   */
  readonly url: string;
  /** Every key starts with the hash tag `{keyPrefix}` (config `store.keyPrefix`). Default `fusebox`. */
  readonly keyPrefix?: string;
  /** Per-command timeout, ms (config `store.timeoutMs`). Default 250. */
  readonly timeoutMs?: number;
  /** TLS settings of a `rediss` URL (config `store.tls`, read by redis-tls.ts); without them Node's public CAs are trusted. */
  readonly tls?: RedisTlsOptions;
  /** How long one connection attempt may take, ms. Default max(1000, 4 × `timeoutMs`). */
  readonly connectTimeoutMs?: number;
  /**
   * Reconnect after a lost or failed connection, waiting 100 ms, 200 ms, 400 ms, 800 ms, then 1 s between attempts
   * (the sidecar). `false`: one attempt, then the connection ends (a one-shot CLI). Default true.
   */
  readonly reconnect?: boolean;
  /** Connection errors (a reconnecting client retries by itself); log them. Without it they are only kept as `lastError`. */
  readonly onError?: (err: Error) => void;
  /** Every command that failed, classified, with the node it was meant for: what counts and logs store errors. */
  readonly onCommandError?: (e: StoreCommandError) => void;
  /** Cluster: how often a slot whose node failed is probed until it answers again, ms. Default 500. */
  readonly probeIntervalMs?: number;
}

/** A failed command, as `fusebox_store_errors_total{op,kind}` and its log line see it. */
export interface StoreCommandError {
  /** The script (`fuseboxReserve`...) or command group (`kills`, `sloRead`...) that failed. */
  readonly op: string;
  readonly kind: StoreErrorKind;
  /** `host:port` of the node the command was for (a cluster: the slot's master as last known), never credentials. */
  readonly node: string;
  readonly error: Error;
}

/** One Redis or a cluster: the commands the stores use exist on both. */
export type RedisClient = Redis | Cluster;

type ScriptCommand = (numKeys: number, ...keysThenArgs: Array<string | number>) => Promise<unknown>;

export const DEFAULT_KEY_PREFIX = 'fusebox';
export const DEFAULT_TIMEOUT_MS = 250;

/** Failures that mean a slot's node cannot serve it now (a cluster keeps the slot "failing" until a probe answers). */
const OUTAGE_KINDS: ReadonlySet<StoreErrorKind> = new Set(['connection', 'timeout', 'loading', 'clusterdown', 'redirect', 'oom']);

/**
 * The one Redis client of a process, shared by the budget store and the SLO counter store: one connection per
 * sidecar to one Redis, one per master to a cluster. It fails fast, so a store caller decides what an outage means
 * instead of waiting on it: no offline queue (a command sent while disconnected rejects at once), a per-command
 * timeout, and no resend of unanswered commands after a reconnect (a script that ran but whose answer was lost must
 * not run twice; both stores make a repeat harmless, and only the caller knows when to repeat). Whoever constructs
 * it closes it, after the stores that use it.
 *
 * A cluster (ioredis `Cluster`) follows `MOVED`/`ASK` itself (the command had not run) but, here, never resends a
 * command after a closed connection or `CLUSTERDOWN` (it might have run, or it would wait out the outage): those
 * reject at once like a single Redis's. A cluster client stays "ready" while one master is down, so a slot whose
 * command failed for an outage counts as unavailable until a probe (EXISTS of the failed key) answers again; then the
 * `onReady` listeners run, as after a single Redis's reconnect.
 */
export class RedisConnection {
  readonly client: RedisClient;
  readonly keyPrefix: string;
  /** Where the store is, for logs: mode and nodes, never credentials. */
  readonly description: string;
  private readonly target: RedisTarget;
  private readonly onCommandError: (e: StoreCommandError) => void;
  private readonly probeIntervalMs: number;
  private error: Error | undefined;
  private closing: Promise<void> | undefined;
  /** Scripts defined on the client so far: name → Lua. */
  private readonly scripts = new Map<string, string>();
  /** Cluster: slots whose node failed for an outage → a key of that slot to probe with. */
  private readonly failing = new Map<number, string>();
  private probeTimer: NodeJS.Timeout | undefined;
  private readonly readyListeners: Array<() => void> = [];

  constructor(opts: RedisConnectionOptions) {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.keyPrefix = opts.keyPrefix ?? DEFAULT_KEY_PREFIX;
    this.target = parseRedisUrl(opts.url);
    this.description = describeRedisTarget(this.target);
    this.onCommandError = opts.onCommandError ?? (() => {});
    this.probeIntervalMs = opts.probeIntervalMs ?? 500;
    const perNode: RedisOptions = {
      commandTimeout: timeoutMs,
      connectTimeout: opts.connectTimeoutMs ?? Math.max(1_000, timeoutMs * 4),
      maxRetriesPerRequest: 1,
      autoResendUnfulfilledCommands: false,
    };
    // Reconnect soon after an outage; the cap keeps a dead Redis from being hammered.
    const backoff = (times: number) => Math.min(50 * 2 ** times, 1_000);
    if (this.target.mode === 'single') {
      this.client = new Redis(opts.url, {
        ...perNode,
        // rediss:// only (the schema refuses store.tls otherwise); ioredis then uses these instead of its own `tls: true`.
        ...(this.target.tls && opts.tls !== undefined && { tls: { ...opts.tls } }),
        enableOfflineQueue: false,
        retryStrategy: opts.reconnect === false ? () => null : backoff,
      });
    } else {
      const t = this.target;
      const clusterOptions: ClusterOptions = {
        enableOfflineQueue: false,
        scaleReads: 'master',
        // 0 turns off ioredis's resend after a closed connection or CLUSTERDOWN (see the class comment).
        retryDelayOnFailover: 0,
        retryDelayOnClusterDown: 0,
        slotsRefreshTimeout: Math.max(1_000, timeoutMs * 4),
        // ioredis re-reads CLUSTER SLOTS every 5 s by default, each time on a new connection: 200 connects and
        // CLUSTER SLOTS per second for 1,000 sidecars, all idle work. A slot that moved is learned from its MOVED
        // at once; the timer only catches what no command ran into.
        slotsRefreshInterval: 60_000,
        clusterRetryStrategy: opts.reconnect === false ? () => null : backoff,
        // A node that restarts on the same address is reconnected to, instead of waiting for the next MOVED.
        clusterNodeRetryStrategy: opts.reconnect === false ? null : backoff,
        // Seed host names are used as given (the socket resolves them): ioredis's own lookup would swap a name for one
        // IP, and a TLS certificate is checked against the name the client connected to.
        dnsLookup: (address, callback) => callback(null, address),
        redisOptions: {
          ...perNode,
          ...(t.username !== undefined && { username: t.username }),
          ...(t.password !== undefined && { password: t.password }),
          ...(t.tls && { tls: { ...opts.tls } }),
        },
      };
      this.client = new Cluster(
        t.nodes.map((n) => ({ host: n.host, port: n.port })),
        clusterOptions,
      );
    }
    // Hazard: with no 'error' listener ioredis prints every failed reconnect attempt to stderr. Callers see
    // failures as rejected commands; the listener only keeps the last one (for `ready`) and hands it to the log.
    this.client.on('error', (err: Error) => {
      this.error = err;
      opts.onError?.(err);
    });
    if (this.client instanceof Cluster) {
      // Hazard: ioredis connects to a cluster node lazily, on its first command, and with the offline queue off it
      // rejects a second command sent while that first connection is still being made ("Connection is closed.").
      // Once the cluster is ready every node is connected, and the cluster counts as ready once every master is:
      // that can be the cluster's own 'ready' or a node's, whichever comes last, so both are watched. Not before:
      // the cluster's own ready check (CLUSTER INFO) goes to a node still 'wait'ing, and one already 'connecting'
      // would make it fail and start the whole connection over (seconds of backoff).
      const cluster = this.client;
      const watched = new WeakSet<Redis>();
      const watch = (node: Redis) => {
        if (!watched.has(node)) {
          watched.add(node);
          node.on('ready', () => this.readyIfAvailable());
        }
        if (node.status === 'wait' && cluster.status === 'ready') node.connect().catch(() => {});
      };
      cluster.on('+node', watch);
      cluster.on('ready', () => {
        cluster.nodes('all').forEach(watch);
        this.readyIfAvailable();
      });
    } else {
      this.client.on('ready', () => this.notifyReady());
    }
  }

  /** True for a Redis Cluster (`redis+cluster://`). */
  get isCluster(): boolean {
    return this.target.mode === 'cluster';
  }

  /** The last connection error, if any. */
  get lastError(): Error | undefined {
    return this.error;
  }

  /** True while connected and ready for commands; for a cluster, also no slot known to be down (see the class comment). */
  available(): boolean {
    if (this.client.status !== 'ready' || this.failing.size > 0) return false;
    return !(this.client instanceof Cluster) || this.client.nodes('master').every((n) => n.status === 'ready');
  }

  /**
   * Calls `listener` every time the connection becomes ready (again); for a cluster, also when its failed slots answer
   * again. It may be called more than once for one recovery: listeners must be idempotent (a journal replay is).
   */
  onReady(listener: () => void): void {
    this.readyListeners.push(listener);
  }

  /**
   * Resolves once the connection is ready. Rejects after `timeoutMs`, or as soon as the connection ends (a client
   * that does not reconnect failed its attempt; a closed one), with the last connection error when there is one.
   */
  ready(timeoutMs: number): Promise<void> {
    if (this.available()) return Promise.resolve();
    if (this.client.status === 'end') return Promise.reject(this.error ?? new Error('the Redis connection is closed'));
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (err?: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.client.off('end', onEnd);
        this.readyListeners.splice(this.readyListeners.indexOf(onReady), 1);
        if (err) reject(err);
        else resolve();
      };
      const onReady = () => settle();
      const onEnd = () => settle(this.error ?? new Error('the Redis connection closed'));
      const timer = setTimeout(() => {
        const why = this.error ? `: ${this.error.message}` : '';
        settle(new Error(`Redis not ready after ${timeoutMs} ms${why}`, { cause: this.error }));
      }, timeoutMs);
      this.readyListeners.push(onReady);
      this.client.once('end', onEnd);
      // It may have become ready between the check above and the listener.
      if (this.available()) settle();
    });
  }

  /**
   * Runs a script and decodes its reply. ioredis sends EVALSHA and falls back to EVAL when the node does not know the
   * script (a restart, SCRIPT FLUSH, a node seen for the first time: scripts are per node and per socket). Rejects
   * with the command's error (connection, timeout, a Lua error), or with a RedisReplyError when the reply does not
   * decode; either is reported to `onCommandError` first.
   */
  async run<R>(script: RedisScript<R>, keys: readonly string[], args: ReadonlyArray<string | number>): Promise<R> {
    const known = this.scripts.get(script.name);
    if (known === undefined) {
      this.client.defineCommand(script.name, { lua: script.lua });
      this.scripts.set(script.name, script.lua);
    } else if (known !== script.lua) {
      throw new TypeError(`two different Redis scripts are named ${script.name}`);
    }
    const command = (this.client as unknown as Record<string, ScriptCommand>)[script.name]!;
    return this.command(script.name, keys[0], async () => {
      const raw = await command.call(this.client, keys.length, ...keys, ...args);
      try {
        return script.decode(raw);
      } catch (err) {
        throw new RedisReplyError(script.name, err instanceof Error ? err.message : String(err), { cause: err });
      }
    });
  }

  /**
   * Sends a plain command through `send`, reporting a failure (classified, with its node) to `onCommandError`.
   * `key` is any key of the command: it names the node, and for a cluster the slot to watch.
   */
  async command<T>(op: string, key: string | undefined, send: (client: RedisClient) => Promise<T>): Promise<T> {
    try {
      return await send(this.client);
    } catch (err) {
      this.failed(op, key, err);
      throw err;
    }
  }

  /** HGETALL of each key. A cluster gets them one by one (a pipeline must stay on one slot); one Redis in one pipeline. */
  async hgetallMany(op: string, keys: readonly string[]): Promise<Array<Record<string, string>>> {
    if (keys.length === 0) return [];
    if (this.client instanceof Cluster) {
      const cluster = this.client;
      return Promise.all(keys.map((k) => this.command(op, k, () => cluster.hgetall(k))));
    }
    const redis = this.client;
    return this.command(op, keys[0], async () => {
      const replies = await keys.reduce((p, k) => p.hgetall(k), redis.pipeline()).exec();
      if (replies === null) throw new Error('no reply to the pipeline');
      return replies.map(([err, value]) => {
        if (err) throw err;
        return (value ?? {}) as Record<string, string>;
      });
    });
  }

  /** Every master: SCAN and other keyless whole-keyspace commands must visit each (one Redis: itself). */
  masters(): Redis[] {
    return this.client instanceof Cluster ? this.client.nodes('master') : [this.client];
  }

  /** Quits when connected (pending replies arrive first), otherwise stops reconnecting. Safe to call more than once. */
  close(): Promise<void> {
    clearInterval(this.probeTimer);
    this.probeTimer = undefined;
    this.closing ??=
      this.client.status === 'ready'
        ? this.client.quit().then(
            () => undefined,
            () => this.client.disconnect(),
          )
        : Promise.resolve(this.client.disconnect());
    return this.closing;
  }

  /** Runs the ready listeners when the connection is usable now; a repeat is harmless (see `onReady`). */
  private readyIfAvailable(): void {
    if (this.available()) this.notifyReady();
  }

  private notifyReady(): void {
    for (const l of [...this.readyListeners]) l();
  }

  private failed(op: string, key: string | undefined, err: unknown): void {
    const error = err instanceof Error ? err : new Error(String(err));
    const kind = classifyRedisError(error);
    this.onCommandError({ op, kind, node: this.nodeOf(key, error), error });
    if (this.client instanceof Cluster && key !== undefined && OUTAGE_KINDS.has(kind) && !this.closing) {
      this.failing.set(calculateSlot(key), key);
      this.probeTimer ??= setInterval(() => void this.probe(), this.probeIntervalMs);
      this.probeTimer.unref();
    }
  }

  /** Probes each failed slot once; when none is left, the connection is available again and the ready listeners run. */
  private async probe(): Promise<void> {
    const cluster = this.client as Cluster;
    if (cluster.status !== 'ready') return;
    await Promise.all(
      [...this.failing].map(async ([slot, key]) => {
        try {
          await cluster.exists(key);
          this.failing.delete(slot);
        } catch {
          // Still down: the next tick tries again.
        }
      }),
    );
    if (this.failing.size > 0 || this.probeTimer === undefined) return;
    clearInterval(this.probeTimer);
    this.probeTimer = undefined;
    this.notifyReady();
  }

  /** The node a command was for: a redirect names its target; a cluster's slot map its master; else the URL's node. */
  private nodeOf(key: string | undefined, err: Error): string {
    const redirect = /(?:MOVED|ASK) \d+ (\S+)/.exec(err.message);
    if (redirect) return redirect[1]!;
    if (this.target.mode === 'single') return nodeName(this.target.node);
    const address = /\b(\d{1,3}(?:\.\d{1,3}){3}:\d+)\b/.exec(err.message);
    if (address) return address[1]!;
    const owner = key !== undefined && this.client instanceof Cluster ? this.client.slots[calculateSlot(key)]?.[0] : undefined;
    return owner ?? 'cluster';
  }
}
