import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { announce, requiredEnv } from './announce.js';

/**
 * Fusebox under test, built from `BENCH_CONFIG` (a JSON config object, see bench/targets.ts) exactly as
 * `src/main.ts` would build it from a file; only the listen ports are forced to 0. The code measured is the
 * compiled `dist/` that production runs (run.ts builds it first): under tsx every closure made per request
 * would also pay for esbuild's `__name` wrapper, which production does not. Logs go to this process's
 * stdout, which the orchestrator points at /dev/null: the cost of writing them is part of what is measured.
 * With `FUSEBOX_CA_DIR` set (the intercepted target), Fusebox writes its pod CA's `ca.crt` there before listening.
 * `BENCH_FUSEBOX_DIST` may be another revision's build (`--compare-rev`); with `BENCH_CHECK_ONLY=1` this only parses
 * the config with that build's schema, prints its problems to stderr and exits non-zero if it refuses it.
 */
const dist = requiredEnv('BENCH_FUSEBOX_DIST');
const { parseConfig } = (await import(pathToFileURL(join(dist, 'src', 'config', 'load.js')).href)) as typeof import('../../src/config/load.js');

const raw = JSON.parse(requiredEnv('BENCH_CONFIG')) as Record<string, unknown>;
let config: ReturnType<typeof parseConfig>;
try {
  config = parseConfig({ ...raw, listen: { proxy: { port: 0 }, admin: { port: 0 } } }, 'bench config');
} catch (err) {
  console.error((err as Error).message);
  process.exit(1);
}
if (process.env.BENCH_CHECK_ONLY === '1') process.exit(0);

const { buildApp } = (await import(pathToFileURL(join(dist, 'src', 'app.js')).href)) as typeof import('../../src/app.js');
const app = await buildApp(config);
const { proxyUrl, adminUrl } = await app.listen();
announce(proxyUrl, { adminUrl });
