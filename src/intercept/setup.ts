import { resolve } from 'node:path';
import type { Config } from '../config/schema.js';
import { bareHost, parseHostEntry } from '../net/address.js';
import type { Logger } from 'pino';
import type { Metrics } from '../telemetry/metrics.js';
import type { PodCa } from './ca.js';

/** The hosts leaves may be issued for: every host of a route that intercepts its tunnels, nothing else. */
export const interceptedHosts = (config: Config): string[] => {
  const hosts = new Set<string>();
  for (const route of config.routes) {
    if (route.match.connect !== 'intercept') continue;
    for (const text of route.match.hosts ?? []) {
      const entry = parseHostEntry(text);
      if (typeof entry !== 'string') hosts.add(bareHost(entry.host));
    }
  }
  return [...hosts];
};

/**
 * The pod CA, when some route intercepts: loaded from the config's files or generated (key in memory only). The
 * X.509 code is imported only then, so a sidecar without interception does not carry it. A CA that cannot be read
 * or used stops the start with its reason: never a silent fall back to splicing.
 */
export const createPodCa = async (
  config: Config,
  deps: { baseDir: string; now: () => number; metrics: Metrics; env: NodeJS.ProcessEnv; logger: Logger },
): Promise<PodCa | undefined> => {
  const hosts = interceptedHosts(config);
  if (hosts.length === 0) return undefined;
  const { PodCa } = await import('./ca.js');
  const c = config.intercept;
  const keepDir = deps.env.FUSEBOX_CA_KEEP_DIR || c.ca.keepDir;
  const ca = await PodCa.create({
    ...(c.ca.certFile !== undefined ? { certFile: resolve(deps.baseDir, c.ca.certFile) } : {}),
    ...(c.ca.keyFile !== undefined ? { keyFile: resolve(deps.baseDir, c.ca.keyFile) } : {}),
    validityDays: c.ca.validityDays,
    leafValidityHours: c.leafValidityHours,
    maxLeaves: c.maxLeaves,
    hosts,
    now: deps.now,
    ...(keepDir !== undefined && c.ca.certFile === undefined ? { keepDir: resolve(deps.baseDir, keepDir) } : {}),
  });
  const { info } = ca;
  if (info.replaced !== undefined) {
    deps.logger.warn({ reason: info.replaced, fingerprintSha256: info.fingerprintSha256 }, 'the kept pod CA could not be reused; a new one was made: agents started before this must restart to trust it');
  }
  deps.logger.info({ source: info.source, fingerprintSha256: info.fingerprintSha256, notAfter: info.notAfter.toISOString(), hosts: hosts.length }, 'pod CA ready');
  ca.onMint = (ms) => deps.metrics.interceptLeafMintSeconds.observe(ms / 1000);
  deps.metrics.interceptCaExpiry.set(Math.floor(ca.info.notAfter.getTime() / 1000));
  return ca;
};
