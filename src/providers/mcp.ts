import { parseJsonObject } from './request.js';
import { isRecord } from './usage.js';

/**
 * The tool a single MCP JSON-RPC 2.0 `tools/call` request invokes (`params.name`), for per-tool breakers.
 * Undefined for any other method, a batch (array) body, or a body that is not JSON.
 */
export const mcpToolName = (body: Buffer | undefined): string | undefined => {
  // Most MCP traffic is not a tool call; skip the parse for it. (`\/` is a legal JSON escape of `/`.)
  if (body === undefined || !(body.includes('tools/call') || body.includes('tools\\/call'))) return undefined;
  const msg = parseJsonObject(body);
  if (msg === undefined || msg.jsonrpc !== '2.0' || msg.method !== 'tools/call') return undefined;
  const name = isRecord(msg.params) ? msg.params.name : undefined;
  return typeof name === 'string' && name !== '' ? name : undefined;
};
