import { BASE_URL_VARS, type BaseUrlProvider, type InjectOptions } from './options.js';
import { dedupe, NO_PROXY_VARS, PROXY_VARS, proxyUrl, requiredNoProxy, TRUST_VARS } from './sidecar.js';

/** One change to a container's `env` list. `index` points into the list as it was read. */
export type EnvEdit = { op: 'set'; index: number; value: string } | { op: 'append'; name: string; value: string };

export type EnvPlan = { ok: true; edits: EnvEdit[]; warnings: string[] } | { ok: false; reasons: string[] };

interface EnvEntry {
  index: number;
  name: string;
  value: string | undefined;
  fromRef: boolean;
}

const readEnv = (env: unknown): EnvEntry[] | undefined => {
  if (env === undefined || env === null) return [];
  if (!Array.isArray(env)) return undefined;
  const entries: EnvEntry[] = [];
  env.forEach((raw: unknown, index) => {
    if (typeof raw !== 'object' || raw === null) return;
    const e = raw as { name?: unknown; value?: unknown; valueFrom?: unknown };
    if (typeof e.name !== 'string') return;
    entries.push({
      index,
      name: e.name,
      value: e.value === undefined || e.value === null ? undefined : String(e.value),
      fromRef: e.valueFrom !== undefined && e.valueFrom !== null,
    });
  });
  return entries;
};

/**
 * `http://127.0.0.1:4000`, `http://localhost:4000/` and the like all reach the sidecar; with `path`, at that path
 * (a trailing slash aside).
 */
const pointsAtSidecar = (value: string, port: number, path = ''): boolean => {
  try {
    const u = new URL(value);
    const host = u.hostname;
    return (
      u.protocol === 'http:' &&
      u.port === String(port) &&
      (host === '127.0.0.1' || host === 'localhost' || host === '[::1]') &&
      u.pathname.replace(/\/+$/, '') === path.replace(/\/+$/, '') &&
      u.search === '' &&
      u.username === ''
    );
  } catch {
    return false;
  }
};

/** The SDK base URL for a path on the sidecar's proxy port. */
export const baseUrl = (o: InjectOptions, path: string): string => `${proxyUrl(o)}${path}`;

const splitNoProxy = (value: string): string[] =>
  value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');

/**
 * Decide how one proxied container's env must change so its HTTP clients go through Fusebox: the proxy variables,
 * then (with `ca`) the variables that make its TLS clients trust the pod CA, then the SDK base URLs asked for.
 *
 * Never silently replaces a value the container already sets to something else: a proxy may be a corporate egress
 * the agent depends on, a CA file may hold the corporate CA its calls need (the pod's bundle has only the system
 * roots and the pod CA), a base URL may be a gateway. The answer is a refusal with the reason, unless
 * `overrideProxyEnv`. NO_PROXY is merged, not replaced: the entries already there are destinations the agent must
 * keep reaching directly.
 */
export const planAgentEnv = (containerName: string, env: unknown, o: InjectOptions): EnvPlan => {
  const entries = readEnv(env);
  if (entries === undefined) return { ok: false, reasons: [`container "${containerName}": env is not a list`] };
  const url = proxyUrl(o);
  const edits: EnvEdit[] = [];
  const warnings: string[] = [];
  const reasons: string[] = [];
  const byName = (name: string) => entries.filter((e) => e.name === name);

  /**
   * One variable inject owns, one policy for all of them: appended when missing, kept when it already says the
   * same, otherwise replaced with `overrideProxyEnv` (and reported) or added to `conflicts`.
   */
  const own = (name: string, want: string, same: (value: string) => boolean, conflicts: string[]): void => {
    const existing = byName(name);
    if (existing.length === 0) edits.push({ op: 'append', name, value: want });
    for (const e of existing) {
      if (!e.fromRef && e.value !== undefined && same(e.value)) continue;
      const what = `${name} ${e.fromRef ? 'from valueFrom (its value is unknown here)' : `to "${e.value ?? ''}"`}`;
      if (o.overrideProxyEnv) {
        edits.push({ op: 'set', index: e.index, value: want });
        warnings.push(`container "${containerName}": replaced ${what.replace(' to ', ' set to ')}`);
      } else conflicts.push(what);
    }
  };
  const it = (n: number) => (n === 1 ? 'it' : 'them');

  const conflicts: string[] = [];
  for (const name of PROXY_VARS) own(name, url, (value) => pointsAtSidecar(value, o.proxyPort), conflicts);
  if (conflicts.length > 0) {
    reasons.push(
      `container "${containerName}" already sets ${conflicts.join(', ')}; Fusebox will not silently replace ` +
        `${it(conflicts.length)} (re-run with --override-proxy-env to replace, or opt the workload out ` +
        'with the annotation fusebox.io/inject: "false")',
    );
  }

  const noProxyEntries = NO_PROXY_VARS.flatMap(byName);
  const fromRef = noProxyEntries.filter((e) => e.fromRef);
  if (fromRef.length > 0 && !o.overrideProxyEnv) {
    reasons.push(
      `container "${containerName}" takes ${fromRef.map((e) => e.name).join(' and ')} from valueFrom, which cannot be merged here; ` +
        'set it as a literal value, or re-run with --override-proxy-env to replace it',
    );
  }
  if (fromRef.length > 0 && o.overrideProxyEnv) {
    warnings.push(`container "${containerName}": replaced ${fromRef.map((e) => e.name).join(' and ')} taken from valueFrom`);
  }
  const existingNoProxy = noProxyEntries.filter((e) => !e.fromRef).flatMap((e) => splitNoProxy(e.value ?? ''));
  if (existingNoProxy.includes('*')) {
    if (o.overrideProxyEnv) warnings.push(`container "${containerName}": dropped "*" from NO_PROXY`);
    else {
      reasons.push(
        `container "${containerName}" sets NO_PROXY to "*", which sends every call around Fusebox; ` +
          'remove it, or re-run with --override-proxy-env to drop it',
      );
    }
  }
  const merged = dedupe([...existingNoProxy.filter((e) => e !== '*'), ...requiredNoProxy(o)]).join(',');
  for (const name of NO_PROXY_VARS) {
    const existing = byName(name);
    if (existing.length === 0) edits.push({ op: 'append', name, value: merged });
    for (const e of existing) if (e.fromRef || e.value !== merged) edits.push({ op: 'set', index: e.index, value: merged });
  }

  if (o.nodeUseEnvProxy && byName('NODE_USE_ENV_PROXY').length === 0) {
    edits.push({ op: 'append', name: 'NODE_USE_ENV_PROXY', value: '1' });
  }

  if (o.ca) {
    const trustConflicts: string[] = [];
    for (const v of TRUST_VARS) own(v.name, v.value, (value) => value === v.value, trustConflicts);
    if (trustConflicts.length > 0) {
      reasons.push(
        `container "${containerName}" already sets ${trustConflicts.join(', ')}; Fusebox will not silently replace ` +
          `${it(trustConflicts.length)}: the pod's CA bundle holds only the system roots and the pod CA, so a CA of yours would ` +
          'stop being trusted (re-run with --override-proxy-env to replace, with --no-ca to leave the trust variables alone, ' +
          'or opt the workload out with the annotation fusebox.io/inject: "false")',
      );
    }
  }

  const baseUrlConflicts: string[] = [];
  for (const [provider, path] of Object.entries(o.baseUrls) as [BaseUrlProvider, string | undefined][]) {
    if (path === undefined) continue;
    own(BASE_URL_VARS[provider], baseUrl(o, path), (value) => pointsAtSidecar(value, o.proxyPort, path), baseUrlConflicts);
  }
  if (baseUrlConflicts.length > 0) {
    reasons.push(
      `container "${containerName}" already sets ${baseUrlConflicts.join(', ')}; Fusebox will not silently replace ` +
        `${it(baseUrlConflicts.length)} (re-run with --override-proxy-env to replace, leave that provider out of --base-url, ` +
        'or opt the workload out with the annotation fusebox.io/inject: "false")',
    );
  }

  if (reasons.length > 0) return { ok: false, reasons };
  return { ok: true, edits, warnings };
};
