import type { Logger } from 'pino';
import type { RouteConfig } from '../config/schema.js';
import { ProxyError } from '../errors.js';
import { codeClass, type Metrics } from '../telemetry/metrics.js';
import type { PoolSet } from '../upstream/pool.js';
import { makeUpstreamHandler, routeUpstreamSpec } from '../upstream/target.js';
import { compose } from './compose.js';
import type { Handler } from './types.js';

export interface PipelineDeps {
  pools: PoolSet;
  metrics: Metrics;
  logger: Logger;
  env: NodeJS.ProcessEnv;
  /** Milliseconds clock; injected so tests can use fake time. */
  now: () => number;
  /** [0, 1) random source; injected so tests can fix jitter. */
  random: () => number;
  /** This instance's `Via` token (`1.1 fusebox-<id>`). */
  via: string;
}

export interface BuiltRoute {
  config: RouteConfig;
  handler: Handler;
}

/**
 * Route config → request handler, built once at startup. This is the ONE place the order of policies is written:
 * the first layer listed is the outermost, the upstream send is the terminal.
 */
export const buildRoute = (route: RouteConfig, deps: PipelineDeps): BuiltRoute => {
  const attempts = deps.metrics.upstreamAttempts;
  const primary = makeUpstreamHandler(routeUpstreamSpec(route), {
    pools: deps.pools,
    env: deps.env,
    via: deps.via,
    hooks: {
      onAttempt: (target, result) =>
        attempts.labels(route.name, target.name, typeof result === 'number' ? codeClass(result) : (result as ProxyError).code).inc(),
    },
  });
  if (primary.credentialMissing !== undefined) {
    deps.logger.warn(
      { route: route.name, env: primary.credentialMissing },
      `route "${route.name}" has a credential from $${primary.credentialMissing}, which is not set: its calls will answer 503 CREDENTIAL_MISSING`,
    );
  }
  if (!route.upstream.tls.rejectUnauthorized) {
    deps.logger.warn({ route: route.name }, `route "${route.name}" does not verify its upstream's TLS certificate`);
  }

  const handler = compose()(primary.handler);
  return { config: route, handler };
};
