import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  asksForTokens,
  countOpenAITokens,
  estimateRequest,
  TOKENIZE_MAX_CHARS,
  tokenizerLoaded,
  usageFromEstimate,
  warmTokenizer,
} from '../../src/budget/estimate.js';

const OPTS = { defaultMaxOutputTokens: 1024 };
/** A route with `budget.tokenizer: o200k`. */
const O200K = { ...OPTS, tokenizer: 'o200k' as const };
const body = (o: object) => Buffer.from(JSON.stringify(o));
/** Exact o200k count, the oracle for OpenAI text. */
const o200k = (s: string) => countTokens(s, { disallowedSpecial: new Set() });
/** The documented heuristic: ceil(UTF-8 bytes / 3.5). */
const heuristic = (s: string) => Math.ceil(Buffer.byteLength(s) / 3.5);
const PRIMING = 3;
const PER_MESSAGE = 4;
const MEDIA = 1_600;

/** Deterministic English-like prose. */
const prose = (chars: number, seed = 7): string => {
  const words = ['the', 'agent', 'calls', 'a', 'tool', 'and', 'waits', 'for', 'an', 'answer', 'budget', 'retry', 'stream', 'model', 'cost', 'of', 'every', 'request', 'is', 'counted'];
  let s = seed;
  let out = '';
  while (out.length < chars) {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    out += `${words[s % words.length]}${s % 11 === 0 ? '. ' : ' '}`;
  }
  return out.slice(0, chars);
};

const REPO = join(import.meta.dirname, '../..');
/** The default OpenAI count: ceil(UTF-8 bytes / 2). */
const bytesHalf = (s: string) => Math.ceil(Buffer.byteLength(s) / 2);
const chatOf = (text: string) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: text }] });

// Runs first: the o200k block below loads the tokenizer.
describe('estimateRequest for OpenAI, by default (from bytes, no tokenizer)', () => {
  it('counts ceil(UTF-8 bytes / 2) of the prompt text, plus per-message and reply-priming overhead', () => {
    const chat = { model: 'gpt-4o', messages: [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Hello world' }] };
    expect(bytesHalf('You are terse.\nHello world')).toBe(13);
    expect(estimateRequest('openai', body(chat), OPTS)).toEqual({ inputTokens: 13 + PRIMING + 2 * PER_MESSAGE, maxOutputTokens: 1024, model: 'gpt-4o' });
    expect(estimateRequest('openai', body({ model: 'gpt-5', input: 'こんにちは' }), OPTS).inputTokens).toBe(8);
  });

  it('loads no tokenizer', () => {
    estimateRequest('openai', body(chatOf(prose(20_000))), OPTS);
    expect(tokenizerLoaded()).toBe(false);
  });

  // The stated error of the default (src/budget/estimate.ts, README "Token and cost caps"), against o200k as oracle.
  it('is an upper bound of the o200k count for prose, code, JSON, YAML, Chinese and Japanese, within 2.2× for English text', () => {
    const texts: Record<string, string> = {
      prose: prose(50_000),
      markdown: readFileSync(join(REPO, 'README.md'), 'utf8').slice(0, 60_000),
      typescript: readFileSync(join(REPO, 'src/app.ts'), 'utf8'),
      json: readFileSync(join(REPO, 'package-lock.json'), 'utf8').slice(0, 60_000),
      yaml: readFileSync(join(REPO, 'config/prices.yaml'), 'utf8'),
      chinese: '人工智能代理通过边车代理调用外部工具和大型语言模型。每次调用都会被计量，预算在调用之前预留，在调用结束后结算。'.repeat(20),
      japanese: 'エージェントはサイドカーを通じて外部のツールや大規模言語モデルを呼び出します。予算は呼び出しの前に予約されます。'.repeat(20),
    };
    for (const [kind, text] of Object.entries(texts)) {
      const estimated = estimateRequest('openai', body(chatOf(text)), OPTS).inputTokens;
      const exact = o200k(text) + PRIMING + PER_MESSAGE;
      expect(estimated, `${kind}: estimated ${estimated}, o200k ${exact}`).toBeGreaterThanOrEqual(exact);
      // Real English (this README): ~1.9×. The word salad of `prose`, all short common words, tokenizes denser (~2.3×).
      if (kind === 'markdown') expect(estimated / exact, kind).toBeLessThan(2.2);
    }
  });

  it('counts random identifiers and digit lists low, but never below half the o200k count', () => {
    const texts = [randomBytes(6_000).toString('base64'), randomBytes(6_000).toString('hex'), Array.from({ length: 3_000 }, (_, i) => i % 10).join(' ')];
    for (const text of texts) {
      const estimated = estimateRequest('openai', body(chatOf(text)), OPTS).inputTokens;
      expect(estimated).toBeGreaterThanOrEqual((o200k(text) + PRIMING + PER_MESSAGE) / 2);
    }
  });
});

describe('estimateRequest for OpenAI with budget.tokenizer: o200k', () => {
  beforeAll(() => {
    expect(warmTokenizer()).toBe(true);
  });
  it('tokenizes message text with o200k and adds per-message and reply-priming overhead', () => {
    const chat = { model: 'gpt-4o', messages: [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Hello world' }] };
    expect(o200k('You are terse.\nHello world')).toBe(6);
    expect(estimateRequest('openai', body(chat), O200K)).toEqual({ inputTokens: 6 + PRIMING + 2 * PER_MESSAGE, maxOutputTokens: 1024, model: 'gpt-4o' });
  });

  it('does not count JSON punctuation or non-text fields', () => {
    const chat = {
      model: 'gpt-4o',
      temperature: 0.2,
      seed: 42,
      user: 'user-123456789',
      metadata: { team: 'research', ticket: 'ABC-1234' },
      messages: [
        { role: 'system', content: 'You are terse.' },
        { role: 'user', content: [{ type: 'text', text: 'Hello world', cache_control: { type: 'ephemeral' } }] },
      ],
    };
    expect(estimateRequest('openai', body(chat), O200K).inputTokens).toBe(6 + PRIMING + 2 * PER_MESSAGE);
  });

  it('gives images a flat allowance instead of tokenizing their base64', () => {
    const chat = {
      model: 'gpt-4o',
      messages: [
        { role: 'system', content: 'You are terse.' },
        { role: 'user', content: [{ type: 'text', text: 'Hello world' }, { type: 'image_url', image_url: { url: `data:image/png;base64,${'iVBORw0KGgo'.repeat(10_000)}` } }] },
      ],
    };
    expect(estimateRequest('openai', body(chat), O200K).inputTokens).toBe(6 + MEDIA + PRIMING + 2 * PER_MESSAGE);
  });

  it('counts tool definitions, tool-call arguments and tool results', () => {
    const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather for a city', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }];
    const chat = {
      model: 'gpt-4.1',
      tools,
      messages: [
        { role: 'user', content: 'Weather in Paris?' },
        { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
        { role: 'tool', tool_call_id: 'call_1', content: 'Sunny, 21 °C' },
      ],
    };
    const text = ['Weather in Paris?', '{"city":"Paris"}', 'get_weather', 'Sunny, 21 °C', JSON.stringify(tools)].join('\n');
    expect(estimateRequest('openai', body(chat), O200K).inputTokens).toBe(o200k(text) + PRIMING + 3 * PER_MESSAGE);
  });

  it('takes max_completion_tokens and multiplies it by n', () => {
    const chat = { model: 'gpt-4o', n: 3, max_completion_tokens: 200, messages: [] };
    expect(estimateRequest('openai', body(chat), O200K)).toEqual({ inputTokens: PRIMING, maxOutputTokens: 600, model: 'gpt-4o' });
    expect(estimateRequest('openai', body({ ...chat, max_completion_tokens: undefined }), O200K).maxOutputTokens).toBe(3 * 1024);
  });

  it('counts Responses API instructions and input items, with max_output_tokens', () => {
    const req = { model: 'o3', instructions: 'Be brief.', input: [{ role: 'user', content: [{ type: 'input_text', text: 'What is 2+2?' }] }], max_output_tokens: 300 };
    expect(o200k('Be brief.\nWhat is 2+2?')).toBe(10);
    expect(estimateRequest('openai', body(req), O200K)).toEqual({ inputTokens: 10 + PER_MESSAGE, maxOutputTokens: 300, model: 'o3' });
    expect(estimateRequest('openai', body({ model: 'gpt-5', input: 'Hello world' }), O200K).inputTokens).toBe(2);
  });

  it('expects no output for embeddings, and counts strings and pre-tokenized inputs', () => {
    expect(estimateRequest('openai', body({ model: 'text-embedding-3-small', input: ['Hello world', 'You are terse.'] }), O200K)).toEqual({
      inputTokens: o200k('Hello world\nYou are terse.'),
      maxOutputTokens: 0,
      model: 'text-embedding-3-small',
    });
    expect(estimateRequest('openai', body({ model: 'text-embedding-3-large', input: [[1, 2, 3], [4, 5]] }), O200K).inputTokens).toBe(5);
    expect(estimateRequest('openai', body({ model: 'my-encoder', input: 'x' }), { ...O200K, path: '/v1/embeddings' }).maxOutputTokens).toBe(0);
  });

  it('counts special-token strings in user text as text instead of throwing', () => {
    const chat = { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi <|endoftext|> there' }] };
    expect(estimateRequest('openai', body(chat), O200K).inputTokens).toBe(9 + PRIMING + PER_MESSAGE);
  });

  it('samples text past the cap and stays within 3% of the exact count', () => {
    for (const text of [prose(200_000), `${prose(30_000)}${'fn(x) => x * 2; // 🚀 ünïcödé\n'.repeat(2_000)}`]) {
      const exact = o200k(text);
      const sampled = countOpenAITokens(text);
      expect(Math.abs(sampled - exact) / exact, `exact ${exact}, sampled ${sampled}`).toBeLessThan(0.03);
    }
    const small = prose(TOKENIZE_MAX_CHARS);
    expect(countOpenAITokens(small)).toBe(o200k(small));
  });

  it('estimates a 4 KiB prompt and a 1 MiB body with the tokenizer (CPU per estimate printed, not asserted: speed is for bench/)', () => {
    const cpuMsPerRun = (f: () => void, runs: number) => {
      const start = process.cpuUsage();
      for (let i = 0; i < runs; i++) f();
      const used = process.cpuUsage(start);
      return (used.user + used.system) / 1000 / runs;
    };
    const small = body({ model: 'gpt-4o', messages: [{ role: 'user', content: prose(4096, 3) }] });
    for (let i = 0; i < 200; i++) estimateRequest('openai', small, O200K);
    const smallMs = cpuMsPerRun(() => estimateRequest('openai', small, O200K), 50);
    const big = body({ model: 'gpt-4o', messages: Array.from({ length: 64 }, (_, i) => ({ role: 'user', content: prose(16_384, i + 1) })) });
    expect(big.length).toBeGreaterThan(1024 * 1024);
    const bigMs = cpuMsPerRun(() => estimateRequest('openai', big, O200K), 5);
    // Past TOKENIZE_MAX_CHARS the rest is counted from bytes: the estimate still covers the whole prompt.
    expect(estimateRequest('openai', big, O200K).inputTokens).toBeGreaterThan(o200k(prose(16_384, 1)) * 32);
    console.log(`o200k estimate CPU: 4 KiB prompt ${smallMs.toFixed(3)} ms, 1 MiB body ${bigMs.toFixed(1)} ms`);
  });
});

describe('estimateRequest for Anthropic and others', () => {
  it('uses ceil(UTF-8 bytes / 3.5) over system and message text', () => {
    const req = { model: 'claude-sonnet-4-5', max_tokens: 1000, system: 'You are terse.', messages: [{ role: 'user', content: 'Hello world' }] };
    expect(heuristic('You are terse.\nHello world')).toBe(8);
    expect(estimateRequest('anthropic', body(req), OPTS)).toEqual({ inputTokens: 8 + PRIMING + PER_MESSAGE, maxOutputTokens: 1000, model: 'claude-sonnet-4-5' });
  });

  it('counts bytes, not characters, so non-Latin text is not undercounted', () => {
    const req = { model: 'claude-haiku-4-5', max_tokens: 10, messages: [{ role: 'user', content: 'こんにちは' }] };
    expect(estimateRequest('anthropic', body(req), OPTS).inputTokens).toBe(Math.ceil(15 / 3.5) + PRIMING + PER_MESSAGE);
  });

  it('reads system blocks, tool_use input, tool_result content, thinking, text documents and images', () => {
    const req = {
      model: 'claude-opus-4-1',
      max_tokens: 4096,
      system: [{ type: 'text', text: 'You are a weather bot.', cache_control: { type: 'ephemeral' } }],
      tools: [{ name: 'get_weather', description: 'Weather', input_schema: { type: 'object', properties: { city: { type: 'string' } } } }],
      messages: [
        {
          role: 'user',
          content: [
            { type: 'image', source: { type: 'base64', media_type: 'image/jpeg', data: '/9j/4AAQSkZJRg'.repeat(5_000) } },
            { type: 'document', source: { type: 'text', media_type: 'text/plain', data: 'Paris is in France.' } },
            { type: 'text', text: 'Weather?' },
          ],
        },
        {
          role: 'assistant',
          content: [
            { type: 'thinking', thinking: 'Need the tool.', signature: 'EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds' },
            { type: 'tool_use', id: 'toolu_01', name: 'get_weather', input: { city: 'Paris' } },
          ],
        },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_01', content: [{ type: 'text', text: 'Sunny' }] }] },
      ],
    };
    const text = [
      'Paris is in France.',
      'Weather?',
      'Need the tool.',
      'get_weather',
      '{"city":"Paris"}',
      'Sunny',
      'You are a weather bot.',
      JSON.stringify(req.tools),
    ].join('\n');
    expect(estimateRequest('anthropic', body(req), OPTS)).toEqual({
      inputTokens: heuristic(text) + MEDIA + PRIMING + 3 * PER_MESSAGE,
      maxOutputTokens: 4096,
      model: 'claude-opus-4-1',
    });
  });

  it('guesses from size when the body is not JSON or was not buffered', () => {
    expect(estimateRequest('anthropic', Buffer.from('x'.repeat(70)), OPTS)).toEqual({ inputTokens: 20, maxOutputTokens: 1024 });
    expect(estimateRequest('openai', undefined, { ...OPTS, contentLength: 700 })).toEqual({ inputTokens: 200, maxOutputTokens: 1024 });
    expect(estimateRequest('none', undefined, OPTS)).toEqual({ inputTokens: 0, maxOutputTokens: 1024 });
  });

  it('accepts an already-parsed body and survives absurd nesting', () => {
    let deep: unknown = 'bottom';
    for (let i = 0; i < 5_000; i++) deep = [deep];
    const req = { model: 'm', messages: [{ role: 'user', content: deep }] };
    expect(estimateRequest('anthropic', req, OPTS).inputTokens).toBe(PRIMING + PER_MESSAGE);
  });
});

describe('usageFromEstimate', () => {
  it('prices a reservation as full output and no cache', () => {
    expect(usageFromEstimate({ inputTokens: 10, maxOutputTokens: 20, model: 'gpt-4o' })).toEqual({
      inputTokens: 10,
      outputTokens: 20,
      cachedInputTokens: 0,
      reasoningTokens: 0,
      model: 'gpt-4o',
      estimated: true,
    });
  });
});

describe('asksForTokens', () => {
  it('is false only for a request with no model and no prompt: no body, an empty body, an empty object', () => {
    expect(asksForTokens(estimateRequest('openai', undefined, OPTS))).toBe(false);
    expect(asksForTokens(estimateRequest('openai', Buffer.alloc(0), OPTS))).toBe(false);
    expect(asksForTokens(estimateRequest('anthropic', body({}), OPTS))).toBe(false);
  });

  it('is true with a model, or with a prompt and no model (Azure names the deployment in the URL), or any other bytes', () => {
    expect(asksForTokens(estimateRequest('openai', body({ model: 'gpt-4o' }), OPTS))).toBe(true);
    expect(asksForTokens(estimateRequest('openai', body({ messages: [{ role: 'user', content: 'hi' }] }), OPTS))).toBe(true);
    expect(asksForTokens(estimateRequest('openai', Buffer.from('--boundary\r\nfile'), OPTS))).toBe(true);
    expect(asksForTokens(estimateRequest('openai', undefined, { ...OPTS, contentLength: 10_000 }))).toBe(true);
  });
});
