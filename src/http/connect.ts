import { STATUS_CODES, type IncomingMessage } from 'node:http';
import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { DestinationNotAllowedError, ProxyLoopError, ShuttingDownError, UpstreamConnectError, UpstreamTimeoutError, type ProxyError } from '../errors.js';
import type { BuiltRoute } from '../pipeline/build.js';
import type { Metrics } from '../telemetry/metrics.js';
import { errorBody } from './respond.js';
import type { ProxyState } from './proxy.js';
import type { RouteTable } from './route-table.js';

export interface ConnectDeps {
  routes: RouteTable<BuiltRoute>;
  metrics: Metrics;
  logger: Logger;
  state: ProxyState;
  /** Open tunnels, so a drain can wait for them and the end of the grace period can cut them. */
  tunnels: Set<Duplex>;
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|localhost|::1|0\.0\.0\.0|::)$/i;

/** `host:port` or `[v6]:port` → parts; undefined when malformed. */
export const parseAuthority = (authority: string): { host: string; port: number } | undefined => {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(authority);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: (m[1] ?? m[2])!, port };
};

const refuseTunnel = (socket: Duplex, err: ProxyError): void => {
  const body = JSON.stringify(errorBody(err, { requestId: '-' }));
  socket.end(
    `HTTP/1.1 ${err.statusCode} ${STATUS_CODES[err.statusCode] ?? 'Error'}\r\n` +
      `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-fusebox-error: ${err.code}\r\nconnection: close\r\n\r\n${body}`,
  );
};

/**
 * HTTPS_PROXY mode: `CONNECT host:port` opens a TCP tunnel, only to hosts and ports a route allows. Fusebox sees
 * only bytes here (the TLS is end to end between agent and destination), so the policies that need the request
 * (retries, budgets) do not apply: the tunnel is counted (connect time, bytes, errors) per route. TLS interception
 * would plug in here, by terminating TLS on `clientSocket` and feeding requests into the route's pipeline.
 */
export const handleConnect = (req: IncomingMessage, clientSocket: Duplex, head: Buffer, deps: ConnectDeps): void => {
  const m = deps.metrics;
  clientSocket.on('error', () => clientSocket.destroy());
  const target = parseAuthority(req.url ?? '');
  if (!deps.state.accepting) {
    refuseTunnel(clientSocket, new ShuttingDownError('Fusebox is shutting down'));
    return;
  }
  if (target === undefined) {
    m.tunnels.labels('', 'refused').inc();
    refuseTunnel(clientSocket, new DestinationNotAllowedError('CONNECT needs host:port', { destination: req.url }));
    return;
  }
  if (LOOPBACK.test(target.host) && deps.state.ownPorts.has(target.port)) {
    m.tunnels.labels('', 'refused').inc();
    refuseTunnel(clientSocket, new ProxyLoopError(`refusing to tunnel to Fusebox's own port ${target.port}`));
    return;
  }
  const built = deps.routes.forConnect(target.host, target.port);
  if (built === undefined) {
    m.tunnels.labels('', 'refused').inc();
    deps.logger.info({ destination: req.url }, 'tunnel refused: destination not allowed');
    refuseTunnel(
      clientSocket,
      new DestinationNotAllowedError(`tunnel to ${req.url} is not allowed: no route lists this host with this port (match.hosts, match.connectPorts)`, {
        destination: req.url,
      }),
    );
    return;
  }
  const route = built.config.name;
  const connectMs = built.config.timeouts.connectMs;
  const startedHr = process.hrtime.bigint();
  const upstream: Socket = connect({ host: target.host, port: target.port, timeout: connectMs || undefined });
  let opened = false;
  let up = 0;
  let down = 0;

  const onConnectFailure = (err: ProxyError) => {
    m.tunnels.labels(route, 'connect_failed').inc();
    deps.logger.warn({ route, destination: req.url, code: err.code, error: err.message }, 'tunnel connect failed');
    upstream.destroy();
    refuseTunnel(clientSocket, err);
  };
  upstream.once('timeout', () => {
    if (!opened) onConnectFailure(new UpstreamTimeoutError(`connecting to ${req.url} timed out`, { phase: 'connect', route }));
  });
  upstream.once('connect', () => {
    opened = true;
    upstream.setTimeout(0);
    m.tunnelConnectSeconds.labels(route).observe(Number(process.hrtime.bigint() - startedHr) / 1e9);
    m.tunnels.labels(route, 'opened').inc();
    m.tunnelsOpen.labels(route).inc();
    deps.tunnels.add(clientSocket);
    clientSocket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    if (head.length > 0) upstream.write(head);
    clientSocket.on('data', (c: Buffer) => (up += c.length));
    upstream.on('data', (c: Buffer) => (down += c.length));
    clientSocket.pipe(upstream);
    upstream.pipe(clientSocket);
  });
  upstream.on('error', (err: NodeJS.ErrnoException) => {
    if (!opened) {
      onConnectFailure(new UpstreamConnectError(`cannot connect to ${req.url}: ${err.code ?? err.message}`, { route, errno: err.code }));
      return;
    }
    m.tunnels.labels(route, 'error').inc();
    clientSocket.destroy();
  });
  let closed = false;
  const close = () => {
    if (!opened) {
      upstream.destroy();
      return;
    }
    if (closed) return;
    closed = true;
    deps.tunnels.delete(clientSocket);
    m.tunnelsOpen.labels(route).dec();
    m.tunnelBytes.labels(route, 'upstream').inc(up + head.length);
    m.tunnelBytes.labels(route, 'downstream').inc(down);
    upstream.destroy();
    clientSocket.destroy();
    deps.logger.info({ route, destination: req.url, bytesUp: up + head.length, bytesDown: down, durationMs: Number(process.hrtime.bigint() - startedHr) / 1e6 }, 'tunnel closed');
  };
  clientSocket.once('close', close);
  upstream.once('close', close);
};
