import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { runRules } from '../../src/cli/rules.js';
import type { AlertingRule, RuleGroup } from '../../src/slo/rules.js';
import { ensurePromtool, promtool } from '../helpers/promtool.js';
import { runCaptured } from '../helpers/cli.js';

const CONFIG = `
routes:
  - name: chat
    match: { pathPrefix: /openai }
    upstream: { url: https://api.openai.com }
  - name: tools
    match: { pathPrefix: /tools }
    upstream: { url: http://tools.internal:8080 }
    slo:
      availability: { objectivePercent: 99.9 }
      windowDays: 7
`;

let dir: string;

const rules = async (args: string[]): Promise<{ code: number; out: string; err: string }> => {
  return runCaptured(runRules, args, { env: {} });
};

beforeAll(() => {
  ensurePromtool();
  dir = mkdtempSync(join(tmpdir(), 'fusebox-rules-'));
  writeFileSync(join(dir, 'fusebox.yaml'), CONFIG);
}, 300_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const series = (route: string, kind: string, values: string) => ({
  series: `fusebox_slo_events_total{route="${route}",slo="availability",kind="${kind}",instance="sidecar-1"}`,
  values,
});

describe('fusebox rules, checked by the real promtool', () => {
  it('prints a rule file that promtool check rules accepts', async () => {
    const { code, out } = await rules(['--config', join(dir, 'fusebox.yaml')]);
    expect(code).toBe(0);
    writeFileSync(join(dir, 'rules.yaml'), out);
    const r = promtool(['check', 'rules', 'rules.yaml'], dir);
    expect(r.output).toContain('SUCCESS');
    expect(r.status, r.output).toBe(0);
  });

  it('prints a PrometheusRule whose groups promtool accepts too', async () => {
    const { code, out } = await rules(['--config', join(dir, 'fusebox.yaml'), '--format', 'prometheus-operator', '--namespace', 'monitoring', '--label', 'release=prometheus']);
    expect(code).toBe(0);
    const doc = parse(out) as { apiVersion: string; kind: string; metadata: Record<string, unknown>; spec: { groups: RuleGroup[] } };
    expect(doc).toMatchObject({
      apiVersion: 'monitoring.coreos.com/v1',
      kind: 'PrometheusRule',
      metadata: { name: 'fusebox-slo', namespace: 'monitoring', labels: { release: 'prometheus' } },
    });
    writeFileSync(join(dir, 'operator-groups.yaml'), stringify({ groups: doc.spec.groups }));
    const r = promtool(['check', 'rules', 'operator-groups.yaml'], dir);
    expect(r.status, r.output).toBe(0);
  });

  it('promtool test rules: a fast burn fires its page, a 5-minute spike alone does not, a healthy route stays quiet', async () => {
    const { out } = await rules(['--config', join(dir, 'fusebox.yaml')]);
    writeFileSync(join(dir, 'rules.yaml'), out);
    const groups = (parse(out) as { groups: RuleGroup[] }).groups;
    const alertRule = (name: string, route: string) =>
      groups.flatMap((g) => g.rules).find((r): r is AlertingRule => 'alert' in r && r.alert === name && r.labels.route === route && r.labels.slo === 'availability')!;
    const fast = alertRule('FuseboxSloFastBurn', 'chat');
    const exhausted = alertRule('FuseboxSloBudgetExhausted', 'chat');

    const test = {
      rule_files: ['rules.yaml'],
      evaluation_interval: '1m',
      tests: [
        {
          // chat: 10 % of calls fail for two hours — 20× its 0.5 % budget. tools: healthy.
          interval: '1m',
          input_series: [series('chat', 'good', '0+90x120'), series('chat', 'bad', '0+10x120'), series('tools', 'good', '0+100x120'), series('tools', 'bad', '0x120')],
          alert_rule_test: [
            { eval_time: '60m', alertname: 'FuseboxSloFastBurn', exp_alerts: [{ exp_labels: fast.labels, exp_annotations: fast.annotations }] },
            { eval_time: '60m', alertname: 'FuseboxSloBudgetExhausted', exp_alerts: [{ exp_labels: exhausted.labels, exp_annotations: exhausted.annotations }] },
          ],
        },
        {
          // chat: healthy for two hours, then 80 failed calls in the last 4 minutes: the 5 min window burns at
          // ~27×, the 1 h window at ~2.6×. The multi-window rule must not page.
          interval: '1m',
          input_series: [series('chat', 'good', '0+100x120'), series('chat', 'bad', '0x115 20 40 60 80')],
          alert_rule_test: [{ eval_time: '119m', alertname: 'FuseboxSloFastBurn', exp_alerts: [] }],
          promql_expr_test: [
            // The short window alone is over the threshold, the long one is not.
            {
              expr: 'fusebox:slo_errors:ratio_rate5m{route="chat",slo="availability"} > bool (14.4 * 0.005)',
              eval_time: '119m',
              exp_samples: [{ labels: '{route="chat",slo="availability"}', value: 1 }],
            },
            {
              expr: 'fusebox:slo_errors:ratio_rate1h{route="chat",slo="availability"} > bool (14.4 * 0.005)',
              eval_time: '119m',
              exp_samples: [{ labels: '{route="chat",slo="availability"}', value: 0 }],
            },
          ],
        },
      ],
    };
    writeFileSync(join(dir, 'test.yaml'), stringify(test));
    const r = promtool(['test', 'rules', 'test.yaml'], dir);
    expect(r.status, r.output).toBe(0);
    expect(r.output).toContain('SUCCESS');
  });

  it('promtool test rules fails when the expected alert is not there (the check can fail)', async () => {
    const test = {
      rule_files: ['rules.yaml'],
      evaluation_interval: '1m',
      tests: [
        {
          interval: '1m',
          input_series: [series('chat', 'good', '0+100x120'), series('chat', 'bad', '0x120')],
          alert_rule_test: [{ eval_time: '60m', alertname: 'FuseboxSloFastBurn', exp_alerts: [{ exp_labels: { route: 'chat' } }] }],
        },
      ],
    };
    writeFileSync(join(dir, 'test-fail.yaml'), stringify(test));
    const r = promtool(['test', 'rules', 'test-fail.yaml'], dir);
    expect(r.status).not.toBe(0);
  });
});
