import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { BadRequestError, NotFoundError } from '../errors.js';
import type { RouteBreakers } from '../pipeline/build.js';
import type { BreakerStats, CircuitBreaker } from '../policies/circuit-breaker.js';

/** One breaker as the admin API shows it. */
export interface BreakerView {
  route: string;
  key: string;
  state: BreakerStats['state'];
  /** Failures over calls in the rolling window, percent (one decimal). */
  errorRatePercent: number;
  calls: number;
  failures: number;
  consecutiveFailures: number;
  /** Open: ms until a call is let through as the probe. null otherwise. */
  msUntilProbe: number | null;
  lastFailure: string | null;
}

export const breakerView = (route: string, key: string, s: BreakerStats): BreakerView => ({
  route,
  key,
  state: s.state,
  errorRatePercent: Math.round(s.errorRatePercent * 10) / 10,
  calls: s.calls,
  failures: s.failures,
  consecutiveFailures: s.consecutiveFailures,
  msUntilProbe: s.msUntilProbe ?? null,
  lastFailure: s.lastFailure ?? null,
});

const Target = z.strictObject({ route: z.string().min(1), key: z.string().min(1) });

const ACTIONS: Record<'open' | 'close' | 'reset', (b: CircuitBreaker) => void> = {
  open: (b) => b.forceOpen(),
  close: (b) => b.forceClose(),
  reset: (b) => b.reset(),
};

/**
 * Admin API for circuit breakers (of the routes in effect: `routes` is read per request), on the admin listener (whose preHandler already requires the bearer token for
 * anything but GET):
 * - `GET /admin/breakers`: every breaker with state, error rate, counts and time to probe;
 * - `POST /admin/breakers/open|close|reset` with `{"route": "...", "key": "..."}`: force open (refuse every call),
 *   force closed (admit every call), or reset (closed, fresh counters, override ended). 404 NOT_FOUND for a
 *   breaker that does not exist (a key gets a breaker on its first call).
 */
export const registerAdminBreakers = (app: FastifyInstance, routes: () => ReadonlyArray<{ breakers: readonly RouteBreakers[] }>): void => {
  // Read per request: a config reload replaces the routes.
  const all = () => routes().flatMap((r) => r.breakers);

  app.get('/admin/breakers', async () =>
    all().flatMap(({ route, registry }) => registry.list().map((e) => breakerView(route, e.key, e.stats))),
  );

  for (const action of Object.keys(ACTIONS) as Array<keyof typeof ACTIONS>) {
    app.post(`/admin/breakers/${action}`, async (req) => {
      const parsed = Target.safeParse(req.body);
      if (!parsed.success) throw new BadRequestError('expected a JSON body {"route": "<route name>", "key": "<breaker key>"} (see GET /admin/breakers)');
      const { route, key } = parsed.data;
      for (const r of all()) {
        if (r.route !== route) continue;
        const breaker = r.registry.peek(key);
        if (breaker === undefined) continue;
        ACTIONS[action](breaker);
        return breakerView(route, key, breaker.stats());
      }
      throw new NotFoundError(`no breaker "${key}" on route "${route}" (a breaker exists once a call used it; see GET /admin/breakers)`, {
        route,
        breaker: key,
      });
    });
  }
};
