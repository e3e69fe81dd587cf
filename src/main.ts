#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { buildApp, createLogger } from './app.js';
import { ConfigError, loadConfigFile } from './config/load.js';

const USAGE = `Usage:
  fusebox --config FILE          run the sidecar
  fusebox check-config FILE      validate a config file and exit (0 valid, 1 invalid)
  fusebox inject [-f FILE|-]     add the Fusebox sidecar to Kubernetes YAML (see fusebox inject --help)
  fusebox gate --store URL --route R [--json]   error-budget gate for CI/CD: PROCEED 0, HALT 10, ROLLBACK 20
  fusebox rules --config FILE    print Prometheus recording and burn-rate alerting rules for the SLOs
  fusebox --help | --version`;

const fail = (message: string, code = 2): never => {
  process.stderr.write(`${message}\n`);
  process.exit(code);
};

const checkConfig = (file: string | undefined): number => {
  if (!file) fail(`check-config needs a file\n${USAGE}`);
  try {
    const { config } = loadConfigFile(file!);
    process.stdout.write(`${file}: valid (${config.routes.length} route${config.routes.length === 1 ? '' : 's'}: ${config.routes.map((r) => r.name).join(', ')})\n`);
    return 0;
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      return 1;
    }
    throw err;
  }
};

const run = async (file: string): Promise<void> => {
  let loaded;
  try {
    loaded = loadConfigFile(file);
  } catch (err) {
    if (err instanceof ConfigError) fail(`fusebox: invalid config, not starting.\n${err.message}`, 1);
    throw err;
  }
  const { config, baseDir } = loaded!;
  const logger = createLogger(config.log.level);
  const app = await buildApp(config, { logger, baseDir });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutdown requested');
    app.shutdown().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  try {
    await app.listen();
  } catch (err) {
    logger.fatal({ err }, 'cannot listen');
    process.exit(1);
  }
};

const main = async (argv: string[]): Promise<void> => {
  const [command, ...rest] = argv;
  if (command === 'check-config') process.exit(checkConfig(rest[0]));
  if (command === 'inject') {
    const { runInject } = await import('./deploy/cli.js');
    process.exit(await runInject(rest, { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr }));
  }
  if (command === 'gate') {
    const { runGate } = await import('./cli/gate.js');
    process.exit(await runGate(rest, { stdout: process.stdout, stderr: process.stderr }));
  }
  if (command === 'rules') {
    const { runRules } = await import('./cli/rules.js');
    process.exit(await runRules(rest, { stdout: process.stdout, stderr: process.stderr }));
  }
  const { values } = parseArgs({
    args: argv,
    options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' }, version: { type: 'boolean' } },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (values.version) {
    process.stdout.write('fusebox 0.1.0\n');
    return;
  }
  if (!values.config) fail(`fusebox: --config FILE is required\n${USAGE}`);
  await run(values.config!);
};

main(process.argv.slice(2)).catch((err: unknown) => fail(`fusebox: ${err instanceof Error ? err.message : String(err)}`));
