import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { pino } from 'pino';
import { buildApp, REDACT_PATHS, type Fusebox } from '../src/app.js';
import { runStatus } from '../src/cli/status.js';
import { loadConfigFile } from '../src/config/load.js';
import { startFakeProvider, type FakeProvider } from './provider.js';

export interface DemoOptions {
  /** Where the story is printed. */
  out: NodeJS.WritableStream;
  /** Short pauses and a short breaker reset (tests). Default false: a pace a person can follow, ~10 s. */
  fast?: boolean;
  /** Called once everything is set up and before the agent starts, with the URLs (the CLI's --keep waits after). */
  onReady?: (urls: { proxyUrl: string; adminUrl: string }) => void;
  /** Keep Fusebox and the provider running after the story until this resolves. */
  keepUntil?: Promise<void>;
}

/** What happened, counted by Fusebox itself (its /metrics) and by the agent. */
export interface DemoSummary {
  /** Retries Fusebox made (`fusebox_retries_total{outcome="retried"}`), all routes. */
  retries: number;
  /** Breaker transitions of the `llm` route's primary (`fusebox_breaker_transitions_total`). */
  breakerOpened: number;
  breakerHalfOpened: number;
  breakerClosed: number;
  /** Answers served by the `small-model` fallback step (`fusebox_fallbacks_total`). */
  fallbacks: number;
  /** MCP tool breakers that opened (`fusebox_breaker_transitions_total{route="mcp",to="open"}`): `charge` only. */
  mcpBreakersOpened: number;
  /** MCP calls of the failing tool refused by its open breaker, and calls of the other tool that still worked. */
  mcpRefused: number;
  mcpLookupsOk: number;
  /** 402 CALL_LIMIT answers the runaway loop received. */
  callLimitRefusals: number;
  /** Calls the runaway loop made before it was stopped (the refused one included). */
  runawayCalls: number;
  /** USD Fusebox metered for the demo's LLM answers (`fusebox_cost_usd_total`). */
  costUsd: number;
}

/** Calls one workflow may make: the runaway loop is stopped at the next one. */
export const DEMO_MAX_CALLS = 6;
/** The runaway loop gives up on its own after this many iterations, so the demo ends even if the cap did not. */
const RUNAWAY_ITERATIONS = 25;

const demoConfig = (providerUrl: string, resetMs: number): string => `# Written by npm run demo: a fake provider on loopback, one LLM route, one tool route.
version: 1
agent: { id: demo-agent }
listen:
  proxy: { host: 127.0.0.1, port: 0 }
  admin: { host: 127.0.0.1, port: 0 }
budgets:
  workflow: { maxCalls: ${DEMO_MAX_CALLS} }    # per x-fusebox-workflow: the agent-loop stopper
routes:
  - name: llm
    provider: openai
    match: { pathPrefix: /openai }
    upstream: { url: "${providerUrl}" }
    retry: { maxRetries: 2, baseMs: 50, capMs: 200 }
    breaker: { consecutiveFailures: 3, resetMs: ${resetMs}, resetJitterPercent: 0 }
    fallback:
      - { type: upstream, name: small-model, url: "${providerUrl}", model: demo-mini }
    budget:
      prices:
        demo-large: { inputPerM: 5, outputPerM: 15 }
        demo-mini: { inputPerM: 0.5, outputPerM: 1.5 }
  - name: mcp
    provider: mcp
    match: { pathPrefix: /mcp }
    upstream: { url: "${providerUrl}/mcp" }
    breaker: { consecutiveFailures: 3, resetMs: 60000 }   # keyed by tool (the MCP default): one breaker per tool
  - name: search
    match: { pathPrefix: /search }
    upstream: { url: "${providerUrl}" }
    retry: { maxRetries: 3, baseMs: 50, capMs: 200 }
`;

/** Sum of the samples of one metric whose labels include `labels`. */
const metricSum = (text: string, name: string, labels: Record<string, string> = {}): number => {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
};

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Fusebox's decision log lines worth showing beside the agent's view, in a few words each. */
const describeLogLine = (line: Record<string, unknown>): string | undefined => {
  switch (line.msg) {
    case 'retrying':
      return `retrying ${String(line.route)} after ${String(line.reason)} (attempt ${String(line.attempt)}, backoff ${String(line.delayMs)} ms)`;
    case 'breaker transition':
      return `breaker ${String(line.key)}${line.key !== line.route ? ` of route ${String(line.route)}` : ''}: ${String(line.from)} → ${String(line.to)}${line.reason ? ` (${String(line.reason)})` : ''}`;
    case 'request':
      if (typeof line.fallback === 'string') return `${String(line.route)}: answered by fallback step ${line.fallback} (model ${String(line.fallbackModel)})`;
      if (typeof line.code === 'string' && line.status === 402) return `${String(line.route)}: refused ${String(line.status)} ${line.code} (workflow ${String(line.workflow)})`;
      return undefined;
    default:
      return undefined;
  }
};

/**
 * The demo: a fake provider, a real Fusebox on a demo config, and an agent loop that goes through a retry, a breaker
 * opening and closing, a fallback to a smaller model and a runaway loop stopped by a workflow call cap. Everything
 * listens on 127.0.0.1 and talks only to itself.
 */
export const runDemo = async (opts: DemoOptions): Promise<DemoSummary> => {
  const { out, fast = false } = opts;
  const say = (text = '') => out.write(`${text}\n`);
  const pause = (ms: number) => sleep(fast ? Math.min(ms, 20) : ms);
  const resetMs = fast ? 400 : 2500;

  const provider: FakeProvider = await startFakeProvider();
  const dir = mkdtempSync(join(tmpdir(), 'fusebox-demo-'));
  const configFile = join(dir, 'fusebox.yaml');
  writeFileSync(configFile, demoConfig(provider.url, resetMs));
  const { config, baseDir } = loadConfigFile(configFile, {});

  // Fusebox's own JSON log, read line by line: its decisions are printed as they happen.
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const text of chunk.toString('utf8').split('\n')) {
        if (text === '') continue;
        const said = describeLogLine(JSON.parse(text) as Record<string, unknown>);
        if (said !== undefined) say(`      fusebox: ${said}`);
      }
      done();
    },
  });
  const logger = pino({ level: 'info', redact: { paths: REDACT_PATHS, censor: '[REDACTED]' } }, sink);
  let app: Fusebox | undefined;
  try {
    app = await buildApp(config, { logger, baseDir, env: {} });
    const { proxyUrl, adminUrl } = await app.listen();
    const metrics = async () => (await fetch(`${adminUrl}/metrics`)).text();

    say('Fusebox demo: a fake LLM provider, tool API and MCP server, a real Fusebox in front of them, and a small agent loop.');
    say(`  fake provider   ${provider.url}   (OpenAI-style /v1/chat/completions, a flaky /tools/search, MCP at /mcp)`);
    say(`  fusebox proxy   ${proxyUrl}   (the agent: OPENAI_BASE_URL=${proxyUrl}/openai/v1)`);
    say(`  fusebox admin   ${adminUrl}`);
    say(`  config          ${configFile}`);
    say('  where to look while it runs (or with --keep, after):');
    say(`    ${adminUrl}/     (the live page, in a browser)`);
    say(`    curl -s ${adminUrl}/metrics | grep ^fusebox_`);
    say(`    curl -s ${adminUrl}/admin/status`);
    // From a checkout the CLI runs from source; installed from npm it is `fusebox status`.
    say(`    npm exec -- tsx src/main.ts status --admin ${adminUrl} --watch 1     (installed: fusebox status --admin ...)`);
    opts.onReady?.({ proxyUrl, adminUrl });

    const chat = async (model: string, opt: { stream?: boolean; workflow?: string } = {}) => {
      const res = await fetch(`${proxyUrl}/openai/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(opt.workflow ? { 'x-fusebox-workflow': opt.workflow } : {}) },
        body: JSON.stringify({ model, max_tokens: 64, stream: opt.stream === true, messages: [{ role: 'user', content: 'What is a circuit breaker?' }] }),
      });
      const text = await res.text();
      return { status: res.status, text, fallback: res.headers.get('x-fusebox-fallback'), error: res.headers.get('x-fusebox-error'), breaker: res.headers.get('x-fusebox-breaker') };
    };
    const search = async (workflow?: string) => {
      const res = await fetch(`${proxyUrl}/search/tools/search?q=fusebox`, { headers: workflow ? { 'x-fusebox-workflow': workflow } : {} });
      await res.arrayBuffer();
      return { status: res.status, error: res.headers.get('x-fusebox-error') };
    };
    let rpcId = 0;
    const mcpCall = async (tool: string) => {
      const res = await fetch(`${proxyUrl}/mcp`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
        body: JSON.stringify({ jsonrpc: '2.0', id: ++rpcId, method: 'tools/call', params: { name: tool, arguments: {} } }),
      });
      const body = (await res.json().catch(() => ({}))) as { result?: { isError?: boolean } };
      return { status: res.status, isError: body.result?.isError === true, error: res.headers.get('x-fusebox-error') };
    };
    const answerOf = (text: string): string => {
      try {
        const body = JSON.parse(text) as { model?: string; usage?: { total_tokens?: number } };
        return `model ${body.model}, ${body.usage?.total_tokens ?? '?'} tokens`;
      } catch {
        return `${text.split('\n\n').filter((e) => e.startsWith('data: {')).length} SSE chunks`;
      }
    };

    say();
    say('1. A normal turn: one JSON answer and one streamed answer, both metered.');
    let r = await chat('demo-large');
    say(`   agent: POST /openai/v1/chat/completions → ${r.status} (${answerOf(r.text)})`);
    r = await chat('demo-large', { stream: true });
    say(`   agent: same, stream: true → ${r.status} (${answerOf(r.text)}; Fusebox read the usage chunk and kept it from the agent)`);
    await app.idle();
    say(`   fusebox_cost_usd_total{route="llm"} = ${metricSum(await metrics(), 'fusebox_cost_usd_total', { route: 'llm' }).toFixed(6)} USD`);
    await pause(600);

    say();
    say('2. A flaky tool: the search API answers 503 once, then recovers. Fusebox retries; the agent sees one 200.');
    provider.toolFailures = 1;
    const s = await search();
    say(`   agent: GET /search/tools/search → ${s.status}`);
    await pause(600);

    say();
    say('3. An MCP server: tool "charge" fails (isError: true inside a 200), tool "lookup" works. Fusebox keeps one');
    say('   breaker per tool: "charge" is cut off after 3 failures, "lookup" is untouched.');
    let mcpRefused = 0;
    let mcpLookupsOk = 0;
    for (let i = 0; i < 4; i++) {
      const c = await mcpCall('charge');
      if (c.error === 'CIRCUIT_OPEN') mcpRefused++;
      say(`   agent: tools/call charge → ${c.status}${c.isError ? ' isError: true' : ''}${c.error ? ` ${c.error} (the MCP server was not called)` : ''}`);
      const l = await mcpCall('lookup');
      if (l.status === 200 && !l.isError) mcpLookupsOk++;
      say(`   agent: tools/call lookup → ${l.status}${l.isError ? ' isError: true' : ' ok'}`);
      await pause(100);
    }
    await pause(500);

    say();
    say('4. The provider has an outage on demo-large (503 to everything). After 3 failed attempts the breaker opens,');
    say('   and the route falls back to the smaller demo-mini; while open, calls go straight to the fallback.');
    provider.outage = true;
    for (let i = 0; i < 3; i++) {
      r = await chat('demo-large');
      say(`   agent: chat demo-large → ${r.status}${r.fallback ? ` via fallback ${r.fallback}` : ''} (${answerOf(r.text)})`);
      await pause(150);
    }
    await app.idle();
    say();
    say(`   What \`fusebox status --admin ${adminUrl}\` shows now:`);
    const statusText = new PassThrough();
    const chunks: Buffer[] = [];
    statusText.on('data', (c: Buffer) => chunks.push(c));
    const statusCode = await runStatus(['--admin', adminUrl], { stdin: process.stdin, stdout: statusText, stderr: statusText });
    for (const line of Buffer.concat(chunks).toString('utf8').trimEnd().split('\n')) say(`   | ${line}`);
    say(`   (exit status ${statusCode}: breakers are open)`);

    say();
    say(`5. The provider recovers. After resetMs (${resetMs} ms) the next call is the half-open probe; it succeeds and the breaker closes.`);
    provider.outage = false;
    await sleep(resetMs + 50);
    r = await chat('demo-large');
    say(`   agent: chat demo-large → ${r.status}${r.fallback ? ` via fallback ${r.fallback}` : ''} (${answerOf(r.text)})`);
    r = await chat('demo-large');
    say(`   agent: chat demo-large → ${r.status} (${answerOf(r.text)})`);
    await pause(600);

    say();
    say(`6. A runaway loop: workflow "runaway-1" calls the LLM and the tool over and over. Its cap is ${DEMO_MAX_CALLS} calls.`);
    let runawayCalls = 0;
    let callLimitRefusals = 0;
    for (let i = 0; i < RUNAWAY_ITERATIONS; i++) {
      const step = i % 2 === 0 ? await chat('demo-large', { workflow: 'runaway-1' }) : await search('runaway-1');
      runawayCalls++;
      say(`   agent: ${i % 2 === 0 ? 'chat  ' : 'search'} #${runawayCalls} → ${step.status}${step.error ? ` ${step.error}` : ''}`);
      if (step.status === 402 && step.error === 'CALL_LIMIT') {
        callLimitRefusals++;
        say('   agent: stopped by the cap (402 CALL_LIMIT, x-should-retry: false).');
        break;
      }
      await pause(100);
    }

    await app.idle();
    const text = await metrics();
    const summary: DemoSummary = {
      retries: metricSum(text, 'fusebox_retries_total', { outcome: 'retried' }),
      breakerOpened: metricSum(text, 'fusebox_breaker_transitions_total', { route: 'llm', to: 'open' }),
      breakerHalfOpened: metricSum(text, 'fusebox_breaker_transitions_total', { route: 'llm', to: 'half_open' }),
      breakerClosed: metricSum(text, 'fusebox_breaker_transitions_total', { route: 'llm', to: 'closed' }),
      fallbacks: metricSum(text, 'fusebox_fallbacks_total', { route: 'llm', step: 'small-model' }),
      mcpBreakersOpened: metricSum(text, 'fusebox_breaker_transitions_total', { route: 'mcp', to: 'open' }),
      mcpRefused,
      mcpLookupsOk,
      callLimitRefusals,
      runawayCalls,
      costUsd: metricSum(text, 'fusebox_cost_usd_total'),
    };
    say();
    say('Counted by Fusebox (/metrics):');
    say(`  retries ${summary.retries}, breaker opened ${summary.breakerOpened} / half-open ${summary.breakerHalfOpened} / closed ${summary.breakerClosed}, ` +
      `fallbacks to small-model ${summary.fallbacks}, MCP tool breakers opened ${summary.mcpBreakersOpened} (lookup ok ${summary.mcpLookupsOk}/4), CALL_LIMIT refusals ${summary.callLimitRefusals} after ${summary.runawayCalls} calls, cost ${summary.costUsd.toFixed(6)} USD`);
    if (opts.keepUntil) {
      say();
      say(`Fusebox keeps running (admin ${adminUrl}); Ctrl-C to stop.`);
      await opts.keepUntil;
    }
    return summary;
  } finally {
    await app?.shutdown(1000);
    await provider.close();
    rmSync(dir, { recursive: true, force: true });
  }
};

/** Each event the demo exists to show happened at least once. */
export const demoComplete = (s: DemoSummary): boolean =>
  s.retries > 0 && s.breakerOpened > 0 && s.breakerHalfOpened > 0 && s.breakerClosed > 0 && s.fallbacks > 0 && s.mcpBreakersOpened === 1 && s.mcpRefused > 0 && s.mcpLookupsOk === 4 && s.callLimitRefusals === 1;
