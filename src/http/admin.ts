import { timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { AdminDisabledError, BadRequestError, BodyTooLargeError, InternalError, NotFoundError, ProxyError, UnauthorizedError } from '../errors.js';
import type { Metrics } from '../telemetry/metrics.js';
import { replyError } from './error-answer.js';

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
 * An error fastify raised itself (malformed JSON, a body over its limit...) as one of our codes, its own code kept
 * as `details.fastifyCode`: an admin client reads the same closed list of codes as an agent.
 */
const frameworkError = (err: { code?: string; statusCode?: number; message: string }): ProxyError => {
  const status = err.statusCode ?? 500;
  const details = err.code !== undefined ? { fastifyCode: err.code } : {};
  if (status === 404) return new NotFoundError(err.message, details);
  if (status === 413) return new BodyTooLargeError(err.message, details);
  if (status >= 400 && status < 500) return new BadRequestError(err.message, details);
  return new InternalError(err.message, details, { cause: err });
};

/**
 * The admin listener: read-only endpoints (`/healthz`, `/readyz`, `/metrics`, `GET /admin/*`) are open so kubelet
 * and Prometheus need no secret; anything that changes state needs `Authorization: Bearer <token>`.
 */
export const registerAdmin = (app: FastifyInstance, deps: AdminDeps): void => {
  app.setErrorHandler((err, req, reply) => {
    const e = err instanceof ProxyError ? err : frameworkError(err as { code?: string; statusCode?: number; message: string });
    void replyError(reply, e, { requestId: String(req.id) });
  });
  app.setNotFoundHandler((req, reply) => {
    void replyError(reply, new NotFoundError(`no admin endpoint ${req.method} ${req.url}`), { requestId: String(req.id) });
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
      throw new UnauthorizedError('missing or wrong admin token (Authorization: Bearer <token>)', {}, { headers: { 'www-authenticate': 'Bearer' } });
    }
  });
};
