import { readConfiguredFile } from '../config/load.js';
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
    return file === undefined ? undefined : readConfiguredFile(baseDir, file, `store.tls.${field}`);
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
