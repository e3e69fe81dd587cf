import { timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { AdminDisabledError, FrameworkError, NotFoundError, ProxyError, UnauthorizedError } from '../errors.js';
import type { Metrics } from '../telemetry/metrics.js';
import { errorBody } from './respond.js';

export interface AdminDeps {
  metrics: Metrics;
  /** The admin bearer token; undefined disables every state-changing call. */
  token: string | undefined;
  tokenEnv: string;
  isReady: () => boolean;
  /** Gauges read from elsewhere (the shared store) are refreshed just before a scrape. */
  beforeScrape?: () => Promise<void>;
}

const sameSecret = (a: string, b: string): boolean => {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
};

/**
 * The admin listener: read-only endpoints (`/healthz`, `/readyz`, `/metrics`, `GET /admin/*`) are open so kubelet
 * and Prometheus need no secret; anything that changes state needs `Authorization: Bearer <token>`.
 */
export const registerAdmin = (app: FastifyInstance, deps: AdminDeps): void => {
  app.setErrorHandler((err, req, reply) => {
    const e =
      err instanceof ProxyError
        ? err
        : new FrameworkError((err as { code?: string }).code ?? 'INTERNAL', (err as { statusCode?: number }).statusCode ?? 500, (err as Error).message);
    void reply
      .code(e.statusCode)
      .header('x-fusebox-error', e.code)
      .headers(e.headers)
      .send(errorBody(e, { requestId: String(req.id) }));
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new NotFoundError(`no admin endpoint ${req.method} ${req.url}`);
    void reply.code(404).header('x-fusebox-error', e.code).send(errorBody(e, { requestId: String(req.id) }));
  });

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    if (deps.isReady()) return { status: 'ready' };
    return reply.code(503).send({ status: 'not ready' });
  });
  app.get('/metrics', async (_req, reply) => {
    // A store problem must not cost the scrape: the other metrics (and fusebox_store_up) still matter most then.
    await deps.beforeScrape?.().catch(() => deps.metrics.storeUp.set(0));
    const text = await deps.metrics.registry.metrics();
    return reply.header('content-type', deps.metrics.registry.contentType).send(text);
  });

  // Every non-GET admin route goes through this check.
  app.addHook('preHandler', async (req: FastifyRequest, _reply: FastifyReply) => {
    if (req.method === 'GET' || req.method === 'HEAD') return;
    if (deps.token === undefined) {
      throw new AdminDisabledError(`state-changing admin calls are disabled: set ${deps.tokenEnv} in the sidecar's environment to enable them`);
    }
    const auth = req.headers.authorization ?? '';
    const given = auth.startsWith('Bearer ') ? auth.slice(7) : '';
    if (!sameSecret(given, deps.token)) {
      const e = new UnauthorizedError('missing or wrong admin token (Authorization: Bearer <token>)');
      e.headers['www-authenticate'] = 'Bearer';
      throw e;
    }
  });
};
