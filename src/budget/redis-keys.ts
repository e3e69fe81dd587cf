import type { ReservedScope, ScopeRef } from './store.js';

/**
 * The hash tag of a scope's Redis keys (issue 14: keys sharded by scope, see RedisStore): an agent's windows and the
 * workflows it runs `{<prefix>:a:<agent>}`, a workflow naming no agent `{<prefix>:w:<id>}`, a route
 * `{<prefix>:r:<route>}`, the fleet `{<prefix>:f}`. RedisStore's counters and RedisLeaseSource's lease hashes share
 * it, so a scope's counters and its lease sit on one slot.
 */
export const scopeTag = (prefix: string, scope: ScopeRef): string => {
  switch (scope.kind) {
    case 'agent':
      return `{${prefix}:a:${scope.id}}`;
    case 'workflow':
      return scope.agent !== undefined ? `{${prefix}:a:${scope.agent}}` : `{${prefix}:w:${scope.id}}`;
    case 'route':
      return `{${prefix}:r:${scope.id}}`;
    case 'fleet':
      return `{${prefix}:f}`;
  }
};

/** Counters hash of a scope window, as the per-call scripts keep it: `{fusebox:a:pod-1}:day:2026-11-22`, `{fusebox:a:pod-1}:wf:w1`. */
export const counterKey = (prefix: string, s: ReservedScope): string => {
  const tag = scopeTag(prefix, s.scope);
  return s.scope.kind === 'workflow' ? `${tag}:wf:${s.scope.id}` : `${tag}:${s.window}:${s.windowId}`;
};
