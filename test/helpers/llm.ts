import { json, startUpstream, type TestUpstream } from './upstream.js';

/** Prices chosen so the arithmetic is easy to check by hand: µUSD per token = USD per 1M tokens. */
export const PRICES = { 'test-model': { inputPerM: 2, outputPerM: 8, cachedInputPerM: 1 } };
/** The upstream reports this usage for every call: 1000 prompt (200 cached), 500 completion. */
export const USAGE = { prompt_tokens: 1000, completion_tokens: 500, total_tokens: 1500, prompt_tokens_details: { cached_tokens: 200 } };
/** 800 × 2 + 200 × 1 + 500 × 8 = 5800 µUSD. */
export const COST_USD = 0.0058;

export type LlmUpstream = TestUpstream & { bodies: Array<Record<string, unknown>> };

/**
 * A fake OpenAI and Anthropic API (`/v1/chat/completions`, `/v1/messages`), JSON and SSE, reporting USAGE. It can
 * misbehave on request: `x-test-fail-once: <id>` answers 503 the first time an id is seen; model `broken-model`
 * always answers 503.
 */
export const startLlmUpstream = async (opts: { tls?: boolean } = {}): Promise<LlmUpstream> => {
  const up = await startUpstream(opts);
  const bodies: Array<Record<string, unknown>> = [];
  const failedOnce = new Set<string>();
  const misbehave = (headers: Record<string, string | string[] | undefined>, model: string): boolean => {
    const once = headers['x-test-fail-once'];
    if (typeof once === 'string' && !failedOnce.has(once)) {
      failedOnce.add(once);
      return true;
    }
    return model === 'broken-model';
  };
  up.on('/v1/chat/completions', (req, res, raw) => {
    const body = JSON.parse(raw.toString()) as { stream?: boolean; model: string; stream_options?: { include_usage?: boolean } };
    bodies.push(body);
    if (misbehave(req.headers, body.model)) return json(res, 503, { error: { message: 'overloaded, try again', type: 'server_error', code: null } });
    const base = { id: 'c1', created: 1, model: body.model };
    if (!body.stream) {
      return json(res, 200, { ...base, object: 'chat.completion', choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop', logprobs: null }], usage: USAGE });
    }
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(`data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: 'ok' }, finish_reason: null }] })}\n\n`);
    if (body.stream_options?.include_usage) {
      res.write(`data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices: [], usage: USAGE })}\n\n`);
    }
    res.end('data: [DONE]\n\n');
    return undefined;
  });
  up.on('/v1/messages', (req, res, raw) => {
    const body = JSON.parse(raw.toString()) as { stream?: boolean; model: string };
    bodies.push(body);
    if (misbehave(req.headers, body.model)) return json(res, 529, { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } });
    const usage = { input_tokens: 800, output_tokens: 500, cache_read_input_tokens: 200, cache_creation_input_tokens: 0 };
    if (!body.stream) {
      return json(res, 200, { id: 'msg_1', type: 'message', role: 'assistant', model: body.model, content: [{ type: 'text', text: 'ok' }], stop_reason: 'end_turn', stop_sequence: null, usage });
    }
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    const ev = (type: string, data: unknown) => res.write(`event: ${type}\ndata: ${JSON.stringify(data)}\n\n`);
    ev('message_start', { type: 'message_start', message: { id: 'msg_1', type: 'message', role: 'assistant', model: body.model, content: [], stop_reason: null, stop_sequence: null, usage: { ...usage, output_tokens: 1 } } });
    ev('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } });
    ev('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'ok' } });
    ev('content_block_stop', { type: 'content_block_stop', index: 0 });
    ev('message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: 500 } });
    ev('message_stop', { type: 'message_stop' });
    res.end();
    return undefined;
  });
  return Object.assign(up, { bodies });
};
