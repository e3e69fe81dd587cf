import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { registerAdmin } from '../../src/http/admin.js';
import { registerAdminUi, UI_CSP, uiDir } from '../../src/http/admin-ui.js';
import { createMetrics } from '../../src/telemetry/metrics.js';

const admin = async (dir?: string) => {
  const app = Fastify();
  registerAdmin(app, { metrics: createMetrics({ defaultMetrics: false }), token: undefined, tokenEnv: 'FUSEBOX_ADMIN_TOKEN', isReady: () => true });
  registerAdminUi(app, dir);
  await app.ready();
  return app;
};

describe('the live page files on the admin listener', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('finds ui/ at the package root from the sources, and the page there loads only its own script and style', () => {
    const dir = uiDir();
    expect(existsSync(join(dir, 'index.html'))).toBe(true);
    const html = readFileSync(join(dir, 'index.html'), 'utf8');
    expect([...html.matchAll(/<script\b[^>]*>/g)].map((m) => m[0])).toEqual(['<script src="/ui.js" defer>']);
    expect(html).not.toMatch(/\sstyle=|\son[a-z]+=/);
    expect(html).toContain('<link rel="stylesheet" href="/ui.css">');
    // What the page needs and nothing more: no inline script or style, no other origin, no eval.
    expect(UI_CSP).toMatch(/^default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';/);
    expect(UI_CSP).not.toMatch(/unsafe|https?:|\*/);
  });

  it('serves each file with its type, no-store and the CSP, with no token', async () => {
    const app = await admin();
    for (const [url, type, file] of [['/', 'text/html', 'index.html'], ['/ui.js', 'text/javascript', 'live.js'], ['/ui.css', 'text/css', 'live.css']] as const) {
      const res = await app.inject({ url });
      expect(res.statusCode, url).toBe(200);
      expect(res.headers['content-type'], url).toBe(`${type}; charset=utf-8`);
      expect(res.headers['cache-control'], url).toBe('no-store');
      expect(res.headers['content-security-policy'], url).toBe(UI_CSP);
      expect(res.headers['x-content-type-options'], url).toBe('nosniff');
      expect(res.body, url).toBe(readFileSync(join(uiDir(), file), 'utf8'));
    }
    await app.close();
  });

  it('answers 500 INTERNAL naming the missing file when an install lacks one, and serves the others', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fusebox-ui-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'index.html'), '<!doctype html><title>x</title>');
    const app = await admin(dir);
    expect((await app.inject({ url: '/' })).statusCode).toBe(200);
    const res = await app.inject({ url: '/ui.js' });
    expect(res.statusCode).toBe(500);
    expect(res.headers['x-fusebox-error']).toBe('INTERNAL');
    expect(res.json()).toMatchObject({ code: 'INTERNAL', message: `the live page's file live.js is missing from this install (expected in ${dir})` });
    await app.close();
  });
});
