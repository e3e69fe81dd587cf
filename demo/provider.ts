import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/** Usage the fake provider reports on every answer: small numbers, so the cost is easy to read in /metrics. */
export const DEMO_USAGE = { prompt_tokens: 120, completion_tokens: 40, total_tokens: 160 };

/** What the demo can make the fake provider do, and what it saw. */
export interface FakeProvider {
  url: string;
  /** Chat calls for the big model answer 503 while true (the small model keeps working). */
  outage: boolean;
  /** The next N calls of the flaky tool answer 503, then it recovers. */
  toolFailures: number;
  /** Calls seen per model (chat) and per tool. */
  seen: Record<string, number>;
  close(): Promise<void>;
}

const json = (res: ServerResponse, status: number, body: unknown): void => {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
};

const chat = (provider: FakeProvider, res: ServerResponse, raw: string): void => {
  const body = JSON.parse(raw) as { model?: string; stream?: boolean; stream_options?: { include_usage?: boolean } };
  const model = body.model ?? 'unknown';
  provider.seen[model] = (provider.seen[model] ?? 0) + 1;
  if (provider.outage && model === 'demo-large') {
    return json(res, 503, { error: { message: 'demo-large is overloaded, try again', type: 'server_error', code: null } });
  }
  const base = { id: `chatcmpl-demo-${Date.now()}`, created: Math.floor(Date.now() / 1000), model };
  const content = `a short answer from ${model}`;
  if (!body.stream) {
    return json(res, 200, { ...base, object: 'chat.completion', choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop', logprobs: null }], usage: DEMO_USAGE });
  }
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  for (const word of content.split(' ')) {
    res.write(`data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: `${word} ` }, finish_reason: null }] })}\n\n`);
  }
  // Fusebox asks for the usage chunk (stream_options.include_usage) and keeps it from the agent.
  if (body.stream_options?.include_usage) {
    res.write(`data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices: [], usage: DEMO_USAGE })}\n\n`);
  }
  res.end('data: [DONE]\n\n');
};

/**
 * A tiny MCP server (JSON-RPC over HTTP, answered as JSON, stateless): `tools/list`, and `tools/call` of `lookup`
 * (works) and `charge` (always fails the way MCP tools fail: `isError: true` inside an HTTP 200).
 */
const mcp = (provider: FakeProvider, res: ServerResponse, raw: string): void => {
  const msg = JSON.parse(raw) as { id?: number | string; method: string; params?: { name?: string } };
  const answer = (result: unknown) => json(res, 200, { jsonrpc: '2.0', id: msg.id ?? null, result });
  if (msg.method === 'initialize') return answer({ protocolVersion: '2025-06-18', capabilities: { tools: {} }, serverInfo: { name: 'demo-tools', version: '1.0.0' } });
  if (msg.method === 'tools/list') return answer({ tools: [{ name: 'lookup', inputSchema: { type: 'object' } }, { name: 'charge', inputSchema: { type: 'object' } }] });
  if (msg.method !== 'tools/call') return json(res, 200, { jsonrpc: '2.0', id: msg.id ?? null, error: { code: -32601, message: `no method ${msg.method}` } });
  const name = msg.params?.name ?? '';
  provider.seen[`mcp:${name}`] = (provider.seen[`mcp:${name}`] ?? 0) + 1;
  if (name === 'charge') return answer({ content: [{ type: 'text', text: 'payment backend is down' }], isError: true });
  answer({ content: [{ type: 'text', text: `found it (${name})` }] });
};

const tool = (provider: FakeProvider, req: IncomingMessage, res: ServerResponse): void => {
  const name = (req.url ?? '/').split('?')[0]!.slice('/tools/'.length);
  provider.seen[`tool:${name}`] = (provider.seen[`tool:${name}`] ?? 0) + 1;
  if (provider.toolFailures > 0) {
    provider.toolFailures--;
    return json(res, 503, { error: 'search backend warming up' });
  }
  json(res, 200, { tool: name, results: ['fusebox.dev', 'example.org'] });
};

/**
 * A fake OpenAI-style provider, a tool API and an MCP server on 127.0.0.1: `POST /v1/chat/completions` (JSON and SSE,
 * with usage), `GET /tools/<name>` and `POST /mcp`. Nothing here leaves the machine.
 */
export const startFakeProvider = async (): Promise<FakeProvider> => {
  const sockets = new Set<Socket>();
  const provider: FakeProvider = { url: '', outage: false, toolFailures: 0, seen: {}, close: async () => undefined };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const path = (req.url ?? '/').split('?')[0]!;
      if (req.method === 'POST' && path === '/v1/chat/completions') return chat(provider, res, Buffer.concat(chunks).toString('utf8'));
      if (path.startsWith('/tools/')) return tool(provider, req, res);
      if (req.method === 'POST' && path === '/mcp') return mcp(provider, res, Buffer.concat(chunks).toString('utf8'));
      json(res, 404, { error: `the demo provider has no ${path}` });
    });
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  provider.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  provider.close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return provider;
};
