import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { configHash, restartOnlyChanges, routeChanges } from '../../src/config/reload.js';

const base = { routes: [{ name: 'a', match: { pathPrefix: '/a' }, upstream: { url: 'http://127.0.0.1:1' } }] };
const cfg = (over: Record<string, unknown> = {}) => parseConfig({ ...base, ...over }, 'test', {});
const paths = (prev: Record<string, unknown>, next: Record<string, unknown>, hosts = { prev: [] as string[], next: [] as string[] }) =>
  restartOnlyChanges(cfg(prev), cfg(next), hosts).map((c) => c.path);

describe('configHash', () => {
  it('is 12 hex digits, the same for configs that mean the same (defaults written or not), different otherwise', () => {
    expect(configHash(cfg())).toMatch(/^[0-9a-f]{12}$/);
    expect(configHash(cfg({ log: { level: 'info' } }))).toBe(configHash(cfg()));
    expect(configHash(cfg({ log: { level: 'debug' } }))).not.toBe(configHash(cfg()));
  });
});

describe('restartOnlyChanges', () => {
  it('accepts what a reload can apply: routes, caps, prices, body limit, log level, grace period', () => {
    expect(
      paths({}, {
        routes: [...base.routes, { name: 'b', match: { pathPrefix: '/b' }, upstream: { url: 'http://127.0.0.1:2' }, retry: { maxRetries: 1 } }],
        budgets: { agent: { dailyUsd: 5 } },
        limits: { maxRequestBodyBytes: 1024 },
        log: { level: 'warn' },
        shutdown: { graceMs: 1000 },
      }),
    ).toEqual([]);
  });

  it('names each setting only a restart applies', () => {
    expect(
      paths(
        {},
        {
          listen: { proxy: { port: 4001 }, admin: { host: '0.0.0.0' } },
          store: { keyPrefix: 'other' },
          limits: { maxHeaderBytes: 4096 },
          agent: { id: 'b' },
          sloCounters: { flushIntervalMs: 7000 },
          budgets: { alertPercent: 50 },
          intercept: { maxLeaves: 10 },
        },
      ),
    ).toEqual(['listen.proxy', 'listen.admin', 'store', 'limits.maxHeaderBytes', 'agent.id', 'sloCounters.flushIntervalMs', 'budgets.alertPercent', 'intercept']);
  });

  it('refuses a newly intercepted host (the pod CA is constrained to the hosts at start) but not one dropped', () => {
    expect(paths({}, {}, { prev: ['a.test', 'b.test'], next: ['a.test'] })).toEqual([]);
    const [change] = restartOnlyChanges(cfg(), cfg(), { prev: ['a.test'], next: ['a.test', 'c.test'] });
    expect(change).toMatchObject({ path: 'routes[].match.hosts' });
    expect(change?.reason).toContain('c.test');
  });

  it('refuses a longest timeouts.totalMs beyond the one at start (reservations are held that long), not a shorter one', () => {
    const withTotal = (totalMs: number) => ({ routes: [{ ...base.routes[0], timeouts: { totalMs } }] });
    expect(paths(withTotal(60_000), withTotal(30_000))).toEqual([]);
    expect(paths(withTotal(60_000), withTotal(90_000))).toEqual(['routes[].timeouts.totalMs']);
  });
});

describe('routeChanges', () => {
  it('lists routes added, removed and changed, by name', () => {
    const b = { name: 'b', match: { pathPrefix: '/b' }, upstream: { url: 'http://127.0.0.1:2' } };
    const c = { name: 'c', match: { pathPrefix: '/c' }, upstream: { url: 'http://127.0.0.1:3' } };
    const prev = cfg({ routes: [...base.routes, b] });
    const next = cfg({ routes: [{ ...base.routes[0], stripPrefix: false }, c] });
    expect(routeChanges(prev, next)).toEqual({ added: ['c'], removed: ['b'], changed: ['a'] });
  });
});
