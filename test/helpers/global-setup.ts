import { execFileSync, spawnSync } from 'node:child_process';

const has = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;

/**
 * Runs once before all test files: makes sure the machine has what the tests start themselves (a
 * `redis-server` binary; each Redis test starts its own server on a free port). On a fresh Debian machine
 * (CI runs as root) it installs the package; elsewhere it says what to install.
 */
export default function setup(): void {
  if (has('redis-server')) return;
  if (process.getuid?.() === 0 && has('apt-get')) {
    process.stderr.write('test setup: installing redis-server from Debian packages...\n');
    execFileSync('sh', ['-c', 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null'], {
      stdio: 'inherit',
    });
    return;
  }
  throw new Error('the tests need `redis-server` on PATH: install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)');
}
