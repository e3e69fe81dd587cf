import type { FastifyInstance } from 'fastify';
import { NotFoundError } from '../errors.js';
import type { PodCa } from '../intercept/ca.js';

/**
 * `GET /admin/ca`: the pod CA intercepted tunnels are served with (fingerprint, validity, the names it may sign),
 * so an operator can check what agents must trust. `GET /admin/ca.pem`: the certificate itself (public).
 */
export const registerAdminCa = (app: FastifyInstance, ca: PodCa | undefined): void => {
  const none = () => new NotFoundError('no route intercepts CONNECT tunnels (every route with hosts has match.connect: tunnel), so there is no pod CA');
  app.get('/admin/ca', async () => {
    if (ca === undefined) throw none();
    const i = ca.info;
    return {
      source: i.source,
      subject: i.subject,
      fingerprintSha256: i.fingerprintSha256,
      notBefore: i.notBefore.toISOString(),
      notAfter: i.notAfter.toISOString(),
      daysLeft: Math.floor(ca.daysLeft()),
      permitted: i.permitted,
      leavesCached: ca.leavesCached,
    };
  });
  app.get('/admin/ca.pem', async (_req, reply) => {
    if (ca === undefined) throw none();
    return reply.type('application/x-pem-file').send(ca.info.pem);
  });
};
