import { isRecord } from './usage.js';

/** A JSON request body parsed to an object. */
export type JsonObject = Record<string, unknown>;

/**
 * Parsed bodies by buffer (null: not a JSON object). The budget layer's estimate and its stream-usage rewrite, the
 * breaker's key and the fallback's model check all read the same buffered body: it is decoded and parsed once per
 * call, not once each (three times for a Chat Completions call, each a copy of the whole prompt). Every caller only
 * reads the object. Weak: a body's parse goes with the body.
 */
const parsed = new WeakMap<Buffer, JsonObject | null>();

/** The buffered body as a JSON object; undefined when absent, empty, not JSON, or not an object (e.g. a batch array). */
export const parseJsonObject = (body: Buffer | undefined): JsonObject | undefined => {
  if (body === undefined || body.length === 0) return undefined;
  const kept = parsed.get(body);
  if (kept !== undefined) return kept ?? undefined;
  let obj: JsonObject | undefined;
  try {
    const v: unknown = JSON.parse(body.toString('utf8'));
    obj = isRecord(v) ? v : undefined;
  } catch {
    obj = undefined;
  }
  parsed.set(body, obj ?? null);
  return obj;
};

/** What the budget and fallback layers need to know about an LLM request. */
export interface RequestInfo {
  model?: string;
  /** `stream: true` in the body. */
  stream: boolean;
  /**
   * Largest output the request allows: the highest of `max_tokens`, `max_completion_tokens` (OpenAI chat)
   * and `max_output_tokens` (Responses API) present; undefined when none is set.
   */
  maxOutputTokens?: number;
}

const MAX_OUTPUT_KEYS = ['max_tokens', 'max_completion_tokens', 'max_output_tokens'] as const;

/** Reads `model`, `stream` and the output cap from a request body (raw, or already parsed to save a second parse). */
export const requestInfo = (body: Buffer | JsonObject | undefined): RequestInfo => {
  const obj = Buffer.isBuffer(body) ? parseJsonObject(body) : body;
  const info: RequestInfo = { stream: obj?.stream === true };
  if (obj === undefined) return info;
  if (typeof obj.model === 'string' && obj.model !== '') info.model = obj.model;
  for (const key of MAX_OUTPUT_KEYS) {
    const v = obj[key];
    if (typeof v === 'number' && Number.isSafeInteger(v) && v > 0) info.maxOutputTokens = Math.max(info.maxOutputTokens ?? 0, v);
  }
  return info;
};

/**
 * For an OpenAI Chat Completions (or legacy Completions) request with `stream: true`, the same body with
 * `stream_options.include_usage: true`, so the stream ends with a usage chunk; undefined when there is
 * nothing to change: not streamed, not chat, or the agent already chose `include_usage` (true or false;
 * an explicit false is respected and the call's usage is then estimated).
 *
 * Not applied to Responses API bodies (`input`): they always report usage and reject `include_usage`.
 * The agent never asked for the extra final chunk (`choices: []`) this adds, so the budget layer reads it and
 * removes it from the stream (`createUsageChunkFilter`).
 */
export const withStreamUsage = (body: Buffer): Buffer | undefined => {
  const obj = parseJsonObject(body);
  if (obj === undefined || obj.stream !== true) return undefined;
  if (!('messages' in obj || 'prompt' in obj) || 'input' in obj) return undefined;
  const options = obj.stream_options;
  if (isRecord(options) && 'include_usage' in options) return undefined;
  return setTopLevel(body, obj, 'stream_options', isRecord(options) ? { ...options, include_usage: true } : { include_usage: true });
};

/**
 * The body with its top-level `model` replaced (fallback to another model); undefined when the body is not a
 * JSON object, has no `model` (some APIs take the model from the URL), or already names `model`.
 */
export const rewriteModel = (body: Buffer, model: string): Buffer | undefined => {
  const obj = parseJsonObject(body);
  if (obj === undefined || !('model' in obj) || obj.model === model) return undefined;
  return setTopLevel(body, obj, 'model', model);
};

/**
 * Sets one top-level key by splicing bytes, so the rest of the body goes upstream exactly as the agent wrote
 * it: a JSON.stringify round trip would silently round integers above 2^53 (`seed`, ids) and reorder
 * integer-like keys. Falls back to that round trip only for odd bodies (duplicate or escaped keys).
 */
const setTopLevel = (body: Buffer, obj: JsonObject, key: string, value: unknown): Buffer => {
  const encoded = JSON.stringify(value);
  const found = scanTopLevel(body, key);
  if (found !== undefined && found.spans.length === 1) {
    const [start, end] = found.spans[0]!;
    return Buffer.concat([body.subarray(0, start), Buffer.from(encoded), body.subarray(end)]);
  }
  if (found !== undefined && found.spans.length === 0 && !(key in obj)) {
    const member = `${JSON.stringify(key)}:${encoded}${found.empty ? '' : ','}`;
    return Buffer.concat([body.subarray(0, found.open + 1), Buffer.from(member), body.subarray(found.open + 1)]);
  }
  return Buffer.from(JSON.stringify({ ...obj, [key]: value }));
};

interface TopLevelScan {
  /** Offset of the object's `{`. */
  open: number;
  /** The object has no members. */
  empty: boolean;
  /** [start, end) of each value of the wanted key, in order. */
  spans: Array<[number, number]>;
}

const SPACE = new Set([0x20, 0x0a, 0x0d, 0x09]);
const QUOTE = 0x22;
const BACKSLASH = 0x5c;

const skipSpace = (b: Buffer, i: number): number => {
  while (i < b.length && SPACE.has(b[i]!)) i++;
  return i;
};

/** Offset just past the string starting at `i` (a `"`). */
const skipString = (b: Buffer, i: number): number => {
  for (i++; i < b.length; i++) {
    if (b[i] === BACKSLASH) i++;
    else if (b[i] === QUOTE) return i + 1;
  }
  return -1;
};

/** Offset just past the value starting at `i`. Input is known-valid JSON (it was parsed first). */
const skipValue = (b: Buffer, i: number): number => {
  const c = b[i];
  if (c === QUOTE) return skipString(b, i);
  if (c === 0x7b || c === 0x5b) {
    let depth = 0;
    while (i < b.length) {
      const d = b[i]!;
      if (d === QUOTE) {
        i = skipString(b, i);
        if (i === -1) return -1;
        continue;
      }
      if (d === 0x7b || d === 0x5b) depth++;
      else if (d === 0x7d || d === 0x5d) {
        depth--;
        if (depth === 0) return i + 1;
      }
      i++;
    }
    return -1;
  }
  while (i < b.length && !SPACE.has(b[i]!) && b[i] !== 0x2c && b[i] !== 0x7d && b[i] !== 0x5d) i++;
  return i;
};

/**
 * Where the members named `key` sit in a JSON object's bytes. UTF-8 never uses ASCII bytes inside a
 * multi-byte character, so scanning bytes for JSON punctuation is safe. Undefined when the text is not
 * shaped as expected or a key is written with escapes (then the caller falls back to a round trip).
 */
const scanTopLevel = (b: Buffer, key: string): TopLevelScan | undefined => {
  let i = b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf ? 3 : 0;
  i = skipSpace(b, i);
  if (b[i] !== 0x7b) return undefined;
  const open = i;
  const spans: Array<[number, number]> = [];
  i = skipSpace(b, i + 1);
  if (b[i] === 0x7d) return { open, empty: true, spans };
  while (i < b.length) {
    if (b[i] !== QUOTE) return undefined;
    const keyEnd = skipString(b, i);
    if (keyEnd === -1) return undefined;
    const name = b.toString('utf8', i + 1, keyEnd - 1);
    if (name.includes('\\')) return undefined;
    i = skipSpace(b, keyEnd);
    if (b[i] !== 0x3a) return undefined;
    const start = skipSpace(b, i + 1);
    const end = skipValue(b, start);
    if (end === -1) return undefined;
    if (name === key) spans.push([start, end]);
    i = skipSpace(b, end);
    if (b[i] === 0x7d) return { open, empty: false, spans };
    if (b[i] !== 0x2c) return undefined;
    i = skipSpace(b, i + 1);
  }
  return undefined;
};
