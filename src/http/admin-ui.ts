import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { InternalError } from '../errors.js';

/*
 * The live page: `GET /` on the admin listener, three static files from `ui/` at the package root (shipped like
 * `config/`: package.json "files", the Dockerfile's COPY). The page polls `GET /admin/status` and calls the token-
 * protected admin API itself; nothing here reads the sidecar's state.
 */

/** `ui/` at the package root, from src/http/ or dist/src/http/. */
export const uiDir = (): string => {
  const here = fileURLToPath(new URL('.', import.meta.url));
  const candidates = [resolve(here, '../../ui'), resolve(here, '../../../ui')];
  return candidates.find((d) => existsSync(resolve(d, 'index.html'))) ?? candidates[0]!;
};

const ASSETS = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/ui.js': { file: 'live.js', type: 'text/javascript; charset=utf-8' },
  '/ui.css': { file: 'live.css', type: 'text/css; charset=utf-8' },
} as const;

/**
 * Same-origin files only, no inline script or style: an admin port reachable by others must not run what a route
 * name or a refusal message could smuggle in (the page also writes every value as text, never as HTML).
 * `img-src data:` is the empty favicon, so the browser asks for no /favicon.ico.
 */
export const UI_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** `GET /`, `/ui.js`, `/ui.css`: open like every GET of the admin listener (the buttons ask for the token). */
export const registerAdminUi = (app: FastifyInstance, dir: string = uiDir()): void => {
  for (const [path, { file, type }] of Object.entries(ASSETS)) {
    let body: Buffer | undefined;
    try {
      // Read once: the files are part of the install, like the code.
      body = readFileSync(resolve(dir, file));
    } catch {
      body = undefined;
    }
    app.get(path, async (_req, reply) => {
      if (body === undefined) throw new InternalError(`the live page's file ${file} is missing from this install (expected in ${dir})`);
      return reply
        .header('content-type', type)
        .header('cache-control', 'no-store')
        .header('content-security-policy', UI_CSP)
        .header('x-content-type-options', 'nosniff')
        .header('referrer-policy', 'no-referrer')
        .send(body);
    });
  }
};
