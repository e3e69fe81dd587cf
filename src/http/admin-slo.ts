import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { BadRequestError, NotFoundError } from '../errors.js';
import type { SloEvaluator } from '../slo/evaluator.js';
import { sloStatusJson } from '../slo/exports.js';

const SuspendBody = z.strictObject({ forMs: z.number().int().positive().optional() }).optional();

/**
 * SLO admin API: `GET /admin/slo` (budgets, burn rates, actions per route, fleet-wide), and — token-protected like
 * every admin change — `POST /admin/slo/:route/suspend {"forMs"?}` to lift a route's throttle/degrade/shed (for a
 * while, or until resumed) and `POST /admin/slo/:route/resume` to put it back under its SLO actions.
 */
export const registerAdminSlo = (app: FastifyInstance, evaluator: SloEvaluator): void => {
  app.get('/admin/slo', async () => sloStatusJson(evaluator.all()));
  app.post<{ Params: { route: string } }>('/admin/slo/:route/suspend', async (req) => {
    const parsed = SuspendBody.safeParse(req.body ?? undefined);
    if (!parsed.success) throw new BadRequestError('expected no body or {"forMs": <positive integer>}');
    if (!evaluator.suspend(req.params.route, parsed.data?.forMs)) throw new NotFoundError(`no route named "${req.params.route}"`);
    return { route: req.params.route, suspended: true, forMs: parsed.data?.forMs ?? null };
  });
  app.post<{ Params: { route: string } }>('/admin/slo/:route/resume', async (req) => {
    if (!evaluator.resume(req.params.route)) throw new NotFoundError(`no route named "${req.params.route}"`);
    return { route: req.params.route, suspended: false };
  });
};
