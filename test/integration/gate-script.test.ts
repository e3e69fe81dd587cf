import { spawn } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { DAY_MS, HOUR_MS, MINUTE_MS } from '../../src/slo/buckets.js';
import { RedisCounterStore } from '../../src/slo/counter-store.js';
import { RedisConnection } from '../../src/store/redis-connection.js';
import { GATE_EXIT } from '../../src/slo/gate.js';
import type { SloEvent } from '../../src/slo/recorder.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { badCall as bad, goodCall as good, sloRoutes } from '../helpers/slo.js';
import { freePort } from '../helpers/net.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SCRIPT = join(ROOT, 'deploy/ci/fusebox-gate.sh');
const WORKFLOW = join(ROOT, 'deploy/ci/github-actions.yaml');
const PREFIX = 'gatesh';
/** How to run the CLI from any directory: the real `src/main.ts` under this Node, with tsx found by absolute URL. */
const CLI = [process.execPath, '--import', pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href, join(ROOT, 'src/main.ts')];

let redis: TestRedis;
let seeder: RedisCounterStore;
let dir: string;
let bin: string;

beforeAll(async () => {
  redis = await startRedis();
  seeder = new RedisCounterStore(new RedisConnection({ url: redis.url, keyPrefix: PREFIX, timeoutMs: 1000 }));
  await seeder.ready(2_000);
  newRoute = sloRoutes(seeder);
  dir = mkdtempSync(join(tmpdir(), 'fusebox-gate-sh-'));
  // The script runs `fusebox` from PATH by default, as on a runner with the CLI installed.
  bin = join(dir, 'bin');
  mkdirSync(bin);
  writeFileSync(join(bin, 'fusebox'), `#!/bin/sh\nexec ${CLI.map((a) => `'${a}'`).join(' ')} "$@"\n`, { mode: 0o755 });
});
afterAll(async () => {
  await seeder?.redis.close();
  await redis?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/**
 * A fresh route with traffic at times relative to now: the CLI reads the counters with the real clock, a second
 * or two after they were written, so every window below is chosen far from its edges.
 */
let newRoute: ReturnType<typeof sloRoutes>;
const route = () => {
  const r = newRoute();
  return { name: r.name, at: (agoMs: number, n: number, event: SloEvent) => r.at(Date.now() - agoMs, n, event) };
};

interface ScriptRun {
  code: number | null;
  out: string;
  err: string;
  /** The working directory the script ran in (its default GATE_REPORT lands there). */
  cwd: string;
  /** The JSON verdict the script left for the pipeline's artifacts, if any. */
  report(): { verdict: string; exitCode: number } | undefined;
}

/** Runs the script with bash in a fresh directory, with only the environment a CI step would give it. */
const script = (args: string[], env: Record<string, string | undefined> = {}, shell = 'bash'): Promise<ScriptRun> => {
  const cwd = mkdtempSync(join(dir, 'run-'));
  const fullEnv: NodeJS.ProcessEnv = { PATH: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}`, HOME: cwd, FUSEBOX_STORE: redis.url, ...env };
  for (const [k, v] of Object.entries(fullEnv)) if (v === undefined) delete fullEnv[k];
  const child = spawn(shell, [SCRIPT, ...args], { cwd, env: fullEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  return new Promise((resolve) =>
    child.on('close', (code) =>
      resolve({
        code,
        out,
        err,
        cwd,
        report: () => {
          const file = join(cwd, env.GATE_REPORT ?? 'fusebox-gate.json');
          return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as { verdict: string; exitCode: number }) : undefined;
        },
      }),
    ),
  );
};

describe('deploy/ci/fusebox-gate.sh against real fleet counters', () => {
  it('PROCEED: exits 0, prints and saves the one JSON verdict it acted on, and does not roll back', async () => {
    const r = route();
    await r.at(10 * DAY_MS, 9990, good);
    await r.at(10 * DAY_MS, 10, bad);
    await r.at(2 * HOUR_MS, 2000, good);
    await r.at(10 * MINUTE_MS, 600, good);
    const marker = join(dir, `rolled-back-${r.name}`);
    const run = await script([r.name, '--key-prefix', PREFIX], { ROLLBACK_CMD: `touch '${marker}'` });
    expect(run.err).toBe('');
    expect(run.code).toBe(0);
    expect(run.out).toContain('"verdict": "PROCEED"');
    expect(run.out).toContain('"budgetRemaining"');
    expect(run.out).toMatch(/fusebox gate: PROCEED\n$/);
    expect(run.report()).toMatchObject({ verdict: 'PROCEED', exitCode: 0, route: r.name });
    expect(existsSync(marker)).toBe(false);
  });

  it('ROLLBACK: runs ROLLBACK_CMD and exits 2', async () => {
    const r = route();
    await r.at(10 * DAY_MS, 100_000, good);
    await r.at(2 * MINUTE_MS, 180, good);
    await r.at(0, 20, bad);
    const marker = join(dir, `rolled-back-${r.name}`);
    const run = await script([r.name, '--key-prefix', PREFIX], { ROLLBACK_CMD: `touch '${marker}'`, GATE_REPORT: 'verdict.json' });
    expect(run.code).toBe(2);
    expect(run.out).toContain('"verdict": "ROLLBACK"');
    expect(run.err).toContain('fusebox gate: ROLLBACK: the error budget is spent or burning fast');
    expect(run.err).toContain(`running: touch '${marker}'`);
    expect(existsSync(marker)).toBe(true);
    expect(run.report()).toMatchObject({ verdict: 'ROLLBACK', exitCode: 20 });
    expect(existsSync(join(run.cwd, 'fusebox-gate.json'))).toBe(false);
  });

  it('ROLLBACK with a failing ROLLBACK_CMD still exits 2 and says the rollback failed', async () => {
    const r = route();
    await r.at(10 * DAY_MS, 100_000, good);
    await r.at(2 * MINUTE_MS, 180, good);
    await r.at(0, 20, bad);
    const run = await script([r.name, '--key-prefix', PREFIX], { ROLLBACK_CMD: 'exit 7' });
    expect(run.code).toBe(2);
    expect(run.err).toContain('rollback command failed');
  });

  it('HALT: exits 1 and runs no rollback', async () => {
    const r = route();
    await r.at(10 * DAY_MS, 9945, good);
    await r.at(10 * DAY_MS, 55, bad);
    await r.at(30 * MINUTE_MS, 2000, good);
    const marker = join(dir, `rolled-back-${r.name}`);
    const run = await script([r.name, '--key-prefix', PREFIX], { ROLLBACK_CMD: `touch '${marker}'` });
    expect(run.code).toBe(1);
    expect(run.err).toContain('fusebox gate: HALT');
    expect(existsSync(marker)).toBe(false);
    expect(run.report()).toMatchObject({ verdict: 'HALT', exitCode: 10 });
  });

  it('not enough data: GATE_ON_NO_DATA=proceed goes on (0), halt and the default stop (1)', async () => {
    const r = route();
    await r.at(0, 5, good);
    const [proceed, halt, unset] = await Promise.all([
      script([r.name, '--key-prefix', PREFIX], { GATE_ON_NO_DATA: 'proceed' }),
      script([r.name, '--key-prefix', PREFIX], { GATE_ON_NO_DATA: 'halt' }),
      script([r.name, '--key-prefix', PREFIX]),
    ]);
    expect(proceed.code).toBe(0);
    expect(proceed.err).toContain('not enough data; GATE_ON_NO_DATA=proceed, going on');
    expect(proceed.report()).toMatchObject({ verdict: 'INSUFFICIENT_DATA', exitCode: 30 });
    for (const run of [halt, unset]) {
      expect(run.code).toBe(1);
      expect(run.err).toContain('not enough data to judge; stopping');
      expect(run.out).toContain('"verdict": "INSUFFICIENT_DATA"');
    }
  });

  it('store unreachable: exits 1 without printing the password, FUSEBOX as a command with arguments', async () => {
    const url = `redis://:hunter2@127.0.0.1:${await freePort()}`;
    // FUSEBOX is a word list (e.g. "docker run --rm IMAGE"); here: node with the tsx loader and main.ts.
    const run = await script(['chat'], { FUSEBOX_STORE: url, FUSEBOX: CLI.join(' '), PATH: process.env.PATH });
    expect(run.code).toBe(1);
    expect(run.err).toContain('fusebox gate: the SLO store is unreachable; stopping');
    expect(run.err).toMatch(/cannot read the SLO counters from redis:\/\/:\*\*\*@127\.0\.0\.1/);
    expect(run.err + run.out).not.toContain('hunter2');
    expect(run.report()).toMatchObject({ verdict: 'STORE_UNREACHABLE', exitCode: 31 });
  });

  it('passes --compare through and maps a CLI usage error to 3', async () => {
    const [canary, stable] = [route(), route()];
    await canary.at(0, 5, good);
    await stable.at(0, 5, good);
    const [compare, usage] = await Promise.all([
      script(['--compare', `canary=${canary.name},stable=${stable.name}`, '--key-prefix', PREFIX], { GATE_ON_NO_DATA: 'proceed' }),
      script(['chat', '--slo', 'speed']),
    ]);
    expect(compare.code).toBe(0);
    expect(compare.report()).toMatchObject({ verdict: 'INSUFFICIENT_DATA', mode: 'compare' });
    expect(usage.code).toBe(3);
    expect(usage.err).toContain('--slo must be availability, latency, cost or all');
    expect(usage.err).toContain('fusebox gate: usage error (exit 2)');
  });

  it('refuses to run without arguments (3) or without FUSEBOX_STORE, under bash and the shebang’s sh', async () => {
    for (const shell of ['bash', 'sh']) {
      const none = await script([], {}, shell);
      expect(none.code).toBe(3);
      expect(none.err).toMatch(/usage: .*fusebox-gate\.sh ROUTE/);
      const noStore = await script(['chat'], { FUSEBOX_STORE: undefined }, shell);
      expect(noStore.code).toBe(3);
      expect(noStore.err).toContain('set FUSEBOX_STORE to the redis:// URL of the shared store');
      const noCli = await script(['chat'], { FUSEBOX: '/nonexistent/fusebox' }, shell);
      expect(noCli.code).toBe(3);
      expect(noCli.err).toContain("fusebox gate: cannot run '/nonexistent/fusebox'");
    }
  });
});

describe('deploy/ci files agree with the CLI', () => {
  it('the script is executable, starts with a shebang and maps every verdict the CLI exits with', () => {
    accessSync(SCRIPT, constants.X_OK);
    const text = readFileSync(SCRIPT, 'utf8');
    expect(text.startsWith('#!/bin/sh\n')).toBe(true);
    const arms = [...text.matchAll(/^\s+(\d+)\)$/gm)].map((m) => Number(m[1])).sort((a, b) => a - b);
    const verdicts = Object.entries(GATE_EXIT)
      .filter(([k]) => k !== 'USAGE')
      .map(([, v]) => v as number)
      .sort((a, b) => a - b);
    expect(arms).toEqual(verdicts);
  });

  it('the GitHub Actions example parses, uses the released image and handles every gate exit code', () => {
    const wf = parse(readFileSync(WORKFLOW, 'utf8')) as {
      env: Record<string, string>;
      jobs: Record<string, { steps: Array<{ name?: string; run?: string; uses?: string; if?: string }> }>;
    };
    const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
    expect(wf.env.FUSEBOX_IMAGE).toBe(`ghcr.io/fusebox/fusebox:${version}`);
    const steps = Object.values(wf.jobs).flatMap((j) => j.steps);
    const gateSteps = steps.filter((s) => s.run !== undefined && /\bgate\b[^\n]*--store/.test(s.run));
    expect(gateSteps.map((s) => s.name)).toEqual(['Error-budget gate (before)', 'Canary gate']);
    const codes = new Set<number>(Object.values(GATE_EXIT));
    for (const s of gateSteps) {
      // `set +e` so the step reaches its `case` instead of dying on the first non-zero exit.
      expect(s.run).toMatch(/^set \+e$/m);
      const arms = [...s.run!.matchAll(/^\s+(\d+)\)/gm)].map((m) => Number(m[1]));
      expect(arms.length).toBeGreaterThan(0);
      for (const a of arms) expect(codes.has(a), `${s.name}: case ${a} is no exit code of fusebox gate`).toBe(true);
      expect(s.run).toMatch(/^\s+\*\)/m);
    }
    // The before-gate decides on every verdict explicitly.
    const before = [...gateSteps[0]!.run!.matchAll(/^\s+(\d+)\)/gm)].map((m) => Number(m[1])).sort((a, b) => a - b);
    expect(before).toEqual([0, 10, 20, 30, 31]);
    // The rollback step keys on the canary step's ROLLBACK status.
    const rollback = steps.find((s) => s.name === 'Roll the canary back');
    expect(rollback?.if).toContain(`steps.canary.outputs.status == '${GATE_EXIT.ROLLBACK}'`);
  });
});
