import { Redis } from 'ioredis';
import { RedisReplyError, type RedisScript } from './redis-script.js';

/** How to reach the Redis every shared store of a process uses (config `store`). */
export interface RedisConnectionOptions {
  /** A `redis://` or `rediss://` URL (config `store.url`). */
  readonly url: string;
  /** Every key starts with the hash tag `{keyPrefix}` (config `store.keyPrefix`). Default `fusebox`. */
  readonly keyPrefix?: string;
  /** Per-command timeout, ms (config `store.timeoutMs`). Default 250. */
  readonly timeoutMs?: number;
  /** How long one connection attempt may take, ms. Default max(1000, 4 × `timeoutMs`). */
  readonly connectTimeoutMs?: number;
  /**
   * Reconnect after a lost or failed connection, waiting 100 ms, 200 ms, 400 ms, 800 ms, then 1 s between attempts
   * (the sidecar). `false`: one attempt, then the connection ends (a one-shot CLI). Default true.
   */
  readonly reconnect?: boolean;
  /** Connection errors (a reconnecting client retries by itself); log them. Without it they are only kept as `lastError`. */
  readonly onError?: (err: Error) => void;
}

type ScriptCommand = (numKeys: number, ...keysThenArgs: Array<string | number>) => Promise<unknown>;

export const DEFAULT_KEY_PREFIX = 'fusebox';
export const DEFAULT_TIMEOUT_MS = 250;

/**
 * The one Redis client of a process, shared by the budget store and the SLO counter store. It fails fast, so a
 * store caller decides what an outage means instead of waiting on it: no offline queue (a command sent while
 * disconnected rejects at once), a per-command timeout, and no resend of unanswered commands after a reconnect (a
 * script that ran but whose answer was lost must not run twice; both stores make a repeat harmless, and only the
 * caller knows when to repeat). Whoever constructs it closes it, after the stores that use it.
 */
export class RedisConnection {
  readonly client: Redis;
  readonly keyPrefix: string;
  private error: Error | undefined;
  private closing: Promise<void> | undefined;
  /** Scripts defined on the client so far: name → Lua. */
  private readonly scripts = new Map<string, string>();

  constructor(opts: RedisConnectionOptions) {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.keyPrefix = opts.keyPrefix ?? DEFAULT_KEY_PREFIX;
    this.client = new Redis(opts.url, {
      commandTimeout: timeoutMs,
      connectTimeout: opts.connectTimeoutMs ?? Math.max(1_000, timeoutMs * 4),
      maxRetriesPerRequest: 1,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      // Reconnect soon after an outage; the cap keeps a dead Redis from being hammered.
      retryStrategy: opts.reconnect === false ? () => null : (times) => Math.min(50 * 2 ** times, 1_000),
    });
    // Hazard: with no 'error' listener ioredis prints every failed reconnect attempt to stderr. Callers see
    // failures as rejected commands; the listener only keeps the last one (for `ready`) and hands it to the log.
    this.client.on('error', (err: Error) => {
      this.error = err;
      opts.onError?.(err);
    });
  }

  /** The last connection error, if any. */
  get lastError(): Error | undefined {
    return this.error;
  }

  /** True while connected and ready for commands. */
  available(): boolean {
    return this.client.status === 'ready';
  }

  /** Calls `listener` every time the connection becomes ready (again). */
  onReady(listener: () => void): void {
    this.client.on('ready', listener);
  }

  /**
   * Resolves once the connection is ready. Rejects after `timeoutMs`, or as soon as the connection ends (a client
   * that does not reconnect failed its attempt; a closed one), with the last connection error when there is one.
   */
  ready(timeoutMs: number): Promise<void> {
    if (this.available()) return Promise.resolve();
    if (this.client.status === 'end') return Promise.reject(this.error ?? new Error('the Redis connection is closed'));
    return new Promise((resolve, reject) => {
      const settle = (err?: Error) => {
        clearTimeout(timer);
        this.client.off('ready', onReady);
        this.client.off('end', onEnd);
        if (err) reject(err);
        else resolve();
      };
      const onReady = () => settle();
      const onEnd = () => settle(this.error ?? new Error('the Redis connection closed'));
      const timer = setTimeout(() => {
        const why = this.error ? `: ${this.error.message}` : '';
        settle(new Error(`Redis not ready after ${timeoutMs} ms${why}`, { cause: this.error }));
      }, timeoutMs);
      this.client.once('ready', onReady);
      this.client.once('end', onEnd);
    });
  }

  /**
   * Runs a script and decodes its reply. ioredis sends EVALSHA and falls back to EVAL when Redis does not know the
   * script (a restart, SCRIPT FLUSH). Rejects with the command's error (connection, timeout, a Lua error), or with a
   * RedisReplyError when the reply does not decode.
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
    const raw = await command.call(this.client, keys.length, ...keys, ...args);
    try {
      return script.decode(raw);
    } catch (err) {
      throw new RedisReplyError(script.name, err instanceof Error ? err.message : String(err), { cause: err });
    }
  }

  /** Quits when connected (pending replies arrive first), otherwise stops reconnecting. Safe to call more than once. */
  close(): Promise<void> {
    this.closing ??=
      this.client.status === 'ready'
        ? this.client.quit().then(
            () => undefined,
            () => this.client.disconnect(),
          )
        : Promise.resolve(this.client.disconnect());
    return this.closing;
  }
}
