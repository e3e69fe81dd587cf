import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import type { Duplex } from 'node:stream';
import Fastify, { type FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import type { Config } from './config/schema.js';
import { BadRequestError, HeadersTooLargeError } from './errors.js';
import { registerAdmin } from './http/admin.js';
import { registerAdminBreakers } from './http/admin-breakers.js';
import { refreshBudgetGauges, registerAdminBudgets } from './http/admin-budgets.js';
import { createBudgetStore, loadPrices } from './budget/factory.js';
import type { BudgetStore } from './budget/store.js';
import { warmTokenizer } from './budget/estimate.js';
import { registerAdminSlo } from './http/admin-slo.js';
import { registerAdminCa } from './http/admin-ca.js';
import { MemoryCounterStore, RedisCounterStore } from './slo/counter-store.js';
import { SloEvaluator } from './slo/evaluator.js';
import { applySloGauges, zeroSloEventSeries } from './slo/exports.js';
import { SloRecorder } from './slo/recorder.js';
import { RedisConnection } from './store/redis-connection.js';
import { sloSpecsOf } from './slo/spec.js';
import { handleConnect } from './http/connect.js';
import { endWithError } from './http/error-answer.js';
import { Interceptor } from './http/intercept.js';
import { createPodCa } from './intercept/setup.js';
import type { PodCa } from './intercept/ca.js';
import { configWarnings } from './config/warnings.js';
import { FORWARD_TARGET, handleProxyRequest, type ForwardRequest, type ProxyState } from './http/proxy.js';
import { RouteTable } from './http/route-table.js';
import { buildRoutes, type BuiltRoute, type PipelineDeps } from './pipeline/build.js';
import { createMetrics, type Metrics } from './telemetry/metrics.js';
import { PoolSet } from './upstream/pool.js';
import { PendingWork } from './pipeline/pending.js';

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

export interface Fusebox {
  config: Config;
  /** The pod CA intercepted tunnels are served with; undefined when no route intercepts. */
  ca: PodCa | undefined;
  proxy: FastifyInstance;
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
 * Lines are written to stdout in batches of 4 KiB or more, flushed at least every second and synchronously when
 * the process exits (pino's exit hook): one write(2) per line showed as ~5 % of a call's CPU in bench/ profiles.
 * What a SIGKILL can lose is the last second of lines.
 */
export const createLogger = (level: Config['log']['level']): Logger => {
  const dest = pino.destination({ dest: 1, minLength: 4096, sync: false });
  setInterval(() => dest.flush(), 1000).unref();
  return pino(
    // `host` is the pod name in Kubernetes, where `agent` (the budget identity) is the agent label.
    { level, base: { service: 'fusebox', host: hostname() }, redact: { paths: REDACT_PATHS, censor: '[REDACTED]' }, timestamp: pino.stdTimeFunctions.isoTime },
    dest,
  );
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

/** Build (but do not bind) a Fusebox from a validated config. Tests build one per case on port 0. */
export const buildApp = async (config: Config, deps: AppDeps = {}): Promise<Fusebox> => {
  const logger = deps.logger ?? createLogger(config.log.level);
  const metrics = deps.metrics ?? createMetrics();
  const env = deps.env ?? process.env;
  const now = deps.now ?? Date.now;
  const random = deps.random ?? Math.random;
  const via = `1.1 fusebox-${randomBytes(4).toString('hex')}`;
  const pools = new PoolSet(deps.baseDir ?? process.cwd());
  const state: ProxyState = { accepting: true, inflight: 0, ownPorts: new Set() };
  const tunnels = new Set<Duplex>();
  const pending = new PendingWork();

  // First of what can fail at start (an unreadable CA file): nothing is open yet that would need closing.
  const ca = await createPodCa(config, { baseDir: deps.baseDir ?? process.cwd(), now, metrics, env, logger });

  // One Redis client for every shared store (budgets and SLO counters); closed after both, in shutdown().
  const redis =
    config.store.kind === 'redis'
      ? new RedisConnection({
          url: config.store.url!,
          keyPrefix: config.store.keyPrefix,
          timeoutMs: config.store.timeoutMs,
          onError: (err) => logger.warn({ error: err.message }, 'redis connection problem'),
        })
      : undefined;
  const store = deps.store ?? createBudgetStore(config, { now, logger, metrics, redis });
  metrics.storeUp.set(1);
  const prices = loadPrices(config, deps.baseDir ?? process.cwd());
  if (config.routes.some((r) => r.provider === 'openai')) warmTokenizer();
  // SLO counters go to the same kind of store as budgets, so a fleet shares its error budgets too.
  const sloSpecs = sloSpecsOf(config.routes);
  const counterStore = redis ? new RedisCounterStore(redis) : new MemoryCounterStore({ now, keyPrefix: config.store.keyPrefix });
  const recorder = new SloRecorder({
    store: counterStore,
    routes: sloSpecs,
    now,
    flushIntervalMs: config.sloCounters.flushIntervalMs,
    logger,
    counters: { events: metrics.sloEvents, refused: metrics.sloRefused },
  });
  const evaluator = new SloEvaluator({ store: counterStore, routes: sloSpecs, now, logger });
  zeroSloEventSeries(metrics.sloEvents, sloSpecs);
  const pipelineDeps: PipelineDeps = { pools, metrics, logger, env, now, random, via, store, prices, budgets: config.budgets, slo: { recorder, evaluator }, pending };
  const built: BuiltRoute[] = buildRoutes(config.routes, pipelineDeps);
  const routes = new RouteTable(built);
  for (const warning of configWarnings(config)) logger.warn(warning);
  metrics.configInfo.labels(String(config.routes.length), config.store.kind, config.agent.id).set(1);
  // Present from the first scrape, so rate() sees the first failure and alerts have a series to watch.
  for (const op of ['reserve', 'commit', 'release']) metrics.storeErrors.labels(op).inc(0);

  // The access line is built field by field from redacted values (no headers), so it skips pino's redaction
  // walk, the largest single cost of a proxied call in bench/ profiles; every other line keeps it.
  const accessLog = logger.child({}, { redact: [] });
  const proxyDeps = { config, routes, metrics, logger, accessLog, now, state, via, pending };
  const clientError = (err: Error & { code?: string }, socket: Duplex) => {
    if (!socket.writable) return socket.destroy();
    const e =
      err.code === 'HPE_HEADER_OVERFLOW'
        ? new HeadersTooLargeError(`request headers are larger than the limit of ${config.limits.maxHeaderBytes} bytes (limits.maxHeaderBytes)`)
        : new BadRequestError(`malformed HTTP request: ${err.code ?? err.message}`);
    metrics.refusals.labels(e.code).inc();
    endWithError(socket, e);
  };
  const interceptor = new Interceptor({
    config: config.intercept,
    maxHeaderBytes: config.limits.maxHeaderBytes,
    ca,
    metrics,
    logger,
    handle: (req, res) => void handleProxyRequest(req, res, proxyDeps),
    rawError: clientError,
  });
  const proxy = Fastify({
    logger: false,
    exposeHeadRoutes: false,
    return503OnClosing: false,
    forceCloseConnections: false,
    // HTTP_PROXY mode sends absolute-form targets (`GET http://host/x`); the router only knows paths, so the
    // target is parked on the request and routing happens in the proxy handler by host.
    rewriteUrl(req) {
      const url = req.url ?? '/';
      if (url.startsWith('/')) return url;
      try {
        (req as ForwardRequest)[FORWARD_TARGET] = { url: new URL(url), mode: 'proxy' };
      } catch {
        return '/';
      }
      return '/';
    },
    serverFactory: (handler) =>
      createServer({ maxHeaderSize: config.limits.maxHeaderBytes, noDelay: true }, (req: IncomingMessage, res: ServerResponse) => handler(req, res)),
    clientErrorHandler: clientError,
  });
  // Bodies stay unread streams: the proxy decides whether to buffer (for replay) or stream.
  proxy.removeAllContentTypeParsers();
  proxy.addContentTypeParser('*', (_req, _payload, done) => done(null));
  proxy.all('*', (req, reply) => {
    reply.hijack();
    return handleProxyRequest(req.raw as ForwardRequest, reply.raw, proxyDeps);
  });
  proxy.server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) =>
    handleConnect(req, socket, head, { routes, metrics, logger, state, tunnels, interceptor }),
  );

  const admin = Fastify({ logger: false, forceCloseConnections: true });
  const token = env[config.listen.admin.tokenEnv];
  registerAdmin(admin, {
    metrics,
    token: token !== undefined && token !== '' ? token : undefined,
    tokenEnv: config.listen.admin.tokenEnv,
    // An expired pod CA makes every intercepted call fail its handshake: not ready, so the rollout shows it.
    isReady: () => state.accepting && proxy.server.listening && (ca === undefined || ca.daysLeft() > 0),
    beforeScrape: async () => {
      applySloGauges({ budgetRemaining: metrics.sloBudgetRemaining, burnRate: metrics.sloBurnRate, action: metrics.sloAction }, evaluator.all());
      await refreshBudgetGauges(config, store, metrics);
    },
  });
  registerAdminBreakers(admin, built);
  registerAdminBudgets(admin, { config, store, logger });
  registerAdminSlo(admin, evaluator);
  registerAdminCa(admin, ca);

  const urlOf = (app: FastifyInstance) => {
    const a = app.server.address() as AddressInfo;
    return `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
  };

  let closed: Promise<void> | undefined;
  const fusebox: Fusebox = {
    config,
    ca,
    proxy,
    admin,
    metrics,
    logger,
    state,
    slo: { recorder, evaluator },
    idle: () => pending.idle(),
    async listen() {
      // A Redis store still connecting would count as down for the first calls (a `closed` route refuses them).
      await store.ready?.(Math.max(1_000, config.store.timeoutMs * 4));
      // Before the port opens, so /readyz (the native sidecar's startup gate) never says ready without the file agents trust.
      const caDir = env.FUSEBOX_CA_DIR || config.intercept.ca.outDir;
      if (ca !== undefined && caDir !== undefined) {
        const files = await ca.writeFiles(resolve(deps.baseDir ?? process.cwd(), caDir));
        logger.info({ ...files, fingerprintSha256: ca.info.fingerprintSha256, notAfter: ca.info.notAfter.toISOString() }, 'pod CA certificate written');
      }
      if (ca !== undefined) watchCaExpiry(ca, config.intercept.ca.expiryWarningDays, logger);
      await proxy.listen({ host: config.listen.proxy.host, port: config.listen.proxy.port });
      await admin.listen({ host: config.listen.admin.host, port: config.listen.admin.port });
      state.ownPorts.add((proxy.server.address() as AddressInfo).port);
      state.ownPorts.add((admin.server.address() as AddressInfo).port);
      recorder.start();
      evaluator.start();
      metrics.ready.set(1);
      logger.info(
        { proxy: urlOf(proxy), admin: urlOf(admin), routes: config.routes.map((r) => r.name), agent: config.agent.id, store: config.store.kind },
        'fusebox listening',
      );
      // Batched lines would otherwise wait for the next second: supervisors and people watch for this one.
      logger.flush();
      return { proxyUrl: urlOf(proxy), adminUrl: urlOf(admin) };
    },
    shutdown(graceMs = config.shutdown.graceMs) {
      closed ??= (async () => {
        state.accepting = false;
        metrics.ready.set(0);
        logger.info({ inflight: state.inflight, tunnels: tunnels.size, graceMs }, 'draining');
        // Stop accepting connections; idle keep-alive sockets are closed, busy ones end after their response.
        const serverClosed = new Promise<void>((resolve) => proxy.server.close(() => resolve()));
        proxy.server.closeIdleConnections();
        let waiting = true;
        const drained = (async () => {
          while (waiting && (state.inflight > 0 || tunnels.size > 0)) await new Promise((r) => setTimeout(r, 25));
        })();
        let timer: NodeJS.Timeout | undefined;
        const timedOut = await Promise.race([
          drained.then(() => false),
          new Promise<boolean>((r) => (timer = setTimeout(() => r(true), graceMs))),
        ]);
        clearTimeout(timer);
        waiting = false;
        if (timedOut) {
          logger.warn({ inflight: state.inflight, tunnels: tunnels.size }, 'grace period over: cutting the calls still running');
          for (const t of tunnels) t.destroy();
          interceptor.closeAll();
          proxy.server.closeAllConnections();
          await pools.destroy();
        } else {
          interceptor.closeAll();
          proxy.server.closeAllConnections();
          await pools.close();
        }
        await serverClosed;
        // Commits of the calls that just ended are still on their way to the store: let them land before closing it.
        let idleTimer: NodeJS.Timeout | undefined;
        await Promise.race([pending.idle(), new Promise<void>((r) => (idleTimer = setTimeout(r, 5_000)))]);
        clearTimeout(idleTimer);
        await proxy.close();
        await admin.close();
        await recorder.close();
        evaluator.close();
        await counterStore.close();
        await store.close();
        // Last: the budget store's close replays its journal through it.
        await redis?.close();
        logger.info('stopped');
        logger.flush();
      })();
      return closed;
    },
  };
  return fusebox;
};
