import { join } from 'node:path';
import { IMAGE_ENV, POD_LIMIT_MIB } from './pod.js';
import { canConnect, hasCommand, REPO_ROOT } from './proc.js';

/** Path prefix the proxies route on; the upstream sees the path without it. */
export const PREFIX = '/bench';

/**
 * Host the intercepted target's client calls (`https://bench.test/json`) through `HTTPS_PROXY`. Never resolved: the
 * client sends `CONNECT bench.test:443` to Fusebox, which forwards the path inside the tunnel as is to the upstream.
 */
export const INTERCEPT_HOST = 'bench.test';

/**
 * - `fusebox`: a Fusebox config; the targets (added latency, throughput, SSE, RSS) are checked on it.
 * - `floor`: the bare Node proxy; Fusebox's throughput target is a ratio to it. Exactly one.
 * - `reference`: shown for scale only (HAProxy).
 */
export type Role = 'fusebox' | 'floor' | 'reference';

export interface Target {
  name: string;
  role: Role;
  /** Child script in bench/servers/. */
  script: string;
  /** Environment of the child, given the upstream's URL. */
  env(upstreamUrl: string): Record<string, string>;
  /** Why this target cannot run here (missing binary, no Redis...), or undefined when it can. */
  unavailable?(): string | undefined;
  /**
   * How the load client reaches the target. `base-url` (default): straight to its port, under `PREFIX`.
   * `https-proxy`: `https://bench.test` through `HTTPS_PROXY` set to its port, TLS intercepted with the pod CA (the
   * run gives the child `FUSEBOX_CA_DIR` and trusts the `ca.crt` written there).
   */
  via?: 'base-url' | 'https-proxy';
  /**
   * Run the child under this memory limit, MiB, as a pod's limit: in a real cgroup where one can be made (Node sizes
   * V8's heap from it), else with the heap flags Node would derive from it (bench/pod.ts). Undefined: the host's RAM.
   */
  memoryLimitMiB?: number;
}

type RawConfig = Record<string, unknown>;

/** The image's environment (the Dockerfile's last-stage `ENV` lines, NODE_OPTIONS included): Fusebox is measured as it ships. */
export const PRODUCTION_ENV: Readonly<Record<string, string>> = { NODE_OPTIONS: '', ...IMAGE_ENV };

/** The one route every Fusebox target proxies through. Options a target adds go on top of it. */
export const benchRoute = (upstreamUrl: string, extra: RawConfig = {}): RawConfig => ({
  name: 'bench',
  match: { pathPrefix: PREFIX },
  upstream: { url: upstreamUrl },
  ...extra,
});

/**
 * A Fusebox config as it ships (every default, info-level access log), with `top` merged over the top level
 * and `route` over the route. Listen ports are forced to 0 by the child.
 */
export const fuseboxConfig = (upstreamUrl: string, { top = {}, route = {} }: { top?: RawConfig; route?: RawConfig } = {}): RawConfig => ({
  log: { level: 'info' },
  ...top,
  routes: [benchRoute(upstreamUrl, route)],
});

/** A Fusebox target: a name and a function from the upstream URL to its config. */
export const fusebox = (
  name: string,
  config: (upstreamUrl: string) => RawConfig,
  unavailable?: () => string | undefined,
  extraEnv: Record<string, string> | ((upstreamUrl: string) => Record<string, string>) = {},
  via: Target['via'] = 'base-url',
  memoryLimitMiB?: number,
): Target => ({
  name,
  role: 'fusebox',
  script: 'fusebox.ts',
  env: (up) => ({
    BENCH_CONFIG: JSON.stringify(config(up)),
    BENCH_FUSEBOX_DIST: join(REPO_ROOT, 'dist'),
    ...PRODUCTION_ENV,
    ...(typeof extraEnv === 'function' ? extraEnv(up) : extraEnv),
  }),
  ...(unavailable !== undefined ? { unavailable } : {}),
  via,
  ...(memoryLimitMiB !== undefined ? { memoryLimitMiB } : {}),
});

/**
 * An LLM route with caps: every call estimates, reserves in the store, meters the answer's usage and commits its
 * cost (the upstream answers a Chat Completions body with usage). The caps are high so nothing is refused; the
 * store's own hot-path cost is what differs between the two.
 */
const caps = (store: RawConfig, match: RawConfig = {}) => (up: string) =>
  fuseboxConfig(up, {
    top: { store, budgets: { agent: { dailyUsd: 1e6, dailyTokens: 1e12 }, fleet: { dailyUsd: 1e6 } } },
    route: { provider: 'openai', match: { pathPrefix: PREFIX, ...match } },
  });

/**
 * The caps(memory) config, reachable both ways (issue 10): base URL under `PREFIX`, and CONNECT tunnels to
 * `bench.test` (port 443; interception is the default for a listed host). Its two rows run this same config and
 * differ only in how the client reaches it. Listing the host also makes Fusebox generate a pod CA at start, in both.
 */
export const capsMemory = caps({ kind: 'memory' }, { hosts: [INTERCEPT_HOST] });

/**
 * The caps(memory) route in a large config (issue 15: per-call figures must not move with config size): 499 other
 * routes, each with a longer prefix than `/bench` so a scan meets them first, and 200 priced models on the route.
 */
export const manyRoutes = (up: string): RawConfig => {
  const base = caps({ kind: 'memory' })(up);
  const prices = Object.fromEntries(Array.from({ length: 200 }, (_, i) => [`bench-model-${i}`, { inputPerM: 1 + i / 100, outputPerM: 4 + i / 100 }]));
  const [route] = base.routes as RawConfig[];
  const others = Array.from({ length: 499 }, (_, i) => ({ name: `other-${i}`, match: { pathPrefix: `/other-route-${i}` }, upstream: { url: up } }));
  return { ...base, routes: [...others, { ...route, budget: { prices } }] };
};

/** Name of the intercepted row, and of the base-URL row it is compared with. */
export const INTERCEPTED = 'fusebox+caps(memory) via HTTPS_PROXY (intercepted)';
export const INTERCEPT_BASELINE = 'fusebox+caps(memory)';

/**
 * The Redis of the caps(redis) target: `BENCH_REDIS_URL` if set, else one run.ts starts for the run on a free
 * port, pinned to the load core like the upstream (everything that is not under test shares that core; the
 * machine's own Redis would float onto the proxy's core and be measured as Fusebox's latency).
 */
export const benchRedis: { url?: string } = { ...(process.env.BENCH_REDIS_URL ? { url: process.env.BENCH_REDIS_URL } : {}) };

const redisUnavailable = (): string | undefined => {
  if (benchRedis.url === undefined) return 'redis-server is not installed (apt-get install redis-server) and BENCH_REDIS_URL is not set';
  const u = new URL(benchRedis.url);
  return canConnect(u.hostname, Number(u.port || 6379)) ? undefined : `no Redis answers at ${benchRedis.url}`;
};

/**
 * The targets of a default run, in run order (direct is measured before the first and after the last). Adding a
 * Fusebox variant is one line.
 */
export const TARGETS: Target[] = [
  fusebox('fusebox', (up) => fuseboxConfig(up)),
  // The same with tracing on as a deployment turns it on: every call sampled, two spans each (the call and its one
  // attempt; this route has no fallback hops), batched and exported over OTLP/HTTP (protobuf, the default) to the
  // bench upstream, which answers 200 to any POST and discards it. What tracing costs is this row against the one above.
  fusebox('fusebox+tracing', (up) => fuseboxConfig(up), undefined, (up) => ({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${up}/v1/traces` })),
  fusebox(INTERCEPT_BASELINE, capsMemory),
  // The same config under `fusebox inject`'s memory limit, as a pod runs it: Node sizes V8's heap from the limit
  // instead of this machine's RAM (issue 15). What the pod's heap does to RSS and CPU is this row against the one above.
  fusebox(`${INTERCEPT_BASELINE}, pod heap`, capsMemory, undefined, {}, 'base-url', POD_LIMIT_MIB),
  // The same Fusebox, reached as an agent with only HTTPS_PROXY set reaches it: CONNECT + TLS interception (issue 10).
  fusebox(INTERCEPTED, capsMemory, undefined, {}, 'https-proxy'),
  fusebox('fusebox+caps(memory), 500 routes, 200 models', manyRoutes),
  // Its own key prefix per run: a bench never touches a fleet's counters, and leaves keys that expire with their windows.
  fusebox('fusebox+caps(redis)', (up) => caps({ kind: 'redis', url: benchRedis.url, keyPrefix: `fusebox-bench-${process.pid}` })(up), redisUnavailable),
  {
    name: '@fastify/http-proxy (floor)',
    role: 'floor',
    script: 'floor.ts',
    env: (up) => ({ BENCH_UPSTREAM: up }),
  },
  {
    name: 'haproxy (reference)',
    role: 'reference',
    script: 'haproxy.ts',
    env: (up) => ({ BENCH_UPSTREAM: up }),
    unavailable: () => (hasCommand('haproxy') ? undefined : 'haproxy is not installed (apt-get install haproxy)'),
  },
];

/** Run only when named with `--targets=` (each costs ~25 s of a full run). */
export const OPTIONAL_TARGETS: Target[] = [
  // What the access log costs: the same Fusebox without its one line per request.
  fusebox('fusebox (access log off)', (up) => fuseboxConfig(up, { top: { log: { level: 'warn' } } })),
  // Without the image's NODE_OPTIONS (V8 sizes the young generation from this machine's RAM): what the flag saves in memory and costs in CPU.
  fusebox('fusebox (V8 defaults)', (up) => fuseboxConfig(up), undefined, { NODE_OPTIONS: '' }),
];

/**
 * `target` as built from another revision (`--compare-rev`): the same config, the same child, run against that
 * revision's compiled tree. Only Fusebox targets have one (the floor and HAProxy do not change with Fusebox's code).
 */
export const atRevision = (target: Target, revision: { short: string; dist: string }): Target => ({
  ...target,
  name: `${target.name} @${revision.short}`,
  env: (up) => ({ ...target.env(up), BENCH_FUSEBOX_DIST: revision.dist }),
});

/** The targets `--targets` selects: the default list when empty, else every target (optional ones too) whose name contains one of them. */
export const selectTargets = (only: string[]): Target[] =>
  only.length === 0 ? TARGETS : [...TARGETS, ...OPTIONAL_TARGETS].filter((t) => only.some((s) => t.name.includes(s)));
