import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

type GcFunction = (options: { type: 'major'; flavor: 'last-resort' }) => void;

/**
 * One memory-reducing garbage collection, run once the sidecar listens (issue 15: the idle footprint).
 *
 * Starting up allocates fast (modules, the config, the CA and its leaves), so V8 grows the young generation to its
 * maximum (the image's `--max-semi-space-size=4`: 8 MiB committed) and keeps it: V8 shrinks it only in a GC that
 * sees a low allocation rate, and an idle sidecar runs no GC at all (measured: still 8 MiB after 30 s idle). This is
 * the collection V8 runs on a low-memory notification: it shrinks the young generation to 1 MiB and compacts the old
 * one. bench:idle: ~9 MB less RSS at idle, for one pause of ~90–140 ms at start. Under load the young generation
 * grows back to its maximum, so the CPU the larger semi-space buys is kept.
 *
 * Node has no API for it. `--expose-gc` set at run time gives `gc` to contexts made afterwards only, so it is taken
 * from a fresh vm context and the flag is turned off again: the sidecar's own globals never get a `gc`.
 */
/** Runs the collection; false when this Node offers no way to (the sidecar runs on, with the larger heap). */
export const settleHeap = (): boolean => {
  let gc: unknown = (globalThis as { gc?: unknown }).gc; // started with --expose-gc: nothing to switch
  if (typeof gc !== 'function') {
    try {
      setFlagsFromString('--expose-gc');
      gc = runInNewContext('typeof gc === "function" ? gc : undefined');
    } catch {
      return false; // a saving, never a reason to stop a sidecar that is listening already
    } finally {
      setFlagsFromString('--no-expose-gc');
    }
  }
  if (typeof gc !== 'function') return false;
  (gc as GcFunction)({ type: 'major', flavor: 'last-resort' });
  return true;
};
