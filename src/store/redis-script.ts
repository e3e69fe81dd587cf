/**
 * A Lua script and the decoder of its reply, run by {@link RedisConnection.run}. The decoder is where a reply's layout
 * is known: callers get named fields, never `reply[3]`, and a reply of another shape fails loudly instead of turning
 * into NaN or a zero.
 */
export interface RedisScript<R> {
  /** Also the ioredis command name: unique per connection. */
  readonly name: string;
  readonly lua: string;
  /** Throws (anything) when `raw` is not what the script answers; {@link RedisConnection.run} wraps it in a RedisReplyError. */
  readonly decode: (raw: unknown) => R;
}

/** Keys go first (their count is the number of keys); arguments are strings or numbers. */
export const defineScript = <R>(name: string, lua: string, decode: (raw: unknown) => R): RedisScript<R> => ({ name, lua, decode });

/**
 * A script answered something its decoder does not accept (a script and its decoder that disagree, or a foreign
 * script under the same name). For the stores it is a failed store call like any other. Deliberately not a
 * TypeError: LocalFallbackStore reads a TypeError as the caller's bug and rethrows it instead of falling back.
 */
export class RedisReplyError extends Error {
  constructor(
    readonly script: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(`Redis script ${script} gave an unexpected reply: ${message}`, options);
    this.name = 'RedisReplyError';
  }
}

const shown = (raw: unknown): string => {
  const text = JSON.stringify(raw) ?? String(raw);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
};

/** Reply pieces, each checked; `what` names the piece in the error. */
export const reply = {
  array(raw: unknown, what: string): unknown[] {
    if (!Array.isArray(raw)) throw new Error(`${what}: expected an array, got ${shown(raw)}`);
    return raw;
  },

  /** An array of exactly `n` items. */
  tuple(raw: unknown, n: number, what: string): unknown[] {
    const a = reply.array(raw, what);
    if (a.length !== n) throw new Error(`${what}: expected ${n} items, got ${shown(raw)}`);
    return a;
  },

  /** A safe integer: a Redis integer reply, or a string holding one (a value read back from a hash). */
  int(raw: unknown, what: string): number {
    const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^-?\d+$/.test(raw) ? Number(raw) : NaN;
    if (!Number.isSafeInteger(n)) throw new Error(`${what}: expected an integer, got ${shown(raw)}`);
    return n;
  },

  /** A finite number, or a string holding one (a clock time read back from a hash). */
  number(raw: unknown, what: string): number {
    const n = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
    if (!Number.isFinite(n)) throw new Error(`${what}: expected a number, got ${shown(raw)}`);
    return n;
  },

  string(raw: unknown, what: string): string {
    if (typeof raw !== 'string') throw new Error(`${what}: expected a string, got ${shown(raw)}`);
    return raw;
  },

  /** An integer in [min, max] (a 1-based index, a flag). */
  intIn(raw: unknown, min: number, max: number, what: string): number {
    const n = reply.int(raw, what);
    if (n < min || n > max) throw new Error(`${what}: expected ${min}..${max}, got ${n}`);
    return n;
  },
};
