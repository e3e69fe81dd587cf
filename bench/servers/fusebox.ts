import { buildApp } from '../../src/app.js';
import { parseConfig } from '../../src/config/load.js';
import { announce, requiredEnv } from './announce.js';

/**
 * Fusebox under test, built from `BENCH_CONFIG` (a JSON config object, see bench/targets.ts) exactly as
 * `src/main.ts` would build it from a file; only the listen ports are forced to 0. Logs go to this process's
 * stdout, which the orchestrator points at /dev/null: the cost of writing them is part of what is measured.
 */
const raw = JSON.parse(requiredEnv('BENCH_CONFIG')) as Record<string, unknown>;
const config = parseConfig({ ...raw, listen: { proxy: { port: 0 }, admin: { port: 0 } } }, 'bench config');
const app = await buildApp(config);
const { proxyUrl } = await app.listen();
announce(proxyUrl);
