import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULT_INJECT_OPTIONS } from '../src/deploy/options.js';
import { REPO_ROOT } from './proc.js';

/**
 * Running a bench child as the image runs in a pod: the environment of the image's last stage (its `ENV` lines), and
 * a memory limit like `fusebox inject`'s. The limit is a real cgroup where this machine lets us make one (a child of
 * our own cgroup, v1 `memory.limit_in_bytes` or v2 `memory.max`), because that is what Node reads
 * (`uv_get_constrained_memory`) to size V8's heap; otherwise the heap flags Node would derive from it.
 */

/** `ENV` lines of the Dockerfile's last stage (the image that runs), in order: NODE_ENV, MALLOC_ARENA_MAX, NODE_OPTIONS... */
export const IMAGE_ENV: Readonly<Record<string, string>> = (() => {
  const text = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8');
  const lastStage = text.slice(text.lastIndexOf('\nFROM '));
  const env: Record<string, string> = {};
  for (const line of lastStage.split('\n')) {
    if (!line.startsWith('ENV ')) continue;
    for (const m of line.slice(4).matchAll(/(\w+)=("[^"]*"|\S+)/g)) env[m[1]!] = m[2]!.replace(/^"(.*)"$/, '$1');
  }
  return env;
})();

/** `fusebox inject`'s memory limit, MiB: what the pod rows and `bench:idle` run under by default. */
export const POD_LIMIT_MIB = ((): number => {
  const m = /^(\d+)Mi$/.exec(DEFAULT_INJECT_OPTIONS.memoryLimit);
  if (m === null) throw new Error(`bench/pod.ts reads inject's memory limit in Mi, got "${DEFAULT_INJECT_OPTIONS.memoryLimit}"`);
  return Number(m[1]);
})();

/**
 * The heap flags that give V8 the heap Node 24 sizes for itself under a cgroup limit of `limitMiB`, for where no
 * cgroup can be made. Measured on 24.21 with `v8.getHeapStatistics().heap_size_limit` in real cgroups: any limit up to
 * 512 MiB gives 259 MiB (256 of old space, the floor, and 1 MiB semi-spaces); above, half the limit of old space and
 * 16 MiB semi-spaces (32 from 2 GiB). Both flags are needed: an old-space flag alone leaves the young generation
 * sized from the host's RAM.
 */
export const heapFlagsNodeDerives = (limitMiB: number): string[] =>
  limitMiB <= 512
    ? ['--max-old-space-size=256', '--max-semi-space-size=1']
    : [`--max-old-space-size=${Math.floor(limitMiB / 2)}`, `--max-semi-space-size=${limitMiB < 2048 ? 16 : 32}`];

export interface PodCgroup {
  /** The cgroup folder (its `cgroup.procs` takes the child). */
  dir: string;
  /** `cmd args` → the same, started inside the cgroup (a shell that joins it and execs). */
  wrap(cmd: string, args: string[]): [string, string[]];
  /**
   * Memory the kernel charges to the cgroup now, MiB (v1 `memory.usage_in_bytes`, v2 `memory.current`): what its limit
   * and kubelet's working set count. Page-cache pages (the `node` binary's) are charged to the cgroup that first read
   * them, so a process whose binary is already cached is charged its anonymous memory and little else.
   */
  chargedMiB(): number;
  /** Remove the cgroup; its processes must have exited. */
  remove(): void;
}

/** Our own memory cgroup's folder, v1 or v2, or undefined when there is none we can see. */
const ownMemoryCgroup = (): { dir: string; limitFile: string; usageFile: string } | undefined => {
  const lines = existsSync('/proc/self/cgroup') ? readFileSync('/proc/self/cgroup', 'utf8').split('\n') : [];
  const v1 = lines.map((l) => /^\d+:(?:[^:]*,)?memory(?:,[^:]*)?:(.*)$/.exec(l)?.[1]).find((p) => p !== undefined);
  if (v1 !== undefined && existsSync('/sys/fs/cgroup/memory/memory.limit_in_bytes')) return { dir: join('/sys/fs/cgroup/memory', v1), limitFile: 'memory.limit_in_bytes', usageFile: 'memory.usage_in_bytes' };
  const v2 = lines.map((l) => /^0::(.*)$/.exec(l)?.[1]).find((p) => p !== undefined);
  if (v2 !== undefined && existsSync(join('/sys/fs/cgroup', v2, 'memory.max'))) return { dir: join('/sys/fs/cgroup', v2), limitFile: 'memory.max', usageFile: 'memory.current' };
  return undefined;
};

/**
 * A child cgroup of ours limited to `limitMiB`, or why there cannot be one. Made under our own cgroup so that what the
 * child uses is still counted where it was (v1 with `use_hierarchy`, and v2, charge parents too).
 */
let made = 0;

export const makePodCgroup = (limitMiB: number, name: string): PodCgroup | { reason: string } => {
  const own = ownMemoryCgroup();
  if (own === undefined) return { reason: 'no memory cgroup visible in /proc/self/cgroup' };
  // A new folder each time: the last one may still be on its way out (see remove).
  const dir = join(own.dir, `${name}-${++made}`);
  try {
    mkdirSync(dir);
    writeFileSync(join(dir, own.limitFile), String(limitMiB * 1024 * 1024));
  } catch (err) {
    try {
      rmdirSync(dir);
    } catch {
      // Never made.
    }
    return { reason: `cannot make a memory cgroup under ${own.dir}: ${(err as Error).message}` };
  }
  return {
    dir,
    wrap: (cmd, args) => ['sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', dir, cmd, ...args]],
    chargedMiB: () => Number(readFileSync(join(dir, own.usageFile), 'utf8')) / 2 ** 20,
    remove: () => {
      // Its process has exited, but the kernel may not have let go of the cgroup yet (EBUSY): a few tries, 50 ms apart.
      for (let i = 0; i < 40; i++) {
        try {
          rmdirSync(dir);
          return;
        } catch {
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
        }
      }
      console.error(`bench: could not remove the cgroup ${dir} (rmdir it once its processes are gone; it holds no memory)`);
    },
  };
};
