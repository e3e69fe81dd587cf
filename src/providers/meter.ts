import { StringDecoder } from 'node:string_decoder';
import { createParser, type EventSourceParser } from 'eventsource-parser';
import { anthropicUsage, createAnthropicStreamReader } from './anthropic.js';
import { createOpenAIStreamReader, openaiUsage } from './openai.js';
import { tryParseJson, type StreamUsageReader, type Usage, type UsageProvider } from './usage.js';

/** Watches one response body pass and tells its token usage at the end. Never throws. */
export interface UsageMeter {
  /** Feed the next body chunk as received (identity-encoded: a gzip body yields no usage). */
  push(chunk: Buffer): void;
  /**
   * Usage once the body is over (or broken off). JSON body: as reported, or undefined (no usage, not JSON,
   * over the size bound, unknown content type). SSE body: as reported, else an estimate (`estimated: true`),
   * with `fallbackInputTokens` (default 0, pass the pre-call estimate) standing in for input never reported.
   * Later calls return the same answer; chunks pushed after it are ignored.
   */
  finish(fallbackInputTokens?: number): Usage | undefined;
  /** Bytes pushed so far. */
  readonly bytesSeen: number;
}

/** Largest JSON body (or single SSE event) the meter holds to read usage from. */
export const DEFAULT_MAX_JSON_BYTES = 4 * 1024 * 1024;

type Mode = 'sse' | 'json' | 'sniff' | 'ignore';

const mediaType = (contentType: string | undefined): string | undefined => contentType?.split(';', 1)[0]?.trim().toLowerCase();

/** Is this `content-type` an SSE stream? */
export const isEventStream = (contentType: string | undefined): boolean => mediaType(contentType) === 'text/event-stream';

const modeOf = (contentType: string | undefined): Mode => {
  const media = mediaType(contentType);
  if (media === undefined || media === '') return 'sniff';
  if (media === 'text/event-stream') return 'sse';
  if (media === 'application/json' || media.endsWith('+json')) return 'json';
  return 'ignore';
};

/** A body without content type: `{`/`[` is JSON, an SSE field name or comment is a stream. */
const sniff = (chunk: Buffer): Mode | undefined => {
  for (const byte of chunk) {
    if (byte === 0x20 || byte === 0x0a || byte === 0x0d || byte === 0x09) continue;
    if (byte === 0x7b || byte === 0x5b) return 'json';
    if (byte === 0x64 /* d */ || byte === 0x65 /* e */ || byte === 0x3a /* : */ || byte === 0x69 /* i */) return 'sse';
    return 'ignore';
  }
  return undefined;
};

/**
 * A meter for one response of `provider`. SSE bodies are parsed incrementally and only events that can
 * hold usage (or the model) are JSON-parsed; JSON bodies are held up to `maxJsonBytes` and parsed at the end.
 */
export const createUsageMeter = (
  provider: UsageProvider,
  contentType: string | undefined,
  maxJsonBytes: number = DEFAULT_MAX_JSON_BYTES,
): UsageMeter => {
  let mode = modeOf(contentType);
  let bytesSeen = 0;
  let finished = false;
  let answer: Usage | undefined;

  let json: { chunks: Buffer[]; size: number; overflow: boolean } | undefined;
  let sse: { decoder: StringDecoder; parser: EventSourceParser; reader: StreamUsageReader; broken: boolean } | undefined;

  const startSse = (): NonNullable<typeof sse> => {
    const reader = provider === 'anthropic' ? createAnthropicStreamReader() : createOpenAIStreamReader();
    const state = {
      decoder: new StringDecoder('utf8'),
      reader,
      broken: false,
      parser: createParser({
        // Bounds the one event the parser may hold (Responses' `response.completed` repeats the whole output).
        maxBufferSize: maxJsonBytes,
        onEvent: (ev) => reader.event(ev.event, ev.data),
        onError: (err) => {
          if (err.type === 'max-buffer-size-exceeded') state.broken = true;
        },
      }),
    };
    return state;
  };

  const feedSse = (text: string): void => {
    if (sse === undefined || sse.broken) return;
    try {
      sse.parser.feed(text);
    } catch {
      sse.broken = true;
    }
  };

  const pushJson = (chunk: Buffer): void => {
    json ??= { chunks: [], size: 0, overflow: false };
    if (json.overflow) return;
    if (json.size + chunk.length > maxJsonBytes) {
      json.overflow = true;
      json.chunks = [];
      return;
    }
    json.chunks.push(chunk);
    json.size += chunk.length;
  };

  return {
    get bytesSeen() {
      return bytesSeen;
    },
    push(chunk) {
      if (finished || chunk.length === 0) return;
      bytesSeen += chunk.length;
      if (mode === 'sniff') mode = sniff(chunk) ?? 'sniff';
      if (mode === 'json') pushJson(chunk);
      else if (mode === 'sse') {
        sse ??= startSse();
        if (!sse.broken) feedSse(sse.decoder.write(chunk));
      }
    },
    finish(fallbackInputTokens = 0) {
      if (finished) return answer;
      finished = true;
      if (mode === 'json' && json !== undefined && !json.overflow) {
        const body = tryParseJson(Buffer.concat(json.chunks, json.size).toString('utf8'));
        answer = provider === 'anthropic' ? anthropicUsage(body) : openaiUsage(body);
      } else if (mode === 'sse') {
        // An event stream that sent nothing still cost its input; the estimate says so.
        sse ??= startSse();
        // A stream cut mid-event: close the last line and event so a complete final payload still counts.
        feedSse(`${sse.decoder.end()}\n\n`);
        answer = sse.reader.result(fallbackInputTokens);
      }
      json = undefined;
      sse = undefined;
      return answer;
    },
  };
};
