import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * Every metric Fusebox exports, declared in one list. Labels are bounded: route names and step names come from
 * the config, models from the price table (unknown → `other`), classes and outcomes from fixed sets. Never a
 * workflow id, a user, a path or a key.
 */
export const createMetrics = (opts: { defaultMetrics?: boolean } = {}) => {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix: 'fusebox_' });

  const m = {
    registry,

    // --- core (every call) ---
    requests: new Counter({
      name: 'fusebox_requests_total',
      help: 'Calls answered, by route, method, status class and outcome (success, upstream_error, failed, refused, aborted, stream_broken).',
      labelNames: ['route', 'method', 'code_class', 'outcome'] as const,
      registers: [registry],
    }),
    requestDuration: new Histogram({
      name: 'fusebox_request_duration_seconds',
      help: 'Time from request received to last response byte sent, through Fusebox (retries and fallbacks included).',
      labelNames: ['route'] as const,
      // LLM calls run from 100 ms to minutes; tool calls from 1 ms.
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600],
      registers: [registry],
    }),
    upstreamAttempts: new Counter({
      name: 'fusebox_upstream_attempts_total',
      help: 'Requests sent upstream (each retry and fallback hop is one), by route, upstream target and result (status class or error code).',
      labelNames: ['route', 'upstream', 'result'] as const,
      registers: [registry],
    }),
    inflight: new Gauge({
      name: 'fusebox_inflight_requests',
      help: 'Calls in progress (until their last response byte).',
      labelNames: ['route'] as const,
      registers: [registry],
    }),
    requestBytes: new Counter({
      name: 'fusebox_request_bytes_total',
      help: 'Request body bytes received from agents.',
      labelNames: ['route'] as const,
      registers: [registry],
    }),
    responseBytes: new Counter({
      name: 'fusebox_response_bytes_total',
      help: 'Response body bytes sent to agents.',
      labelNames: ['route'] as const,
      registers: [registry],
    }),
    refusals: new Counter({
      name: 'fusebox_refusals_total',
      help: 'Requests Fusebox answered itself without reaching a route (no route, not allowed, too large, loop).',
      labelNames: ['code'] as const,
      registers: [registry],
    }),

    // --- CONNECT tunnels (HTTPS_PROXY) ---
    tunnels: new Counter({
      name: 'fusebox_tunnels_total',
      help: 'CONNECT tunnels, by route and outcome (opened, refused, connect_failed, error).',
      labelNames: ['route', 'outcome'] as const,
      registers: [registry],
    }),
    tunnelConnectSeconds: new Histogram({
      name: 'fusebox_tunnel_connect_seconds',
      help: 'Time to open the upstream TCP connection of a CONNECT tunnel.',
      labelNames: ['route'] as const,
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    tunnelBytes: new Counter({
      name: 'fusebox_tunnel_bytes_total',
      help: 'Bytes carried by CONNECT tunnels, by direction (upstream = agent to destination).',
      labelNames: ['route', 'direction'] as const,
      registers: [registry],
    }),
    tunnelsOpen: new Gauge({
      name: 'fusebox_tunnels_open',
      help: 'CONNECT tunnels currently open.',
      labelNames: ['route'] as const,
      registers: [registry],
    }),

    // --- lifecycle ---
    ready: new Gauge({
      name: 'fusebox_ready',
      help: '1 while the sidecar accepts traffic, 0 while starting or draining.',
      registers: [registry],
    }),
    configInfo: new Gauge({
      name: 'fusebox_config_info',
      help: 'Always 1; labels describe the loaded config.',
      labelNames: ['routes', 'store'] as const,
      registers: [registry],
    }),
  };
  return m;
};

export type Metrics = ReturnType<typeof createMetrics>;

/** Methods outside this set are one label value, so a client cannot mint label values. */
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
export const methodLabel = (method: string): string => (KNOWN_METHODS.has(method) ? method : 'OTHER');
export const codeClass = (status: number | undefined): string => (status === undefined ? 'none' : `${Math.floor(status / 100)}xx`);
