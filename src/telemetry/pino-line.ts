import { pino, type Logger } from 'pino';

const S = pino.symbols;
/** Present at runtime since pino 8.14, missing from its typings. */
const msgPrefixSym = (pino.symbols as unknown as Record<string, symbol>).msgPrefixSym!;

/** A logger's internals this module reads (pino exports the symbols for integrations: `pino.symbols`). */
type Internals = Record<symbol, unknown>;

const own = (o: object, key: string): boolean => Object.prototype.hasOwnProperty.call(o, key) && (o as Record<string, unknown>)[key] !== undefined;

/**
 * Writes a flat object (strings, numbers, booleans; undefined fields skipped) as one log line of `log`, in the bytes
 * pino itself writes for `log[level](obj, msg)`, with fewer intermediate strings: pino quotes every key again on
 * every line and builds each field from several pieces (3.6 KiB an access line in bench/README.md's profile).
 *
 * Returns undefined when the logger has anything that changes a line's bytes beyond pino's plain format (a mixin,
 * `formatters.log`, hooks, a nested key, a message prefix, serializers or redaction of these keys, a stream that
 * wants pino's metadata such as `pino.multistream`): the caller then logs through pino. A value of another type
 * (an object, an array) sends that line through pino too. test/unit/pino-line.test.ts compares the bytes.
 */
export const pinoLineWriter = (log: Logger): ((level: 'info' | 'warn', obj: object, msg: string) => boolean) | undefined => {
  const l = log as unknown as Internals;
  const hooks = l[S.hooksSym] as { logMethod?: unknown; streamWrite?: unknown } | undefined;
  const formatters = l[S.formattersSym] as { log?: unknown } | undefined;
  const serializers = (l[S.serializersSym] ?? {}) as Record<string, unknown>;
  const stringifiers = (l[S.stringifiersSym] ?? {}) as Record<string | symbol, unknown>;
  const stream = l[S.streamSym] as { write(s: string): unknown; [k: symbol]: unknown };
  const messageKey = l[S.messageKeySym] as string;
  if (
    l[S.mixinSym] ||
    formatters?.log ||
    hooks?.logMethod ||
    hooks?.streamWrite ||
    l[S.nestedKeySym] ||
    l[msgPrefixSym] !== undefined ||
    stream[S.needsMetadataGsym] === true ||
    stringifiers[S.wildcardFirstSym] !== undefined ||
    own(serializers, messageKey) ||
    own(stringifiers, messageKey)
  ) {
    return undefined;
  }
  // `,"key":` per key seen, made once; null for a key pino would serialize or redact in its own way.
  const prefixes = new Map<string, string | null>();
  const prefixOf = (key: string): string | null => {
    let p = prefixes.get(key);
    if (p === undefined) prefixes.set(key, (p = own(serializers, key) || own(stringifiers, key) ? null : `,${JSON.stringify(key)}:`));
    return p;
  };
  const levels = { info: 30, warn: 40 } as const;
  const lsCache = l[S.lsCacheSym] as Record<number, string>;
  const time = l[S.timeSym] as () => string;
  const chindings = l[S.chindingsSym] as string;
  const end = l[S.endSym] as string;
  const messagePrefix = `,${JSON.stringify(messageKey)}:`;

  return (level, obj, msg) => {
    if (!log.isLevelEnabled(level)) return true;
    let line = lsCache[levels[level]]! + time() + chindings;
    const fields = obj as Record<string, unknown>;
    for (const key in fields) {
      const v = fields[key];
      let json: string;
      switch (typeof v) {
        case 'undefined':
          continue;
        case 'string':
          json = JSON.stringify(v);
          break;
        case 'number':
          json = Number.isFinite(v) ? String(v) : 'null';
          break;
        case 'boolean':
          json = v ? 'true' : 'false';
          break;
        default:
          return false;
      }
      const prefix = prefixOf(key);
      if (prefix === null) return false;
      line += prefix + json;
    }
    stream.write(line + messagePrefix + JSON.stringify(msg) + end);
    return true;
  };
};
