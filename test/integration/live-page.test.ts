import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { chromium, type Browser, type ConsoleMessage, type Locator, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFusebox, type RunningFusebox } from '../helpers/fusebox.js';
import { PRICES, startLlmUpstream, type LlmUpstream } from '../helpers/llm.js';

/*
 * The live page (`GET /` on the admin port) in a real headless Chromium (the Debian package, installed by the test
 * setup), driven by playwright-core. No sleeps: every wait is Playwright's polling of the page's DOM, bounded.
 */

const TOKEN = 'live-page-test-token-7e6d5c';
const HEADER_SECRET = 'live-page-header-secret-3b2a19';

/** The promise: traffic through the proxy shows on the page within 2 s (the page polls every second). */
const SHOWS_WITHIN_MS = 2_000;
/**
 * Other waits (a click's round trip, a breaker's next poll) are on the page's DOM and end as soon as it changes; the
 * bound only stops a page that never does. 10 s was too short once, with Chromium on a 2-core machine at load 15.
 */
const WAIT_MS = 30_000;

/** Flags that keep Chromium off the network (closed on CI): no QUIC, no component or sync fetches, no first-run. */
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

interface AxeViolation {
  id: string;
  impact: string | null;
  help: string;
  nodes: Array<{ target: unknown[] }>;
}

// Per test and hook: a few page waits each (WAIT_MS bounds one), and a Chromium start.
describe('the live page on the admin port, in headless Chromium', { timeout: 120_000 }, () => {
  let up: LlmUpstream;
  let fb: RunningFusebox;
  let browser: Browser;
  let page: Page;
  /** Console errors and uncaught page errors, as the test saw them. */
  const errors: string[] = [];

  const chat = (model: string) =>
    fetch(`${fb.proxyUrl}/llm/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model, max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] }),
    }).then(async (r) => ({ status: r.status, code: r.headers.get('x-fusebox-error'), requestId: r.headers.get('x-request-id'), body: await r.text() }));

  const tile = (key: string) => page.locator(`#breakers li[data-route="llm"][data-breaker="${key}"]`);
  const cell = (route: string, field: string) => page.locator(`#routes tr[data-route="${route}"] td[data-field="${field}"]`);

  const borderColor = (el: Locator) =>
    el.evaluate((e) => (globalThis as unknown as { getComputedStyle(e: unknown): { borderTopColor: string } }).getComputedStyle(e).borderTopColor);

  /** The page, its console errors and uncaught errors recorded in `errors`. */
  const watched = (p: Page): Page => {
    p.on('console', (m: ConsoleMessage) => {
      if (m.type() === 'error') errors.push(`console: ${m.text()} (${m.location().url})`);
    });
    p.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    return p;
  };

  /** Run axe-core in the page (evaluated through the DevTools protocol: the page's CSP allows no injected script). */
  const axeViolations = async (): Promise<AxeViolation[]> => {
    await page.evaluate(axeSource);
    // A string: the test's tsconfig has no DOM types, and this runs in the page.
    const result = (await page.evaluate("axe.run(document, { resultTypes: ['violations'] })")) as { violations: AxeViolation[] };
    return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => ({ target: n.target })) }));
  };

  beforeAll(async () => {
    up = await startLlmUpstream();
    fb = await startFusebox(
      {
        agent: { id: 'live-agent' },
        routes: [
          {
            name: 'llm',
            provider: 'openai',
            match: { pathPrefix: '/llm' },
            upstream: { url: up.url },
            retry: { maxRetries: 0 },
            // One breaker per model: `broken-model` (always 503) opens its own after two calls, test-model's stays closed.
            breaker: { keyBy: 'model', consecutiveFailures: 2, resetMs: 600_000, resetJitterPercent: 0 },
            budget: { dailyUsd: 5, prices: PRICES },
            headers: { add: { 'x-upstream-secret': '${FUSEBOX_TEST_LIVE_HEADER}' } },
          },
        ],
      },
      { env: { FUSEBOX_ADMIN_TOKEN: TOKEN, FUSEBOX_TEST_LIVE_HEADER: HEADER_SECRET } },
    );
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
    page = watched(await browser.newPage());
    await page.goto(`${fb.adminUrl}/`);
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await fb?.stop();
    await up?.close();
  });

  it('loads with no console errors and shows the sidecar, its route and the redacted config', async () => {
    await expect.poll(() => page.locator('#agent').textContent(), { timeout: WAIT_MS }).toContain('live-agent');
    await page.locator('#routes tr[data-route="llm"]').waitFor({ timeout: WAIT_MS });
    const config = await page.locator('#config').textContent();
    expect(config).toContain('"x-upstream-secret": "[REDACTED]"');
    expect(config).not.toContain(HEADER_SECRET);
    expect(errors).toEqual([]);
  });

  it(`shows traffic through the proxy at its next poll, one second of the page's clock (the issue asks ${SHOWS_WITHIN_MS / 1000} s)`, async () => {
    // A second tab on a paused clock: its polls happen only when the test moves its time, so "within a second of
    // page time" is exact, whatever the load of the machine (the fetch and the render then take what they take).
    const paused = watched(await browser.newPage());
    try {
      await paused.clock.install({ time: Date.now() });
      await paused.clock.pauseAt(Date.now() + 1);
      await paused.goto(`${fb.adminUrl}/`);
      const calls = paused.locator('#routes tr[data-route="llm"] td[data-field="calls"]');
      await expect.poll(() => calls.textContent(), { timeout: WAIT_MS }).toBe('0');

      for (let i = 0; i < 3; i++) {
        const res = await chat('test-model');
        expect(res.status).toBe(200);
        // Counted once its access line is written.
        await fb.waitForLog((l) => l.msg === 'request' && l.requestId === res.requestId);
      }
      expect(await calls.textContent(), 'nothing polls while the page clock stands still').toBe('0');
      await paused.clock.runFor(1_000);
      await expect.poll(() => calls.textContent(), { timeout: WAIT_MS }).toBe('3');

      // A hidden tab stops polling, and polls at once when shown again. Headless tabs are never hidden: the test
      // tells the page as the browser would (the property and the event), and counts its fetches as they start.
      await paused.evaluate(() => {
        const g = globalThis as unknown as { fetch: typeof fetch; fetches: number };
        const real = g.fetch;
        g.fetches = 0;
        g.fetch = (...args) => (g.fetches++, real(...args));
      });
      const fetches = () => paused.evaluate(() => (globalThis as unknown as { fetches: number }).fetches);
      const finished = async () => Number(await paused.locator('html').getAttribute('data-polls'));
      const setHidden = (hidden: boolean) =>
        paused.evaluate((h) => {
          const doc = (globalThis as unknown as { document: EventTarget }).document;
          Object.defineProperty(doc, 'hidden', { value: h, configurable: true });
          doc.dispatchEvent(new Event('visibilitychange'));
        }, hidden);
      const before = await finished();
      await setHidden(true);
      // The poll already scheduled still runs; none after it.
      await paused.clock.runFor(1_000);
      expect(await fetches()).toBe(1);
      await expect.poll(finished, { timeout: WAIT_MS }).toBe(before + 1);
      await paused.clock.runFor(60_000);
      expect(await fetches(), 'no poll while hidden').toBe(1);
      await setHidden(false);
      expect(await fetches(), 'a poll as soon as the tab is shown').toBe(2);
      await expect.poll(finished, { timeout: WAIT_MS }).toBe(before + 2);
    } finally {
      await paused.close();
    }
    // The live tab shows the same, and the spend against the route's cap: 3 calls at $0.0058.
    await expect.poll(() => cell('llm', 'calls').textContent(), { timeout: WAIT_MS }).toBe('3');
    await expect.poll(() => tile('test-model').getAttribute('data-state'), { timeout: WAIT_MS }).toBe('closed');
    expect(await page.locator('#budgets tbody').textContent()).toMatch(/route llm.*\$0\.0174 \/ \$5\.0000/);
  });

  it('turns a breaker tile red, with its state in words, once failures open it; the refusal is listed with its code', async () => {
    // Two 503s open broken-model's breaker; the third call is refused by it.
    expect((await chat('broken-model')).status).toBe(503);
    expect((await chat('broken-model')).status).toBe(503);
    expect(await chat('broken-model')).toMatchObject({ status: 503, code: 'CIRCUIT_OPEN' });
    await expect.poll(() => tile('broken-model').getAttribute('data-state'), { timeout: WAIT_MS }).toBe('open');
    expect(await tile('broken-model').getAttribute('class')).toContain('state-open');
    expect(await tile('broken-model').locator('.state').textContent()).toBe('open');
    expect(await tile('broken-model').locator('.detail').textContent()).toMatch(/next probe in \d+\.\d s/);
    // Red, from the stylesheet: the tile's border is the page's --red.
    expect(await borderColor(tile('broken-model'))).toBe('rgb(179, 38, 30)');
    expect(await borderColor(tile('test-model'))).toBe('rgb(20, 108, 46)');
    await expect.poll(() => page.locator('#refusals tbody').textContent(), { timeout: WAIT_MS }).toContain('CIRCUIT_OPEN');
    expect(await page.locator('#problems').textContent()).toContain('breaker "broken-model" of route "llm" is open');
    expect(await cell('llm', 'errors').textContent()).toMatch(/^3 /);
  });

  it('passes an automated accessibility check (axe-core): zero violations, with data on the page and with the token dialog open', async () => {
    expect(await axeViolations()).toEqual([]);
    await tile('test-model').getByRole('button', { name: /^Force open/ }).click();
    await page.locator('#token-dialog[open]').waitFor({ timeout: WAIT_MS });
    expect(await axeViolations()).toEqual([]);
    await page.getByRole('button', { name: 'Cancel' }).click();
    await page.locator('#token-dialog:not([open])').waitFor({ state: 'attached', timeout: WAIT_MS });
    expect(await tile('test-model').getAttribute('data-state')).toBe('closed');
    // Two axe runs took 7 s on a loaded 2-core machine.
  }, 60_000);

  it('asks for the admin token on a state-changing button: without it shows the 401, with it resets the breaker', async () => {
    const reset = tile('broken-model').getByRole('button', { name: /^Reset/ });
    await reset.click();
    await page.locator('#token-dialog[open]').waitFor({ timeout: WAIT_MS });
    await page.getByRole('button', { name: 'Send' }).click();
    const result = page.locator('#action-result');
    await expect.poll(() => result.textContent(), { timeout: WAIT_MS }).toMatch(/^Could not reset breaker "broken-model" of route "llm": 401 UNAUTHORIZED missing or wrong admin token/);
    expect(await tile('broken-model').getAttribute('data-state')).toBe('open');

    await reset.click();
    await page.locator('#token-input').fill(TOKEN);
    await page.getByRole('button', { name: 'Send' }).click();
    await expect.poll(() => result.textContent(), { timeout: WAIT_MS }).toBe('Done: reset breaker "broken-model" of route "llm".');
    await expect.poll(() => tile('broken-model').getAttribute('data-state'), { timeout: WAIT_MS }).toBe('closed');
    // The token is kept for the tab only, and asked again for a kill switch (it stops every call).
    expect(await page.evaluate(() => [sessionStorage.getItem('fusebox-admin-token'), localStorage.length])).toEqual([TOKEN, 0]);
    await page.getByRole('button', { name: 'Kill switch: stop this agent' }).click();
    expect(await page.locator('#token-input').inputValue()).toBe(TOKEN);
    await page.getByRole('button', { name: 'Send' }).click();
    await expect.poll(() => page.locator('#problems').textContent(), { timeout: WAIT_MS }).toContain('kill switch on agent "live-agent"');
    expect(await chat('test-model')).toMatchObject({ status: 402, code: 'KILLED' });
    await page.getByRole('button', { name: 'Lift kill switch on agent "live-agent"' }).click();
    await expect.poll(() => page.locator('#kills').textContent(), { timeout: WAIT_MS }).toBe('None set.');
    expect((await chat('test-model')).status).toBe(200);
  });

  it('logged no console error or page error but the 401 the test asked for', () => {
    // Chromium logs every failed fetch, the expected 401 included: exactly that one.
    expect(errors).toEqual([expect.stringMatching(/^console: Failed to load resource: .* 401 \(Unauthorized\) \(http:.*\/admin\/breakers\/reset\)$/)]);
  });
});
