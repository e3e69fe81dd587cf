import { createHash } from 'node:crypto';
import type { Config } from './schema.js';

/**
 * The config's identity in `fusebox_config_info{hash}` and the reload log lines: the first 12 hex digits of the
 * sha256 of the validated config (defaults applied, `${VAR}` expanded), so two files that mean the same thing have
 * the same hash. Secrets are never in the config (credentials are env var names), so the hash reveals nothing.
 */
export const configHash = (config: Config): string => createHash('sha256').update(JSON.stringify(config)).digest('hex').slice(0, 12);

/** One setting a reload cannot apply, with why: the reload is refused whole (see README, "Reload"). */
export interface RestartOnlyChange {
  /** The config path, e.g. `listen.proxy.port`. */
  path: string;
  reason: string;
}

const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);

/**
 * The settings of `next` a running sidecar cannot take without a restart, each named: what was bound, opened or
 * sized at start. An empty list means the whole of `next` can be applied. `interceptedHosts` are the hosts the pod
 * CA was made for (`prev`) and the hosts `next` intercepts.
 */
export const restartOnlyChanges = (prev: Config, next: Config, interceptedHosts: { prev: readonly string[]; next: readonly string[] }): RestartOnlyChange[] => {
  const out: RestartOnlyChange[] = [];
  for (const which of ['proxy', 'admin'] as const) {
    if (!same(prev.listen[which], next.listen[which])) out.push({ path: `listen.${which}`, reason: 'the listener is bound at start' });
  }
  if (!same(prev.store, next.store)) out.push({ path: 'store', reason: 'the store (and its Redis connection) is opened at start' });
  if (prev.limits.maxHeaderBytes !== next.limits.maxHeaderBytes) out.push({ path: 'limits.maxHeaderBytes', reason: "Node's HTTP parsers are made with it at start" });
  if (prev.agent.id !== next.agent.id) out.push({ path: 'agent.id', reason: 'the budget identity: spend and kill switches so far are kept under the old id' });
  if (prev.sloCounters.flushIntervalMs !== next.sloCounters.flushIntervalMs) out.push({ path: 'sloCounters.flushIntervalMs', reason: 'the SLO counters flush on a timer set at start' });
  if (prev.budgets.alertPercent !== next.budgets.alertPercent) out.push({ path: 'budgets.alertPercent', reason: 'the budget store is made with it at start' });
  const longest = (c: Config) => Math.max(...c.routes.map((r) => r.timeouts.totalMs));
  if (longest(next) > longest(prev)) {
    out.push({ path: 'routes[].timeouts.totalMs', reason: `longer than the longest at start (${longest(prev)} ms): the store holds reservations for that long plus a minute` });
  }
  if (!same(prev.intercept, next.intercept)) out.push({ path: 'intercept', reason: 'the pod CA and the tunnel server are made at start' });
  const known = new Set(interceptedHosts.prev);
  const added = interceptedHosts.next.filter((h) => !known.has(h));
  if (added.length > 0) {
    out.push({ path: 'routes[].match.hosts', reason: `newly intercepted ${added.join(', ')}: the pod CA was made (and name-constrained) for the hosts intercepted at start` });
  }
  return out;
};

/** How two route lists differ, by name. */
export const routeChanges = (prev: Config, next: Config): { added: string[]; removed: string[]; changed: string[] } => {
  const before = new Map(prev.routes.map((r) => [r.name, r]));
  const after = new Set(next.routes.map((r) => r.name));
  return {
    added: next.routes.filter((r) => !before.has(r.name)).map((r) => r.name),
    removed: prev.routes.filter((r) => !after.has(r.name)).map((r) => r.name),
    changed: next.routes.filter((r) => before.has(r.name) && !same(before.get(r.name), r)).map((r) => r.name),
  };
};
