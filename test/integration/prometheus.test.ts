import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { ProxyAgent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { runRules } from '../../src/cli/rules.js';
import { createMetrics } from '../../src/telemetry/metrics.js';
import { startFusebox, type RunningFusebox } from '../helpers/fusebox.js';
import { ensurePromtool, promtool } from '../helpers/promtool.js';
import { json, startUpstream, type TestUpstream } from '../helpers/upstream.js';
import { runCaptured } from '../helpers/cli.js';
import { freePort } from '../helpers/net.js';

/**
 * deploy/prometheus and deploy/grafana against the code: promtool checks and unit-tests the rules, and a real
 * Prometheus scraping a real Fusebox under traffic must return data for every query of the dashboard and every
 * expression of the rules. A metric or label renamed in src/telemetry/metrics.ts and not in deploy/ fails here.
 */

const ROOT = resolve(import.meta.dirname, '../..');
const PROM_DIR = join(ROOT, 'deploy/prometheus');
const RULES_FILE = join(PROM_DIR, 'fusebox-rules.yaml');
const DASHBOARD_FILE = join(ROOT, 'deploy/grafana/fusebox.json');

interface Rule {
  record?: string;
  alert?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface RuleGroup {
  name: string;
  rules: Rule[];
}
interface Target {
  refId: string;
  expr: string;
}
interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  gridPos: { h: number; w: number; x: number; y: number };
  targets?: Target[];
}
interface Dashboard {
  __inputs?: Array<{ name: string; type: string; pluginId: string }>;
  __requires?: Array<{ type: string; id: string }>;
  schemaVersion: number;
  panels: Panel[];
  templating: { list: Array<{ name: string; type: string; query: string | { query: string }; current?: { value?: unknown } }> };
}

/**
 * How every panel filters by agent: joined on the scrape target to `fusebox_config_info`, whose `agent` is the
 * PodMonitor's target label or, scraped by prometheus.io annotations (no such target label), the sidecar's own.
 */
const AGENT_JOIN = ' * on (job, instance) group_left (agent) fusebox_config_info{agent=~"$agent"}';

const ruleGroups = (): RuleGroup[] => (parse(readFileSync(RULES_FILE, 'utf8')) as { groups: RuleGroup[] }).groups;
const rules = (): Rule[] => ruleGroups().flatMap((g) => g.rules);
const dashboard = (): Dashboard => JSON.parse(readFileSync(DASHBOARD_FILE, 'utf8')) as Dashboard;
const queryPanels = (): Panel[] => dashboard().panels.filter((p) => p.type !== 'row');

/** Fusebox's own metrics (no process defaults) with their label names, from the one list in metrics.ts. */
const declaredMetrics = (): Array<{ name: string; labelNames: readonly string[] }> =>
  createMetrics({ defaultMetrics: false })
    .registry.getMetricsAsArray()
    .map((m) => ({ name: m.name, labelNames: (m as unknown as { labelNames?: string[] }).labelNames ?? [] }));

/** Grafana's variables as the test sets them: every route and agent, windows long enough to span the whole test. */
const GRAFANA_VARS: Record<string, string> = { $__rate_interval: '1m', $__interval: '15s', $__range: '1h', $route: '.*', $agent: '.*' };
const substitute = (expr: string): string => expr.replace(/\$__rate_interval|\$__interval|\$__range|\$route|\$agent/g, (v) => GRAFANA_VARS[v]!);

/**
 * The expression with every comparison made a `bool` one: `x > 0.75` keeps its series (0 or 1) instead of
 * filtering them out, so an alert that is rightly not firing still proves its selectors and arithmetic return data.
 * Skips what is inside label matchers and strings (`!=`, `=~`).
 */
const withBoolComparisons = (expr: string): string => {
  let out = '';
  let depth = 0;
  let quote: string | undefined;
  for (let i = 0; i < expr.length; i++) {
    const c = expr[i]!;
    if (quote !== undefined) {
      out += c;
      if (c === '\\') out += expr[++i] ?? '';
      else if (c === quote) quote = undefined;
      continue;
    }
    if (c === '"' || c === "'" || c === '`') quote = c;
    else if (c === '{') depth++;
    else if (c === '}') depth--;
    const op = depth === 0 && quote === undefined ? /^(==|!=|>=|<=|>|<)/.exec(expr.slice(i))?.[0] : undefined;
    if (op === undefined) {
      out += c;
      continue;
    }
    out += op;
    i += op.length - 1;
    if (!/^\s*bool\b/.test(expr.slice(i + 1))) out += ' bool';
  }
  return out;
};

/** Every vector selector in an expression (metric name and label matchers, no range). */
const selectorsOf = (expr: string): string[] => [...expr.matchAll(/(?<![\w:"])(fusebox[\w:]*|up)\b(\{[^}]*\})?/g)].map((m) => `${m[1]}${m[2] ?? ''}`);

/**
 * Counters that exist only once something rare happened (prom-client creates a labelled series on first use), with
 * why. For these an empty result is accepted when Prometheus knows the metric from its `# TYPE` line (metadata API),
 * which a misspelled name never is.
 */
const RARE: Record<string, string> = {
  fusebox_store_errors_total: 'only when a shared store command fails (one series per op and kind)',
  fusebox_store_journal_dropped_total: 'only when the journal fills during a Redis outage, or Redis never came back at shutdown',
  fusebox_store_journal_dropped_usd_total: 'as fusebox_store_journal_dropped_total',
  fusebox_trace_spans_exported_total: 'only when OTEL_* variables turn tracing on (off by default)',
  fusebox_budget_lease_outage_admissions_total: 'only while the store is unreachable',
  fusebox_budget_lease_outage_admitted_usd_total: 'only while the store is unreachable',
  fusebox_store_commits_total: 'only with store.kind: redis (this test runs the memory store)',
};

describe('deploy/prometheus, checked by the real promtool', () => {
  let dir: string;
  beforeAll(() => {
    ensurePromtool();
    dir = mkdtempSync(join(tmpdir(), 'fusebox-prom-rules-'));
  }, 300_000);
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('promtool check rules accepts fusebox-rules.yaml', () => {
    const r = promtool(['check', 'rules', 'fusebox-rules.yaml'], PROM_DIR);
    expect(r.status, r.output).toBe(0);
    expect(r.output).toContain('SUCCESS');
  });

  it('prometheusrule.yaml holds exactly the groups of fusebox-rules.yaml, and promtool accepts them', () => {
    const doc = parse(readFileSync(join(PROM_DIR, 'prometheusrule.yaml'), 'utf8')) as { apiVersion: string; kind: string; metadata: { name: string }; spec: { groups: RuleGroup[] } };
    expect(doc).toMatchObject({ apiVersion: 'monitoring.coreos.com/v1', kind: 'PrometheusRule', metadata: { name: 'fusebox' } });
    expect(doc.spec.groups).toEqual(ruleGroups());
    writeFileSync(join(dir, 'operator-groups.yaml'), stringify({ groups: doc.spec.groups }));
    const r = promtool(['check', 'rules', 'operator-groups.yaml'], dir);
    expect(r.status, r.output).toBe(0);
  });

  it('promtool test rules: every alert fires on its synthetic series and stays quiet on the look-alikes', () => {
    const tests = parse(readFileSync(join(PROM_DIR, 'fusebox-rules.test.yaml'), 'utf8')) as { tests: Array<{ alert_rule_test?: Array<{ alertname: string }> }> };
    const tested = new Set(tests.tests.flatMap((t) => (t.alert_rule_test ?? []).map((a) => a.alertname)));
    for (const r of rules()) if (r.alert) expect(tested, `${r.alert} has no promtool test`).toContain(r.alert);
    const r = promtool(['test', 'rules', 'fusebox-rules.test.yaml'], PROM_DIR);
    expect(r.status, r.output).toBe(0);
    expect(r.output).toContain('SUCCESS');
  });

  it('every alert says what happened, what it means and what to do, with a severity', () => {
    for (const r of rules().filter((x) => x.alert)) {
      expect(Object.keys(r.annotations ?? {}).sort(), r.alert).toEqual(['description', 'runbook', 'summary']);
      expect(['page', 'ticket'], r.alert).toContain(r.labels?.severity);
    }
  });

  it('fusebox-slo-rules.example.yaml is what `fusebox rules` prints for config/example.yaml, and promtool accepts it', async () => {
    const { code, out } = await runCaptured(runRules, ['--config', 'config/example.yaml'], { env: {} });
    expect(code).toBe(0);
    expect(readFileSync(join(PROM_DIR, 'fusebox-slo-rules.example.yaml'), 'utf8'), 'regenerate: npx tsx src/main.ts rules --config config/example.yaml').toBe(out);
    const r = promtool(['check', 'rules', 'fusebox-slo-rules.example.yaml'], PROM_DIR);
    expect(r.status, r.output).toBe(0);
  });
});

describe('deploy/grafana/fusebox.json', () => {
  it('asks for its Prometheus data source on import (__inputs) and declares the panel types it needs (__requires)', () => {
    const d = dashboard();
    expect(d.__inputs).toEqual([expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' })]);
    const vars = Object.fromEntries(d.templating.list.map((v) => [v.name, v]));
    // The import's choice becomes the datasource variable's default; panels keep querying through the variable.
    expect(vars.datasource?.current?.value).toBe('${DS_PROMETHEUS}');
    const text = readFileSync(DASHBOARD_FILE, 'utf8');
    for (const [, name] of text.matchAll(/\$\{(DS_\w+)\}/g)) expect(d.__inputs?.map((i) => i.name), `\${${name}} has no input`).toContain(name);
    const panelTypes = new Set(queryPanels().map((p) => p.type));
    expect(d.__requires?.filter((r) => r.type === 'panel').map((r) => r.id).sort()).toEqual([...panelTypes].sort());
    expect(d.__requires).toContainEqual(expect.objectContaining({ type: 'datasource', id: 'prometheus' }));
  });

  it('filters by agent through fusebox_config_info, so $agent works with the PodMonitor and with annotation scraping', () => {
    const vars = Object.fromEntries(dashboard().templating.list.map((v) => [v.name, v]));
    // Annotation-scraped series have no `agent` target label; fusebox_config_info carries agent.id as its own label.
    expect(vars.agent).toMatchObject({ type: 'query', query: { query: 'label_values(fusebox_config_info, agent)' } });
    for (const p of queryPanels()) {
      for (const t of p.targets ?? []) {
        const joins = t.expr.split(AGENT_JOIN).length - 1;
        const selectors = selectorsOf(t.expr.replaceAll(AGENT_JOIN, '')).filter((sel) => !sel.startsWith('fusebox_config_info'));
        // No selector filters on its own `agent` label (absent when scraped by annotations), and each is joined once.
        for (const sel of selectors) expect(sel, `${p.title}: ${t.expr}`).not.toMatch(/[{,]\s*agent\s*[=!]/);
        if (selectors.length > 0) expect(joins, `${p.title}: ${t.expr}`).toBe(selectors.length);
        else expect(t.expr, p.title).toContain('fusebox_config_info{agent=~"$agent"}');
      }
    }
  });

  it('has a Prometheus datasource variable and a route variable, and every panel queries through them', () => {
    const d = dashboard();
    expect(d.schemaVersion).toBeGreaterThanOrEqual(39);
    const vars = Object.fromEntries(d.templating.list.map((v) => [v.name, v]));
    expect(vars.datasource).toMatchObject({ type: 'datasource', query: 'prometheus' });
    expect(vars.route).toMatchObject({ type: 'query', query: { query: 'label_values(fusebox_requests_total, route)' } });
    const ids = new Set<number>();
    for (const p of d.panels) {
      expect(ids.has(p.id), `duplicate panel id ${p.id}`).toBe(false);
      ids.add(p.id);
      expect(p.gridPos.x + p.gridPos.w, p.title).toBeLessThanOrEqual(24);
    }
    for (const p of queryPanels()) {
      expect(p.datasource, p.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      for (const t of p.targets ?? []) {
        // Ranges follow Grafana's step, never a fixed window that breaks at other zoom levels.
        for (const [, range] of t.expr.matchAll(/\[([^\]]*)\]/g)) expect(['$__rate_interval', '$__range'], `${p.title}: ${t.expr}`).toContain(range);
      }
    }
  });

  // Budget gauges use route=~"$route|": their agent and fleet scopes have route="" and stay on the panel.
  it('shows every metric Fusebox declares, filtered by $route wherever the metric has a route label', () => {
    const exprs = queryPanels().flatMap((p) => (p.targets ?? []).map((t) => ({ title: p.title, expr: t.expr })));
    const all = exprs.map((e) => e.expr).join('\n');
    for (const m of declaredMetrics()) {
      expect(all, `${m.name} is on no panel`).toMatch(new RegExp(`\\b${m.name}(_bucket)?\\b`));
      if (!m.labelNames.includes('route')) continue;
      for (const e of exprs) {
        for (const sel of selectorsOf(e.expr)) {
          if (sel.replace(/\{.*$/, '').replace(/_bucket$/, '') === m.name) expect(sel, `${e.title}: ${e.expr}`).toContain('route=~"$route');
        }
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------
// End to end

const PRICES = { 'test-model': { inputPerM: 2, outputPerM: 8 } };
/** 1000 × $2/M + 1000 × $8/M = $0.01 per call. */
const USAGE = { prompt_tokens: 1000, completion_tokens: 1000, total_tokens: 2000 };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** An OpenAI-like upstream: JSON answers with usage; streams end with a usage chunk, or break off on `x-test-cut`. */
const llmUpstream = async (): Promise<TestUpstream> => {
  const up = await startUpstream();
  up.on('/v1/chat/completions', (req, res, raw) => {
    const body = JSON.parse(raw.toString()) as { model: string; stream?: boolean };
    const base = { id: 'c1', created: 1, model: body.model };
    if (!body.stream) {
      json(res, 200, { ...base, object: 'chat.completion', choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop', logprobs: null }], usage: USAGE });
      return;
    }
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(`data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: 'ok' }, finish_reason: null }] })}\n\n`);
    if (req.headers['x-test-cut'] !== undefined) {
      setTimeout(() => res.socket?.destroy(), 10);
      return;
    }
    res.write(`data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices: [], usage: USAGE })}\n\n`);
    res.end('data: [DONE]\n\n');
  });
  return up;
};

/** The scrape job that stands for annotation-based discovery (Prometheus' kubernetes-pods example job). */
const ANNOTATIONS_JOB = 'kubernetes-pods';

interface Prometheus {
  url: string;
  logs(): string;
  stop(): Promise<void>;
}

/** The real `prometheus` binary on a free loopback port, scraping `target` every second and evaluating these rule files. */
const startPrometheus = async (dir: string, target: string, ruleFiles: string[]): Promise<Prometheus> => {
  const port = await freePort();
  const config = {
    global: { scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' },
    rule_files: ruleFiles,
    // The same sidecar scraped twice: as the PodMonitor does (deploy/kubernetes/base/podmonitor.yaml: an `agent`
    // target label), and as a prometheus.io-annotations job does (pod and namespace labels, no `agent`).
    scrape_configs: [
      { job_name: 'fusebox', metrics_path: '/metrics', static_configs: [{ targets: [target], labels: { agent: 'e2e-agent' } }] },
      { job_name: ANNOTATIONS_JOB, metrics_path: '/metrics', static_configs: [{ targets: [target], labels: { namespace: 'agents', pod: 'e2e-agent-0' } }] },
    ],
  };
  writeFileSync(join(dir, 'prometheus.yml'), stringify(config));
  let logs = '';
  const proc: ChildProcess = spawn(
    'prometheus',
    [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  proc.stdout?.on('data', (c: Buffer) => (logs += c.toString()));
  proc.stderr?.on('data', (c: Buffer) => (logs += c.toString()));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill('SIGTERM');
    const killer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(killer);
  };
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`prometheus exited with ${proc.exitCode}:\n${logs}`);
    const ready = await request(`${url}/-/ready`)
      .then(async (r) => (await r.body.dump(), r.statusCode === 200))
      .catch(() => false);
    if (ready) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`prometheus not ready on ${url} within 20 s:\n${logs}`);
    }
    await sleep(100);
  }
  return { url, logs: () => logs, stop };
};

interface LoadedRule {
  name: string;
  health: string;
  lastError?: string;
  type: string;
  labels?: Record<string, string>;
  alerts?: Array<{ labels: Record<string, string>; state: string }>;
}

/** The rules Prometheus loaded from one rule file, as its rules API reports them. */
const loadedRules = async (prom: Prometheus, file: string): Promise<LoadedRule[]> => {
  const res = await request(`${prom.url}/api/v1/rules`);
  const body = (await res.body.json()) as { data: { groups: Array<{ file: string; rules: LoadedRule[] }> } };
  return body.data.groups.filter((g) => g.file === file).flatMap((g) => g.rules);
};

/** A rule's labels as a PromQL matcher, so each generated per-route rule is checked on its own series. */
const matcherOf = (labels: Record<string, string> = {}): string => {
  const pairs = Object.entries(labels)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}="${v}"`);
  return pairs.length === 0 ? '' : `{${pairs.join(',')}}`;
};

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

const query = async (prom: Prometheus, expr: string): Promise<{ ok: true; result: Sample[] } | { ok: false; error: string }> => {
  const res = await request(`${prom.url}/api/v1/query?${new URLSearchParams({ query: expr })}`);
  const body = (await res.body.json()) as { status: string; error?: string; data?: { resultType: string; result: Sample[] | [number, string] } };
  if (body.status !== 'success') return { ok: false, error: body.error ?? `HTTP ${res.statusCode}` };
  const data = body.data!;
  // A scalar result (e.g. `vector(1)` folded) is one value.
  return { ok: true, result: data.resultType === 'scalar' ? [{ metric: {}, value: data.result as [number, string] }] : (data.result as Sample[]) };
};

/**
 * An OK query returning at least one series with a finite value: what a panel needs to draw something. With
 * `acceptNaN`, series are enough (an error ratio of a route and SLO that counted no event is 0 / 0).
 */
const checkHasData = async (prom: Prometheus, expr: string, acceptNaN = false): Promise<string | undefined> => {
  const r = await query(prom, expr);
  if (!r.ok) return `query error: ${r.error}`;
  if (r.result.length === 0) return 'no series';
  if (!acceptNaN && !r.result.some((s) => Number.isFinite(Number(s.value[1])))) return `only non-finite values (${r.result.map((s) => s.value[1]).join(', ')})`;
  return undefined;
};

const knownByMetadata = async (prom: Prometheus, name: string): Promise<boolean> => {
  const res = await request(`${prom.url}/api/v1/metadata?${new URLSearchParams({ metric: name })}`);
  const body = (await res.body.json()) as { data: Record<string, unknown[]> };
  return (body.data[name]?.length ?? 0) > 0;
};

interface Check {
  /** Where the expression comes from, for the failure message: panel title and refId, or rule name. */
  where: string;
  expr: string;
  /** NaN values pass, for the SLO rules of a route and SLO kind this test's traffic counts no event in (0 / 0). */
  acceptNaN?: boolean;
}

/** Run every check: each selector must return series, then the whole expression must return finite data. */
const runChecks = async (prom: Prometheus, checks: Check[]): Promise<string[]> => {
  const failures: string[] = [];
  for (const c of checks) {
    if (c.expr.includes('$')) {
      failures.push(`${c.where}: a Grafana variable the test does not know is left in ${c.expr}`);
      continue;
    }
    let rareEmpty = false;
    for (const sel of new Set(selectorsOf(c.expr))) {
      const problem = await checkHasData(prom, sel, c.acceptNaN);
      if (problem === undefined) continue;
      const name = sel.replace(/\{.*$/, '');
      if (problem === 'no series' && RARE[name] !== undefined && (await knownByMetadata(prom, name))) {
        rareEmpty = true;
        continue;
      }
      failures.push(`${c.where}: selector ${sel} → ${problem}`);
    }
    if (rareEmpty) continue;
    const problem = await checkHasData(prom, c.expr, c.acceptNaN);
    if (problem !== undefined) failures.push(`${c.where}: ${c.expr} → ${problem}`);
  }
  return failures;
};

/** Re-run the checks until they pass or `ms` ran out (a slow machine may scrape or evaluate a beat late). */
const eventuallyPasses = async (prom: Prometheus, checks: Check[], ms: number): Promise<string[]> => {
  const deadline = Date.now() + ms;
  for (;;) {
    const failures = await runChecks(prom, checks);
    if (failures.length === 0 || Date.now() > deadline) return failures;
    await sleep(1_000);
  }
};

/** One CONNECT tunnel through the proxy to the tool upstream, with one plain HTTP call through it. */
const tunnelOnce = (proxyUrl: string, port: number): Promise<string> =>
  new Promise((resolveTunnel, reject) => {
    const s = connect(Number(new URL(proxyUrl).port), '127.0.0.1', () => s.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\n\r\n`));
    let data = '';
    let sent = false;
    s.on('data', (c: Buffer) => {
      data += c.toString();
      if (!sent && data.includes('\r\n\r\n')) {
        sent = true;
        s.write('GET /fast HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n');
      }
    });
    s.on('error', reject);
    s.on('close', () => resolveTunnel(data));
  });

describe('end to end: a real Prometheus scraping a real Fusebox under traffic', () => {
  let llm: TestUpstream;
  let tools: TestUpstream;
  let fb: RunningFusebox;
  let prom: Prometheus | undefined;
  let dir: string;
  let sloRuleGroups: RuleGroup[] = [];
  const sloRulesFile = (): string => join(dir, 'fusebox-slo-rules.yaml');

  /**
   * `fusebox rules` for this test's own config (deploy/prometheus/fusebox-slo-rules.example.yaml is for
   * config/example.yaml's routes, which this Fusebox does not have). Its day-window groups run every 5 min, and
   * Prometheus first evaluates such a group up to 5 min after it starts: here every group follows the 1 s
   * evaluation_interval instead. The rules themselves are as printed.
   */
  const generatedSloRules = async (config: Record<string, unknown>): Promise<RuleGroup[]> => {
    const configFile = join(dir, 'fusebox.yaml');
    writeFileSync(configFile, stringify(config));
    const { code, out, err } = await runCaptured(runRules, ['--config', configFile], { env: {} });
    if (code !== 0) throw new Error(`fusebox rules exited with ${code}: ${err}`);
    return (parse(out) as { groups: Array<RuleGroup & { interval?: string }> }).groups.map(({ interval: _interval, ...g }) => g);
  };

  const post = async (route: string, body: Record<string, unknown>, headers: Record<string, string> = {}): Promise<number> => {
    const res = await request(`${fb.proxyUrl}/${route}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ max_tokens: 10, messages: [{ role: 'user', content: 'hello' }], ...body }),
    });
    // A broken stream rejects while its body is read; that is the point of the call.
    await res.body.dump().catch(() => undefined);
    return res.statusCode;
  };
  const get = async (path: string, headers: Record<string, string> = {}): Promise<number> => {
    const res = await request(`${fb.proxyUrl}${path}`, { headers });
    await res.body.dump();
    return res.statusCode;
  };

  /** One call through an intercepted tunnel (a leaf is minted on the first), and one client asking for the wrong name. */
  const interceptOnce = async (): Promise<void> => {
    const agent = new ProxyAgent({ uri: fb.proxyUrl, requestTls: { ca: fb.app.ca!.info.pem } });
    const res = await request('https://tools.test/fast', { dispatcher: agent });
    await res.body.dump();
    await agent.close();
    const tunnel = await new Promise<Socket>((resolve, reject) => {
      const s = connect(Number(new URL(fb.proxyUrl).port), '127.0.0.1', () => s.write('CONNECT tools.test:443 HTTP/1.1\r\nhost: tools.test:443\r\n\r\n'));
      s.once('data', () => resolve(s));
      s.once('error', reject);
    });
    await new Promise<void>((resolve) => {
      const t = tlsConnect({ socket: tunnel, servername: 'not-tools.test', ca: fb.app.ca!.info.pem }, () => resolve());
      t.once('error', () => resolve());
    });
    // curl without the pod CA: OpenSSL rejects the certificate with an alert (exit 60).
    await new Promise<void>((resolve) =>
      execFile('curl', ['-s', '-o', '/dev/null', 'https://tools.test/fast'], { env: { PATH: process.env.PATH, HTTPS_PROXY: fb.proxyUrl } }, () => resolve()),
    );
  };

  /** Traffic that touches every metric: answers with usage, a broken stream, 503s, budget refusals, a tunnel. */
  const burst = async (cappedCalls: number): Promise<void> => {
    for (let i = 0; i < 3; i++) await post('chat', { model: 'test-model' });
    // A workflow's window caps calls: the lease gauge of calls has a series.
    await post('chat', { model: 'test-model' }, { 'x-fusebox-workflow': 'e2e-task' });
    await post('chat', { model: 'mystery-model' });
    await post('chat', { model: 'test-model', stream: true });
    await post('chat', { model: 'test-model', stream: true }, { 'x-test-cut': '1' });
    for (let i = 0; i < cappedCalls; i++) {
      await post('capped', { model: 'test-model' });
      // Let the commit of the previous call land before the next reserve.
      await sleep(20);
    }
    for (let i = 0; i < 3; i++) await get('/flaky/status?code=503');
    for (let i = 0; i < 3; i++) await get('/tool/fast');
    for (let i = 0; i < 2; i++) await get('/tool/fast', { 'x-fusebox-fault': 'abort=503' });
    await tunnelOnce(fb.proxyUrl, tools.port);
    await interceptOnce();
    await get('/no-such-route');
    await fb.app.slo.recorder.flush();
    await fb.app.slo.evaluator.evaluate();
  };

  const requestsCounted = async (): Promise<number> =>
    (await fb.metricsText())
      .split('\n')
      .filter((l) => l.startsWith('fusebox_requests_total{'))
      .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);

  /** Wait until Prometheus has scraped everything Fusebox counted so far, in both scrape jobs. */
  const scraped = async (): Promise<void> => {
    const want = await requestsCounted();
    const deadline = Date.now() + 15_000;
    for (const job of ['fusebox', ANNOTATIONS_JOB]) {
      for (;;) {
        const r = await query(prom!, `sum(fusebox_requests_total{job="${job}"})`);
        if (r.ok && Number(r.result[0]?.value[1] ?? 0) >= want) break;
        if (Date.now() > deadline) throw new Error(`prometheus did not scrape ${want} requests in job ${job} within 15 s: ${JSON.stringify(r)}\n${prom!.logs()}`);
        await sleep(200);
      }
    }
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fusebox-prom-e2e-'));
    llm = await llmUpstream();
    tools = await startUpstream();
    const slo = { minEvents: 3 };
    const config = {
      agent: { id: 'e2e-agent' },
      // A token cap and a call cap, so their lease gauges have series (both far above this traffic).
      budgets: { agent: { dailyUsd: 100, dailyTokens: 100_000_000 }, workflow: { maxCalls: 1_000 }, fleet: { dailyUsd: 1000 } },
      routes: [
        { name: 'chat', provider: 'openai', match: { pathPrefix: '/chat' }, upstream: { url: llm.url }, retry: { baseMs: 1 }, budget: { prices: PRICES }, slo },
        // $0.05 a day at $0.01 a call: the 4th call crosses 75 %, the 6th is refused.
        { name: 'capped', provider: 'openai', match: { pathPrefix: '/capped' }, upstream: { url: llm.url }, budget: { prices: PRICES, dailyUsd: 0.05 }, slo },
        {
          // Always 503: one retry, then the retry budget is spent; the breaker opens on the 3rd failure and stays
          // open; every answer comes from the static fallback.
          name: 'flaky',
          match: { pathPrefix: '/flaky' },
          upstream: { url: tools.url },
          retry: { maxRetries: 3, baseMs: 1, capMs: 2, budgetPercent: 1, minRetriesPerSecond: 0 },
          breaker: { consecutiveFailures: 3, resetMs: 600_000 },
          fallback: [{ type: 'static', name: 'canned', status: 200, body: { canned: true } }],
          slo,
        },
        {
          // Injected 503s (x-fusebox-fault) are retried, then answered from the last good answer.
          name: 'tool',
          // Also reached as https://tools.test through HTTPS_PROXY: an intercepted tunnel.
          match: { pathPrefix: '/tool', hosts: ['tools.test'] },
          upstream: { url: tools.url },
          retry: { maxRetries: 1, baseMs: 1, capMs: 2 },
          breaker: { enabled: false },
          lastGood: { enabled: true },
          fallback: [{ type: 'lastGood', name: 'last-good' }],
          faults: { enabled: true, headerControl: true },
          slo,
        },
        { name: 'tunnel', match: { hosts: [`127.0.0.1:${tools.port}`], connect: 'tunnel' }, upstream: { url: tools.url }, slo },
      ],
    };
    fb = await startFusebox(config);
    sloRuleGroups = await generatedSloRules(config);
    writeFileSync(sloRulesFile(), stringify({ groups: sloRuleGroups }));
    prom = await startPrometheus(dir, new URL(fb.adminUrl).host, [RULES_FILE, sloRulesFile()]);
    // Two bursts with a scrape in between, so every series has a sample before and after an increase: rates are
    // above zero and histogram quantiles are numbers, as on a live dashboard.
    await burst(3);
    await scraped();
    // One config reload between the bursts (a route's connect timeout changes), as an operator's SIGHUP would do:
    // the reload panel has data, and every other series carries on across it.
    const reloaded = { ...config, routes: config.routes.map((r) => (r.name === 'tunnel' ? { ...r, timeouts: { connectMs: 4_000 } } : r)) };
    expect(fb.app.reload(parseConfig({ listen: { proxy: { port: 0 }, admin: { port: 0 } }, ...reloaded, log: { level: 'info' } }))).toMatchObject({ result: 'ok', changed: ['tunnel'] });
    await burst(4);
    await scraped();
  }, 50_000);

  afterAll(async () => {
    await prom?.stop();
    await fb?.stop();
    await Promise.all([llm?.close(), tools?.close()]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 15_000);

  it('every query of the dashboard returns data', async () => {
    const checks: Check[] = queryPanels().flatMap((p) => (p.targets ?? []).map((t) => ({ where: `panel "${p.title}" [${t.refId}]`, expr: substitute(t.expr) })));
    // The variables' own queries: label_values(metric, label) lists the values of label on metric.
    for (const v of dashboard().templating.list) {
      const q = typeof v.query === 'string' ? v.query : v.query.query;
      const m = /^label_values\((\w+),\s*(\w+)\)$/.exec(q);
      if (m) checks.push({ where: `variable $${v.name}`, expr: `count by (${m[2]}) (${m[1]}{${m[2]}!=""})` });
    }
    expect(checks.length).toBeGreaterThan(40);
    // One agent picked in $agent, scraped either way: the join on fusebox_config_info is the only agent filter, so
    // restricting its job restricts the whole query to that scrape.
    for (const job of ['fusebox', ANNOTATIONS_JOB]) {
      const picked = (expr: string) => substitute(expr.replaceAll('fusebox_config_info{agent=~"$agent"}', `fusebox_config_info{agent=~"e2e-agent",job="${job}"}`));
      for (const p of queryPanels()) for (const t of p.targets ?? []) checks.push({ where: `job ${job}, $agent=e2e-agent: panel "${p.title}" [${t.refId}]`, expr: picked(t.expr) });
      checks.push({ where: `job ${job}: variable $agent`, expr: `count by (agent) (fusebox_config_info{agent="e2e-agent",job="${job}"})` });
    }
    expect(await eventuallyPasses(prom!, checks, 10_000)).toEqual([]);
  }, 30_000);

  it('every expression of the rules returns data: recording rules as written, alerts with their comparisons made bool', async () => {
    const checks: Check[] = rules().map((r) =>
      r.record ? { where: `record ${r.record}`, expr: r.record } : { where: `alert ${r.alert}`, expr: withBoolComparisons(r.expr) },
    );
    // The recording rules' own expressions too, not only their output.
    for (const r of rules()) if (r.record) checks.push({ where: `record ${r.record} (expr)`, expr: r.expr });
    expect(await eventuallyPasses(prom!, checks, 10_000)).toEqual([]);
  }, 30_000);

  it('Prometheus evaluates every rule without error, and the alerts this traffic should raise are raised', async () => {
    // Alerts that read recording rules of another group show up an evaluation or two after their inputs: wait
    // (bounded) until both expected alerts are there, then judge the state Prometheus reports.
    const expected = (rs: Awaited<ReturnType<typeof loadedRules>>) =>
      rs.flatMap((r) => r.alerts ?? []).filter((a) => (a.labels.alertname === 'FuseboxBudgetSpent' || a.labels.alertname === 'FuseboxBreakerOpen') && a.state !== 'inactive').length >= 2;
    let loaded = await loadedRules(prom!, RULES_FILE);
    for (const deadline = Date.now() + 5_000; !expected(loaded) && Date.now() < deadline; loaded = await loadedRules(prom!, RULES_FILE)) await sleep(250);
    expect(loaded.map((r) => r.name).sort()).toEqual(rules().map((r) => r.record ?? r.alert).sort());
    for (const r of loaded) expect({ rule: r.name, health: r.health, lastError: r.lastError ?? '' }).toEqual({ rule: r.name, health: 'ok', lastError: '' });
    const alerts = loaded.flatMap((r) => (r.alerts ?? []).map((a) => ({ alertname: a.labels.alertname, route: a.labels.route, state: a.state })));
    // Route capped spent its whole $0.05 (no `for`: fires at once); the breaker of flaky is open (pending for 5 min).
    expect(alerts).toContainEqual({ alertname: 'FuseboxBudgetSpent', route: 'capped', state: 'firing' });
    expect(alerts).toContainEqual({ alertname: 'FuseboxBreakerOpen', route: 'flaky', state: 'pending' });
    expect(alerts.map((a) => a.alertname)).not.toContain('FuseboxDown');
  }, 20_000);

  it('every SLO rule `fusebox rules` generates for this config returns data: each recording rule per route and SLO, each alert with its comparisons made bool', async () => {
    const generated = sloRuleGroups.flatMap((g) => g.rules);
    // 6 error-ratio windows, then per route and SLO kind an objective, a budget and 4 alerts: three kinds on the
    // priced (LLM) routes chat and capped, no cost SLO on flaky, tool and tunnel (their calls have no price).
    expect(generated).toHaveLength(6 + (2 * 3 + 3 * 2) * 6);
    expect(generated.filter((r) => r.labels?.slo === 'cost').map((r) => r.labels?.route)).not.toContain('tool');
    // The route and SLO pairs no call counts in, and why: their ratios are 0 / 0, so NaN is their right value.
    const counted = await query(prom!, 'sum by (route, slo) (fusebox_slo_events_total{job="fusebox"})');
    const noEvents = counted.ok ? counted.result.filter((x) => Number(x.value[1]) === 0).map((x) => `${x.metric.route}/${x.metric.slo}`) : ['query failed'];
    expect(noEvents.sort()).toEqual([
      // Cost is counted for priced (LLM) calls only; flaky and tool are plain HTTP.
      'flaky/cost',
      'tool/cost',
      // A CONNECT tunnel is end-to-end TLS: it is counted as a tunnel, never as an SLO event.
      'tunnel/availability',
      'tunnel/cost',
      'tunnel/latency',
    ]);
    const acceptNaN = (labels: Record<string, string> = {}): boolean => noEvents.includes(`${labels.route}/${labels.slo}`);
    const checks: Check[] = generated.map((r) =>
      r.record
        ? { where: `record ${r.record}${matcherOf(r.labels)}`, expr: `${r.record}${matcherOf(r.labels)}`, acceptNaN: acceptNaN(r.labels) }
        : { where: `alert ${r.alert}${matcherOf(r.labels)}`, expr: withBoolComparisons(r.expr), acceptNaN: acceptNaN(r.labels) },
    );
    for (const r of generated) if (r.record) checks.push({ where: `record ${r.record}${matcherOf(r.labels)} (expr)`, expr: r.expr, acceptNaN: acceptNaN(r.labels) });
    expect(await eventuallyPasses(prom!, checks, 10_000)).toEqual([]);
    // Every route of this config has its own series in each error ratio, not only some of them.
    const ratio = await query(prom!, 'count by (route) (fusebox:slo_errors:ratio_rate5m)');
    expect(ratio.ok && ratio.result.map((s) => s.metric.route).sort()).toEqual(['capped', 'chat', 'flaky', 'tool', 'tunnel']);
  }, 30_000);

  it('Prometheus evaluates every generated SLO rule without error', async () => {
    const loaded = await loadedRules(prom!, sloRulesFile());
    const generated = sloRuleGroups.flatMap((g) => g.rules);
    expect(loaded.map((r) => `${r.name}${matcherOf(r.labels)}`).sort()).toEqual(generated.map((r) => `${r.record ?? r.alert}${matcherOf(r.labels)}`).sort());
    for (const r of loaded) expect({ rule: r.name, health: r.health, lastError: r.lastError ?? '' }).toEqual({ rule: r.name, health: 'ok', lastError: '' });
    // chat's broken streams (2 of its 14 calls) burn a 0.5 % budget past every threshold (no `for`: firing at once).
    // flaky's 503s are answered by its fallback, which counts as good; budget refusals on capped burn no budget.
    // The budget alert reads a record that reads a record of another group: it may fire a couple of evaluations late.
    const firing = async (): Promise<string[]> =>
      (await loadedRules(prom!, sloRulesFile())).flatMap((r) => (r.alerts ?? []).map((a) => `${a.labels.alertname} ${a.labels.route}/${a.labels.slo} ${a.state}`)).sort();
    let alerts = await firing();
    for (const deadline = Date.now() + 5_000; alerts.length < 4 && Date.now() < deadline; alerts = await firing()) await sleep(250);
    expect(alerts).toEqual([
      'FuseboxSloBudgetExhausted chat/availability firing',
      'FuseboxSloFastBurn chat/availability firing',
      'FuseboxSloMediumBurn chat/availability firing',
      'FuseboxSloSlowBurn chat/availability firing',
    ]);
  }, 20_000);

  it('the bool rewrite keeps label matchers and strings intact', () => {
    expect(withBoolComparisons('count(x{a!="b",c=~"d>e"} >= 1) > 0.75 < 1')).toBe('count(x{a!="b",c=~"d>e"} >= bool 1) > bool 0.75 < bool 1');
    expect(withBoolComparisons('up == bool 0')).toBe('up == bool 0');
  });
});
