import type { CredentialConfig, RouteConfig, TimeoutsConfig, TlsConfig } from '../config/schema.js';
import { CredentialMissingError } from '../errors.js';
import type { Handler } from '../pipeline/types.js';
import type { PoolSet } from './pool.js';
import { parseUpstreamUrl } from './pool.js';
import { makeSend, type SendClassifier, type SendHooks } from './send.js';

export interface UpstreamSpec {
  /** Label for metrics and logs: the route name, or `<route>/<step>` for a fallback upstream. */
  name: string;
  url: string;
  tls: TlsConfig;
  connections: number;
  timeouts: TimeoutsConfig;
  credential?: CredentialConfig | undefined;
  headers: { add: Record<string, string>; remove: string[] };
}

export const routeUpstreamSpec = (route: RouteConfig): UpstreamSpec => ({
  name: route.name,
  url: route.upstream.url,
  tls: route.upstream.tls,
  connections: route.upstream.connections,
  timeouts: route.timeouts,
  credential: route.credential,
  headers: route.headers,
});

/**
 * A terminal handler for one upstream: applies the header rules and the credential, then sends.
 * The credential is read from the environment once, at startup; when its variable is missing the upstream
 * answers 503 CREDENTIAL_MISSING rather than sending the agent's call unauthenticated.
 */
export const makeUpstreamHandler = (
  spec: UpstreamSpec,
  deps: { pools: PoolSet; env: NodeJS.ProcessEnv; hooks?: SendHooks; via: string; classifier: SendClassifier },
): { handler: Handler; credentialMissing?: string } => {
  const { origin, basePath } = parseUpstreamUrl(spec.url);
  const send = makeSend(
    { origin, basePath, tls: spec.tls, connections: spec.connections, timeouts: spec.timeouts, name: spec.name },
    deps.pools,
    deps.classifier,
    deps.hooks,
  );
  const set: Record<string, string> = { ...spec.headers.add };
  const remove = spec.headers.remove;
  const cred = spec.credential;
  if (cred !== undefined) {
    const secret = deps.env[cred.env];
    if (secret === undefined || secret === '') {
      const err = () =>
        new CredentialMissingError(`upstream "${spec.name}" needs the environment variable ${cred.env}, which is not set in the sidecar`, {
          env: cred.env,
        });
      return { handler: () => Promise.reject(err()), credentialMissing: cred.env };
    }
    set[cred.header] = cred.prefix + secret;
  }
  const setEntries = Object.entries(set);
  const via = deps.via;
  return {
    handler: (req, ctx) => {
      // A copy: retries and fallback hops reuse the request's headers, and each hop sets its own credential.
      const h = { ...req.headers };
      for (const name of remove) delete h[name];
      for (const [name, value] of setEntries) h[name] = value;
      // RFC 9110 §7.6.3: a proxy appends itself to Via; Fusebox also uses it to refuse requests that loop back to it.
      const prior = h.via;
      h.via = prior === undefined ? via : `${Array.isArray(prior) ? prior.join(', ') : prior}, ${via}`;
      return send(req, h, ctx);
    },
  };
};
