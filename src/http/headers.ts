import type { IncomingHttpHeaders } from 'node:http';
import type { HeaderMap } from '../pipeline/types.js';

/**
 * Request headers that describe the agent→Fusebox connection, not the message (RFC 9110 §7.6.1), plus ones
 * undici refuses or sets itself (`host`, `expect`, `content-length` for buffered bodies is recomputed).
 */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-connection',
  'proxy-authorization',
  'proxy-authenticate',
  'host',
  'expect',
]);

/** Fusebox's own control headers: read here, never forwarded. */
export const CONTROL_PREFIX = 'x-fusebox-';

export interface ControlHeaders {
  /** `x-fusebox-workflow`: the workflow/task id budgets and call limits are kept per. */
  workflow?: string;
  /** `x-fusebox-fault`: fault-injection instructions (only honoured when the route allows header control). */
  fault?: string;
}

export interface SplitHeaders {
  headers: HeaderMap;
  control: ControlHeaders;
}

const MAX_CONTROL_VALUE = 256;

/**
 * The headers the agent's `Connection` header names as this hop's (RFC 9110 §7.6.1). Almost every client sends just
 * `keep-alive` or `close`, which name nothing beyond the hop-by-hop list: no set is made for those.
 */
const namedByConnection = (connection: string | undefined): Set<string> | undefined => {
  if (!connection) return undefined;
  const lower = connection.toLowerCase();
  if (lower === 'keep-alive' || lower === 'close') return undefined;
  return new Set(lower.split(',').map((s) => s.trim()));
};

/**
 * Copy the agent's headers for the upstream: drop hop-by-hop ones (and any header the `Connection` header names),
 * read and drop `x-fusebox-*`. Returns a fresh object the pipeline may change.
 */
export const splitRequestHeaders = (incoming: IncomingHttpHeaders): SplitHeaders => {
  const headers: HeaderMap = {};
  const control: ControlHeaders = {};
  const named = namedByConnection(incoming.connection);
  for (const name in incoming) {
    const value = incoming[name];
    if (value === undefined || HOP_BY_HOP.has(name) || named?.has(name)) continue;
    if (name.startsWith(CONTROL_PREFIX)) {
      const v = (Array.isArray(value) ? value[0] : value)?.slice(0, MAX_CONTROL_VALUE);
      if (name === 'x-fusebox-workflow' && v) control.workflow = v;
      else if (name === 'x-fusebox-fault' && v) control.fault = v;
      continue;
    }
    headers[name] = value;
  }
  return { headers, control };
};
