import { randomBytes, randomUUID } from 'node:crypto';
import type { Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import type { Duplex } from 'node:stream';
import Fastify, { type FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import type { Config } from './config/schema.js';
import { registerAdmin } from './http/admin.js';
import { registerAdminBreakers } from './http/admin-breakers.js';
import { refreshBudgetGauges, registerAdminBudgets } from './http/admin-budgets.js';
import { createBudgetStore } from './budget/factory.js';
import type { BudgetStore } from './budget/store.js';
import { warmTokenizer } from './budget/estimate.js';
import { registerAdminSlo } from './http/admin-slo.js';
import { registerAdminCa } from './http/admin-ca.js';
import { registerAdminStatus } from './http/admin-status.js';
import { registerAdminUi } from './http/admin-ui.js';
import { lazySchemaCompilers } from './http/schema-compilers.js';
import { LiveStats } from './telemetry/live.js';
import { LineDestination } from './telemetry/log-destination.js';
import { counterSeries } from './telemetry/fast-metrics.js';
import { RedisSloBoard } from './slo/board.js';
import { MemoryCounterStore, RedisCounterStore } from './slo/counter-store.js';
import { SloEvaluator } from './slo/evaluator.js';
import { applySloGauges, zeroSloEventSeries } from './slo/exports.js';
import { SloRecorder } from './slo/recorder.js';
import { sloEventCounters } from './telemetry/slo-events.js';
import type { RedisConnection } from './store/redis-connection.js';
import { sloSpecsOf } from './slo/spec.js';
import { handleConnect } from './http/connect.js';
import { clientErrorAnswer, createProxyServer } from './http/proxy-server.js';
import { Interceptor } from './http/intercept.js';
import { createPodCa } from './intercept/setup.js';
import type { PodCa } from './intercept/ca.js';
import { ConfigError } from './config/load.js';
import { handleProxyRequest, type ForwardRequest, type ProxyState } from './http/proxy.js';
import { createMetrics, type Metrics } from './telemetry/metrics.js';
import { readRedisTls } from './store/redis-tls.js';
import { PoolSet } from './upstream/pool.js';
import { PendingWork } from './pipeline/pending.js';
import { settledWithin } from './pipeline/sleep.js';
import { tracingDecision } from './telemetry/tracing-env.js';
import { Generations, type Generation, type ReloadResult, type SharedPipelineDeps } from './generations.js';
import type { Tracing } from './telemetry/tracing.js';

export interface AppDeps {
  logger?: Logger;
  metrics?: Metrics;
  env?: NodeJS.ProcessEnv;
  /** Folder relative paths in the config resolve from. */
  baseDir?: string;
  now?: () => number;
  random?: () => number;
  /** A budget store to use instead of the one the config describes (tests). */
  store?: BudgetStore;
}

export type { ReloadResult } from './generations.js';

export interface Fusebox {
  /** The config in effect: a reload replaces it. */
  readonly config: Config;
  /** The pod CA intercepted tunnels are served with; undefined when no route intercepts. */
  ca: PodCa | undefined;
  /** The proxy listener (node:http: every request is a proxied call, see src/http/proxy-server.ts). */
  proxy: Server;
  admin: FastifyInstance;
  metrics: Metrics;
  logger: Logger;
  state: ProxyState;
  /** The SLO counters and their evaluator (the admin API and tests drive them). */
  slo: { recorder: SloRecorder; evaluator: SloEvaluator };
  /**
   * Resolves once no call is in flight and every budget commit has reached the store: what a test waits on
   * instead of sleeping, and what shutdown waits on before closing the store.
   */
  idle(): Promise<void>;
  /**
   * Apply a new config to new calls; calls in flight finish on the routes they started with. Given a ConfigError
   * (the caller's parse of the file failed), or a config that changes a setting only a restart applies, the old
   * config keeps serving and every problem is logged. Breakers, retry budgets and last-good answers of kept routes
   * whose settings are unchanged carry over; caps, reservations and SLO counters live in the stores, by route name.
   * Every outcome is a log line and a `fusebox_config_reloads_total{result}`.
   */
  reload(next: Config | ConfigError): ReloadResult;
  /** Bind both listeners. Resolves to their URLs (`http://127.0.0.1:4000`). */
  listen(): Promise<{ proxyUrl: string; adminUrl: string }>;
  /**
   * Graceful stop: readiness turns false, new calls are refused, in-flight calls and tunnels get up to `graceMs`
   * to finish, then whatever is left is cut. Resolves when everything is closed.
   */
  shutdown(graceMs?: number): Promise<void>;
}

/** Credentials never reach logs: these paths are censored wherever they appear in a log object. */
export const REDACT_PATHS = [
  'authorization',
  'proxy-authorization',
  'x-api-key',
  'cookie',
  'set-cookie',
  '*.authorization',
  '*.["proxy-authorization"]',
  '*.["x-api-key"]',
  '*.cookie',
  '*.["set-cookie"]',
  'headers.*.authorization',
];

/**
 * Lines are written to stdout in batches of 4 KiB or more, flushed at least every second, at shutdown, and
 * synchronously when the process exits (src/telemetry/log-destination.ts): one write(2) per line showed as ~5 % of
 * a call's CPU in bench/ profiles. What a SIGKILL can lose is the last second of lines.
 */
export const createLogger = (level: Config['log']['level'], env: NodeJS.ProcessEnv = process.env): Logger => {
  // `host` is the pod name in Kubernetes, where `agent` (the budget identity) is the agent label.
  const options = { level, base: { service: 'fusebox', host: hostname() }, redact: { paths: REDACT_PATHS, censor: '[REDACTED]' }, timestamp: pino.stdTimeFunctions.isoTime };
  // A person at a terminal reads lines, not JSON (FUSEBOX_LOG_FORMAT=json|pretty overrides). Loaded only then.
  const pretty = env.FUSEBOX_LOG_FORMAT === 'pretty' || (env.FUSEBOX_LOG_FORMAT !== 'json' && process.stdout.isTTY === true);
  if (pretty) {
    const build = createRequire(import.meta.url)('pino-pretty') as (o: Record<string, unknown>) => NodeJS.WritableStream;
    return pino(options, build({ colorize: process.stdout.isTTY === true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,service,host', sync: true }));
  }
  const dest = new LineDestination();
  const logger = pino(options, dest);
  // Said once writing works again, in the log that missed them (the metric counts them as they go).
  dest.on('caught-up', (dropped) => logger.warn({ droppedLines: dropped }, "log lines dropped: stdout's reader fell behind"));
  return logger;
};

/** `fusebox_log_lines_dropped_total`, when the logger writes through Fusebox's own destination (not a test's stream). */
const countDroppedLines = (logger: Logger, metrics: Metrics): void => {
  const dest = (logger as unknown as Record<symbol, unknown>)[pino.symbols.streamSym];
  if (!(dest instanceof LineDestination)) return;
  const dropped = counterSeries(metrics.logLinesDropped);
  dest.on('drop', (lines) => dropped.inc(lines));
};

/** Only a route that asks for exact OpenAI counts carries the tokenizer (~45 MB); the others estimate from bytes. */
const warmTokenizerIfAsked = (config: Config): void => {
  if (config.routes.some((r) => r.provider === 'openai' && r.budget.tokenizer === 'o200k')) warmTokenizer();
};

/** A CA close to its end is said at startup and once a day after, while there is time to replace it. */
const watchCaExpiry = (ca: PodCa, warningDays: number, logger: Logger): void => {
  const check = () => {
    const days = ca.daysLeft();
    if (days <= 0) logger.error({ notAfter: ca.info.notAfter.toISOString() }, 'the pod CA has expired: intercepted calls fail their TLS handshake and /readyz answers 503; restart the sidecar (a generated CA) or renew intercept.ca.certFile');
    else if (days < warningDays) logger.warn({ notAfter: ca.info.notAfter.toISOString(), daysLeft: Math.floor(days) }, 'the pod CA expires soon: restart the sidecar (a generated CA) or renew intercept.ca.certFile');
  };
  check();
  setInterval(check, 86_400_000).unref();
};

interface Stores {
  /** One Redis client for every shared store (budgets and SLO counters); closed after both. */
  redis: RedisConnection | undefined;
  store: BudgetStore;
  counterStore: MemoryCounterStore | RedisCounterStore;
  /** Where a fleet shares its SLO assessments; none alone. */
  sloBoard: RedisSloBoard | undefined;
}

/**
 * The budget store and the SLO counter store: the same kind, so a fleet shares its error budgets as its caps. The
 * Redis client (ioredis, ~6 MB of memory once loaded) is imported only for a Redis store.
 */
const buildStores = async (config: Config, deps: { store?: BudgetStore | undefined; now: () => number; logger: Logger; metrics: Metrics; baseDir: string }): Promise<Stores> => {
  const { now, logger, metrics } = deps;
  const tls = config.store.kind === 'redis' ? readRedisTls(config.store.tls, deps.baseDir) : undefined;
  if (tls?.rejectUnauthorized === false) logger.warn('store.tls.rejectUnauthorized is false: the Redis certificate is not verified');
  const redis =
    config.store.kind === 'redis'
      ? new (await import('./store/redis-connection.js')).RedisConnection({
          url: config.store.url!,
          ...(tls !== undefined && { tls }),
          keyPrefix: config.store.keyPrefix,
          timeoutMs: config.store.timeoutMs,
          onError: (err) => logger.warn({ error: err.message }, 'redis connection problem'),
          onCommandError: (e) => {
            metrics.storeErrors.labels(e.op, e.kind).inc();
            // Back to 1 when the budget store has replayed its journal (factory.ts) or the next scrape finds it up.
            metrics.storeUp.set(0);
            logger.error({ op: e.op, kind: e.kind, node: e.node, error: e.error.message }, `store command ${e.op} failed (${e.kind}) on ${e.node}`);
          },
        })
      : undefined;
  const store = deps.store ?? createBudgetStore(config, { now, logger, metrics, redis });
  metrics.storeUp.set(1);
  // Present from the first scrape, so rate() sees the first failure and alerts have a series to watch.
  for (const op of ['reserve', 'commit', 'release']) metrics.storeErrors.labels(op, 'other').inc(0);
  const counterStore = redis ? new RedisCounterStore(redis) : new MemoryCounterStore({ now, keyPrefix: config.store.keyPrefix });
  // The pod's name (the hostname) says in the published assessments which sidecar computed them; the suffix keeps a restarted one apart.
  const sloBoard = redis ? new RedisSloBoard(redis, { sidecarId: `${hostname()}-${randomUUID().slice(0, 8)}` }) : undefined;
  return { redis, store, counterStore, sloBoard };
};

/** The SLO counters each call feeds, and the evaluator that turns the fleet's counts into budgets and actions. */
const buildSlo = (config: Config, stores: Pick<Stores, 'counterStore' | 'sloBoard'>, deps: { now: () => number; logger: Logger; metrics: Metrics }) => {
  const { counterStore, sloBoard } = stores;
  const { now, logger, metrics } = deps;
  const specs = sloSpecsOf(config.routes);
  const recorder = new SloRecorder({
    store: counterStore,
    routes: specs,
    now,
    flushIntervalMs: config.sloCounters.flushIntervalMs,
    logger,
    counters: sloEventCounters(metrics),
  });
  const evaluator = new SloEvaluator({
    store: counterStore,
    routes: specs,
    now,
    logger,
    ...(sloBoard ? { board: sloBoard } : {}),
    metrics: { leader: metrics.sloLeader, assessments: metrics.sloAssessments, publishFailures: metrics.sloPublishFailures },
  });
  zeroSloEventSeries(metrics.sloEvents, specs);
  return { recorder, evaluator };
};

/** The admin listener: health, readiness, metrics, and the admin API (state changes need the token). */
const buildAdmin = (
  current: () => Generation,
  deps: {
    env: NodeJS.ProcessEnv;
    metrics: Metrics;
    logger: Logger;
    isReady: () => boolean;
    store: BudgetStore;
    evaluator: SloEvaluator;
    ca: PodCa | undefined;
    live: LiveStats;
    now: () => number;
  },
): FastifyInstance => {
  const { metrics, store, evaluator } = deps;
  const admin = Fastify({ logger: false, forceCloseConnections: true, schemaController: { compilersFactory: lazySchemaCompilers() } });
  // listen.admin cannot change on a reload (see restartOnlyChanges), so its token is read once.
  const config = current().config;
  const token = deps.env[config.listen.admin.tokenEnv];
  registerAdmin(admin, {
    metrics,
    token: token !== undefined && token !== '' ? token : undefined,
    tokenEnv: config.listen.admin.tokenEnv,
    isReady: deps.isReady,
    beforeScrape: async () => {
      applySloGauges({ budgetRemaining: metrics.sloBudgetRemaining, burnRate: metrics.sloBurnRate, action: metrics.sloAction }, evaluator.all());
      await refreshBudgetGauges(current().config, store, metrics);
    },
  });
  // The routes and config in effect are read per request, through getters: a reload replaces them.
  registerAdminBreakers(admin, () => current().built);
  registerAdminBudgets(admin, { get config() { return current().config; }, store, logger: deps.logger });
  registerAdminSlo(admin, evaluator);
  registerAdminCa(admin, deps.ca);
  registerAdminStatus(admin, {
    get config() { return current().config; },
    get routes() { return current().built; },
    store,
    evaluator,
    live: deps.live,
    metrics,
    isReady: deps.isReady,
    now: deps.now,
    startedAt: deps.live.startedAt,
  });
  registerAdminUi(admin);
  return admin;
};

const urlOf = (server: Server) => {
  const a = server.address() as AddressInfo;
  return `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
};

/**
 * Before the proxy port opens: the CA files agents trust are written (so /readyz, the native sidecar's startup gate,
 * never says ready without them), its expiry is watched, and every intercepted host's leaf is minted (no agent's
 * first handshake waits for a mint).
 */
const prepareCa = async (ca: PodCa, o: { dir: string | undefined; baseDir: string; warningDays: number; logger: Logger }): Promise<void> => {
  if (o.dir !== undefined) {
    const files = await ca.writeFiles(resolve(o.baseDir, o.dir));
    o.logger.info({ ...files, fingerprintSha256: ca.info.fingerprintSha256, notAfter: ca.info.notAfter.toISOString() }, 'pod CA certificate written');
  }
  watchCaExpiry(ca, o.warningDays, o.logger);
  const started = performance.now();
  const leaves = await ca.warm();
  o.logger.info({ leaves, ms: Math.round(performance.now() - started) }, 'leaf certificates minted for the intercepted hosts');
};

interface Running {
  graceMs: number;
  state: ProxyState;
  metrics: Metrics;
  logger: Logger;
  inflight: { count: number };
  tunnels: Set<Duplex>;
  proxy: Server;
  interceptor: Interceptor;
  pools: PoolSet;
  pending: PendingWork;
  admin: FastifyInstance;
  recorder: SloRecorder;
  evaluator: SloEvaluator;
  counterStore: Stores['counterStore'];
  store: BudgetStore;
  redis: RedisConnection | undefined;
  tracing: Tracing | undefined;
}

/**
 * Graceful stop: readiness turns false, new calls are refused, calls in flight and spliced tunnels get up to `graceMs`
 * to finish, then whatever is left is cut; budget commits land before the stores close, the Redis client last.
 */
const drainAndClose = async (r: Running): Promise<void> => {
  const { state, metrics, logger, inflight, tunnels, proxy } = r;
  state.accepting = false;
  metrics.ready.set(0);
  logger.info({ inflight: inflight.count, tunnels: tunnels.size, graceMs: r.graceMs }, 'draining');
  // Stop accepting connections; idle keep-alive sockets are closed, busy ones end after their response.
  const serverClosed = proxy.listening ? new Promise<void>((done) => proxy.close(() => done())) : Promise.resolve();
  proxy.closeIdleConnections();
  let waiting = true;
  const drained = (async () => {
    while (waiting && (inflight.count > 0 || tunnels.size > 0)) await new Promise((done) => setTimeout(done, 25));
  })();
  const timedOut = !(await settledWithin(drained, r.graceMs));
  waiting = false;
  if (timedOut) {
    logger.warn({ inflight: inflight.count, tunnels: tunnels.size }, 'grace period over: cutting the calls still running');
    for (const t of tunnels) t.destroy();
  }
  r.interceptor.closeAll();
  proxy.closeAllConnections();
  await (timedOut ? r.pools.destroy() : r.pools.close());
  await serverClosed;
  // Commits of the calls that just ended are still on their way to the store: let them land before closing it.
  await settledWithin(r.pending.idle(), 5_000);
  // Every call has ended, so has its span: the last batch goes out before the process does.
  await r.tracing?.shutdown(5_000);
  await r.admin.close();
  await r.recorder.close();
  // Before the Redis client closes: it gives up its leases, so the fleet takes its routes over at once.
  await r.evaluator.close();
  await r.counterStore.close();
  await r.store.close();
  // Last: the budget store's close replays its journal through it.
  await r.redis?.close();
  logger.info('stopped');
  // Every line out before the process exits (the CLI exits right after): a stalled stdout reader gets 2 s, then the
  // exit hook's synchronous flush tries what is left for at most 1 s more and counts the rest as dropped.
  await settledWithin(new Promise<void>((done) => logger.flush(() => done())), 2_000);
};

/**
 * Tracing, when the standard OTEL_* variables ask for it: the SDK is imported only then (src/telemetry/tracing.ts).
 * Variables that ask for it but cannot be honoured stop the start, as a bad config file does: a sidecar that was
 * told to trace and silently does not would be found out only when the traces are needed.
 */
const startTracingIfAsked = async (env: NodeJS.ProcessEnv, deps: { metrics: Metrics; logger: Logger }): Promise<Tracing | undefined> => {
  const decision = tracingDecision(env);
  if ('problems' in decision) throw new ConfigError('OpenTelemetry environment', decision.problems);
  if (!decision.on) {
    // Said only when someone set an OTEL_ variable and might expect traces.
    if (Object.keys(env).some((k) => k.startsWith('OTEL_'))) deps.logger.info({ why: decision.why }, 'tracing off');
    return undefined;
  }
  const { startTracing } = await import('./telemetry/tracing.js');
  return startTracing(decision.settings, deps);
};

/** Build (but do not bind) a Fusebox from a validated config. Tests build one per case on port 0. */
export const buildApp = async (config: Config, deps: AppDeps = {}): Promise<Fusebox> => {
  const logger = deps.logger ?? createLogger(config.log.level);
  const metrics = deps.metrics ?? createMetrics();
  const env = deps.env ?? process.env;
  const now = deps.now ?? Date.now;
  const random = deps.random ?? Math.random;
  const baseDir = deps.baseDir ?? process.cwd();
  const via = `1.1 fusebox-${randomBytes(4).toString('hex')}`;
  const state: ProxyState = { accepting: true, ownPorts: new Set() };
  const inflight = { count: 0 };
  const tunnels = new Set<Duplex>();
  const live = new LiveStats({ now });

  // First of what can fail at start (bad OTEL_* variables, an unreadable CA file): nothing is open yet that would need closing.
  const tracing = await startTracingIfAsked(env, { metrics, logger });
  const ca = await createPodCa(config, { baseDir, now, metrics, env, logger });
  const { redis, store, counterStore, sloBoard } = await buildStores(config, { store: deps.store, now, logger, metrics, baseDir });
  // Whoever waits for the pending work (shutdown, idle()) should not wait out store.commitDelayMs: commits go at once.
  const pending = new PendingWork(() => void store.flush?.());
  const { recorder, evaluator } = buildSlo(config, { counterStore, sloBoard }, { now, logger, metrics });
  warmTokenizerIfAsked(config);

  // The access line is built field by field from redacted values (no headers), so it skips pino's redaction
  // walk, the largest single cost of a proxied call in bench/ profiles; every other line keeps it.
  const accessLog = logger.child({}, { redact: [] });
  countDroppedLines(logger, metrics);
  const pools = new PoolSet(baseDir);
  const baseDeps: SharedPipelineDeps = {
    pools,
    metrics,
    logger,
    accessLog,
    env,
    now,
    random,
    via,
    store,
    slo: { recorder, evaluator },
    pending,
    inflight,
    live,
    tracing,
  };
  const generations = new Generations(config, { pipeline: baseDeps, baseDir, metrics, logger, slo: { recorder, evaluator }, now });
  const current = () => generations.current;

  // Getters: every new call reads the generation in effect.
  const proxyDeps = {
    get config() { return current().config; },
    get routes() { return current().routes; },
    metrics,
    live,
    logger,
    now,
    state,
    via,
  };
  const handle = (req: ForwardRequest, res: ServerResponse) => void handleProxyRequest(req, res, proxyDeps);
  const interceptor = new Interceptor({
    config: config.intercept,
    maxHeaderBytes: config.limits.maxHeaderBytes,
    ca,
    metrics,
    live,
    logger,
    handle,
    rawError: clientErrorAnswer(config.limits.maxHeaderBytes, metrics, live),
  });
  const proxy = createProxyServer({
    maxHeaderBytes: config.limits.maxHeaderBytes,
    metrics,
    live,
    handle,
    connect: (req, socket, head) => handleConnect(req, socket, head, { routes: current().routes, metrics, live, logger, state, tunnels, interceptor }),
  });
  const admin = buildAdmin(current, {
    env,
    metrics,
    logger,
    store,
    evaluator,
    ca,
    live,
    now,
    // An expired pod CA makes every intercepted call fail its handshake: not ready, so the rollout shows it.
    isReady: () => state.accepting && proxy.listening && (ca === undefined || ca.daysLeft() > 0),
  });

  const reload = (next: Config | ConfigError): ReloadResult => {
    const result = generations.reload(next);
    if (result.result === 'ok' && !result.unchanged) warmTokenizerIfAsked(generations.current.config);
    return result;
  };

  let closed: Promise<void> | undefined;
  const fusebox: Fusebox = {
    get config() {
      return current().config;
    },
    ca,
    proxy,
    admin,
    metrics,
    logger,
    state,
    slo: { recorder, evaluator },
    idle: () => pending.idle(),
    reload,
    async listen() {
      // A Redis store still connecting would count as down for the first calls (a `closed` route refuses them).
      await store.ready?.(Math.max(1_000, config.store.timeoutMs * 4));
      if (ca !== undefined) await prepareCa(ca, { dir: env.FUSEBOX_CA_DIR || config.intercept.ca.outDir, baseDir, warningDays: config.intercept.ca.expiryWarningDays, logger });
      await new Promise<void>((resolveListen, reject) => {
        proxy.once('error', reject);
        proxy.listen({ host: config.listen.proxy.host, port: config.listen.proxy.port }, () => {
          proxy.off('error', reject);
          resolveListen();
        });
      });
      await admin.listen({ host: config.listen.admin.host, port: config.listen.admin.port });
      state.ownPorts.add((proxy.address() as AddressInfo).port);
      state.ownPorts.add((admin.server.address() as AddressInfo).port);
      recorder.start();
      evaluator.start();
      metrics.ready.set(1);
      logger.info(
        { proxy: urlOf(proxy), admin: urlOf(admin.server), routes: current().config.routes.map((r) => r.name), agent: config.agent.id, store: config.store.kind, configHash: current().hash },
        'fusebox listening',
      );
      // Batched lines would otherwise wait for the next second: supervisors and people watch for this one.
      logger.flush();
      return { proxyUrl: urlOf(proxy), adminUrl: urlOf(admin.server) };
    },
    shutdown(graceMs = current().config.shutdown.graceMs) {
      closed ??= drainAndClose({ graceMs, state, metrics, logger, inflight, tunnels, proxy, interceptor, pools, pending, admin, recorder, evaluator, counterStore, store, redis, tracing });
      return closed;
    },
  };
  return fusebox;
};
