import { describe, expect, it } from 'vitest';
import { resolveInjectOptions } from '../../src/deploy/options.js';
import { planAgentEnv } from '../../src/deploy/agent-env.js';

const o = resolveInjectOptions();
const REQUIRED = 'localhost,127.0.0.1,::1,.svc,.cluster.local';

describe('planAgentEnv', () => {
  it('appends every proxy variable, both NO_PROXY spellings, NODE_USE_ENV_PROXY and the five CA trust variables to a container without env', () => {
    expect(planAgentEnv('agent', undefined, o)).toEqual({
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
        { op: 'append', name: 'NODE_EXTRA_CA_CERTS', value: '/var/run/fusebox-ca/ca.crt' },
        { op: 'append', name: 'SSL_CERT_FILE', value: '/var/run/fusebox-ca/ca-bundle.crt' },
        { op: 'append', name: 'REQUESTS_CA_BUNDLE', value: '/var/run/fusebox-ca/ca-bundle.crt' },
        { op: 'append', name: 'CURL_CA_BUNDLE', value: '/var/run/fusebox-ca/ca-bundle.crt' },
        { op: 'append', name: 'GIT_SSL_CAINFO', value: '/var/run/fusebox-ca/ca-bundle.crt' },
      ],
    });
  });

  it('with ca off sets no trust variable and leaves the ones the container has alone', () => {
    const plan = planAgentEnv('agent', [{ name: 'SSL_CERT_FILE', value: '/etc/ssl/corp.pem' }], { ...o, ca: false });
    expect(plan.ok && plan.warnings).toEqual([]);
    expect(plan.ok && plan.edits.map((e) => (e.op === 'append' ? e.name : `set ${e.index}`))).toEqual([
      'HTTP_PROXY',
      'HTTPS_PROXY',
      'http_proxy',
      'https_proxy',
      'NO_PROXY',
      'no_proxy',
      'NODE_USE_ENV_PROXY',
    ]);
  });

  it('keeps a trust variable that already names the pod CA file, so injecting twice adds nothing', () => {
    const plan = planAgentEnv('agent', [{ name: 'NODE_EXTRA_CA_CERTS', value: '/var/run/fusebox-ca/ca.crt' }], o);
    expect(plan.ok && plan.edits.filter((e) => e.op === 'set' || e.name === 'NODE_EXTRA_CA_CERTS')).toEqual([]);
  });

  it('refuses to replace a CA file the container trusts, naming it and the three ways out', () => {
    const env = [
      { name: 'REQUESTS_CA_BUNDLE', value: '/etc/ssl/corp-bundle.pem' },
      { name: 'NODE_EXTRA_CA_CERTS', valueFrom: { configMapKeyRef: { name: 'ca', key: 'path' } } },
    ];
    const plan = planAgentEnv('agent', env, o);
    expect(plan).toEqual({
      ok: false,
      reasons: [
        'container "agent" already sets NODE_EXTRA_CA_CERTS from valueFrom (its value is unknown here), REQUESTS_CA_BUNDLE to "/etc/ssl/corp-bundle.pem"; ' +
          "Fusebox will not silently replace them: the pod's CA bundle holds only the system roots and the pod CA, so a CA of yours " +
          'would stop being trusted (re-run with --override-proxy-env to replace, with --no-ca to leave the trust variables alone, ' +
          'or opt the workload out with the annotation fusebox.io/inject: "false")',
      ],
    });
  });

  it('with overrideProxyEnv replaces a conflicting CA file and reports it', () => {
    const plan = planAgentEnv('agent', [{ name: 'SSL_CERT_FILE', value: '/etc/ssl/corp.pem' }], { ...o, overrideProxyEnv: true });
    expect(plan.ok && plan.edits.filter((e) => e.op === 'set')).toEqual([{ op: 'set', index: 0, value: '/var/run/fusebox-ca/ca-bundle.crt' }]);
    expect(plan.ok && plan.warnings).toEqual(['container "agent": replaced SSL_CERT_FILE set to "/etc/ssl/corp.pem"']);
  });

  it('sets the SDK base URLs asked for on the proxy port, after the other variables', () => {
    const plan = planAgentEnv('agent', [], { ...o, proxyPort: 14000, baseUrls: { openai: '/openai/v1', anthropic: '/anthropic' } });
    expect(plan.ok && plan.edits.slice(-2)).toEqual([
      { op: 'append', name: 'OPENAI_BASE_URL', value: 'http://127.0.0.1:14000/openai/v1' },
      { op: 'append', name: 'ANTHROPIC_BASE_URL', value: 'http://127.0.0.1:14000/anthropic' },
    ]);
  });

  it.each(['http://127.0.0.1:4000/openai/v1', 'http://localhost:4000/openai/v1/'])('keeps a base URL already at the same place (%s)', (value) => {
    const plan = planAgentEnv('agent', [{ name: 'OPENAI_BASE_URL', value }], { ...o, baseUrls: { openai: '/openai/v1' } });
    expect(plan.ok && plan.edits.filter((e) => e.op === 'set' || e.name === 'OPENAI_BASE_URL')).toEqual([]);
  });

  it('refuses to replace a base URL pointing elsewhere (a gateway, another prefix), unless overrideProxyEnv', () => {
    const env = [{ name: 'OPENAI_BASE_URL', value: 'https://llm-gateway.example.com/v1' }];
    const plan = planAgentEnv('agent', env, { ...o, baseUrls: { openai: '/openai/v1' } });
    expect(plan).toEqual({ ok: false, reasons: [expect.stringContaining('already sets OPENAI_BASE_URL to "https://llm-gateway.example.com/v1"')] });
    expect(!plan.ok && plan.reasons[0]).toContain('leave that provider out of --base-url');
    const replaced = planAgentEnv('agent', env, { ...o, baseUrls: { openai: '/openai/v1' }, overrideProxyEnv: true });
    expect(replaced.ok && replaced.edits.filter((e) => e.op === 'set')).toEqual([{ op: 'set', index: 0, value: 'http://127.0.0.1:4000/openai/v1' }]);
  });

  it.each(['http://127.0.0.1:4000', 'http://localhost:4000/', 'http://[::1]:4000', 'HTTP://LOCALHOST:4000'])(
    'accepts %s as already pointing at the sidecar',
    (value) => {
      const plan = planAgentEnv('agent', [{ name: 'HTTP_PROXY', value }], o);
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
    const plan = planAgentEnv('agent', [{ name: 'https_proxy', value }], o);
    expect(plan).toEqual({ ok: false, reasons: [expect.stringContaining(`already sets https_proxy to "${value}"`)] });
  });

  it('refuses a proxy variable taken from valueFrom, whose value cannot be checked', () => {
    const plan = planAgentEnv('agent', [{ name: 'HTTP_PROXY', valueFrom: { secretKeyRef: { name: 's', key: 'k' } } }], o);
    expect(plan).toEqual({ ok: false, reasons: [expect.stringContaining('HTTP_PROXY from valueFrom (its value is unknown here)')] });
  });

  it('with overrideProxyEnv sets every duplicate of a conflicting variable, by its index', () => {
    const env = [
      { name: 'HTTP_PROXY', value: 'http://a:1' },
      { name: 'X', value: 'y' },
      { name: 'HTTP_PROXY', value: 'http://b:2' },
    ];
    const plan = planAgentEnv('agent', env, { ...o, overrideProxyEnv: true });
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
    const plan = planAgentEnv('agent', env, o);
    const merged = 'example.com,.svc,LOCALHOST,127.0.0.1,::1,.cluster.local';
    expect(plan.ok && plan.edits.filter((e) => e.op === 'set')).toEqual([
      { op: 'set', index: 1, value: merged },
      { op: 'set', index: 0, value: merged },
    ]);
  });

  it('leaves a user-set NODE_USE_ENV_PROXY alone, even 0', () => {
    const plan = planAgentEnv('agent', [{ name: 'NODE_USE_ENV_PROXY', value: '0' }], o);
    expect(plan.ok && plan.edits.some((e) => e.op === 'append' && e.name === 'NODE_USE_ENV_PROXY')).toBe(false);
    expect(plan.ok && plan.edits.some((e) => e.op === 'set')).toBe(false);
  });

  it('uses the configured proxy port and NO_PROXY extras', () => {
    const plan = planAgentEnv('agent', [], { ...o, proxyPort: 14000, clusterDomain: 'corp.local', noProxy: ['10.0.0.0/8'] });
    expect(plan.ok && plan.edits.slice(0, 1)).toEqual([{ op: 'append', name: 'HTTP_PROXY', value: 'http://127.0.0.1:14000' }]);
    expect(plan.ok && plan.edits.find((e) => e.op === 'append' && e.name === 'NO_PROXY')).toEqual({
      op: 'append',
      name: 'NO_PROXY',
      value: `${REQUIRED},.corp.local,10.0.0.0/8`,
    });
  });

  it('refuses an env that is not a list', () => {
    expect(planAgentEnv('agent', { HTTP_PROXY: 'x' }, o)).toEqual({ ok: false, reasons: ['container "agent": env is not a list'] });
  });
});
