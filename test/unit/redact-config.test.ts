import { describe, expect, it } from 'vitest';
import { redactConfig, redactUrl } from '../../src/telemetry/redact.js';

describe('redactConfig: the config in effect, fit for an open admin port', () => {
  it('hides headers.add values and URL passwords and key-like query values, keeps env var names and the rest', () => {
    const config = {
      store: { kind: 'redis', url: 'redis://default:hunter2@redis:6379/0' },
      listen: { admin: { tokenEnv: 'FUSEBOX_ADMIN_TOKEN' } },
      routes: [
        {
          name: 'r',
          upstream: { url: 'https://api.example.com/v1?key=abc123&region=eu' },
          credential: { env: 'OPENAI_API_KEY', header: 'authorization', prefix: 'Bearer ' },
          headers: { add: { 'x-api-key': 'sk-secret', 'x-team': 'blue' }, remove: ['cookie'] },
          fallback: [{ type: 'upstream', url: 'https://b.example.com', headers: { add: { authorization: 'Bearer t0ken' }, remove: [] } }],
        },
      ],
    };
    const shown = redactConfig(config);
    const text = JSON.stringify(shown);
    for (const secret of ['hunter2', 'abc123', 'sk-secret', 't0ken', 'blue']) expect(text).not.toContain(secret);
    expect(shown).toMatchObject({
      store: { kind: 'redis', url: 'redis://default:REDACTED@redis:6379/0' },
      listen: { admin: { tokenEnv: 'FUSEBOX_ADMIN_TOKEN' } },
      routes: [
        {
          upstream: { url: 'https://api.example.com/v1?key=[REDACTED]&region=eu' },
          credential: { env: 'OPENAI_API_KEY' },
          headers: { add: { 'x-api-key': '[REDACTED]', 'x-team': '[REDACTED]' }, remove: ['cookie'] },
          fallback: [{ url: 'https://b.example.com', headers: { add: { authorization: '[REDACTED]' } } }],
        },
      ],
    });
    // The config itself is untouched.
    expect(config.routes[0]!.headers.add['x-api-key']).toBe('sk-secret');
  });

  it('shows a URL as written when it holds nothing secret, and hides a string that is not a URL whole', () => {
    expect(redactUrl('http://127.0.0.1:4000')).toBe('http://127.0.0.1:4000');
    expect(redactUrl('not a url with a p4ssword')).toBe('[REDACTED]');
  });
});
