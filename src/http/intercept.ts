import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket, type SecureContext } from 'node:tls';
import type { Logger } from 'pino';
import type { InterceptConfig } from '../config/schema.js';
import { BadRequestError, MisdirectedRequestError, type ProxyError } from '../errors.js';
import { bareHost, normalizeHost, type Authority } from '../net/address.js';
import type { LiveStats } from '../telemetry/live.js';
import { http } from '../net/node-http.js';
import type { Metrics } from '../telemetry/metrics.js';
import { counterSeries, gaugeSeries, type CounterSeries, type GaugeSeries } from '../telemetry/fast-metrics.js';
import { FORWARD_TARGET, type ForwardRequest } from './proxy.js';
import { sendError } from './error-answer.js';

/** What the interceptor needs of the pod CA (src/intercept/ca.ts). */
export interface LeafSource {
  contextFor(host: string): Promise<SecureContext>;
}

/** The tunnel a request arrived through: its requests may only name this destination. */
interface Tunnel {
  authority: Authority;
  scheme: 'http' | 'https';
  /** The CONNECT route's name (labels the tunnel's own metrics). */
  route: string;
  /** Requests served so far on this tunnel. */
  requests: number;
  /** `https://host[:port]`: what a request's path is appended to. */
  origin: string;
  /**
   * The `Host` values that name `authority` as written in canonical form (`api.example.com`, and with the default
   * port `api.example.com:443`): most requests send one of them and skip the parse. Any other spelling is parsed.
   */
  hostHeaders: readonly string[];
}

const newTunnel = (authority: Authority, scheme: 'http' | 'https', route: string): Tunnel => {
  const hostPort = `${authority.host}:${authority.port}`;
  const defaultPort = authority.port === (scheme === 'https' ? 443 : 80);
  return {
    authority,
    scheme,
    route,
    requests: 0,
    origin: `${scheme}://${defaultPort ? authority.host : hostPort}`,
    hostHeaders: defaultPort ? [authority.host, hostPort] : [hostPort],
  };
};

export interface InterceptorDeps {
  config: InterceptConfig;
  maxHeaderBytes: number;
  /** Undefined when no route intercepts TLS (no CA was made): TLS tunnels are then refused. */
  ca: LeafSource | undefined;
  metrics: Metrics;
  /** The recent-refusals ring of `/admin/status`. */
  live: Pick<LiveStats, 'refused'>;
  logger: Logger;
  /** Serves one request of a tunnel: the same handler as every other proxied call. */
  handle: (req: ForwardRequest, res: ServerResponse) => void;
  /** Writes a raw HTTP error on a socket whose request could not be parsed. */
  rawError: (err: Error & { code?: string }, socket: Duplex) => void;
}

/** TLS record type 22 (handshake): the first byte of every ClientHello (RFC 8446 §5.1). */
const TLS_HANDSHAKE = 0x16;

/** HTTP/1.1 only, as ALPN's wire list (RFC 7301 §3.1): the requests go through Node's HTTP/1 parser. Made once, not per tunnel. */
const ALPN_HTTP1 = Buffer.from([8, ...Buffer.from('http/1.1', 'latin1')]);

const CONNECTION_ESTABLISHED = Buffer.from('HTTP/1.1 200 Connection Established\r\n\r\n', 'latin1');

/** OpenSSL alerts a client sends when it does not accept the certificate it was shown. */
const REJECTED_CERTIFICATE = /ALERT_(UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_UNKNOWN|UNSUPPORTED_CERTIFICATE|CERTIFICATE_REVOKED|ACCESS_DENIED)/;

const host = (t: Authority): string => bareHost(t.host);

/**
 * Serves the requests inside CONNECT tunnels to routed hosts, so that agents which only set HTTPS_PROXY get every
 * policy. The first byte the client sends tells TLS (a ClientHello) from plain HTTP (Node's fetch tunnels http://
 * URLs with `CONNECT host:80`), as mitmproxy does: no port needs to be marked. TLS is terminated with a leaf for the
 * CONNECT host minted from the pod CA; the decrypted HTTP/1.1 requests go through a Node HTTP server that never
 * listens (sockets are handed to it), so parsing, keep-alive and header limits are Node's, as on the proxy port.
 */
export class Interceptor {
  private readonly server: Server;
  private readonly tunnelOf = new WeakMap<Duplex, Tunnel>();
  /** Client sockets of open intercepted tunnels: cut when a drain ends (their calls are counted in flight meanwhile). */
  private readonly sockets = new Set<Socket>();
  /** Rejections are logged once per host and reason: a pinned client retries and would flood the log. */
  private readonly warned = new Set<string>();
  /**
   * Each route's tunnel series, found once: prom-client's `labels()` hashes the label set and allocates on every
   * update (~1 KiB a tunnel for its three). Failures, which are rare, keep the plain `labels()` calls.
   */
  private readonly series = new Map<string, { open: GaugeSeries; opened: CounterSeries }>();

  constructor(private readonly deps: InterceptorDeps) {
    // As the proxy port (src/http/proxy-server.ts): streamed answers run for minutes, and an agent keeps its tunnel
    // (and its TLS session) between calls; Node's 5 s keep-alive default would make it reconnect and handshake again.
    this.server = http.createServer({ maxHeaderSize: deps.maxHeaderBytes, noDelay: true, requestTimeout: 0, keepAliveTimeout: 72_000 }, (req, res) =>
      this.onRequest(req, res),
    );
    this.server.on('clientError', (err: Error & { code?: string }, socket: Duplex) => {
      const t = this.tunnelOf.get(socket);
      deps.logger.info({ route: t?.route, destination: t && `${t.authority.host}:${t.authority.port}`, error: err.code ?? err.message }, 'intercepted tunnel: malformed HTTP request');
      deps.rawError(err, socket);
    });
  }

  /** Take over a tunnel the CONNECT handler accepted: answer 200, then serve what the client sends inside. */
  accept(socket: Socket, head: Buffer, authority: Authority, route: string): void {
    const m = this.deps.metrics;
    socket.write(CONNECTION_ESTABLISHED);
    this.sockets.add(socket);
    const open = this.seriesOf(route).open;
    open.inc();
    socket.on('close', () => {
      this.sockets.delete(socket);
      open.dec();
    });
    const dispatch = (first: Buffer) => {
      socket.setTimeout(0);
      socket.pause();
      socket.unshift(first);
      if (first[0] === TLS_HANDSHAKE) void this.serveTls(socket, authority, route);
      else this.serve(socket, newTunnel(authority, 'http', route));
    };
    if (head.length > 0) return dispatch(head);
    // The client speaks first in both HTTP and TLS; a tunnel that stays silent holds a socket for nothing.
    socket.setTimeout(this.deps.config.handshakeTimeoutMs, () => {
      m.tunnels.labels(route, 'intercept', 'handshake_timeout').inc();
      socket.destroy();
    });
    socket.once('data', dispatch);
  }

  /** End of a drain: the calls inside have finished (or run out of grace); idle keep-alive tunnels are cut. */
  closeAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  private async serveTls(socket: Socket, authority: Authority, route: string): Promise<void> {
    const m = this.deps.metrics;
    const fail = (reason: string, message: string, err?: unknown) => {
      m.tunnels.labels(route, 'intercept', 'tls_failed').inc();
      this.failed(route, authority, reason, message, err);
      socket.destroy();
    };
    const ca = this.deps.ca;
    if (ca === undefined) return fail('no_ca', 'intercepted tunnel: TLS inside a tunnel but no pod CA was made; this is a bug, please report it');
    let context: SecureContext;
    try {
      context = await ca.contextFor(host(authority));
    } catch (err) {
      return fail('not_allowed', `intercepted tunnel: cannot mint a certificate for ${host(authority)}: ${(err as Error).message}`, err);
    }
    if (socket.destroyed) return;
    let sniMismatch: string | undefined;
    const tls = new TLSSocket(socket, {
      isServer: true,
      secureContext: context,
      ALPNProtocols: ALPN_HTTP1,
      SNICallback: (servername, cb) => {
        // No SNI (an IP address) keeps the CONNECT host's leaf; a name must be the CONNECT host itself.
        if (normalizeHost(servername) === authority.host) return cb(null, context);
        sniMismatch = servername;
        cb(new Error(`SNI ${servername} does not match the CONNECT authority ${authority.host}:${authority.port}`));
      },
    });
    const tunnel = newTunnel(authority, 'https', route);
    let settled = false;
    // `on` with a flag rather than `once` (a wrapper per listener, per tunnel): the first error of the handshake is
    // the one counted; Node's own listener hears any later one.
    tls.on('error', (err: Error & { code?: string }) => {
      if (settled) return;
      settled = true;
      if (sniMismatch !== undefined) {
        return fail('sni_mismatch', `intercepted tunnel refused: the client asked for ${sniMismatch} inside a tunnel to ${authority.host}:${authority.port}`, err);
      }
      if (REJECTED_CERTIFICATE.test(err.code ?? '')) {
        return fail(
          'client_rejected_certificate',
          `client rejected Fusebox's certificate for ${host(authority)}: it does not trust the pod CA (NODE_EXTRA_CA_CERTS for Node, SSL_CERT_FILE / REQUESTS_CA_BUNDLE for OpenSSL runtimes, a truststore for the JVM) or it pins certificates (give this host a route with match.connect: tunnel)`,
          err,
        );
      }
      fail('tls_error', `intercepted tunnel: TLS handshake with the client failed (${err.code ?? err.message})`, err);
    });
    // Node's TLS client checks the certificate after its side of the handshake and, when it does not trust it, closes
    // without an alert: from here that is a tunnel closed during or right after the handshake, before any request.
    // ('close' comes once: `on` spares the `once` wrapper.)
    tls.on('close', () => {
      if (settled || tunnel.requests > 0) return;
      m.tunnels.labels(route, 'intercept', 'tls_failed').inc();
      this.failed(
        route,
        authority,
        'closed_without_request',
        `a client closed its tunnel to ${host(authority)} during or right after the TLS handshake, without a request: a Node client does so when it rejects Fusebox's certificate (set NODE_EXTRA_CA_CERTS to the pod CA, or give this host a route with match.connect: tunnel if it pins certificates)`,
      );
    });
    // A handshake the client abandons (a Node client that rejected the certificate closes before its Finished) is not
    // seen as an end by a TLS socket nobody reads yet: bound it, as tls.Server's handshakeTimeout does.
    tls.setTimeout(this.deps.config.handshakeTimeoutMs, () => tls.destroy());
    tls.once('secure', () => {
      tls.setTimeout(0);
      this.seriesOf(route).opened.inc();
      tls.removeAllListeners('error');
      tls.on('error', () => tls.destroy());
      this.serve(tls, tunnel);
    });
  }

  private seriesOf(route: string): { open: GaugeSeries; opened: CounterSeries } {
    let s = this.series.get(route);
    if (s === undefined) {
      const m = this.deps.metrics;
      this.series.set(route, (s = { open: gaugeSeries(m.tunnelsOpen, route), opened: counterSeries(m.tunnels, route, 'intercept', 'opened') }));
    }
    return s;
  }

  /** Count a failed intercepted tunnel; log it once per destination and reason (a rejecting client retries, and would flood the log). */
  private failed(route: string, authority: Authority, reason: string, message: string, err?: unknown): void {
    this.deps.metrics.interceptTlsFailures.labels(route, reason).inc();
    const key = `${authority.host}:${authority.port}|${reason}`;
    if (this.warned.has(key) || this.warned.size >= 10_000) return;
    this.warned.add(key);
    this.deps.logger.warn({ route, destination: `${authority.host}:${authority.port}`, reason, error: err instanceof Error ? err.message : undefined }, message);
  }

  private serve(socket: Duplex, tunnel: Tunnel): void {
    if (tunnel.scheme === 'http') this.seriesOf(tunnel.route).opened.inc();
    this.tunnelOf.set(socket, tunnel);
    this.server.emit('connection', socket);
    socket.resume();
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const tunnel = this.tunnelOf.get(req.socket);
    const refuse = (err: ProxyError) => {
      this.deps.metrics.refusals.labels(err.code).inc();
      this.deps.live.refused({ code: err.code, status: err.statusCode, route: tunnel?.route, message: err.message, requestId: undefined, mode: 'intercept' });
      sendError(res, err, {}, true);
    };
    if (tunnel === undefined) return refuse(new BadRequestError('request on a socket that is not an intercepted tunnel'));
    tunnel.requests += 1;
    const { authority } = tunnel;
    const url = req.url ?? '';
    if (!url.startsWith('/')) {
      return refuse(new BadRequestError(`inside a tunnel to ${authority.host}:${authority.port}, requests use a path ("GET /v1/..."), not ${JSON.stringify(url.slice(0, 64))}`));
    }
    if (!namesTunnel(req.headers.host, tunnel)) {
      return refuse(
        new MisdirectedRequestError(
          `this tunnel goes to ${authority.host}:${authority.port}; a request inside it for Host ${JSON.stringify(req.headers.host ?? '')} is refused (open a tunnel to that host instead)`,
          { destination: `${authority.host}:${authority.port}`, host: req.headers.host },
        ),
      );
    }
    const forward = req as ForwardRequest;
    forward[FORWARD_TARGET] = { url: new URL(tunnel.origin + url), mode: 'intercept' };
    this.deps.handle(forward, res);
  }
}

/** Whether `Host` names the tunnel's own destination, in any spelling (case, IDN, explicit default port). */
const namesTunnel = (value: string | undefined, tunnel: Tunnel): boolean => {
  if (value === undefined) return false;
  if (tunnel.hostHeaders.includes(value)) return true;
  const named = hostHeaderAuthority(value, tunnel.scheme);
  return named !== undefined && named.host === tunnel.authority.host && named.port === tunnel.authority.port;
};

/** `Host: api.example.com[:port]` → normalized host and port (the scheme's port when none is written). */
const hostHeaderAuthority = (value: string | undefined, scheme: 'http' | 'https'): Authority | undefined => {
  if (value === undefined) return undefined;
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d{1,5}))?$/.exec(value);
  if (!m) return undefined;
  const host = normalizeHost(m[1]!);
  if (host === undefined) return undefined;
  return { host, port: m[2] !== undefined ? Number(m[2]) : scheme === 'https' ? 443 : 80 };
};
