import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { redactPath, splitRequestHeaders } from '../../src/http/headers.js';
import { RouteTable } from '../../src/http/route-table.js';

const table = () => {
  const cfg = parseConfig({
    routes: [
      { name: 'openai', match: { pathPrefix: '/openai', hosts: ['api.openai.com'] }, upstream: { url: 'https://api.openai.com' } },
      { name: 'openai-files', match: { pathPrefix: '/openai/v1/files', hosts: ['api.openai.com'], hostPathPrefix: '/v1/files' }, upstream: { url: 'https://api.openai.com' } },
      { name: 'keep', match: { pathPrefix: '/keep/' }, stripPrefix: false, upstream: { url: 'http://127.0.0.1:1' } },
      { name: 'gh', match: { hosts: ['API.GitHub.com'], connectPorts: [443, 8443] }, upstream: { url: 'https://api.github.com' } },
    ],
  });
  return new RouteTable(cfg.routes.map((config) => ({ config })));
};

describe('route table', () => {
  it('matches path prefixes at segment boundaries, most specific first, stripping the prefix', () => {
    const t = table();
    expect(t.byPrefix('/openai/v1/chat?x=1')).toMatchObject({ route: { config: { name: 'openai' } }, path: '/v1/chat?x=1' });
    expect(t.byPrefix('/openai/v1/files/abc')).toMatchObject({ route: { config: { name: 'openai-files' } }, path: '/abc' });
    expect(t.byPrefix('/openai')).toMatchObject({ path: '/' });
    expect(t.byPrefix('/openai?k=v')).toMatchObject({ path: '/?k=v' });
    expect(t.byPrefix('/openaiX/v1')).toBeUndefined();
    expect(t.byPrefix('/keep/a/b')).toMatchObject({ route: { config: { name: 'keep' } }, path: '/keep/a/b' });
  });

  it('matches proxy-mode hosts case-insensitively with the host path prefix', () => {
    const t = table();
    expect(t.byHost('api.github.com', '/repos')?.config.name).toBe('gh');
    expect(t.byHost('API.OPENAI.COM', '/v1/files/1')?.config.name).toBe('openai-files');
    expect(t.byHost('api.openai.com', '/v1/chat')?.config.name).toBe('openai');
    expect(t.byHost('evil.com', '/')).toBeUndefined();
  });

  it('allows CONNECT only to listed hosts on listed ports', () => {
    const t = table();
    expect(t.forConnect('api.github.com', 8443)?.config.name).toBe('gh');
    expect(t.forConnect('api.openai.com', 443)?.config.name).toBe('openai');
    expect(t.forConnect('api.openai.com', 22)).toBeUndefined();
    expect(t.forConnect('example.com', 443)).toBeUndefined();
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
