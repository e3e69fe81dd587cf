import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { splitRequestHeaders } from '../../src/http/headers.js';
import { redactPath } from '../../src/telemetry/redact.js';
import { RouteTable } from '../../src/http/route-table.js';
import { normalizeHost, parseConnectAuthority, parseHostEntry } from '../../src/net/address.js';

const table = () => {
  const cfg = parseConfig({
    routes: [
      { name: 'openai', match: { pathPrefix: '/openai', hosts: ['api.openai.com'] }, upstream: { url: 'https://api.openai.com' } },
      { name: 'openai-files', match: { pathPrefix: '/openai/v1/files', hosts: ['api.openai.com'], hostPathPrefix: '/v1/files' }, upstream: { url: 'https://api.openai.com' } },
      { name: 'keep', match: { pathPrefix: '/keep/' }, stripPrefix: false, upstream: { url: 'http://127.0.0.1:1' } },
      { name: 'gh', match: { hosts: ['API.GitHub.com', 'api.github.com:8443'] }, upstream: { url: 'https://api.github.com' } },
      { name: 'local', match: { hosts: ['127.0.0.1:9000', '[::1]:9001'] }, upstream: { url: 'http://127.0.0.1:9000' } },
    ],
  });
  return new RouteTable(cfg.routes.map((config) => ({ config })));
};

describe('route table', () => {
  it('matches path prefixes at segment boundaries, most specific first, stripping the prefix', () => {
    const t = table();
    expect(t.byPrefix('/openai/v1/chat?x=1')).toMatchObject({ route: { config: { name: 'openai' } }, path: '/v1/chat?x=1' });
    expect(t.byPrefix('/openai/v1/files/abc')).toMatchObject({ route: { config: { name: 'openai-files' } }, path: '/abc' });
    // The rest after the prefix is appended as is: the prefix alone reaches the upstream URL's own path exactly.
    expect(t.byPrefix('/openai')).toMatchObject({ path: '' });
    expect(t.byPrefix('/openai?k=v')).toMatchObject({ path: '?k=v' });
    expect(t.byPrefix('/openaiX/v1')).toBeUndefined();
    expect(t.byPrefix('/keep/a/b')).toMatchObject({ route: { config: { name: 'keep' } }, path: '/keep/a/b' });
  });

  it('finds, among many routes, exactly the route a scan of every prefix (longest first) would find', () => {
    // Prefixes and paths from a small alphabet, so they share segments, nest, end in "/" and differ by a character:
    // the index by first segment must never skip the route the full scan picks, nor change which one it is.
    let seed = 7;
    const rnd = (n: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
    const pick = <T>(xs: readonly T[]) => xs[rnd(xs.length)]!;
    const segment = () => pick(['a', 'ab', 'b', 'v1', 'a.b', 'x-y', '']);
    const path = (min = 0) => `/${Array.from({ length: min + rnd(4 - min) }, segment).join('/')}${pick(['', '', '/', '?q=1'])}`;
    // Mostly prefixes of two or three segments: many paths share a first segment with some prefix and still match
    // only `/` (which every candidate list must keep), or a shorter prefix of another segment never.
    const prefixes = new Set(['/', '/a', ...Array.from({ length: 60 }, () => path(2)).map((p) => p.split('?')[0]!)]);
    const cfg = parseConfig({
      routes: [...prefixes].map((pathPrefix, i) => ({ name: `r${i}`, match: { pathPrefix }, upstream: { url: 'http://127.0.0.1:1' } })),
    });
    const t = new RouteTable(cfg.routes.map((config) => ({ config })));
    const sorted = [...cfg.routes].sort((a, b) => b.match.pathPrefix!.length - a.match.pathPrefix!.length);
    const boundary = (url: string, p: string) => url.startsWith(p) && (p.endsWith('/') || url.length === p.length || url[p.length] === '/' || url[p.length] === '?');
    for (let i = 0; i < 2_000; i++) {
      const url = `${path()}${pick(['', 'c', '/c', '?k=v'])}`;
      expect(t.byPrefix(url)?.route.config.name, url).toBe(sorted.find((r) => boundary(url, r.match.pathPrefix!))?.name);
    }
  });

  it('matches proxy-mode hosts and ports with the host path prefix', () => {
    const t = table();
    expect(t.byHost('api.github.com', 443, '/repos')?.config.name).toBe('gh');
    expect(t.byHost('api.github.com', 80, '/repos')?.config.name).toBe('gh');
    expect(t.byHost('api.github.com', 8443, '/repos')?.config.name).toBe('gh');
    expect(t.byHost('api.openai.com', 443, '/v1/files/1')?.config.name).toBe('openai-files');
    expect(t.byHost('api.openai.com', 443, '/v1/chat')?.config.name).toBe('openai');
    expect(t.byHost('evil.com', 443, '/')).toBeUndefined();
  });

  it('refuses a listed host on a port it does not list', () => {
    const t = table();
    expect(t.byHost('api.openai.com', 8080, '/v1/chat')).toBeUndefined();
    expect(t.byHost('127.0.0.1', 9000, '/')?.config.name).toBe('local');
    expect(t.byHost('127.0.0.1', 9001, '/')).toBeUndefined();
    expect(t.byHost('127.0.0.1', 80, '/')).toBeUndefined();
  });

  it('allows CONNECT only to listed hosts on listed ports, IPv6 included', () => {
    const t = table();
    expect(t.forConnect('api.github.com', 8443)?.config.name).toBe('gh');
    expect(t.forConnect('api.openai.com', 443)?.config.name).toBe('openai');
    expect(t.forConnect('api.openai.com', 22)).toBeUndefined();
    expect(t.forConnect('example.com', 443)).toBeUndefined();
    expect(t.forConnect('[::1]', 9001)?.config.name).toBe('local');
  });
});

describe('host normalization', () => {
  it('gives every spelling of an address one form', () => {
    for (const spelling of ['127.1', '0x7f000001', '2130706433', '0177.0.0.1', '[::ffff:127.0.0.1]', '::ffff:127.0.0.1', '127.0.0.1']) {
      expect(normalizeHost(spelling), spelling).toBe('127.0.0.1');
    }
    expect(normalizeHost('::1')).toBe('[::1]');
    expect(normalizeHost('[::1]')).toBe('[::1]');
    expect(normalizeHost('API.Example.COM.')).toBe('api.example.com');
    for (const bad of ['', 'a b', 'x/y', 'u@h', '256.1.1.1', '[::1']) expect(normalizeHost(bad), bad).toBeUndefined();
  });

  it('parses CONNECT authorities (port required) and match.hosts entries (port optional: 80 and 443)', () => {
    expect(parseConnectAuthority('[::1]:443')).toEqual({ host: '[::1]', port: 443 });
    expect(parseConnectAuthority('127.1:80')).toEqual({ host: '127.0.0.1', port: 80 });
    expect(parseConnectAuthority('api.x')).toBeUndefined();
    expect(parseConnectAuthority('api.x:0')).toBeUndefined();
    expect(parseConnectAuthority('::1:443')).toBeUndefined();
    expect(parseHostEntry('api.x')).toEqual({ host: 'api.x', ports: [80, 443] });
    expect(parseHostEntry('API.x:8443')).toEqual({ host: 'api.x', ports: [8443] });
    expect(parseHostEntry('[::1]:9')).toEqual({ host: '[::1]', ports: [9] });
    expect(parseHostEntry('https://api.x')).toMatch(/without a scheme/);
    expect(parseHostEntry('api.x:99999')).toMatch(/not a port/);
  });

  it('refuses a config where two routes list one host and port, or disagree on connect mode', () => {
    const route = (name: string, hosts: string[], extra: Record<string, unknown> = {}) => ({ name, match: { hosts, ...extra }, upstream: { url: 'http://127.0.0.1:1' } });
    expect(() => parseConfig({ routes: [route('a', ['api.x']), route('b', ['API.x:443'])] })).toThrow(/api\.x:443 \(hostPathPrefix \/\) is already served by routes\[0\] \(name "a"\)/);
    expect(() => parseConfig({ routes: [route('a', ['127.0.0.1:9']), route('b', ['127.1:9'])] })).toThrow(/127\.0\.0\.1:9 .* already served/);
    expect(() => parseConfig({ routes: [route('a', ['api.x']), route('b', ['api.x'], { hostPathPrefix: '/v2', connect: 'tunnel' })] })).toThrow(/must agree/);
    expect(() => parseConfig({ routes: [route('a', ['api.x']), route('b', ['api.x'], { hostPathPrefix: '/v2' })] })).not.toThrow();
    expect(() => parseConfig({ routes: [route('a', ['api.x'], { connectPorts: [443] })] })).toThrow(/replaced by ports in match.hosts/);
  });
});

describe('headers', () => {
  it('drops hop-by-hop headers, those named by Connection, and reads x-fusebox-* control headers', () => {
    const { headers, control } = splitRequestHeaders({
      connection: 'close, X-Custom-Hop',
      'x-custom-hop': '1',
      te: 'trailers',
      'transfer-encoding': 'chunked',
      upgrade: 'websocket',
      'proxy-authorization': 'Basic x',
      host: 'h',
      expect: '100-continue',
      'x-fusebox-workflow': 'wf-9',
      'x-fusebox-fault': 'abort=503',
      'x-fusebox-other': 'dropped',
      accept: 'application/json',
    });
    expect(headers).toEqual({ accept: 'application/json' });
    expect(control).toEqual({ workflow: 'wf-9', fault: 'abort=503' });
  });

  it('redacts key-like query parameters in logged paths', () => {
    expect(redactPath('/v1/x?api_key=abc&model=gpt&token=t&access%5Ftoken=z')).toBe('/v1/x?api_key=[REDACTED]&model=gpt&token=[REDACTED]&access%5Ftoken=[REDACTED]');
    expect(redactPath('/plain')).toBe('/plain');
  });
});
