import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { metricValue, startFusebox, type RunningFusebox } from '../helpers/fusebox.js';

/**
 * A real MCP server (Streamable HTTP, stateless: a fresh server and transport per HTTP request, as the SDK's
 * stateless example does) with two tools: `lookup` works, `charge` always fails (it throws, which the SDK turns
 * into a `result` with `isError: true` inside an HTTP 200).
 */
const startMcpServer = async () => {
  const ran = { lookup: 0, charge: 0 };
  const server: Server = createServer((req, res) => {
    const mcp = new McpServer({ name: 'test-tools', version: '1.0.0' });
    mcp.registerTool('lookup', { description: 'always works' }, async () => {
      ran.lookup += 1;
      return { content: [{ type: 'text', text: 'found it' }] };
    });
    mcp.registerTool('charge', { description: 'always fails' }, async () => {
      ran.charge += 1;
      throw new Error('payment backend is down');
    });
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => {
      void transport.close();
      void mcp.close();
    });
    mcp
      .connect(transport)
      .then(() => transport.handleRequest(req, res))
      .catch(() => res.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, ran, close: () => new Promise<void>((r) => server.close(() => r())) };
};

describe('per-tool circuit breakers on a real MCP server, called by the MCP SDK client through Fusebox', () => {
  let mcpServer: Awaited<ReturnType<typeof startMcpServer>>;
  let fb: RunningFusebox;
  let client: Client;

  beforeAll(async () => {
    mcpServer = await startMcpServer();
    fb = await startFusebox({
      routes: [
        {
          name: 'tools',
          provider: 'mcp',
          match: { pathPrefix: '/tools' },
          upstream: { url: `${mcpServer.url}/mcp` },
          breaker: { consecutiveFailures: 3, resetMs: 60_000 },
        },
      ],
    });
    client = new Client({ name: 'test-agent', version: '1.0.0' });
    await client.connect(new StreamableHTTPClientTransport(new URL(`${fb.proxyUrl}/tools`)));
  });
  afterAll(async () => {
    await client?.close();
    await fb?.stop();
    await mcpServer?.close();
  });

  it('opens only the failing tool’s breaker (isError inside a 200 counts), while the other tool keeps working', async () => {
    const tools = await client.listTools();
    expect(tools.tools.map((t) => t.name).sort()).toEqual(['charge', 'lookup']);

    for (let i = 0; i < 3; i++) {
      const failed = await client.callTool({ name: 'charge', arguments: {} });
      expect(failed.isError).toBe(true);
      const ok = await client.callTool({ name: 'lookup', arguments: {} });
      expect(ok.isError).toBeFalsy();
    }
    expect(mcpServer.ran).toEqual({ lookup: 3, charge: 3 });

    // The breaker answers 503 CIRCUIT_OPEN itself: the SDK sees an error and the tool is not run again.
    const rejected = await client.callTool({ name: 'charge', arguments: {} }).catch((e: unknown) => e);
    expect(rejected).toBeInstanceOf(Error);
    expect(String((rejected as Error).message)).toMatch(/503|CIRCUIT_OPEN/);
    expect(mcpServer.ran.charge).toBe(3);

    const still = await client.callTool({ name: 'lookup', arguments: {} });
    expect(still.content).toEqual([{ type: 'text', text: 'found it' }]);
    expect(mcpServer.ran.lookup).toBe(4);

    const text = await fb.metricsText();
    expect(metricValue(text, 'fusebox_breaker_state', { route: 'tools', key: 'charge' })).toBe(2);
    expect(text).toMatch(/fusebox_breaker_state\{route="tools",key="lookup"\} 0/);
    expect(metricValue(text, 'fusebox_breaker_rejections_total', { route: 'tools' })).toBe(1);
    const transition = fb.logs.find((l) => l.msg === 'breaker transition' && l.key === 'charge');
    expect(transition).toMatchObject({ route: 'tools', from: 'closed', to: 'open', lastFailure: 'tool_error' });
    expect(fb.logs.some((l) => l.msg === 'breaker transition' && l.key === 'lookup')).toBe(false);
  });
});
