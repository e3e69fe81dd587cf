import { execFileSync, spawnSync } from 'node:child_process';

const has = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;

/** Debian packages the tests start themselves: each test starts its own server on a free port. */
const NEEDED: Array<{ binary: string; pkg: string }> = [
  { binary: 'redis-server', pkg: 'redis-server' },
  { binary: 'promtool', pkg: 'prometheus' },
  // Real agents' clients in the interception tests (curl and Python urllib through HTTPS_PROXY).
  { binary: 'curl', pkg: 'curl' },
  { binary: 'python3', pkg: 'python3' },
  // The live page's test drives a real headless browser (playwright-core with this executable: it downloads none).
  { binary: 'chromium', pkg: 'chromium' },
];

/**
 * Runs once before all test files: makes sure the machine has the servers and tools the tests start themselves.
 * On a fresh Debian machine (CI runs as root) it installs the missing packages; elsewhere it says what to install.
 */
export default function setup(): void {
  const missing = NEEDED.filter((n) => !has(n.binary));
  if (missing.length === 0) return;
  const pkgs = missing.map((m) => m.pkg).join(' ');
  if (process.getuid?.() === 0 && has('apt-get')) {
    process.stderr.write(`test setup: installing ${pkgs} from Debian packages...\n`);
    execFileSync(
      'sh',
      ['-c', `apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${pkgs} >/dev/null`],
      { stdio: 'inherit', timeout: 600_000 },
    );
    return;
  }
  throw new Error(`the tests need ${missing.map((m) => m.binary).join(' and ')} on PATH: install ${pkgs} (Debian/Ubuntu: sudo apt-get install ${pkgs})`);
}
