import { stringify } from 'yaml';
import { allowedErrorRate, BURN_ALERTS, BURN_WINDOWS, SLO_KINDS, type AlertSpeed, type SloKind } from './burn.js';
import { objectiveOf, type SloRouteSpec } from './spec.js';

/**
 * Prometheus recording and multi-window burn-rate alerting rules for the configured SLOs, from the counter every
 * sidecar exports: `fusebox_slo_events_total{route,slo,kind="good|bad"}`. Summing over sidecars gives the fleet view,
 * the same numbers `fusebox gate` and `/admin/slo` compute from the shared store.
 */

export interface RecordingRule {
  record: string;
  expr: string;
  labels?: Record<string, string>;
}
export interface AlertingRule {
  alert: string;
  expr: string;
  for?: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}
export interface RuleGroup {
  name: string;
  interval?: string;
  rules: Array<RecordingRule | AlertingRule>;
}

export const EVENTS_METRIC = 'fusebox_slo_events_total';
export const errorRatioRecord = (window: string): string => `fusebox:slo_errors:ratio_rate${window}`;
export const BUDGET_RECORD = 'fusebox:slo_error_budget_remaining:ratio';
export const OBJECTIVE_RECORD = 'fusebox:slo_objective:ratio';

export const ALERT_NAMES: Readonly<Record<AlertSpeed | 'exhausted', string>> = {
  fast: 'FuseboxSloFastBurn',
  medium: 'FuseboxSloMediumBurn',
  slow: 'FuseboxSloSlowBurn',
  exhausted: 'FuseboxSloBudgetExhausted',
};

/** The workbook's routing: fast and medium burns page someone, slow burns and a spent budget open a ticket. */
const SEVERITY: Readonly<Record<AlertSpeed | 'exhausted', string>> = { fast: 'page', medium: 'page', slow: 'ticket', exhausted: 'ticket' };

const errorRatio = (window: string): RecordingRule => ({
  record: errorRatioRecord(window),
  expr: `sum by (route, slo) (rate(${EVENTS_METRIC}{kind="bad"}[${window}])) / sum by (route, slo) (rate(${EVENTS_METRIC}{kind=~"good|bad"}[${window}]))`,
});

const selector = (route: string, slo: SloKind): string => `{route="${route}",slo="${slo}"}`;

const objectiveText = (kind: SloKind, spec: SloRouteSpec): string => {
  const o = objectiveOf(spec, kind).objectivePercent;
  if (kind === 'latency') return `${o} % of calls under ${spec.latencyThresholdMs} ms`;
  if (kind === 'cost') return `${o} % of calls under $${spec.costThresholdMicros / 1_000_000}`;
  return `${o} % of calls answered without an upstream failure`;
};

/** Rule groups for these routes: error ratios (shared), then per route and SLO the budget and four alerts. */
export const sloRuleGroups = (specs: readonly SloRouteSpec[]): RuleGroup[] => {
  const budgetWindows = [...new Set(specs.map((s) => `${s.windowDays}d`))].filter((w) => !(BURN_WINDOWS as readonly string[]).includes(w));
  const shortWindows = BURN_WINDOWS.filter((w) => w !== '3d');
  const groups: RuleGroup[] = [
    { name: 'fusebox-slo-error-ratios', rules: shortWindows.map(errorRatio) },
    // Day-long ranges are costly to evaluate; every 5 min is plenty for windows of days.
    { name: 'fusebox-slo-error-ratios-long', interval: '5m', rules: ['3d', ...budgetWindows].map(errorRatio) },
  ];
  const budgets: RecordingRule[] = [];
  const alerts: AlertingRule[] = [];
  for (const spec of specs) {
    // A route whose calls have no price never counts a cost event: its cost rules could only ever be NaN.
    for (const kind of SLO_KINDS.filter((k) => k !== 'cost' || spec.priced !== false)) {
      const objective = objectiveOf(spec, kind).objectivePercent;
      const allowed = allowedErrorRate(objective);
      const sel = selector(spec.route, kind);
      const labels = { route: spec.route, slo: kind };
      budgets.push({ record: OBJECTIVE_RECORD, expr: `vector(${Number((objective / 100).toFixed(12))})`, labels });
      budgets.push({ record: BUDGET_RECORD, expr: `1 - ${errorRatioRecord(`${spec.windowDays}d`)}${sel} / ${allowed}`, labels });
      const description = `${spec.route}: ${kind} SLO ${objectiveText(kind, spec)} over ${spec.windowDays} d.`;
      for (const a of BURN_ALERTS) {
        const threshold = `(${a.factor} * ${allowed})`;
        alerts.push({
          alert: ALERT_NAMES[a.speed],
          expr: `${errorRatioRecord(a.long)}${sel} > ${threshold} and ${errorRatioRecord(a.short)}${sel} > ${threshold}`,
          labels: { ...labels, severity: SEVERITY[a.speed], long_window: a.long, short_window: a.short },
          annotations: {
            summary: `Route ${spec.route} burns its ${kind} error budget at over ${a.factor}× the sustainable rate (${a.long} and ${a.short} windows)`,
            description: `${description} At this rate the ${spec.windowDays}-day budget lasts ${budgetLastsText(spec.windowDays, a.factor)}.`,
          },
        });
      }
      alerts.push({
        alert: ALERT_NAMES.exhausted,
        expr: `${BUDGET_RECORD}${sel} <= 0`,
        labels: { ...labels, severity: SEVERITY.exhausted },
        annotations: {
          summary: `Route ${spec.route} has spent its ${kind} error budget`,
          description: `${description} Its SLO action (onBudgetExhausted) is in force.`,
        },
      });
    }
  }
  groups.push({ name: 'fusebox-slo-budgets', interval: '5m', rules: budgets }, { name: 'fusebox-slo-alerts', rules: alerts });
  return groups;
};

const budgetLastsText = (windowDays: number, factor: number): string => {
  const hours = (windowDays * 24) / factor;
  return hours < 48 ? `${Number(hours.toFixed(1))} h` : `${Number((hours / 24).toFixed(1))} days`;
};

const YAML_OPTIONS = { lineWidth: 0 } as const;

/** A plain Prometheus rule file (`rule_files:`). */
export const ruleFileYaml = (groups: readonly RuleGroup[], source: string): string =>
  `# Generated by \`fusebox rules\` from ${source}. Regenerate after changing the SLOs; do not edit.\n${stringify({ groups }, YAML_OPTIONS)}`;

export interface PrometheusRuleMeta {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
}

/** A PrometheusRule object for the Prometheus Operator. */
export const prometheusRuleYaml = (groups: readonly RuleGroup[], meta: PrometheusRuleMeta, source: string): string => {
  const metadata: Record<string, unknown> = {
    name: meta.name,
    ...(meta.namespace ? { namespace: meta.namespace } : {}),
    labels: { 'app.kubernetes.io/name': 'fusebox', 'app.kubernetes.io/component': 'slo-rules', ...meta.labels },
  };
  const doc = { apiVersion: 'monitoring.coreos.com/v1', kind: 'PrometheusRule', metadata, spec: { groups } };
  return `# Generated by \`fusebox rules\` from ${source}. Regenerate after changing the SLOs; do not edit.\n${stringify(doc, YAML_OPTIONS)}`;
};
