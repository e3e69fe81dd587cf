import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfigFile, parseConfig } from '../../src/config/load.js';
import { closest } from '../../src/config/problems.js';

const route = { name: 'r', match: { pathPrefix: '/r' }, upstream: { url: 'http://127.0.0.1:1' } };
const problems = (raw: unknown, env: NodeJS.ProcessEnv = {}): string[] => {
  try {
    parseConfig(raw, 'test', env);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
};

describe('config schema', () => {
  it('fills documented defaults: loopback listeners, retries, breaker, memory store', () => {
    const cfg = parseConfig({ routes: [route] }, 'test', {});
    expect(cfg.listen.proxy).toEqual({ host: '127.0.0.1', port: 4000 });
    expect(cfg.listen.admin).toMatchObject({ host: '127.0.0.1', port: 9901 });
    expect(cfg.routes[0]!.retry).toMatchObject({ maxRetries: 3, baseMs: 500, capMs: 30_000, budgetPercent: 20 });
    expect(cfg.routes[0]!.breaker).toMatchObject({ consecutiveFailures: 5, errorRatePercent: 50, minCalls: 20, resetMs: 30_000 });
    expect(cfg.store.kind).toBe('memory');
  });

  it('listen.proxy.port defaults to 4000 when only the host is given, as the README documents', () => {
    expect(parseConfig({ listen: { proxy: { host: '0.0.0.0' } }, routes: [route] }, 'test', {}).listen.proxy).toEqual({ host: '0.0.0.0', port: 4000 });
    expect(parseConfig({ listen: { proxy: {} }, routes: [route] }, 'test', {}).listen.proxy).toEqual({ host: '127.0.0.1', port: 4000 });
    expect(parseConfig({ listen: { proxy: { port: 0 } }, routes: [route] }, 'test', {}).listen.proxy.port).toBe(0);
  });

  it('names the common mistakes with their paths', () => {
    expect(problems({ routes: [] })).toEqual(['routes: needs at least one route: Fusebox forwards only to allow-listed destinations']);
    expect(problems({ routes: [{ ...route, upstream: { url: 'http://user:pw@host' } }] })[0]).toContain('routes[0] (name "r").upstream.url: must be an absolute http:// or https:// URL without credentials');
    expect(problems({ routes: [{ ...route, timeouts: { connectMs: '5s' } }] })).toEqual(['routes[0] (name "r").timeouts.connectMs: expected number, got string']);
    expect(problems({ routes: [route, { ...route }] })).toContain('routes[1].name: duplicate route name "r" (also routes[0])');
    expect(problems({ routes: [route, { ...route, name: 's' }] })).toContain('routes[1] (name "s").match.pathPrefix: "/r" is already taken by routes[0]');
    expect(problems({ routes: [{ ...route, fallback: [{ type: 'route', route: 'nope' }] }] })).toContain('routes[0] (name "r").fallback[0].route: no route named "nope" (routes: r)');
    expect(problems({ routes: [{ ...route, credential: { env: 'sk-live-123' } }] })[0]).toContain('routes[0] (name "r").credential.env: must be an environment variable name');
    expect(problems({ store: { kind: 'redis' }, routes: [route] })).toEqual(['store.url: is required when store.kind is "redis" (e.g. redis://127.0.0.1:6379)']);
    expect(problems({ store: { kind: 'redis', url: 'redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:70000' }, routes: [route] })).toEqual([
      'store.url: port 70000 of "10.0.0.2:70000" is not between 1 and 65535',
    ]);
    expect(problems({ store: { kind: 'redis', url: 'http://redis:6379' }, routes: [route] })).toEqual([
      'store.url: must start with redis://, rediss://, redis+cluster:// or rediss+cluster:// (got "http://")',
    ]);
    expect(problems({ store: { kind: 'redis', url: 'redis+cluster://10.0.0.1:7000,10.0.0.2:7000' }, routes: [route] })).toEqual([]);
    expect(problems({ routes: [{ ...route, retyr: {} }] })).toEqual(['routes[0] (name "r"): unknown key "retyr" (did you mean "retry"?)']);
    // Explicit names may not collide with each other or with a default name (`<type>-<index>`).
    expect(problems({ routes: [{ ...route, fallback: [{ type: 'upstream', url: 'http://127.0.0.1:2', name: 'cheap' }, { type: 'upstream', url: 'http://127.0.0.1:3', name: 'cheap' }] }] })).toEqual([
      'routes[0] (name "r").fallback[1].name: step name "cheap" is already used by fallback[0]',
    ]);
    expect(problems({ routes: [{ ...route, fallback: [{ type: 'upstream', url: 'http://127.0.0.1:2' }, { type: 'upstream', url: 'http://127.0.0.1:3', name: 'upstream-0' }] }] })).toEqual([
      'routes[0] (name "r").fallback[1].name: step name "upstream-0" is already used by fallback[0]',
    ]);
    expect(problems({ routes: [{ ...route, fallback: [{ type: 'upstream', url: 'http://127.0.0.1:2' }, { type: 'upstream', url: 'http://127.0.0.1:3' }] }] })).toEqual([]);
    expect(problems({ routes: [{ ...route, faults: { headerControl: true } }] })[0]).toContain('routes[0] (name "r").faults.headerControl: headerControl needs enabled: true');
    expect(problems({ routes: [{ ...route, faults: { enabled: true, headerControl: true } }] })).toEqual([]);
  });

  it('estimates OpenAI prompts from bytes unless a route asks for o200k, which only an OpenAI route may', () => {
    expect(parseConfig({ routes: [{ ...route, provider: 'openai' }] }, 'test', {}).routes[0]!.budget.tokenizer).toBe('bytes');
    expect(problems({ routes: [{ ...route, provider: 'openai', budget: { tokenizer: 'o200k' } }] })).toEqual([]);
    expect(problems({ routes: [{ ...route, provider: 'anthropic', budget: { tokenizer: 'o200k' } }] })).toEqual([
      'routes[0] (name "r").budget.tokenizer: o200k counts OpenAI tokens, but this route\'s provider is "anthropic": remove it (other providers\' prompts are estimated from their bytes)',
    ]);
  });

  it('refuses an SLO action "degrade" with no fallback step to degrade to, and a degradeToStep past the last step', () => {
    const steps = [{ type: 'static', body: 'a' }, { type: 'static', body: 'b' }];
    expect(problems({ routes: [{ ...route, slo: { onBudgetExhausted: 'degrade' } }] })).toEqual([
      'routes[0] (name "r").slo.onBudgetExhausted: "degrade" starts the fallback chain at step degradeToStep, but this route has no `fallback` steps: add some (e.g. a cheaper model) or choose alert, throttle or shed',
    ]);
    expect(problems({ routes: [{ ...route, slo: { onFastBurn: 'degrade' } }] })[0]).toMatch(/^routes\[0\] \(name "r"\)\.slo\.onFastBurn: "degrade" starts the fallback chain/);
    expect(problems({ routes: [{ ...route, fallback: steps, slo: { onFastBurn: 'degrade', degradeToStep: 2 } }] })).toEqual([
      'routes[0] (name "r").slo.degradeToStep: is 2, but the route has 2 fallback steps (degradeToStep counts from 0, so at most 1)',
    ]);
    expect(problems({ routes: [{ ...route, fallback: steps, slo: { onFastBurn: 'degrade', degradeToStep: 1 } }] })).toEqual([]);
    // Not degrading, or no SLOs at all: degradeToStep is never read.
    expect(problems({ routes: [{ ...route, slo: { onFastBurn: 'shed', degradeToStep: 4 } }] })).toEqual([]);
    expect(problems({ routes: [{ ...route, slo: { enabled: false, onBudgetExhausted: 'degrade' } }] })).toEqual([]);
  });

  it('reports cross-references (a fallback to an unknown route) in the same pass as unrelated mistakes', () => {
    const found = problems({
      listen: { proxy: { port: 'x' } },
      routes: [{ ...route, retry: { baseMs: 'fast' }, fallback: [{ type: 'bogus' }, { type: 'route', route: 'nope' }] }, 5],
    });
    expect(found).toContain('listen.proxy.port: expected number, got string');
    expect(found).toContain('routes[1]: expected object, got number');
    expect(found).toContain('routes[0] (name "r").fallback[1].route: no route named "nope" (routes: r)');
    // A route whose own name is malformed is reported there; a fallback to it is not called dangling.
    const misnamed = problems({ routes: [{ ...route, fallback: [{ type: 'route', route: 'bad name' }] }, { ...route, name: 'bad name', match: { pathPrefix: '/b' } }] });
    expect(misnamed).toContain('routes[1].name: must be 1-64 letters, digits, "_", "-" or "." (it becomes a metric label)');
    expect(misnamed.join('\n')).not.toContain('no route named');
  });

  it('expands ${VAR} and ${VAR:-default} in identities, and says which variable is missing', () => {
    expect(parseConfig({ agent: { id: '${POD_NAME}' }, routes: [route] }, 't', { POD_NAME: 'pod-1' }).agent.id).toBe('pod-1');
    expect(parseConfig({ agent: { id: '${POD_NAME:-local}' }, routes: [route] }, 't', {}).agent.id).toBe('local');
    expect(problems({ agent: { id: '${POD_NAME}' }, routes: [route] })[0]).toBe('agent.id: environment variable POD_NAME is not set (write ${POD_NAME:-default} to give a default)');
  });

  it('expands listen hosts, so one config serves a pod (loopback) and a published container', () => {
    const raw = () => ({ listen: { proxy: { host: '${FUSEBOX_LISTEN_HOST:-127.0.0.1}', port: 4000 }, admin: { host: '${FUSEBOX_LISTEN_HOST:-127.0.0.1}' } }, routes: [route] });
    expect(parseConfig(raw(), 't', {}).listen.proxy.host).toBe('127.0.0.1');
    const published = parseConfig(raw(), 't', { FUSEBOX_LISTEN_HOST: '0.0.0.0' });
    expect([published.listen.proxy.host, published.listen.admin.host]).toEqual(['0.0.0.0', '0.0.0.0']);
  });

  it('suggests the key meant for a misspelled one, from the keys of that very object', () => {
    expect(problems({ listen: { proxy: { prot: 4000 } }, routes: [route] })).toEqual(['listen.proxy: unknown key "prot" (did you mean "port"?)']);
    expect(problems({ routes: [{ ...route, retry: { baseMS: 100 } }] })).toEqual(['routes[0] (name "r").retry: unknown key "baseMS" (did you mean "baseMs"?)']);
    expect(problems({ routes: [{ ...route, tiemouts: {} }] })).toEqual(['routes[0] (name "r"): unknown key "tiemouts" (did you mean "timeouts"?)']);
    // A fallback step's keys are those of its `type`: `model` exists on upstream steps, not on static ones.
    expect(problems({ routes: [{ ...route, fallback: [{ type: 'upstream', url: 'http://b', modle: 'm' }] }] })).toEqual([
      'routes[0] (name "r").fallback[0]: unknown key "modle" (did you mean "model"?)',
    ]);
    expect(problems({ routes: [{ ...route, fallback: [{ type: 'static', body: 1, modle: 'm' }] }] })).toEqual([
      'routes[0] (name "r").fallback[0]: unknown key "modle" (allowed here: type, name, status, body, headers)',
    ]);
    // Nothing close: the allowed keys, so the reader does not have to open the reference.
    expect(problems({ store: { flavour: 'redis' }, routes: [route] })).toEqual([
      'store: unknown key "flavour" (allowed here: kind, url, tls, keyPrefix, timeoutMs, snapshotPath, snapshotIntervalMs, journalMaxEntries, commitDelayMs, lease)',
    ]);
    // Two unknown keys in one object: one line each (each has its own place in the file).
    expect(problems({ routes: [{ ...route, retyr: {}, breakr: {} }] })).toEqual([
      'routes[0] (name "r"): unknown key "retyr" (did you mean "retry"?)',
      'routes[0] (name "r"): unknown key "breakr" (did you mean "breaker"?)',
    ]);
    expect(closest('timeout', ['timeouts', 'retry'])).toBe('timeouts');
    expect(closest('xyz', ['timeouts', 'retry'])).toBeUndefined();
  });

  it('check-config gives FILE:LINE:COL for every problem, in file order, with the route name beside its index', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fusebox-cfg-'));
    try {
      const file = join(dir, 'bad.yaml');
      writeFileSync(
        file,
        [
          'agent: { id: "${NOT_SET}" }', // 1
          'routes:', // 2
          '  - name: a', // 3
          '    match: { pathPrefix: /a }', // 4
          '    upstream: { url: http://a }', // 5
          '  - name: chat', // 6
          '    match: { pathPrefix: /chat }', // 7
          '    upstream: { url: http://b }', // 8
          '    retry:', // 9
          '      baseMs: fast', // 10
          '    fallback:', // 11
          '      - { type: route, route: chta }', // 12
          '    tiemouts: {}', // 13
          '  - name: c', // 14
          '    match: { pathPrefix: /c }', // 15
        ].join('\n'),
      );
      let err: unknown;
      try {
        loadConfigFile(file, {});
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).problems).toEqual([
        `${file}:1:14: agent.id: environment variable NOT_SET is not set (write \${NOT_SET:-default} to give a default)`,
        `${file}:10:15: routes[1] (name "chat").retry.baseMs: expected number, got string`,
        `${file}:12:31: routes[1] (name "chat").fallback[0].route: no route named "chta" (routes: a, chat, c)`,
        `${file}:13:5: routes[1] (name "chat"): unknown key "tiemouts" (did you mean "timeouts"?)`,
        // A missing key: the map that lacks it.
        `${file}:14:5: routes[2] (name "c").upstream: is required (object)`,
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
