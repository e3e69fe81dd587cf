import { objectKey, stringKeys, stringValueBytes } from './json-scan.js';
import { createSseEventFilter, type SseEventFilter } from './sse-filter.js';
import {
  estimateUsageFromBytes,
  isRecord,
  stringField,
  tokenCount,
  tryParseJson,
  type StreamUsageReader,
  type Usage,
} from './usage.js';

/*
 * OpenAI usage shapes:
 * - Chat Completions and Embeddings: `usage.prompt_tokens` (cached tokens INCLUDED), `completion_tokens`,
 *   `prompt_tokens_details.cached_tokens`, `completion_tokens_details.reasoning_tokens`. Streamed, the last
 *   chunk carries it (`choices: []`) when the request set `stream_options.include_usage`; earlier chunks
 *   say `"usage":null`.
 * - Responses API: `usage.input_tokens` (cached INCLUDED), `output_tokens`, `input_tokens_details.cached_tokens`,
 *   `output_tokens_details.reasoning_tokens`. Streamed, `response.completed` (or `.incomplete` / `.failed`)
 *   carries it in `response.usage`.
 */

/** What an OpenAI request path asks for, in the GenAI convention's operation names. */
export type OpenAiOperation = 'chat' | 'embeddings' | 'text_completion';

/**
 * One answer for every layer that asks (the estimate: embeddings have no output; tracing: the span's operation):
 * `/embeddings` and the legacy `/completions` are their own operations; chat completions and the Responses API are
 * `chat`. The query is not part of the path.
 */
export const openAiOperation = (path: string): OpenAiOperation => {
  const p = path.split('?', 1)[0]!;
  if (/\/embeddings\/?$/.test(p)) return 'embeddings';
  if (/\/completions\/?$/.test(p) && !/\/chat\/completions\/?$/.test(p)) return 'text_completion';
  return 'chat';
};

/** `model` of a response body, a chat chunk, or a Responses event (`response.model`). */
export const openaiModel = (json: unknown): string | undefined => {
  if (!isRecord(json)) return undefined;
  return stringField(json.model) ?? (isRecord(json.response) ? stringField(json.response.model) : undefined);
};

/** Usage from any OpenAI body or streamed event that holds it (chat, embeddings, Responses), else undefined. */
export const openaiUsage = (json: unknown): Usage | undefined => {
  if (!isRecord(json)) return undefined;
  const u = isRecord(json.usage) ? json.usage : isRecord(json.response) && isRecord(json.response.usage) ? json.response.usage : undefined;
  if (u === undefined) return undefined;
  let prompt: number;
  let cached: number;
  let output: number;
  let reasoning: number;
  if ('prompt_tokens' in u || 'completion_tokens' in u) {
    prompt = tokenCount(u.prompt_tokens);
    cached = isRecord(u.prompt_tokens_details) ? tokenCount(u.prompt_tokens_details.cached_tokens) : 0;
    output = tokenCount(u.completion_tokens);
    reasoning = isRecord(u.completion_tokens_details) ? tokenCount(u.completion_tokens_details.reasoning_tokens) : 0;
  } else if ('input_tokens' in u || 'output_tokens' in u) {
    prompt = tokenCount(u.input_tokens);
    cached = isRecord(u.input_tokens_details) ? tokenCount(u.input_tokens_details.cached_tokens) : 0;
    output = tokenCount(u.output_tokens);
    reasoning = isRecord(u.output_tokens_details) ? tokenCount(u.output_tokens_details.reasoning_tokens) : 0;
  } else return undefined;
  // Cached tokens are a subset of the prompt; a provider claiming more is clamped rather than billed twice.
  cached = Math.min(cached, prompt);
  const usage: Usage = { inputTokens: prompt - cached, outputTokens: output, cachedInputTokens: cached, reasoningTokens: reasoning, estimated: false };
  const model = openaiModel(json);
  if (model !== undefined) usage.model = model;
  return usage;
};

/** Chat (and legacy completions) chunk fields whose string values are generated text. */
const CHUNK_TEXT = stringKeys('content', 'arguments', 'refusal', 'text', 'reasoning_content', 'reasoning');
const DELTA_TEXT = stringKeys('delta');
const USAGE_OBJECT = objectKey('usage');
const RESPONSES_EVENT_TYPE = /"type"\s*:\s*"(response\.[A-Za-z0-9_.]+)"/;
const MODEL_PARSE_TRIES = 3;

/**
 * The chunk `stream_options.include_usage` adds at the end of a Chat Completions (or legacy Completions) stream:
 * `choices: []` and a `usage` object. Chunks that carry usage beside choices (some compatible servers) are not it.
 */
const isUsageOnlyChunk = (data: string): boolean => {
  if (!USAGE_OBJECT.test(data)) return false;
  const json = tryParseJson(data);
  return isRecord(json) && Array.isArray(json.choices) && json.choices.length === 0 && isRecord(json.usage);
};

/**
 * Removes that usage-only chunk from a stream whose `include_usage` Fusebox added (see `withStreamUsage`): code
 * written against OpenAI directly (`for await (const c of stream) c.choices[0].delta`) throws on a chunk it never
 * asked for. Every other event, `[DONE]` included, passes byte for byte.
 */
export const createUsageChunkFilter = (maxEventBytes: number): SseEventFilter =>
  createSseEventFilter({ mayDrop: mayHoldUsageObject, drop: isUsageOnlyChunk, maxEventBytes });

const USAGE_KEY = Buffer.from('"usage"');
const NULL = Buffer.from('null');
const SPACE = 0x20;
const TAB = 0x09;
const COLON = 0x3a;

/**
 * Whether the event `buf[start, end)` may hold a `"usage"` object: false only when every `"usage"` in it is followed
 * by `: null` on the same line (what every chunk before the last says once usage is asked for), so only the last
 * chunk is decoded. Anything else (`"usage"` then a line break, an unusual space) says maybe: `isUsageOnlyChunk`
 * decides. A `"usage"` inside generated text is escaped (`\"usage\"`) and never matches.
 */
const mayHoldUsageObject = (buf: Buffer, start: number, end: number): boolean => {
  for (let at = buf.indexOf(USAGE_KEY, start); at !== -1 && at + USAGE_KEY.length <= end; at = buf.indexOf(USAGE_KEY, at + USAGE_KEY.length)) {
    let i = at + USAGE_KEY.length;
    while (i < end && (buf[i] === SPACE || buf[i] === TAB)) i++;
    if (i === end || buf[i] !== COLON) return true;
    i++;
    while (i < end && (buf[i] === SPACE || buf[i] === TAB)) i++;
    if (i + NULL.length > end || buf.compare(NULL, 0, NULL.length, i, i + NULL.length) !== 0) return true;
  }
  return false;
};

/** Reads an OpenAI SSE stream (Chat Completions, legacy Completions or Responses API). */
export const createOpenAIStreamReader = (): StreamUsageReader => {
  let usage: Usage | undefined;
  let model: string | undefined;
  let modelTries = 0;
  let textBytes = 0;

  const countText = (type: string | undefined, data: string): void => {
    // Responses API events are named; the payload's `type` is the fallback for intermediaries that drop `event:`.
    const kind = type ?? (data.includes('"response.') ? RESPONSES_EVENT_TYPE.exec(data)?.[1] : undefined);
    if (kind?.startsWith('response.')) {
      // Only `*.delta` events: `*.done`, `content_part.done`, `output_item.done` repeat the whole text.
      if (kind.endsWith('.delta')) textBytes += stringValueBytes(data, DELTA_TEXT);
      return;
    }
    textBytes += stringValueBytes(data, CHUNK_TEXT);
  };

  return {
    event(type, data) {
      if (data === '[DONE]') return;
      countText(type, data);
      const wantsUsage = USAGE_OBJECT.test(data);
      const wantsModel = model === undefined && modelTries < MODEL_PARSE_TRIES && data.includes('"model"');
      if (!wantsUsage && !wantsModel) return;
      const json = tryParseJson(data);
      if (wantsModel) {
        modelTries++;
        model = openaiModel(json);
      }
      if (wantsUsage) usage = openaiUsage(json) ?? usage;
    },
    result(fallbackInputTokens) {
      if (usage !== undefined) {
        const m = usage.model ?? model;
        return m === undefined ? { ...usage } : { ...usage, model: m };
      }
      return estimateUsageFromBytes(textBytes, model === undefined ? { inputTokens: fallbackInputTokens } : { inputTokens: fallbackInputTokens, model });
    },
  };
};
