import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';

/**
 * The `n`th file (by name order) in `dir` whose name passes `match`, parsed as JSON once it is whole: a diagnostic
 * report or a heap snapshot that a child writes on a signal appears before its last byte. Bounded: throws after
 * `timeoutMs` (a bench stops by itself).
 */
export const diagnosticFile = async <T>(dir: string, match: (name: string) => boolean, n: number, timeoutMs = 60_000): Promise<{ path: string; json: T }> => {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const name = readdirSync(dir).filter(match).sort()[n - 1];
    if (name !== undefined) {
      const path = join(dir, name);
      try {
        return { path, json: JSON.parse(readFileSync(path, 'utf8')) as T };
      } catch {
        // Still being written.
      }
    }
    await delay(50);
  }
  throw new Error(`no complete diagnostic file #${n} in ${dir} within ${timeoutMs / 1000} s`);
};
