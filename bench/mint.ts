import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Samples } from './stats.js';

export interface MintStats {
  /** Leaves minted (one per host). */
  count: number;
  /** Wall time, ms: what a client's first handshake with a host waits for. */
  p50: number;
  p99: number;
  max: number;
  /** The first mint of the process (cold code paths), ms. */
  first: number;
  /**
   * CPU time of the process per mint (all threads: webcrypto signs on libuv's pool), ms. Wall time well above it is
   * time spent waiting for a core, not in the code.
   */
  cpuP50: number;
  cpuP99: number;
}

/**
 * Leaf mint time, measured in this process on the compiled `dist/` (the code production runs): one PodCa generated
 * for `hosts` names, then one leaf minted per host, one after the other, each timed by the CA's own `onMint` hook (the
 * figure `fusebox_intercept_leaf_mint_seconds` records). A Fusebox under load mints once per host and leaf lifetime,
 * so its histogram holds one sample per run: too few for a p99; this gives `hosts` samples.
 */
export const measureLeafMints = async (distDir: string, hosts: number): Promise<MintStats> => {
  const { PodCa } = (await import(pathToFileURL(join(distDir, 'src', 'intercept', 'ca.js')).href)) as typeof import('../src/intercept/ca.js');
  const names = Array.from({ length: hosts }, (_, i) => `h${i}.mint.bench.test`);
  // The config's defaults (intercept.leafValidityHours, maxLeaves): the cache never evicts, so each host mints once.
  const ca = await PodCa.create({ validityDays: 365, leafValidityHours: 24, maxLeaves: Math.max(1000, hosts), hosts: names });
  const wall = new Samples(hosts);
  const cpu = new Samples(hosts);
  let first = NaN;
  ca.onMint = (ms) => {
    if (Number.isNaN(first)) first = ms;
    wall.add(ms * 1e6);
  };
  for (const name of names) {
    const c0 = process.cpuUsage();
    await ca.contextFor(name);
    const c = process.cpuUsage(c0);
    cpu.add((c.user + c.system) * 1e3);
  }
  if (wall.count !== hosts) throw new Error(`expected ${hosts} mints, saw ${wall.count}`);
  const ms = (s: Samples, q: number) => s.percentileUs(q) / 1e3;
  return { count: hosts, p50: ms(wall, 0.5), p99: ms(wall, 0.99), max: ms(wall, 1), first, cpuP50: ms(cpu, 0.5), cpuP99: ms(cpu, 0.99) };
};
