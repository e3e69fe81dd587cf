import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readFileSync, rmSync, symlinkSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from './proc.js';

/**
 * `--compare-rev=REV`: Fusebox as built from another git revision, measured in the same run as extra rows beside the
 * current ones (issue 12: "same run, before/after rows"). Each revision is checked out with `git worktree add --detach`
 * into a temporary folder, given the current `node_modules` (a symlink), and compiled with its own
 * `tsconfig.build.json`; its rows run the bench's own child (bench/servers/fusebox.ts) against `<worktree>/dist`.
 * A revision that cannot be measured is skipped with its reason; it never stops the run.
 */
export interface Revision {
  /** As given on the command line. */
  spec: string;
  sha: string;
  /** Seven hex digits: the suffix of its rows' names (`fusebox @1000723`). */
  short: string;
  subject: string;
  /** Committer date, YYYY-MM-DD. */
  date: string;
  /** The compiled tree its rows run (`BENCH_FUSEBOX_DIST`). */
  dist: string;
  /**
   * Whether its package-lock.json differs from the current one. Its rows run on the current `node_modules` either way,
   * so a dependency change between the two revisions is not in the comparison; the report says so.
   */
  lockDiffers: boolean;
}

export type Prepared = { revision: Revision } | { spec: string; reason: string };

/** Worktrees made by this process and not yet removed: removed on the way out, whatever happens. */
const worktrees = new Set<string>();

const git = (args: string[], timeoutMs = 60_000): string =>
  execFileSync('git', ['-C', REPO_ROOT, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs }).trim();

/** What a failed child said, in a few lines that fit a report row. */
const why = (err: unknown): string => {
  const e = err as { stdout?: string | Buffer | null; stderr?: string | Buffer | null; message?: string; signal?: string };
  const text = [e.stdout, e.stderr]
    .map((b) => (b ?? '').toString())
    .join('\n')
    .trim();
  const lines = (text || e.message || String(err))
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const shown = lines.slice(0, 4).join('; ');
  return (e.signal === 'SIGTERM' ? 'timed out: ' : '') + (lines.length > 4 ? `${shown}; … (${lines.length - 4} more lines)` : shown);
};

/** Remove one worktree. Synchronous, so it can run from an 'exit' handler. */
const remove = (dir: string): void => {
  // Unlinked first, by hand: whatever git does with the folder, nothing it does can reach the shared node_modules.
  const modules = join(dir, 'node_modules');
  try {
    if (lstatSync(modules).isSymbolicLink()) unlinkSync(modules);
  } catch {
    // Not made yet.
  }
  try {
    git(['worktree', 'remove', '--force', dir]);
  } catch {
    // `worktree add` failed half-way, or the folder is already gone: delete what is left and forget the registration.
    rmSync(dir, { recursive: true, force: true });
    try {
      git(['worktree', 'prune']);
    } catch {
      // Nothing registered.
    }
  }
  worktrees.delete(dir);
};

/** Remove every worktree this process made. */
export const removeRevisions = (): void => {
  for (const dir of [...worktrees]) remove(dir);
};

/**
 * Resolve `spec`, check it out into a temporary worktree and compile it. Synchronous (before any server starts: the
 * build's CPU is not in any measurement), each step bounded in time.
 */
export const prepareRevision = (spec: string): Prepared => {
  let sha: string;
  try {
    sha = git(['rev-parse', '--verify', '--quiet', `${spec}^{commit}`]);
  } catch {
    return { spec, reason: `"${spec}" is not a commit of this repository` };
  }
  const [short, date, subject] = git(['show', '-s', '--format=%h%x00%cs%x00%s', '--abbrev=7', sha]).split('\0') as [string, string, string];
  const dir = mkdtempSync(join(tmpdir(), `fusebox-bench-${short}-`));
  worktrees.add(dir);
  try {
    git(['worktree', 'add', '--detach', dir, sha], 120_000);
  } catch (err) {
    remove(dir);
    return { spec, reason: `git worktree add failed: ${why(err)}` };
  }
  symlinkSync(join(REPO_ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
  const lock = (root: string) => (existsSync(join(root, 'package-lock.json')) ? readFileSync(join(root, 'package-lock.json'), 'utf8') : undefined);
  const lockDiffers = lock(dir) !== lock(REPO_ROOT);
  const tsc = join(dir, 'node_modules', 'typescript', 'bin', 'tsc');
  try {
    execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000 });
  } catch (err) {
    remove(dir);
    return { spec, reason: `its build failed (tsc -p tsconfig.build.json${lockDiffers ? ', with the current node_modules: its package-lock.json differs' : ''}): ${why(err)}` };
  }
  const dist = join(dir, 'dist');
  for (const entry of ['src/app.js', 'src/config/load.js']) {
    if (!existsSync(join(dist, entry))) {
      remove(dir);
      return { spec, reason: `its build has no dist/${entry} (the bench child loads buildApp and parseConfig from there)` };
    }
  }
  return { revision: { spec, sha, short, subject, date, dist, lockDiffers } };
};

/**
 * Whether a revision's config schema accepts a target's config: the bench child (bench/servers/fusebox.ts) run with
 * `BENCH_CHECK_ONLY=1`, which parses the config as the measured child would and exits. Undefined when accepted, else
 * the problems it printed.
 */
export const configRefusal = (env: Record<string, string>): string | undefined => {
  try {
    execFileSync(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'bench', 'servers', 'fusebox.ts')], {
      cwd: REPO_ROOT,
      env: { ...process.env, ...env, BENCH_CHECK_ONLY: '1' },
      encoding: 'utf8',
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 60_000,
    });
    return undefined;
  } catch (err) {
    return `its config schema refuses the bench config: ${why(err)}`;
  }
};
