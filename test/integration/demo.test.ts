import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { DEMO_MAX_CALLS, demoComplete, runDemo } from '../../demo/demo.js';

const ROOT = join(import.meta.dirname, '../..');

describe('npm run demo', () => {
  it('goes through a retry, a breaker opening and closing, a fallback, a per-tool MCP breaker and a workflow call cap, as Fusebox counts them', async () => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (c: Buffer) => (text += c.toString()));
    const summary = await runDemo({ out, fast: true });
    expect(summary).toMatchObject({ breakerOpened: 1, breakerHalfOpened: 1, breakerClosed: 1, callLimitRefusals: 1, runawayCalls: DEMO_MAX_CALLS + 1 });
    // The 4th call of the failing MCP tool is refused by its breaker; the other tool answers every time.
    expect(summary).toMatchObject({ mcpBreakersOpened: 1, mcpRefused: 1, mcpLookupsOk: 4 });
    // One retry of the flaky tool, two of the failing LLM before its breaker opened.
    expect(summary.retries).toBe(3);
    // The call that opened the breaker and the two while it was open.
    expect(summary.fallbacks).toBe(3);
    expect(summary.costUsd).toBeGreaterThan(0);
    expect(demoComplete(summary)).toBe(true);
    // What a person reads: Fusebox's decisions as they happen, and where to look.
    expect(text).toMatch(/fusebox: retrying search after status_5xx/);
    expect(text).toMatch(/fusebox: breaker llm: closed → open \(consecutive_failures\)/);
    expect(text).toMatch(/fusebox: breaker llm: open → half_open/);
    expect(text).toMatch(/fusebox: breaker llm: half_open → closed/);
    expect(text).toMatch(/via fallback small-model \(model demo-mini/);
    expect(text).toMatch(/→ 402 CALL_LIMIT/);
    expect(text).toMatch(/fusebox: breaker charge of route mcp: closed → open/);
    expect(text).toMatch(/tools\/call charge → 503 CIRCUIT_OPEN/);
    expect(text).toMatch(/PROBLEMS \(exit 10\)\n(.*\n)*.*breaker "llm" of route "llm" is open/);
    expect(text).toMatch(/curl -s http:\/\/127\.0\.0\.1:\d+\/metrics/);
    expect(text).toMatch(/fusebox status --admin http:\/\/127\.0\.0\.1:\d+/);
  });

  it('is the package script, and exits 0 by itself with "Demo complete" (fast run)', async () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.demo).toBe('tsx demo/run.ts');
    const child = spawn(process.execPath, ['--import', 'tsx', 'demo/run.ts', '--fast'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(err).toBe('');
    expect(code).toBe(0);
    expect(out).toMatch(/Demo complete: every event happened\.\n$/);
  });
});
