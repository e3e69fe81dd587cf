import type { IncomingMessage } from 'node:http';
import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { DestinationNotAllowedError, ProxyLoopError, ShuttingDownError, UpstreamConnectError, UpstreamTimeoutError, type ProxyError } from '../errors.js';
import type { BuiltRoute } from '../pipeline/build.js';
import type { LiveStats } from '../telemetry/live.js';
import type { Metrics } from '../telemetry/metrics.js';
import { endWithError } from './error-answer.js';
import type { ProxyState } from './proxy.js';
import type { RouteTable } from './route-table.js';
import type { Interceptor } from './intercept.js';
import { bareHost, isLocalHost, parseConnectAuthority, type Authority } from '../net/address.js';

export interface ConnectDeps {
  routes: RouteTable<BuiltRoute>;
  metrics: Metrics;
  /** The recent-refusals ring of `/admin/status`. */
  live: Pick<LiveStats, 'refused'>;
  logger: Logger;
  state: ProxyState;
  /** Open spliced tunnels, so a drain can wait for them and the end of the grace period can cut them. */
  tunnels: Set<Duplex>;
  /** Serves tunnels of `intercept` routes. */
  interceptor: Interceptor;
}


/**
 * HTTPS_PROXY mode: `CONNECT host:port`, only to a host and port a route lists. A route in `intercept` mode (the
 * default) has its tunnels served by Fusebox (src/http/intercept.ts): every policy applies to the requests inside.
 * A route in `tunnel` mode gets the bytes spliced end to end: only the tunnel is counted (connect time, bytes, errors).
 */
export const handleConnect = (req: IncomingMessage, clientSocket: Duplex, head: Buffer, deps: ConnectDeps): void => {
  const m = deps.metrics;
  const refuse = (err: ProxyError) => {
    m.tunnels.labels('', '', 'refused').inc();
    deps.live.refused({ code: err.code, status: err.statusCode, route: undefined, message: err.message, requestId: undefined, mode: 'connect' });
    endWithError(clientSocket, err);
  };
  clientSocket.on('error', () => clientSocket.destroy());
  const target = parseConnectAuthority(req.url ?? '');
  if (!deps.state.accepting) {
    endWithError(clientSocket, new ShuttingDownError('Fusebox is shutting down'));
    return;
  }
  if (target === undefined) {
    refuse(new DestinationNotAllowedError('CONNECT needs host:port', { destination: req.url }));
    return;
  }
  const destination = `${target.host}:${target.port}`;
  if (isLocalHost(target.host) && deps.state.ownPorts.has(target.port)) {
    refuse(new ProxyLoopError(`refusing to tunnel to Fusebox's own port ${target.port}`));
    return;
  }
  const built = deps.routes.forConnect(target.host, target.port);
  if (built === undefined) {
    deps.logger.info({ destination }, 'tunnel refused: destination not allowed');
    refuse(
      new DestinationNotAllowedError(`tunnel to ${destination} is not allowed: no route lists this host and port (match.hosts; a host without a port allows 80 and 443)`, {
        destination,
      }),
    );
    return;
  }
  if (built.config.match.connect === 'intercept') {
    deps.interceptor.accept(clientSocket as Socket, head, target, built.config.name);
    return;
  }
  splice(clientSocket, head, target, built, deps);
};

/** `tunnel` mode: a TCP connection to the destination, bytes copied both ways, counted. */
const splice = (clientSocket: Duplex, head: Buffer, target: Authority, built: BuiltRoute, deps: ConnectDeps): void => {
  const m = deps.metrics;
  const destination = `${target.host}:${target.port}`;
  const route = built.config.name;
  const connectMs = built.config.timeouts.connectMs;
  const startedHr = process.hrtime.bigint();
  const upstream: Socket = connect({ host: bareHost(target.host), port: target.port, timeout: connectMs || undefined });
  let opened = false;
  let up = 0;
  let down = 0;

  const onConnectFailure = (err: ProxyError) => {
    m.tunnels.labels(route, 'tunnel', 'connect_failed').inc();
    deps.logger.warn({ route, destination: destination, code: err.code, error: err.message }, 'tunnel connect failed');
    upstream.destroy();
    endWithError(clientSocket, err);
  };
  upstream.once('timeout', () => {
    if (!opened) onConnectFailure(new UpstreamTimeoutError(`connecting to ${destination} timed out`, { phase: 'connect', route }));
  });
  upstream.once('connect', () => {
    opened = true;
    upstream.setTimeout(0);
    m.tunnelConnectSeconds.labels(route).observe(Number(process.hrtime.bigint() - startedHr) / 1e9);
    m.tunnels.labels(route, 'tunnel', 'opened').inc();
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
      onConnectFailure(new UpstreamConnectError(`cannot connect to ${destination}: ${err.code ?? err.message}`, { route, errno: err.code }));
      return;
    }
    m.tunnels.labels(route, 'tunnel', 'error').inc();
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
    deps.logger.info({ route, destination: destination, bytesUp: up + head.length, bytesDown: down, durationMs: Number(process.hrtime.bigint() - startedHr) / 1e6 }, 'tunnel closed');
  };
  clientSocket.once('close', close);
  upstream.once('close', close);
};
