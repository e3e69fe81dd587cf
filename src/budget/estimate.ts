import { createRequire } from 'node:module';
import type { RouteConfig } from '../config/schema.js';
import { openAiOperation } from '../providers/openai.js';
import { parseJsonObject, requestInfo, type JsonObject } from '../providers/request.js';
import { isRecord, type Usage } from '../providers/usage.js';

/** A request's cost drivers, known before it is sent: what the budget reserves. */
export interface RequestEstimate {
  /** Prompt tokens (text, tool definitions, per-message overhead, a fixed allowance per image/file). */
  inputTokens: number;
  /** Output the request allows: its max-tokens field (or the route default) × `n`; 0 for embeddings. */
  maxOutputTokens: number;
  model?: string;
}

export interface EstimateOptions {
  /** Output tokens assumed when the request sets no max (route `budget.defaultMaxOutputTokens`). */
  defaultMaxOutputTokens: number;
  /** How OpenAI prompt text is counted (route `budget.tokenizer`): from its bytes (default) or with o200k. */
  tokenizer?: 'bytes' | 'o200k';
  /** Body size when the body was not buffered (too large to replay): input is then guessed from it. */
  contentLength?: number;
  /** Request path; `/embeddings` means no output tokens. */
  path?: string;
}

/**
 * Heuristic bytes per token where no tokenizer is used (Anthropic and others, or unparseable bodies).
 * UTF-8 bytes rather than characters: for ASCII they are the same, and for other scripts (more tokens per
 * character) bytes keep the guess from undercounting. 3.5 is on the cautious side of Claude's ~3.5–4.
 */
const BYTES_PER_TOKEN = 3.5;
/**
 * Bytes per token assumed for OpenAI prompt text when no tokenizer is loaded (the default: o200k's rank table costs
 * ~45 MB of memory, most of an idle sidecar). Chosen as an upper bound, since the reservation is settled with the
 * real usage anyway and an over-reservation only holds money a little longer. Measured against o200k on ~3,000
 * files (prose, Markdown, code, JSON, YAML) and samples in other scripts: English prose and code run 3.7–4.1 bytes
 * per token (this over-reserves ~1.9×), JSON ~3 (median; 1.7 at its 5th percentile), Chinese and Japanese 3.8–4.2,
 * Cyrillic 7.5 — all counted high. Counted low (30 of the ~3,000 files: encoding tables, minified code): text made of
 * random identifiers (base64 1.5, hex 1.8, UUIDs 1.6 bytes per token), rare CJK ideographs (1.4) and digits
 * separated by spaces (1.0): at worst half the real count, which the settlement then charges in full (the overspend
 * bound in the README).
 */
const OPENAI_BYTES_PER_TOKEN = 2;
/** Role and separator tokens per chat message (OpenAI's cookbook counts 3–4). */
const MESSAGE_OVERHEAD_TOKENS = 4;
/** Tokens that prime the reply in a chat prompt. */
const REPLY_PRIMING_TOKENS = 3;
/**
 * Flat allowance per image, audio or file part, whose real cost depends on pixels/pages we do not decode:
 * a large Claude image is ~1,600 tokens, an OpenAI high-detail 1024² image 765. Multi-page PDFs cost more.
 */
const MEDIA_PART_TOKENS = 1_600;
const MEDIA_TYPES = new Set(['image', 'image_url', 'input_image', 'input_audio', 'audio', 'file', 'input_file', 'document']);
/** String fields of content parts and items that hold prompt text. */
const TEXT_KEYS = ['text', 'thinking', 'refusal', 'arguments', 'name'] as const;
/** Fields holding text or nested parts, tool calls, tool results or reasoning summaries. */
const NESTED_KEYS = ['content', 'tool_calls', 'function_call', 'function', 'output', 'summary'] as const;
/** Tool definitions and schemas reach the model as (rewritten) JSON; their JSON text is counted, a slight overcount. */
const SCHEMA_KEYS = ['tools', 'functions', 'response_format'] as const;
const MAX_DEPTH = 8;
/** Largest `n` (choices per request) believed; beyond it the request is odd and is not multiplied further. */
const MAX_CHOICES = 128;

/**
 * Text longer than this is not tokenized whole: 4 evenly spaced windows totalling this many characters are,
 * and the count is scaled by length. Measured on a 2-core machine: o200k costs ~0.04 ms per KiB of prose and
 * up to ~0.17 ms per KiB of code-like text, so the cap holds an estimate to ~3 ms at worst; for typical
 * text the extrapolation is within a few percent.
 */
export const TOKENIZE_MAX_CHARS = 16 * 1024;
const SAMPLE_WINDOWS = 4;

interface Collected {
  texts: string[];
  /** Tokens counted without text: overheads, media allowances, pre-tokenized inputs. */
  tokens: number;
}

const collect = (v: unknown, out: Collected, depth: number): void => {
  if (depth > MAX_DEPTH) return;
  if (typeof v === 'string') {
    out.texts.push(v);
    return;
  }
  if (Array.isArray(v)) {
    for (const part of v) collect(part, out, depth + 1);
    return;
  }
  if (!isRecord(v)) return;
  if (typeof v.type === 'string' && MEDIA_TYPES.has(v.type)) {
    // An Anthropic document with a plain-text source is text, not pixels.
    if (isRecord(v.source) && v.source.type === 'text' && typeof v.source.data === 'string') out.texts.push(v.source.data);
    else out.tokens += MEDIA_PART_TOKENS;
    return;
  }
  for (const key of TEXT_KEYS) if (typeof v[key] === 'string') out.texts.push(v[key]);
  for (const key of NESTED_KEYS) if (v[key] !== undefined && v[key] !== null) collect(v[key], out, depth + 1);
  // Anthropic tool_use blocks carry their arguments as an object.
  if (isRecord(v.input)) out.texts.push(JSON.stringify(v.input));
};

/** Embeddings / legacy completions inputs: a string, strings, token ids, or arrays of token ids. */
const collectInputs = (v: unknown, out: Collected): void => {
  if (typeof v === 'string') out.texts.push(v);
  else if (typeof v === 'number') out.tokens += 1;
  else if (Array.isArray(v)) {
    for (const item of v) {
      if (typeof item === 'string') out.texts.push(item);
      else if (typeof item === 'number') out.tokens += 1;
      else if (Array.isArray(item)) out.tokens += item.length;
      else if (isRecord(item)) {
        // A Responses API input item (message, function call or output, reasoning).
        out.tokens += MESSAGE_OVERHEAD_TOKENS;
        collect(item, out, 1);
      }
    }
  }
};

const collectRequest = (body: JsonObject): Collected => {
  const out: Collected = { texts: [], tokens: 0 };
  if (Array.isArray(body.messages)) {
    out.tokens += REPLY_PRIMING_TOKENS + MESSAGE_OVERHEAD_TOKENS * body.messages.length;
    collect(body.messages, out, 0);
  }
  collect(body.system, out, 0);
  if (typeof body.instructions === 'string') out.texts.push(body.instructions);
  collectInputs(body.input, out);
  collectInputs(body.prompt, out);
  for (const key of SCHEMA_KEYS) if (typeof body[key] === 'object' && body[key] !== null) out.texts.push(JSON.stringify(body[key]));
  // Responses API structured output schema.
  if (isRecord(body.text) && isRecord(body.text.format)) out.texts.push(JSON.stringify(body.text.format));
  return out;
};

interface Tokenizer {
  countTokens(text: string, options: { disallowedSpecial: Set<string> }): number;
}

/** Special-token strings in user text are counted as plain text instead of throwing. */
const COUNT_OPTIONS = { disallowedSpecial: new Set<string>() };
let tokenizer: Tokenizer | null | undefined;

/**
 * The o200k tokenizer (GPT-4o, 4.1, o-series, GPT-5), loaded on first use, only for routes that ask for it
 * (`budget.tokenizer: o200k`): loading takes ~0.4 s and ~45 MB of RSS. null when it cannot be loaded (the
 * byte heuristic is used instead). Older cl100k models (and text-embedding-3) are counted with o200k
 * too: within a few percent for English.
 */
const getTokenizer = (): Tokenizer | null => {
  if (tokenizer === undefined) {
    try {
      tokenizer = createRequire(import.meta.url)('gpt-tokenizer/encoding/o200k_base') as Tokenizer;
    } catch {
      tokenizer = null;
    }
  }
  return tokenizer;
};

/** Load the OpenAI tokenizer now (at startup, for routes with `budget.tokenizer: o200k`) rather than on the first request. */
export const warmTokenizer = (): boolean => {
  const t = getTokenizer();
  t?.countTokens('warm up', COUNT_OPTIONS);
  return t !== null;
};

/** Whether the o200k tokenizer is in memory (loaded by a route with `budget.tokenizer: o200k`). */
export const tokenizerLoaded = (): boolean => tokenizer !== undefined && tokenizer !== null;

const heuristicTokens = (bytes: number): number => Math.ceil((bytes * 2) / (BYTES_PER_TOKEN * 2));

/** o200k token count of `text`, sampled past TOKENIZE_MAX_CHARS. */
export const countOpenAITokens = (text: string): number => {
  const t = getTokenizer();
  if (t === null) return heuristicTokens(Buffer.byteLength(text));
  if (text.length <= TOKENIZE_MAX_CHARS) return t.countTokens(text, COUNT_OPTIONS);
  const width = TOKENIZE_MAX_CHARS / SAMPLE_WINDOWS;
  const step = (text.length - width) / (SAMPLE_WINDOWS - 1);
  let sampledTokens = 0;
  let sampledChars = 0;
  for (let i = 0; i < SAMPLE_WINDOWS; i++) {
    let start = Math.floor(i * step);
    // Do not cut a surrogate pair in half.
    const c = text.charCodeAt(start);
    if (c >= 0xdc00 && c <= 0xdfff) start++;
    const window = text.slice(start, start + width);
    sampledTokens += t.countTokens(window, COUNT_OPTIONS);
    sampledChars += window.length;
  }
  return Math.ceil((sampledTokens * text.length) / sampledChars);
};

const isEmbeddings = (model: string | undefined, path: string | undefined): boolean =>
  (model !== undefined && /embed/i.test(model)) || (path !== undefined && openAiOperation(path) === 'embeddings');

/** Tokens of OpenAI prompt text: o200k when the route asks for it, else the upper bound ceil(UTF-8 bytes / 2). */
const openAITextTokens = (text: string, tokenizer: EstimateOptions['tokenizer']): number =>
  tokenizer === 'o200k' ? countOpenAITokens(text) : Math.ceil(Buffer.byteLength(text) / OPENAI_BYTES_PER_TOKEN);

/**
 * Pre-call estimate of a request's tokens. Only prompt text is counted (message contents, system,
 * instructions, input, prompt, tool definitions), never the JSON punctuation around it. OpenAI text is
 * counted as ceil(UTF-8 bytes / 2), or tokenized with o200k when `opts.tokenizer` says so; other providers use
 * ceil(UTF-8 bytes / 3.5). A body that is not JSON (or not buffered: pass `contentLength`) is guessed from its
 * size with the 3.5 heuristic.
 */
export const estimateRequest = (
  provider: RouteConfig['provider'],
  body: Buffer | JsonObject | undefined,
  opts: EstimateOptions,
): RequestEstimate => {
  const obj = Buffer.isBuffer(body) ? parseJsonObject(body) : body;
  if (obj === undefined) {
    const bytes = Buffer.isBuffer(body) ? body.length : (opts.contentLength ?? 0);
    return { inputTokens: heuristicTokens(bytes), maxOutputTokens: opts.defaultMaxOutputTokens };
  }
  const info = requestInfo(obj);
  const collected = collectRequest(obj);
  const text = collected.texts.join('\n');
  const textTokens = provider === 'openai' ? openAITextTokens(text, opts.tokenizer) : heuristicTokens(Buffer.byteLength(text));
  const choices = typeof obj.n === 'number' && Number.isSafeInteger(obj.n) && obj.n > 1 ? Math.min(obj.n, MAX_CHOICES) : 1;
  const estimate: RequestEstimate = {
    inputTokens: textTokens + collected.tokens,
    maxOutputTokens: isEmbeddings(info.model, opts.path) ? 0 : (info.maxOutputTokens ?? opts.defaultMaxOutputTokens) * choices,
  };
  if (info.model !== undefined) estimate.model = info.model;
  return estimate;
};

/**
 * Does the request ask for anything billable? One with no model and no prompt (a models list, a file download,
 * a DELETE) asks for no tokens: pricing it at the default price would charge a made-up model for nothing.
 */
export const asksForTokens = (estimate: RequestEstimate): boolean => estimate.model !== undefined || estimate.inputTokens > 0;

/** The estimate as a Usage (output at its maximum, nothing cached), to price a reservation with `costMicroUsd`. */
export const usageFromEstimate = (estimate: RequestEstimate): Usage => {
  const usage: Usage = {
    inputTokens: estimate.inputTokens,
    outputTokens: estimate.maxOutputTokens,
    cachedInputTokens: 0,
    reasoningTokens: 0,
    estimated: true,
  };
  if (estimate.model !== undefined) usage.model = estimate.model;
  return usage;
};
