import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { ProxyAgent, type Dispatcher } from 'undici';

/** Timeouts of every load client: keep-alive longer than any phase, so a connection is opened once and reused. */
export const CLIENT_TIMEOUTS = { keepAliveTimeout: 60_000, headersTimeout: 10_000, bodyTimeout: 10_000 } as const;

/**
 * How the load generator reaches a target when it does not send straight to the target's origin with a Pool (the
 * default of `openLoop` and the closed loop).
 */
export interface Via {
  /** Origin the requests name, e.g. `https://bench.test`. */
  origin: string;
  /** A fresh keep-alive dispatcher of up to `connections` connections per origin; whoever makes it destroys it. */
  dispatcher(connections: number): Dispatcher;
  /** Shown in the report. */
  label: string;
}

/**
 * What an agent with only `HTTPS_PROXY` set does: undici's ProxyAgent opens `CONNECT host:443` to Fusebox and speaks
 * TLS inside the tunnel, trusting the pod CA (`ca.crt`). Each connection of its pool is one tunnel and one TLS
 * handshake; requests then reuse it (keep-alive), like the Pool of the base-URL rows.
 */
export const viaHttpsProxy = (proxyUrl: string, caPem: string, host: string): Via => ({
  origin: `https://${host}`,
  dispatcher: (connections) => new ProxyAgent({ uri: proxyUrl, requestTls: { ca: caPem }, connections, ...CLIENT_TIMEOUTS }),
  label: `HTTPS_PROXY (undici ProxyAgent: CONNECT ${host}:443 + TLS to the pod CA's leaf)`,
});

/**
 * Counts the connections undici opens to `hostname` (for a tunnel: after its TLS handshake) until the returned stop
 * function is called, which gives the count. Only the intercepted row subscribes: a subscriber costs nothing per
 * request, but the other rows are left exactly as they were measured before.
 */
export const countConnections = (hostname: string): (() => number) => {
  let n = 0;
  const onConnected = (message: unknown) => {
    if ((message as { connectParams?: { hostname?: string } }).connectParams?.hostname === hostname) n += 1;
  };
  subscribe('undici:client:connected', onConnected);
  return () => {
    unsubscribe('undici:client:connected', onConnected);
    return n;
  };
};
