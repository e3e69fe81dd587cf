import { execFile, spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../helpers/net.js';

/**
 * The npm package as users get it: `npm pack` from a checkout without dist/ (prepack must build it), then the CLI
 * run from the unpacked tarball. The dependencies come from the repo's node_modules: a real `npm install` of the
 * tarball needs the registry (the cache holds tarballs, not the package documents an install resolves ranges
 * with, so `--offline` fails), ~25 s and a network CI may not have. FUSEBOX_TEST_NPM_INSTALL=1 adds that install.
 */

const ROOT = resolve(import.meta.dirname, '../..');
const run = promisify(execFile);
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string; bin: { fusebox: string }; scripts: Record<string, string> };
/** Node 24 first on PATH, as npm scripts have it: the bin's `#!/usr/bin/env node` must find it. */
const PATH = `${dirname(process.execPath)}${delimiter}${process.env.PATH ?? ''}`;

describe(`the npm package ${pkg.name}`, () => {
  let dir: string;
  let tarball: string;
  let files: string[];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fusebox-pack-'));
    // A checkout as a user or CI has it: sources, no dist/.
    const checkout = join(dir, 'checkout');
    for (const f of ['package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'README.md', 'src', 'config', 'ui']) cpSync(join(ROOT, f), join(checkout, f), { recursive: true });
    symlinkSync(join(ROOT, 'node_modules'), join(checkout, 'node_modules'), 'dir');
    const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', dir], { cwd: checkout, env: { ...process.env, PATH }, maxBuffer: 16 * 1024 * 1024 });
    const [packed] = JSON.parse(stdout.slice(stdout.indexOf('['))) as Array<{ filename: string; files: Array<{ path: string }> }>;
    tarball = join(dir, packed!.filename);
    files = packed!.files.map((f) => f.path);
    await run('tar', ['xzf', tarball, '-C', dir]);
    symlinkSync(join(ROOT, 'node_modules'), join(dir, 'package/node_modules'), 'dir');
  }, 120_000);

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('is scoped (the unscoped "fusebox" on npm is another project), publishable, and installs the fusebox command', () => {
    expect(pkg.name).toMatch(/^@[a-z0-9-]+\/[a-z0-9-]+$/);
    expect(pkg.bin).toEqual({ fusebox: 'dist/src/main.js' });
    expect(pkg).not.toHaveProperty('private');
    expect(pkg.scripts.prepack).toContain('npm run build');
  });

  it('packs the built CLI, the config files it reads, the live page, and nothing of the sources or tests', () => {
    expect(files).toEqual(
      expect.arrayContaining(['package.json', 'README.md', pkg.bin.fusebox, 'dist/src/cli/commands.js', 'config/prices.yaml', 'config/example.yaml', 'config/fusebox.schema.json', 'ui/index.html', 'ui/live.js', 'ui/live.css']),
    );
    expect(files.filter((f) => /\.ts$|\.map$|^test\/|^src\/|^bench\/|^demo\/|^deploy\//.test(f))).toEqual([]);
    expect(readFileSync(join(dir, 'package', pkg.bin.fusebox), 'utf8')).toMatch(/^#!\/usr\/bin\/env node\n/);
  });

  it('runs from the unpacked tarball: fusebox --version, and check-config on the example config it ships', async () => {
    const bin = join(dir, 'package', pkg.bin.fusebox);
    // Run with Node 24 explicitly: the tarball keeps no mode bits, npm makes the bin executable when it installs it.
    const version = await run(process.execPath, [bin, '--version'], { env: { ...process.env, PATH } });
    expect(version.stdout).toBe(`fusebox ${pkg.version}\n`);
    const check = await run(process.execPath, [bin, 'check-config', join(dir, 'package/config/example.yaml')], { env: { ...process.env, PATH } });
    expect(check.stdout).toMatch(/example\.yaml: valid \(3 routes/);
  });

  it('serves from the unpacked tarball: the sidecar starts on the bundled price table, answers /readyz, exits 0 on SIGTERM', async () => {
    const [proxyPort, adminPort] = [await freePort(), await freePort()];
    const config = join(dir, 'sidecar.yaml');
    writeFileSync(config, `version: 1
listen: { proxy: { port: ${proxyPort} }, admin: { port: ${adminPort} } }
routes:
  - { name: openai, provider: openai, match: { pathPrefix: /openai }, upstream: { url: "http://127.0.0.1:1" } }
`);
    const child = spawn(process.execPath, [join(dir, 'package', pkg.bin.fusebox), '--config', config], { env: { ...process.env, PATH, FUSEBOX_LOG_FORMAT: 'json' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.stdout.resume();
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    let ready = false;
    for (const deadline = Date.now() + 15_000; !ready && Date.now() < deadline && child.exitCode === null; ) {
      ready = await fetch(`http://127.0.0.1:${adminPort}/readyz`).then((r) => r.ok, () => false);
      if (!ready) await new Promise((r) => setTimeout(r, 100));
    }
    expect(ready, err).toBe(true);
    expect(await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text()).toContain('fusebox_config_info');
    for (const path of ['/', '/ui.js', '/ui.css']) expect((await fetch(`http://127.0.0.1:${adminPort}${path}`)).status, `GET ${path}`).toBe(200);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  }, 30_000);

  it.runIf(process.env.FUSEBOX_TEST_NPM_INSTALL === '1')('installs from the tarball with npm install (registry) and runs fusebox --version', async () => {
    const app = join(dir, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'an-agent', private: true }));
    await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', tarball], { cwd: app, env: { ...process.env, PATH }, timeout: 170_000 });
    const { stdout } = await run(join(app, 'node_modules/.bin/fusebox'), ['--version'], { env: { ...process.env, PATH } });
    expect(stdout).toBe(`fusebox ${pkg.version}\n`);
  }, 180_000);
});
