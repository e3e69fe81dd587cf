import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { BadRequestError, HeadersTooLargeError } from '../errors.js';
import type { LiveStats } from '../telemetry/live.js';
import type { Metrics } from '../telemetry/metrics.js';
import { http } from '../net/node-http.js';
import { endWithError, sendError } from './error-answer.js';
import { FORWARD_TARGET, type ForwardRequest } from './proxy.js';

export interface ProxyServerDeps {
  maxHeaderBytes: number;
  metrics: Metrics;
  /** The recent-refusals ring of `/admin/status`. */
  live: Pick<LiveStats, 'refused'>;
  /** One proxied call (src/http/proxy.ts). */
  handle: (req: ForwardRequest, res: ServerResponse) => void;
  /** `CONNECT host:port` (src/http/connect.ts). */
  connect: (req: IncomingMessage, socket: Duplex, head: Buffer) => void;
}

/**
 * A request Node's parser refused (431 for a header section over `limits.maxHeaderBytes`, 400 otherwise), answered
 * as JSON on the raw socket. Shared by the proxy port and the requests inside intercepted tunnels.
 */
export const clientErrorAnswer =
  (maxHeaderBytes: number, metrics: Metrics, live: Pick<LiveStats, 'refused'>) =>
  (err: Error & { code?: string }, socket: Duplex): void => {
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const e =
      err.code === 'HPE_HEADER_OVERFLOW'
        ? new HeadersTooLargeError(`request headers are larger than the limit of ${maxHeaderBytes} bytes (limits.maxHeaderBytes)`)
        : new BadRequestError(`malformed HTTP request: ${err.code ?? err.message}`);
    metrics.refusals.labels(e.code).inc();
    live.refused({ code: e.code, status: e.statusCode, route: undefined, message: e.message, requestId: undefined, mode: undefined });
    endWithError(socket, e);
  };

/**
 * The proxy listener: plain `node:http`. Every request is one proxied call whose answer Fusebox streams itself, and
 * routing is the allow-list's (by path prefix, or by host and port for an absolute-form target): there is nothing
 * for a web framework's router, hooks or reply to do here (fastify serves the admin API). Measured in bench/.
 */
export const createProxyServer = (deps: ProxyServerDeps): Server => {
  const server = http.createServer(
    {
      maxHeaderSize: deps.maxHeaderBytes,
      noDelay: true,
      // LLM answers stream for minutes; the agent's own request is bounded by the body limit and headersTimeout.
      requestTimeout: 0,
      // Agents reuse connections between calls (the SDKs' pools): longer than their idle timeouts' usual 60 s.
      keepAliveTimeout: 72_000,
    },
    (req: IncomingMessage, res: ServerResponse) => {
      const url = req.url ?? '/';
      // HTTP_PROXY mode sends absolute-form targets (`GET http://host/x`): routed by host and port.
      if (!url.startsWith('/')) {
        let target: URL;
        try {
          target = new URL(url);
        } catch {
          const err = new BadRequestError(`the request target ${JSON.stringify(url.slice(0, 128))} is neither a path nor an absolute http:// URL`);
          deps.metrics.refusals.labels(err.code).inc();
          deps.live.refused({ code: err.code, status: err.statusCode, route: undefined, message: err.message, requestId: undefined, mode: 'proxy' });
          sendError(res, err, {}, true);
          return;
        }
        (req as ForwardRequest)[FORWARD_TARGET] = { url: target, mode: 'proxy' };
      }
      deps.handle(req as ForwardRequest, res);
    },
  );
  server.on('clientError', clientErrorAnswer(deps.maxHeaderBytes, deps.metrics, deps.live));
  server.on('connect', deps.connect);
  return server;
};
