import { describe, expect, it } from 'vitest';
import { resolveInjectOptions } from '../../src/deploy/options.js';
import { planProxyEnv } from '../../src/deploy/proxy-env.js';

const o = resolveInjectOptions();
const REQUIRED = 'localhost,127.0.0.1,::1,.svc,.cluster.local';

describe('planProxyEnv', () => {
  it('appends every proxy variable, both NO_PROXY spellings and NODE_USE_ENV_PROXY to a container without env', () => {
    expect(planProxyEnv('agent', undefined, o)).toEqual({
      ok: true,
      warnings: [],
      edits: [
        { op: 'append', name: 'HTTP_PROXY', value: 'http://127.0.0.1:4000' },
        { op: 'append', name: 'HTTPS_PROXY', value: 'http://127.0.0.1:4000' },
        { op: 'append', name: 'http_proxy', value: 'http://127.0.0.1:4000' },
        { op: 'append', name: 'https_proxy', value: 'http://127.0.0.1:4000' },
        { op: 'append', name: 'NO_PROXY', value: REQUIRED },
        { op: 'append', name: 'no_proxy', value: REQUIRED },
        { op: 'append', name: 'NODE_USE_ENV_PROXY', value: '1' },
      ],
    });
  });

  it.each(['http://127.0.0.1:4000', 'http://localhost:4000/', 'http://[::1]:4000', 'HTTP://LOCALHOST:4000'])(
    'accepts %s as already pointing at the sidecar',
    (value) => {
      const plan = planProxyEnv('agent', [{ name: 'HTTP_PROXY', value }], o);
      expect(plan.ok).toBe(true);
      if (plan.ok) expect(plan.edits.filter((e) => e.op === 'set')).toEqual([]);
    },
  );

  it.each([
    ['another port', 'http://127.0.0.1:3128'],
    ['https to the sidecar', 'https://127.0.0.1:4000'],
    ['another host', 'http://proxy:4000'],
    ['an empty value (proxy switched off on purpose)', ''],
    ['a $(VAR) reference', '$(CORP_PROXY)'],
  ])('refuses a proxy set to %s', (_what, value) => {
    const plan = planProxyEnv('agent', [{ name: 'https_proxy', value }], o);
    expect(plan).toEqual({ ok: false, reasons: [expect.stringContaining(`already sets https_proxy to "${value}"`)] });
  });

  it('refuses a proxy variable taken from valueFrom, whose value cannot be checked', () => {
    const plan = planProxyEnv('agent', [{ name: 'HTTP_PROXY', valueFrom: { secretKeyRef: { name: 's', key: 'k' } } }], o);
    expect(plan).toEqual({ ok: false, reasons: [expect.stringContaining('HTTP_PROXY from valueFrom (its value is unknown here)')] });
  });

  it('with overrideProxyEnv sets every duplicate of a conflicting variable, by its index', () => {
    const env = [
      { name: 'HTTP_PROXY', value: 'http://a:1' },
      { name: 'X', value: 'y' },
      { name: 'HTTP_PROXY', value: 'http://b:2' },
    ];
    const plan = planProxyEnv('agent', env, { ...o, overrideProxyEnv: true });
    expect(plan.ok && plan.edits.filter((e) => e.op === 'set')).toEqual([
      { op: 'set', index: 0, value: 'http://127.0.0.1:4000' },
      { op: 'set', index: 2, value: 'http://127.0.0.1:4000' },
    ]);
  });

  it('merges both NO_PROXY spellings into one value, trimming spaces and dropping case-insensitive duplicates', () => {
    const env = [
      { name: 'no_proxy', value: ' Example.com , LOCALHOST,,' },
      { name: 'NO_PROXY', value: 'example.com,.svc' },
    ];
    const plan = planProxyEnv('agent', env, o);
    const merged = 'example.com,.svc,LOCALHOST,127.0.0.1,::1,.cluster.local';
    expect(plan.ok && plan.edits.filter((e) => e.op === 'set')).toEqual([
      { op: 'set', index: 1, value: merged },
      { op: 'set', index: 0, value: merged },
    ]);
  });

  it('leaves a user-set NODE_USE_ENV_PROXY alone, even 0', () => {
    const plan = planProxyEnv('agent', [{ name: 'NODE_USE_ENV_PROXY', value: '0' }], o);
    expect(plan.ok && plan.edits.some((e) => e.op === 'append' && e.name === 'NODE_USE_ENV_PROXY')).toBe(false);
    expect(plan.ok && plan.edits.some((e) => e.op === 'set')).toBe(false);
  });

  it('uses the configured proxy port and NO_PROXY extras', () => {
    const plan = planProxyEnv('agent', [], { ...o, proxyPort: 14000, clusterDomain: 'corp.local', noProxy: ['10.0.0.0/8'] });
    expect(plan.ok && plan.edits.slice(0, 1)).toEqual([{ op: 'append', name: 'HTTP_PROXY', value: 'http://127.0.0.1:14000' }]);
    expect(plan.ok && plan.edits.find((e) => e.op === 'append' && e.name === 'NO_PROXY')).toEqual({
      op: 'append',
      name: 'NO_PROXY',
      value: `${REQUIRED},.corp.local,10.0.0.0/8`,
    });
  });

  it('refuses an env that is not a list', () => {
    expect(planProxyEnv('agent', { HTTP_PROXY: 'x' }, o)).toEqual({ ok: false, reasons: ['container "agent": env is not a list'] });
  });
});
