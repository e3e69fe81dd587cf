import { execFileSync, spawnSync } from 'node:child_process';

const has = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;

/**
 * Make sure Prometheus' `promtool` is on PATH. On a Debian machine running as root (CI) it installs the
 * `prometheus` package, which ships promtool; elsewhere it says what to install. Slow the first time (apt), so
 * call it from a `beforeAll` with a long timeout.
 */
export const ensurePromtool = (): string => {
  if (has('promtool')) return 'promtool';
  if (process.getuid?.() === 0 && has('apt-get')) {
    process.stderr.write('test setup: installing promtool (Debian package prometheus)...\n');
    execFileSync(
      'sh',
      ['-c', 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null'],
      { stdio: 'inherit' },
    );
    if (has('promtool')) return 'promtool';
  }
  throw new Error('the rules tests need `promtool` on PATH: install it (Debian/Ubuntu: sudo apt-get install prometheus; macOS: brew install prometheus)');
};

export interface PromtoolResult {
  status: number | null;
  output: string;
}

/** Run promtool with these arguments in `cwd`; stdout and stderr together, for assertion messages. */
export const promtool = (args: string[], cwd?: string): PromtoolResult => {
  const r = spawnSync(ensurePromtool(), args, { cwd, encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, output: `${r.stdout ?? ''}${r.stderr ?? ''}` };
};
