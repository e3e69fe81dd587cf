import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { announce } from './announce.js';

/**
 * The fast loopback upstream every target forwards to: a plain node:http server (no framework) so that what
 * the benchmark measures is the proxy, not the upstream.
 * - any path: 200 with a ~200-byte JSON body, keep-alive (also the `fusebox+tracing` target's OTLP receiver: its
 *   span exports are POSTs to `/v1/traces`, read and discarded)
 * - `/sse`: an event stream whose first event is written with the headers, then `[DONE]` after `SSE_HOLD_MS`
 *   (the hold is what exposes a proxy that buffers a stream until it ends)
 * - `/chat-sse`: a Chat Completions stream as OpenAI sends one when asked for usage: content chunks, the usage-only
 *   chunk, `[DONE]` (what an LLM route's meter and usage-chunk filter work on); the same hold before the end
 */
const SSE_HOLD_MS = Number(process.env.BENCH_SSE_HOLD_MS ?? 10);

const body = Buffer.from(
  JSON.stringify({
    id: 'chatcmpl-bench-0001',
    object: 'chat.completion',
    model: 'bench-model',
    choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 12, completion_tokens: 1, total_tokens: 13 },
  }),
);

const chunk = (delta: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
  `data: ${JSON.stringify({ id: 'chatcmpl-bench-0001', object: 'chat.completion.chunk', model: 'bench-model', choices: [{ index: 0, delta, finish_reason: null }], ...extra })}\n\n`;
const chatStreamHead = chunk({ role: 'assistant', content: '' }) + chunk({ content: 'o' });
const chatStreamTail =
  chunk({ content: 'k' }) +
  `data: ${JSON.stringify({ id: 'chatcmpl-bench-0001', object: 'chat.completion.chunk', model: 'bench-model', choices: [], usage: { prompt_tokens: 12, completion_tokens: 2, total_tokens: 14 } })}\n\n` +
  'data: [DONE]\n\n';

const server = createServer({ noDelay: true, keepAliveTimeout: 120_000 }, (req, res) => {
  // Bodies are not expected; drain anything sent so the socket stays reusable.
  req.resume();
  if (req.url?.endsWith('/chat-sse')) {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.write(chatStreamHead);
    const t = setTimeout(() => res.end(chatStreamTail), SSE_HOLD_MS);
    res.once('close', () => clearTimeout(t));
    return;
  }
  if (req.url === '/sse' || req.url?.endsWith('/sse')) {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.write('data: {"n":1}\n\n');
    const t = setTimeout(() => res.end('data: [DONE]\n\n'), SSE_HOLD_MS);
    res.once('close', () => clearTimeout(t));
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
  res.end(body);
});
server.headersTimeout = 0;
server.requestTimeout = 0;

server.listen(0, '127.0.0.1', () => {
  announce(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
});
