import { stringKeys, stringValueBytes } from './json-scan.js';
import {
  estimateUsageFromBytes,
  isRecord,
  stringField,
  tokenCount,
  tryParseJson,
  type KnownUsage,
  type StreamUsageReader,
  type Usage,
} from './usage.js';

/*
 * Anthropic Messages usage: `input_tokens` (cache reads NOT included), `cache_read_input_tokens`,
 * `cache_creation_input_tokens` (split by TTL in `cache_creation`), `output_tokens` (thinking included).
 * Streamed, `message_start` carries `message.usage` (input known, output ~1) and `message_delta` carries the
 * cumulative `usage` at the end.
 */

interface Counts {
  input?: number;
  cacheWrite?: number;
  /** Of `cacheWrite`, the 1-hour-TTL part (`cache_creation.ephemeral_1h_input_tokens`). */
  cacheWrite1h?: number;
  cacheRead?: number;
  output?: number;
}

/** Overwrites the counts `u` reports (streamed counts are cumulative: the last report wins). */
const applyCounts = (counts: Counts, u: Record<string, unknown>): void => {
  if ('input_tokens' in u) counts.input = tokenCount(u.input_tokens);
  if ('cache_creation_input_tokens' in u) counts.cacheWrite = tokenCount(u.cache_creation_input_tokens);
  if (isRecord(u.cache_creation) && 'ephemeral_1h_input_tokens' in u.cache_creation) {
    counts.cacheWrite1h = tokenCount(u.cache_creation.ephemeral_1h_input_tokens);
  }
  if ('cache_read_input_tokens' in u) counts.cacheRead = tokenCount(u.cache_read_input_tokens);
  if ('output_tokens' in u) counts.output = tokenCount(u.output_tokens);
};

const hasCounts = (u: Record<string, unknown>): boolean => 'input_tokens' in u || 'output_tokens' in u;

const toUsage = (c: Counts, model: string | undefined): Usage => {
  const usage: Usage = {
    // Cache writes count as prompt tokens, and are priced at their own (higher) rate; see Usage.inputTokens.
    inputTokens: (c.input ?? 0) + (c.cacheWrite ?? 0),
    outputTokens: c.output ?? 0,
    cachedInputTokens: c.cacheRead ?? 0,
    reasoningTokens: 0,
    estimated: false,
  };
  const write1h = Math.min(c.cacheWrite1h ?? 0, c.cacheWrite ?? 0);
  if ((c.cacheWrite ?? 0) - write1h > 0) usage.cacheWriteInputTokens = (c.cacheWrite ?? 0) - write1h;
  if (write1h > 0) usage.cacheWrite1hInputTokens = write1h;
  if (model !== undefined) usage.model = model;
  return usage;
};

/** Usage from a non-streamed Messages response body, else undefined. */
export const anthropicUsage = (json: unknown): Usage | undefined => {
  if (!isRecord(json) || !isRecord(json.usage) || !hasCounts(json.usage)) return undefined;
  const counts: Counts = {};
  applyCounts(counts, json.usage);
  return toUsage(counts, stringField(json.model));
};

const EVENT_TYPE = /"type"\s*:\s*"([a-z_]+)"/;
const DELTA_TEXT = stringKeys('text', 'partial_json', 'thinking');

/** Reads an Anthropic Messages SSE stream. */
export const createAnthropicStreamReader = (): StreamUsageReader => {
  const counts: Counts = {};
  let model: string | undefined;
  let started = false;
  let ended = false;
  let textBytes = 0;

  return {
    event(type, data) {
      // Anthropic always names its events; the payload's own `type` is the fallback for proxies that drop the line.
      const kind = type ?? EVENT_TYPE.exec(data)?.[1];
      if (kind === 'content_block_delta') {
        textBytes += stringValueBytes(data, DELTA_TEXT);
      } else if (kind === 'message_start') {
        const json = tryParseJson(data);
        const message = isRecord(json) && isRecord(json.message) ? json.message : undefined;
        if (message === undefined) return;
        model = stringField(message.model) ?? model;
        if (isRecord(message.usage) && hasCounts(message.usage)) {
          applyCounts(counts, message.usage);
          started = true;
        }
      } else if (kind === 'message_delta') {
        const json = tryParseJson(data);
        if (isRecord(json) && isRecord(json.usage) && hasCounts(json.usage)) {
          applyCounts(counts, json.usage);
          ended = true;
        }
      }
    },
    result(fallbackInputTokens) {
      if (ended) return toUsage(counts, model);
      const known: KnownUsage = started
        ? { inputTokens: (counts.input ?? 0) + (counts.cacheWrite ?? 0), cachedInputTokens: counts.cacheRead ?? 0, outputTokens: counts.output ?? 0 }
        : { inputTokens: fallbackInputTokens };
      if (model !== undefined) known.model = model;
      return estimateUsageFromBytes(textBytes, known);
    },
  };
};
