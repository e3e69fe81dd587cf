import { createRequire } from 'node:module';
import type * as NodeHttp from 'node:http';

/**
 * `node:http`, loaded with `require`. An ESM `import` of it evaluates every export to build the module namespace, and
 * three of Node 24's exports (`WebSocket`, `CloseEvent`, `MessageEvent`) are getters that load Node's bundled undici
 * (a 750 KB bundle, nodejs/node#59686), which Fusebox never uses: ~1.5 MB of RSS and ~1 MB of heap in an idle sidecar
 * (Node 24.21, example config, after GC). Types come from `import type`, which loads nothing; eslint refuses any other
 * value import of `node:http` under src/.
 */
export const http = createRequire(import.meta.url)('node:http') as typeof NodeHttp;
