import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, symlinkSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from './proc.js';

/**
 * Runs this tree's `bench/<file>` against another revision's sources: the file (and this one) is copied into a detached worktree of
 * `rev` (given this tree's node_modules) and run there by tsx with `args(shortSha)`; its last stdout line is its JSON
 * result. The worktree is removed afterwards, whatever happened. For benches that measure src/ in-process (the
 * server benches compile each revision instead: revisions.ts).
 */
export const runBenchAtRevision = <R>(file: string, rev: string, args: (short: string) => string[], timeoutMs: number): R => {
  const git = (a: string[]) => execFileSync('git', ['-C', REPO_ROOT, ...a], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  const short = git(['rev-parse', '--short=7', rev]);
  const dir = mkdtempSync(join(tmpdir(), `fusebox-${file.replace(/\.ts$/, '')}-${short}-`));
  git(['worktree', 'add', '--detach', dir, rev]);
  try {
    symlinkSync(join(REPO_ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
    // The bench file and this one, which it imports (an older revision may have neither).
    for (const f of [file, 'at-revision.ts']) copyFileSync(join(REPO_ROOT, 'bench', f), join(dir, 'bench', f));
    const out = execFileSync(process.execPath, ['--import', 'tsx', `bench/${file}`, ...args(short)], {
      cwd: dir,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
      timeout: timeoutMs,
    });
    return JSON.parse(out.trim().split('\n').pop()!) as R;
  } finally {
    unlinkSync(join(dir, 'node_modules'));
    try {
      git(['worktree', 'remove', '--force', dir]);
    } catch {
      rmSync(dir, { recursive: true, force: true });
      git(['worktree', 'prune']);
    }
  }
};
