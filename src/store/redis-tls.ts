import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { ConfigError } from '../config/load.js';
import type { StoreTlsConfig } from '../config/schema.js';

/** What the Redis client's TLS sockets are made with (a subset of node:tls's connect options). */
export interface RedisTlsOptions {
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
  readonly rejectUnauthorized: boolean;
  readonly servername?: string;
}


/**
 * Reads `store.tls` once, at start (relative paths from `baseDir`, the config file's folder). A certificate rotated
 * on disk is picked up by a restart, as the rest of `store` is (README, "Reload"). Undefined: no settings, so a
 * `rediss://` URL uses Node's public CAs.
 */
export const readRedisTls = (tls: StoreTlsConfig | undefined, baseDir: string): RedisTlsOptions | undefined => {
  if (tls === undefined) return undefined;
  const read = (field: 'caFile' | 'certFile' | 'keyFile'): Buffer | undefined => {
    const file = tls[field];
    if (file === undefined) return undefined;
    const path = resolve(baseDir, file);
    try {
      return readFileSync(path);
    } catch (err) {
      // As bad as a bad config file: the sidecar does not start, and says which file and why.
      const e = err as NodeJS.ErrnoException;
      throw new ConfigError('store.tls', [`store.tls.${field}: cannot read ${path} (${e.code ?? e.message})`]);
    }
  };
  const ca = read('caFile');
  const cert = read('certFile');
  const key = read('keyFile');
  return {
    rejectUnauthorized: tls.rejectUnauthorized,
    ...(ca !== undefined && { ca }),
    ...(cert !== undefined && { cert }),
    ...(key !== undefined && { key }),
    ...(tls.servername !== undefined && { servername: tls.servername }),
  };
};
