import { parseArgs } from 'node:util';
import { ConfigError, loadConfigFile } from '../config/load.js';
import { prometheusRuleYaml, ruleFileYaml, sloRuleGroups } from '../slo/rules.js';
import { sloSpecsOf } from '../slo/spec.js';

export interface RulesIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  env?: NodeJS.ProcessEnv;
}

export const RULES_USAGE = `Usage: fusebox rules --config FILE [options]

Print Prometheus recording and multi-window burn-rate alerting rules for the SLOs of the routes in FILE
(from the fusebox_slo_events_total counter every sidecar exports). Check them with: promtool check rules FILE

Options:
  -c, --config FILE        Fusebox config file (required)
  -f, --format FORMAT      rules (default): a plain Prometheus rule file
                           prometheus-operator: a PrometheusRule object (monitoring.coreos.com/v1)
      --name NAME          PrometheusRule name (default fusebox-slo)
      --namespace NS       PrometheusRule namespace (default: none, kubectl's current)
      --label KEY=VALUE    PrometheusRule label, repeatable (e.g. release=prometheus for the operator's ruleSelector)
  -h, --help               this text

Exit status: 0 printed, 1 invalid config, 2 usage error.`;

const OPTIONS = {
  config: { type: 'string', short: 'c' },
  format: { type: 'string', short: 'f', default: 'rules' },
  name: { type: 'string', default: 'fusebox-slo' },
  namespace: { type: 'string' },
  label: { type: 'string', multiple: true },
  help: { type: 'boolean', short: 'h' },
} as const;

const write = (stream: NodeJS.WritableStream, text: string): Promise<void> =>
  new Promise((resolve, reject) => {
    stream.write(text, (err) => (err ? reject(err) : resolve()));
  });

class UsageError extends Error {}

const parseLabels = (list: readonly string[] = []): Record<string, string> => {
  const out: Record<string, string> = {};
  for (const item of list) {
    const eq = item.indexOf('=');
    const key = item.slice(0, eq);
    if (eq <= 0 || !/^[A-Za-z0-9][A-Za-z0-9._/-]*$/.test(key)) throw new UsageError(`--label wants KEY=VALUE, got "${item}"`);
    out[key] = item.slice(eq + 1);
  }
  return out;
};

/**
 * `fusebox rules`. `argv` is what follows `rules` on the command line. Returns the exit status:
 * 0 printed, 1 invalid config, 2 usage error.
 */
export const runRules = async (argv: string[], io: RulesIo): Promise<number> => {
  let values;
  let labels: Record<string, string>;
  try {
    ({ values } = parseArgs({ args: argv, options: OPTIONS, strict: true, allowPositionals: false }));
    if (values.help) {
      await write(io.stdout, `${RULES_USAGE}\n`);
      return 0;
    }
    if (!values.config) throw new UsageError('--config FILE is required');
    if (values.format !== 'rules' && values.format !== 'prometheus-operator') {
      throw new UsageError(`--format must be "rules" or "prometheus-operator", got "${values.format}"`);
    }
    labels = parseLabels(values.label);
  } catch (err) {
    const message = err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') ? (err as Error).message : String(err);
    await write(io.stderr, `fusebox rules: ${message}\nRun "fusebox rules --help" for the options.\n`);
    return 2;
  }
  let specs;
  try {
    specs = sloSpecsOf(loadConfigFile(values.config, io.env ?? process.env).config.routes);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    await write(io.stderr, `fusebox rules: ${err.message}\n`);
    return 1;
  }
  if (specs.length === 0) {
    await write(io.stderr, `fusebox rules: no route of ${values.config} has SLOs enabled; nothing to print\n`);
    return 1;
  }
  const groups = sloRuleGroups(specs);
  const text =
    values.format === 'rules'
      ? ruleFileYaml(groups, values.config)
      : prometheusRuleYaml(groups, { name: values.name, namespace: values.namespace, labels }, values.config);
  await write(io.stdout, text);
  return 0;
};
