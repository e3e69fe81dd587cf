import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { anthropicUsage } from '../../src/providers/anthropic.js';
import { objectKey, stringKeys, stringValueBytes } from '../../src/providers/json-scan.js';
import { createUsageMeter } from '../../src/providers/meter.js';
import { openaiUsage } from '../../src/providers/openai.js';
import { estimateUsageFromBytes, type Usage, type UsageProvider } from '../../src/providers/usage.js';

const SSE = 'text/event-stream; charset=utf-8';
const JSON_TYPE = 'application/json';

/** An SSE body as the providers write it: optional `event:` line, one `data:` line, blank line. */
const sse = (events: Array<[string | undefined, string]>, eol = '\n'): Buffer =>
  Buffer.from(events.map(([name, data]) => `${name === undefined ? '' : `event: ${name}${eol}`}data: ${data}${eol}${eol}`).join(''));

const meter = (provider: UsageProvider, contentType: string | undefined, chunks: Buffer[], fallbackInput?: number, max?: number) => {
  const m = createUsageMeter(provider, contentType, max);
  for (const c of chunks) m.push(c);
  return m.finish(fallbackInput);
};

const whole = (provider: UsageProvider, contentType: string | undefined, body: Buffer | string, fallbackInput?: number) =>
  meter(provider, contentType, [Buffer.from(body)], fallbackInput);

const usage = (u: Partial<Usage>): Usage => ({ inputTokens: 0, outputTokens: 0, cachedInputTokens: 0, reasoningTokens: 0, estimated: false, ...u });

const utf8 = (s: string) => Buffer.byteLength(s);

/** Every way of cutting `body` in two, plus one byte at a time: the answer must never change. */
const expectSplitInvariant = (provider: UsageProvider, body: Buffer, expected: Usage | undefined, fallbackInput?: number) => {
  for (let k = 1; k < body.length; k++) {
    const got = meter(provider, SSE, [body.subarray(0, k), body.subarray(k)], fallbackInput);
    if (JSON.stringify(got) !== JSON.stringify(expected)) expect({ split: k, got }).toEqual({ split: k, got: expected });
  }
  const bytes = [...body].map((b) => Buffer.from([b]));
  expect(meter(provider, SSE, bytes, fallbackInput)).toEqual(expected);
};

// ---------------------------------------------------------------- OpenAI fixtures (shapes as the API returns them)

const chatCompletion = {
  id: 'chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT',
  object: 'chat.completion',
  created: 1741569952,
  model: 'gpt-4o-2024-08-06',
  choices: [
    {
      index: 0,
      message: { role: 'assistant', content: 'Hello! How can I assist you today?', refusal: null, annotations: [] },
      logprobs: null,
      finish_reason: 'stop',
    },
  ],
  usage: {
    prompt_tokens: 1117,
    completion_tokens: 46,
    total_tokens: 1163,
    prompt_tokens_details: { cached_tokens: 1024, audio_tokens: 0 },
    completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
  },
  service_tier: 'default',
  system_fingerprint: 'fp_fc9f1d7035',
};

const chunk = (delta: object, finish: string | null = null) =>
  JSON.stringify({
    id: 'chatcmpl-AyPo6Sm3ux2NZbmtvzQy6O2hTtcy1',
    object: 'chat.completion.chunk',
    created: 1738960610,
    model: 'gpt-4o-mini-2024-07-18',
    service_tier: 'default',
    system_fingerprint: 'fp_72ed7ab54c',
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    usage: null,
  });

const CHAT_TEXT = ['Héllo', ' wörld 你好', ' 👋'];
const chatUsageChunk = JSON.stringify({
  id: 'chatcmpl-AyPo6Sm3ux2NZbmtvzQy6O2hTtcy1',
  object: 'chat.completion.chunk',
  created: 1738960610,
  model: 'gpt-4o-mini-2024-07-18',
  service_tier: 'default',
  system_fingerprint: 'fp_72ed7ab54c',
  choices: [],
  usage: {
    prompt_tokens: 2006,
    completion_tokens: 300,
    total_tokens: 2306,
    prompt_tokens_details: { cached_tokens: 1920, audio_tokens: 0 },
    completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
  },
});
const chatEvents: Array<[undefined, string]> = [
  [undefined, chunk({ role: 'assistant', content: '', refusal: null })],
  ...CHAT_TEXT.map((t): [undefined, string] => [undefined, chunk({ content: t })]),
  [undefined, chunk({}, 'stop')],
];
const chatStreamNoUsage = sse([...chatEvents, [undefined, '[DONE]']]);
const chatStream = sse([...chatEvents, [undefined, chatUsageChunk], [undefined, '[DONE]']]);
const chatStreamUsage = usage({ inputTokens: 86, cachedInputTokens: 1920, outputTokens: 300, model: 'gpt-4o-mini-2024-07-18' });

const responsesBody = {
  id: 'resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b',
  object: 'response',
  created_at: 1741476542,
  status: 'completed',
  error: null,
  incomplete_details: null,
  instructions: null,
  max_output_tokens: null,
  model: 'o3-2025-04-16',
  output: [
    { type: 'reasoning', id: 'rs_1', summary: [] },
    {
      type: 'message',
      id: 'msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b',
      status: 'completed',
      role: 'assistant',
      content: [{ type: 'output_text', text: 'In a peaceful grove beneath a silver moon...', annotations: [] }],
    },
  ],
  parallel_tool_calls: true,
  previous_response_id: null,
  reasoning: { effort: 'medium', summary: null },
  store: true,
  temperature: 1.0,
  text: { format: { type: 'text' } },
  tool_choice: 'auto',
  tools: [],
  top_p: 1.0,
  truncation: 'disabled',
  usage: {
    input_tokens: 2000,
    input_tokens_details: { cached_tokens: 1536 },
    output_tokens: 900,
    output_tokens_details: { reasoning_tokens: 640 },
    total_tokens: 2900,
  },
  user: null,
  metadata: {},
};

const responseShell = (status: string, usageValue: unknown, output: unknown[] = []) => ({
  id: 'resp_1',
  object: 'response',
  created_at: 1741290958,
  status,
  model: 'o4-mini-2025-04-16',
  output,
  usage: usageValue,
});
const finalItem = {
  id: 'msg_1',
  type: 'message',
  status: 'completed',
  role: 'assistant',
  content: [{ type: 'output_text', text: 'Hi there, friend', annotations: [] }],
};
const RESPONSES_DELTAS = ['Hi', ' there', ', friend'];
const responsesEventsBeforeCompleted: Array<[string, string]> = [
  ['response.created', JSON.stringify({ type: 'response.created', sequence_number: 0, response: responseShell('in_progress', null) })],
  ['response.in_progress', JSON.stringify({ type: 'response.in_progress', sequence_number: 1, response: responseShell('in_progress', null) })],
  [
    'response.output_item.added',
    JSON.stringify({ type: 'response.output_item.added', sequence_number: 2, output_index: 0, item: { ...finalItem, status: 'in_progress', content: [] } }),
  ],
  [
    'response.content_part.added',
    JSON.stringify({ type: 'response.content_part.added', sequence_number: 3, item_id: 'msg_1', output_index: 0, content_index: 0, part: { type: 'output_text', text: '', annotations: [] } }),
  ],
  ...RESPONSES_DELTAS.map((d, i): [string, string] => [
    'response.output_text.delta',
    JSON.stringify({ type: 'response.output_text.delta', sequence_number: 4 + i, item_id: 'msg_1', output_index: 0, content_index: 0, delta: d, logprobs: [] }),
  ]),
  [
    'response.output_text.done',
    JSON.stringify({ type: 'response.output_text.done', sequence_number: 7, item_id: 'msg_1', output_index: 0, content_index: 0, text: 'Hi there, friend', logprobs: [] }),
  ],
  [
    'response.content_part.done',
    JSON.stringify({ type: 'response.content_part.done', sequence_number: 8, item_id: 'msg_1', output_index: 0, content_index: 0, part: { type: 'output_text', text: 'Hi there, friend', annotations: [] } }),
  ],
  ['response.output_item.done', JSON.stringify({ type: 'response.output_item.done', sequence_number: 9, output_index: 0, item: finalItem })],
];
const responsesCompleted: [string, string] = [
  'response.completed',
  JSON.stringify({
    type: 'response.completed',
    sequence_number: 10,
    response: responseShell(
      'completed',
      { input_tokens: 37, input_tokens_details: { cached_tokens: 0 }, output_tokens: 11, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 48 },
      [finalItem],
    ),
  }),
];

const embeddingsBody = {
  object: 'list',
  data: [{ object: 'embedding', index: 0, embedding: [-0.006929283495992422, -0.005336422007530928, 0.00047350498, -0.024047505110502243] }],
  model: 'text-embedding-3-small',
  usage: { prompt_tokens: 5, total_tokens: 5 },
};

// ---------------------------------------------------------------- Anthropic fixtures

const anthropicMessage = {
  id: 'msg_01XFDUDYJgAACzvnptvVoYEL',
  type: 'message',
  role: 'assistant',
  model: 'claude-sonnet-4-5-20250929',
  content: [{ type: 'text', text: 'Hello!' }],
  stop_reason: 'end_turn',
  stop_sequence: null,
  usage: {
    input_tokens: 12,
    cache_creation_input_tokens: 2048,
    cache_read_input_tokens: 4096,
    cache_creation: { ephemeral_5m_input_tokens: 2048, ephemeral_1h_input_tokens: 0 },
    output_tokens: 6,
    service_tier: 'standard',
  },
};

const anthropicBeforeDelta: Array<[string, string]> = [
  [
    'message_start',
    JSON.stringify({
      type: 'message_start',
      message: {
        id: 'msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY',
        type: 'message',
        role: 'assistant',
        content: [],
        model: 'claude-sonnet-4-5-20250929',
        stop_reason: null,
        stop_sequence: null,
        usage: { input_tokens: 472, cache_creation_input_tokens: 0, cache_read_input_tokens: 1200, output_tokens: 2 },
      },
    }),
  ],
  ['content_block_start', JSON.stringify({ type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } })],
  ['ping', '{"type": "ping"}'],
  ['content_block_delta', JSON.stringify({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: "Here's" } })],
  ['content_block_delta', JSON.stringify({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: ' the weather' } })],
  ['content_block_stop', JSON.stringify({ type: 'content_block_stop', index: 0 })],
  [
    'content_block_start',
    JSON.stringify({ type: 'content_block_start', index: 1, content_block: { type: 'tool_use', id: 'toolu_01T1x1fJ34qAmk2tNTrN7Up6', name: 'get_weather', input: {} } }),
  ],
  ['content_block_delta', JSON.stringify({ type: 'content_block_delta', index: 1, delta: { type: 'input_json_delta', partial_json: '{"city": "Par' } })],
  ['content_block_delta', JSON.stringify({ type: 'content_block_delta', index: 1, delta: { type: 'input_json_delta', partial_json: 'is"}' } })],
  ['content_block_stop', JSON.stringify({ type: 'content_block_stop', index: 1 })],
];
const anthropicEnd: Array<[string, string]> = [
  ['message_delta', JSON.stringify({ type: 'message_delta', delta: { stop_reason: 'tool_use', stop_sequence: null }, usage: { output_tokens: 89 } })],
  ['message_stop', JSON.stringify({ type: 'message_stop' })],
];
const anthropicStream = sse([...anthropicBeforeDelta, ...anthropicEnd]);
const anthropicStreamUsage = usage({ inputTokens: 472, cachedInputTokens: 1200, outputTokens: 89, model: 'claude-sonnet-4-5-20250929' });
/**
 * Generated text bytes as escaped on the wire: "Here's" 6 + " the weather" 12 + `{\"city\": \"Par` 16 + `is\"}` 5 = 39,
 * so ceil(39 / 4) = 10 output tokens.
 */
const ANTHROPIC_HALF_OUTPUT = 10;

// ---------------------------------------------------------------- tests

describe('usage from JSON bodies', () => {
  it('OpenAI chat: cached tokens are taken out of prompt_tokens so nothing is priced twice', () => {
    expect(whole('openai', JSON_TYPE, JSON.stringify(chatCompletion))).toEqual(
      usage({ inputTokens: 93, cachedInputTokens: 1024, outputTokens: 46, model: 'gpt-4o-2024-08-06' }),
    );
  });

  it('OpenAI Responses API: input_tokens minus cached, reasoning reported but left inside output', () => {
    expect(whole('openai', 'application/json; charset=utf-8', JSON.stringify(responsesBody))).toEqual(
      usage({ inputTokens: 464, cachedInputTokens: 1536, outputTokens: 900, reasoningTokens: 640, model: 'o3-2025-04-16' }),
    );
  });

  it('OpenAI embeddings: prompt tokens only', () => {
    expect(whole('openai', JSON_TYPE, JSON.stringify(embeddingsBody))).toEqual(usage({ inputTokens: 5, model: 'text-embedding-3-small' }));
  });

  it('Anthropic: cache writes count as input and are reported for their own price, cache reads as cached input', () => {
    expect(whole('anthropic', JSON_TYPE, JSON.stringify(anthropicMessage))).toEqual(
      usage({ inputTokens: 2060, cacheWriteInputTokens: 2048, cachedInputTokens: 4096, outputTokens: 6, model: 'claude-sonnet-4-5-20250929' }),
    );
    // Writes with the 1-hour TTL are told apart (Anthropic bills them 2× input, 5-minute ones 1.25×).
    const oneHour = { ...anthropicMessage, usage: { ...anthropicMessage.usage, cache_creation: { ephemeral_5m_input_tokens: 48, ephemeral_1h_input_tokens: 2000 } } };
    expect(whole('anthropic', JSON_TYPE, JSON.stringify(oneHour))).toEqual(
      usage({ inputTokens: 2060, cacheWriteInputTokens: 48, cacheWrite1hInputTokens: 2000, cachedInputTokens: 4096, outputTokens: 6, model: 'claude-sonnet-4-5-20250929' }),
    );
  });

  it('a JSON body split into many chunks is read as one', () => {
    const body = Buffer.from(JSON.stringify(chatCompletion, null, 2));
    const chunks = [];
    for (let i = 0; i < body.length; i += 7) chunks.push(body.subarray(i, i + 7));
    expect(meter('openai', JSON_TYPE, chunks)?.inputTokens).toBe(93);
  });

  it('answers undefined, without throwing, for bad JSON, error bodies, gzip bytes and non-JSON types', () => {
    expect(whole('openai', JSON_TYPE, '{"usage": {"prompt_tokens": 12')).toBeUndefined();
    expect(whole('openai', JSON_TYPE, '')).toBeUndefined();
    expect(whole('openai', JSON_TYPE, JSON.stringify({ error: { message: 'Rate limit reached', type: 'requests', code: 'rate_limit_exceeded' } }))).toBeUndefined();
    expect(whole('anthropic', JSON_TYPE, JSON.stringify({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }))).toBeUndefined();
    expect(meter('openai', JSON_TYPE, [gzipSync(JSON.stringify(chatCompletion))])).toBeUndefined();
    expect(whole('openai', 'text/plain', JSON.stringify(chatCompletion))).toBeUndefined();
    expect(whole('openai', 'audio/mpeg', Buffer.from([0xff, 0xfb, 0x90]))).toBeUndefined();
    expect(whole('openai', JSON_TYPE, '[1,2,3]')).toBeUndefined();
  });

  it('gives up on a JSON body larger than the bound and keeps none of it', () => {
    const body = Buffer.from(JSON.stringify(chatCompletion));
    expect(meter('openai', JSON_TYPE, [body.subarray(0, 100), body.subarray(100)], 0, body.length - 1)).toBeUndefined();
    expect(meter('openai', JSON_TYPE, [body], 0, body.length)?.outputTokens).toBe(46);
  });

  it('ignores usage fields that are not non-negative numbers instead of producing NaN', () => {
    const odd = { ...chatCompletion, usage: { prompt_tokens: '12', completion_tokens: -4, prompt_tokens_details: { cached_tokens: null } } };
    expect(openaiUsage(odd)).toEqual(usage({ model: 'gpt-4o-2024-08-06' }));
    expect(openaiUsage({ usage: { total_tokens: 9 } })).toBeUndefined();
    expect(anthropicUsage({ usage: { service_tier: 'standard' } })).toBeUndefined();
  });

  it('never bills more cached tokens than the prompt had', () => {
    const u = openaiUsage({ usage: { prompt_tokens: 10, completion_tokens: 1, prompt_tokens_details: { cached_tokens: 50 } } });
    expect(u).toEqual(usage({ inputTokens: 0, cachedInputTokens: 10, outputTokens: 1 }));
  });

  it('sniffs JSON and SSE when the content type is missing', () => {
    expect(whole('openai', undefined, `  ${JSON.stringify(chatCompletion)}`)?.inputTokens).toBe(93);
    expect(whole('openai', undefined, chatStream)).toEqual(chatStreamUsage);
    expect(whole('openai', undefined, 'plain text')).toBeUndefined();
  });
});

describe('usage from OpenAI streams', () => {
  it('reads the final include_usage chunk of a chat stream', () => {
    expect(whole('openai', SSE, chatStream)).toEqual(chatStreamUsage);
  });

  it('gives the same answer however the stream is cut into chunks (inside UTF-8 characters and data: lines)', () => {
    expectSplitInvariant('openai', chatStream, chatStreamUsage);
  });

  it('accepts CRLF line endings', () => {
    const crlf = sse([...chatEvents, [undefined, chatUsageChunk], [undefined, '[DONE]']], '\r\n');
    expectSplitInvariant('openai', crlf, chatStreamUsage);
  });

  it('estimates output from generated text bytes / 4 when the stream has no usage chunk', () => {
    const textBytes = CHAT_TEXT.reduce((n, t) => n + utf8(t), 0);
    expect(textBytes).toBe(6 + 14 + 5);
    const expected = usage({ inputTokens: 700, outputTokens: Math.ceil(25 / 4), model: 'gpt-4o-mini-2024-07-18', estimated: true });
    expect(whole('openai', SSE, chatStreamNoUsage, 700)).toEqual(expected);
    // Cut in the middle of 你 (3 bytes) and of 👋 (4 bytes): the decoder must carry the partial character over.
    const at = chatStreamNoUsage.indexOf(Buffer.from('你')) + 1;
    expect(meter('openai', SSE, [chatStreamNoUsage.subarray(0, at), chatStreamNoUsage.subarray(at)], 700)).toEqual(expected);
    expectSplitInvariant('openai', chatStreamNoUsage, expected, 700);
  });

  it('estimates a stream cut halfway through its usage chunk', () => {
    const cut = chatStream.subarray(0, chatStream.indexOf(Buffer.from('"completion_tokens"')));
    const got = whole('openai', SSE, cut, 50);
    expect(got).toEqual(usage({ inputTokens: 50, outputTokens: 7, model: 'gpt-4o-mini-2024-07-18', estimated: true }));
  });

  it('counts a final usage event whose closing blank line never came', () => {
    const cut = chatStream.subarray(0, chatStream.indexOf(Buffer.from('data: [DONE]')) - 2);
    expect(cut.subarray(-1).toString()).toBe('}');
    expect(whole('openai', SSE, cut)).toEqual(chatStreamUsage);
  });

  it('counts tool-call arguments and refusals as generated text', () => {
    const body = sse([
      [undefined, chunk({ role: 'assistant', content: null, tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '' } }] })],
      [undefined, chunk({ tool_calls: [{ index: 0, function: { arguments: '{"location":' } }] })],
      [undefined, chunk({ tool_calls: [{ index: 0, function: { arguments: ' "Paris"}' } }] })],
      [undefined, chunk({ refusal: 'No.' })],
    ]);
    // `{\"location\":` is 14 bytes on the wire, ` \"Paris\"}` 11, `No.` 3: ceil(28 / 4) = 7.
    expect(whole('openai', SSE, body)?.outputTokens).toBe(7);
  });

  it('reads usage from the Responses API response.completed event, model from response.created', () => {
    const body = sse([...responsesEventsBeforeCompleted, responsesCompleted]);
    const expected = usage({ inputTokens: 37, outputTokens: 11, model: 'o4-mini-2025-04-16' });
    expect(whole('openai', SSE, body)).toEqual(expected);
    expectSplitInvariant('openai', body, expected);
  });

  it('estimates a cut Responses stream from its deltas only, not the .done events that repeat the text', () => {
    const body = sse(responsesEventsBeforeCompleted);
    // "Hi" + " there" + ", friend" = 16 bytes → 4 tokens; counting the three .done events too would give 16.
    expect(whole('openai', SSE, body, 120)).toEqual(usage({ inputTokens: 120, outputTokens: 4, model: 'o4-mini-2025-04-16', estimated: true }));
  });

  it('takes usage from response.incomplete too (max_output_tokens reached)', () => {
    const incomplete = JSON.stringify({
      type: 'response.incomplete',
      sequence_number: 5,
      response: responseShell('incomplete', { input_tokens: 10, input_tokens_details: { cached_tokens: 4 }, output_tokens: 16, output_tokens_details: { reasoning_tokens: 16 }, total_tokens: 26 }),
    });
    expect(whole('openai', SSE, sse([['response.incomplete', incomplete]]))).toEqual(
      usage({ inputTokens: 6, cachedInputTokens: 4, outputTokens: 16, reasoningTokens: 16, model: 'o4-mini-2025-04-16' }),
    );
  });

  it('reads Responses events that arrive without event: lines', () => {
    const body = sse([...responsesEventsBeforeCompleted.map(([, d]): [undefined, string] => [undefined, d])]);
    expect(whole('openai', SSE, body)?.outputTokens).toBe(4);
  });

  it('survives garbage: bad JSON events, unknown fields, comments, an empty stream', () => {
    const body = Buffer.from(': keep-alive\n\nfoo: bar\n\ndata: {"usage": {not json\n\ndata: {"model":\n\n' + `data: ${chatUsageChunk}\n\n`);
    expect(whole('openai', SSE, body)).toEqual(chatStreamUsage);
    expect(whole('openai', SSE, Buffer.from('data: {"usage": {"prompt_tokens": 1\n\n'), 9)).toEqual(usage({ inputTokens: 9, estimated: true }));
    expect(meter('openai', SSE, [], 40)).toEqual(usage({ inputTokens: 40, estimated: true }));
  });

  it('stops parsing, without throwing, when one event outgrows the bound', () => {
    const huge = Buffer.from(`data: ${'x'.repeat(5000)}\n\n`);
    const slices = [];
    for (let i = 0; i < huge.length; i += 100) slices.push(huge.subarray(i, i + 100));
    const got = meter('openai', SSE, [...slices, chatStream], 3, 1000);
    expect(got?.estimated).toBe(true);
    expect(got?.inputTokens).toBe(3);
  });
});

describe('usage from Anthropic streams', () => {
  it('takes input from message_start and the cumulative output from message_delta', () => {
    expect(whole('anthropic', SSE, anthropicStream)).toEqual(anthropicStreamUsage);
  });

  it('gives the same answer however the stream is cut into chunks', () => {
    expectSplitInvariant('anthropic', anthropicStream, anthropicStreamUsage);
  });

  it('lets a message_delta that repeats input counts override message_start', () => {
    const end = JSON.stringify({
      type: 'message_delta',
      delta: { stop_reason: 'end_turn', stop_sequence: null },
      usage: { input_tokens: 500, cache_creation_input_tokens: 100, cache_read_input_tokens: 1200, output_tokens: 89 },
    });
    expect(whole('anthropic', SSE, sse([...anthropicBeforeDelta, ['message_delta', end]]))).toEqual(
      usage({ inputTokens: 600, cacheWriteInputTokens: 100, cachedInputTokens: 1200, outputTokens: 89, model: 'claude-sonnet-4-5-20250929' }),
    );
  });

  it('a stream cut before message_delta keeps the exact input and estimates output from text and tool JSON', () => {
    const expected = usage({ inputTokens: 472, cachedInputTokens: 1200, outputTokens: ANTHROPIC_HALF_OUTPUT, model: 'claude-sonnet-4-5-20250929', estimated: true });
    const half = sse(anthropicBeforeDelta);
    expect(whole('anthropic', SSE, half, 99_999)).toEqual(expected);
    expectSplitInvariant('anthropic', half, expected, 99_999);
  });

  it('a stream cut inside message_start falls back to the caller’s input estimate', () => {
    const cut = anthropicStream.subarray(0, 60);
    expect(whole('anthropic', SSE, cut, 321)).toEqual(usage({ inputTokens: 321, estimated: true }));
  });

  it('reads events whose event: line was dropped by an intermediary', () => {
    const body = sse([...anthropicBeforeDelta, ...anthropicEnd].map(([, d]): [undefined, string] => [undefined, d]));
    expect(whole('anthropic', SSE, body)).toEqual(anthropicStreamUsage);
  });

  it('an error event mid-stream leaves an estimate, not an exception', () => {
    const body = sse([anthropicBeforeDelta[0]!, ['error', JSON.stringify({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } })]]);
    expect(whole('anthropic', SSE, body)).toEqual(usage({ inputTokens: 472, cachedInputTokens: 1200, outputTokens: 2, model: 'claude-sonnet-4-5-20250929', estimated: true }));
  });
});

describe('meter bookkeeping', () => {
  it('counts bytes, answers the same on a second finish, and ignores chunks after it', () => {
    const m = createUsageMeter('openai', SSE);
    m.push(chatStream.subarray(0, 10));
    m.push(chatStream.subarray(10));
    expect(m.bytesSeen).toBe(chatStream.length);
    const first = m.finish();
    m.push(Buffer.from(`data: ${chatUsageChunk.replace('300', '999')}\n\n`));
    expect(m.finish()).toBe(first);
    expect(first).toEqual(chatStreamUsage);
    expect(m.bytesSeen).toBe(chatStream.length);
  });
});

describe('estimateUsageFromBytes', () => {
  it('rounds bytes / 4 up and keeps a larger known output count', () => {
    expect(estimateUsageFromBytes(9)).toEqual(usage({ outputTokens: 3, estimated: true }));
    expect(estimateUsageFromBytes(8, { outputTokens: 5, inputTokens: 7, cachedInputTokens: 1, model: 'm' })).toEqual(
      usage({ inputTokens: 7, cachedInputTokens: 1, outputTokens: 5, model: 'm', estimated: true }),
    );
    expect(estimateUsageFromBytes(-3).outputTokens).toBe(0);
  });
});

describe('payload scanning without JSON.parse', () => {
  it('finds object-valued keys only', () => {
    const usageObject = objectKey('usage');
    expect(usageObject.test('{"usage":null}')).toBe(false);
    expect(usageObject.test('{"usage" :\n {"a":1}}')).toBe(true);
    expect(usageObject.test('{"content":"the \\"usage\\": {} trick"}')).toBe(false);
  });

  it('sums UTF-8 bytes of string values, including adjacent, escaped and several keys', () => {
    const text = stringKeys('text');
    expect(stringValueBytes('{"text":"","text":"ab"}', text)).toBe(2);
    expect(stringValueBytes('{"text":"é😀","x":{"text":"a\\"b"}}', text)).toBe(2 + 4 + 4);
    expect(stringValueBytes('{"text":null,"text":1}', text)).toBe(0);
    expect(stringValueBytes('{"a":"xy","b" : "z","c":"q","content":"the \\"a\\": \\"x\\""}', stringKeys('a', 'b'))).toBe(3);
  });
});
