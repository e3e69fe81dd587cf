/**
 * Token usage of one LLM call, in the one shape every provider is reduced to, so that pricing is
 * `inputTokens·input + cachedInputTokens·cachedInput + outputTokens·output` with nothing counted twice.
 */
export interface Usage {
  /**
   * Prompt tokens billed at the full input price: cache reads are NOT included. OpenAI counts cached
   * tokens inside `prompt_tokens`/`input_tokens`, so they are subtracted here. Anthropic's `input_tokens`
   * already excludes cache reads; its cache writes (`cache_creation_input_tokens`) are added here and also
   * reported below, so pricing can charge them at the cache-write rate instead of the input rate.
   */
  inputTokens: number;
  /** Of `inputTokens`, prompt tokens written to the provider's cache with the 5-minute TTL (Anthropic: 1.25× input). */
  cacheWriteInputTokens?: number;
  /** Of `inputTokens`, prompt tokens written to the cache with the 1-hour TTL (Anthropic: 2× input). */
  cacheWrite1hInputTokens?: number;
  /** Output tokens, reasoning/thinking tokens included. */
  outputTokens: number;
  /** Prompt tokens read from the provider's prompt cache, billed at the cached-input price. */
  cachedInputTokens: number;
  /** Reasoning tokens, for information only: they are already inside `outputTokens`; never add them again. */
  reasoningTokens: number;
  /** Model the provider says answered (often a dated snapshot such as `gpt-4o-2024-08-06`). */
  model?: string;
  /** true when counts were guessed (a stream that ended without usage), not reported by the provider. */
  estimated: boolean;
}

/** API families whose responses carry usage Fusebox can read. */
export type UsageProvider = 'openai' | 'anthropic';

/**
 * Bytes of generated text per output token assumed when a provider never reported usage. ~4 bytes per
 * token is the usual figure for English with GPT/Claude tokenizers; for code and most other languages the
 * true figure is lower (more tokens per byte), so this can undercount — it only applies to streams cut
 * before their usage event, and the budget layer keeps the pre-call reservation for such calls anyway.
 */
export const BYTES_PER_OUTPUT_TOKEN = 4;

/** What is already known for sure when usage has to be guessed (e.g. Anthropic's `message_start`). */
export interface KnownUsage {
  inputTokens?: number;
  cachedInputTokens?: number;
  outputTokens?: number;
  model?: string;
}

/**
 * Usage for a stream that ended without a usage report: output ≈ ceil(generated text bytes / 4)
 * (never below an output count already known), input as known (0 when the response never said).
 */
export const estimateUsageFromBytes = (outputTextBytes: number, known: KnownUsage = {}): Usage => {
  const guessed = Math.ceil(Math.max(0, outputTextBytes) / BYTES_PER_OUTPUT_TOKEN);
  const usage: Usage = {
    inputTokens: known.inputTokens ?? 0,
    outputTokens: Math.max(known.outputTokens ?? 0, guessed),
    cachedInputTokens: known.cachedInputTokens ?? 0,
    reasoningTokens: 0,
    estimated: true,
  };
  if (known.model !== undefined) usage.model = known.model;
  return usage;
};

/** A token count from a provider payload: a finite non-negative number, else 0 (a provider bug must not make NaN money). */
export const tokenCount = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) && v > 0 ? Math.floor(v) : 0);

export const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A non-empty string field, else undefined. */
export const stringField = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);

/** Reads usage from one provider's SSE events as they pass; see `createUsageMeter`. */
export interface StreamUsageReader {
  /** One dispatched SSE event: its `event:` name (if any) and its `data:` payload. Never throws. */
  event(type: string | undefined, data: string): void;
  /**
   * Usage once the stream is over: as reported, or estimated (`estimated: true`) when the stream ended
   * before its usage event. `fallbackInputTokens` stands in for input the response never reported.
   */
  result(fallbackInputTokens: number): Usage;
}

/** JSON.parse that answers undefined instead of throwing (upstream bytes are not trusted to be JSON). */
export const tryParseJson = (text: string): unknown => {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
};
