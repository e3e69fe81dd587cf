import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PoolSet, type UpstreamTarget } from '../../src/upstream/pool.js';

const target = (origin: string, extra: Partial<UpstreamTarget> = {}): UpstreamTarget => ({
  name: origin,
  origin,
  basePath: '',
  tls: { rejectUnauthorized: true },
  connections: 8,
  timeouts: { connectMs: 5_000, headersMs: 120_000, bodyIdleMs: 60_000, totalMs: 600_000 },
  ...extra,
});

describe('PoolSet across config generations', () => {
  let pools: PoolSet | undefined;
  let dir: string | undefined;
  afterEach(async () => {
    await pools?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('keeps a pool whose settings did not change, and closes what an abandoned (invalid) generation made', () => {
    pools = new PoolSet(tmpdir());
    const kept = pools.get(target('http://127.0.0.1:1'));
    pools.beginGeneration();
    expect(pools.get(target('http://127.0.0.1:1'))).toBe(kept);
    pools.get(target('http://127.0.0.1:2'));
    expect(pools.size).toBe(2);
    // The next route of that generation names a CA file that is not there: the reload is invalid.
    // A config error naming the upstream and the file, as any file the config names (not a raw ENOENT with a stack).
    expect(() => pools!.get(target('https://127.0.0.1:3', { tls: { rejectUnauthorized: true, caFile: '/nonexistent/ca.pem' } }))).toThrow(
      expect.objectContaining({ name: 'ConfigError', problems: ['https://127.0.0.1:3: tls.caFile: cannot read /nonexistent/ca.pem (ENOENT)'] }),
    );
    pools.abandonGeneration();
    expect(pools.size).toBe(1);
    expect(pools.get(target('http://127.0.0.1:1'))).toBe(kept);
  });

  it('reports a CA file rotated in place, and makes a new pool for its bytes', () => {
    dir = mkdtempSync(join(tmpdir(), 'fusebox-pools-'));
    writeFileSync(join(dir, 'ca.pem'), 'one');
    pools = new PoolSet(dir);
    const tls = { rejectUnauthorized: true, caFile: 'ca.pem' };
    const first = pools.get(target('https://127.0.0.1:4', { tls }));
    expect(pools.caFilesChanged()).toBe(false);
    writeFileSync(join(dir, 'ca.pem'), 'two');
    expect(pools.caFilesChanged()).toBe(true);
    pools.beginGeneration();
    expect(pools.get(target('https://127.0.0.1:4', { tls }))).not.toBe(first);
    expect(pools.retireUnused(1_000)).toEqual(['https://127.0.0.1:4']);
    expect(pools.caFilesChanged()).toBe(false);
  });

  it('still reports a rotated CA file after a reload that read it and was abandoned, and forgets the files of routes gone', () => {
    dir = mkdtempSync(join(tmpdir(), 'fusebox-pools-'));
    writeFileSync(join(dir, 'ca.pem'), 'one');
    writeFileSync(join(dir, 'other.pem'), 'x');
    pools = new PoolSet(dir);
    const tls = { rejectUnauthorized: true, caFile: 'ca.pem' };
    const first = pools.get(target('https://127.0.0.1:4', { tls }));
    pools.get(target('https://127.0.0.1:5', { tls: { rejectUnauthorized: true, caFile: 'other.pem' } }));
    writeFileSync(join(dir, 'ca.pem'), 'two');
    // A reload reads the new bytes, then fails on another route: the pool in effect still trusts the old CA.
    pools.beginGeneration();
    pools.get(target('https://127.0.0.1:4', { tls }));
    pools.abandonGeneration();
    expect(pools.get(target('https://127.0.0.1:4', { tls: { rejectUnauthorized: true } }))).not.toBe(first);
    expect(pools.caFilesChanged()).toBe(true);
    // A good reload without the other route: its file may go, and a reload of that config is then unchanged.
    pools.beginGeneration();
    pools.get(target('https://127.0.0.1:4', { tls }));
    pools.retireUnused(1_000);
    rmSync(join(dir, 'other.pem'));
    expect(pools.caFilesChanged()).toBe(false);
  });
});
