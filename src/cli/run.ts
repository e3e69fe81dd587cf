import { parseArgs } from 'node:util';
import { buildApp, createLogger } from '../app.js';
import { ConfigError, loadConfigFile } from '../config/load.js';
import { usageFailure, writeText, type CliIo } from './io.js';

export const RUN_USAGE = `Usage: fusebox run --config FILE
       fusebox --config FILE

Runs the sidecar: agent traffic on listen.proxy (default 127.0.0.1:4000), metrics, health and the admin API on
listen.admin (default 127.0.0.1:9901). An invalid config is refused before listening, with every problem listed.

Signals: SIGTERM and SIGINT turn the sidecar not-ready, let calls in flight finish for shutdown.graceMs, then exit 0.
SIGHUP is logged and ignored: the config is not reloaded yet, restart to apply a new one.

Options:
  -c, --config FILE   the config file (required)
  -h, --help          this text

Exit status: 0 stopped by SIGTERM or SIGINT, 1 invalid config, cannot listen or failed shutdown, 2 usage error.`;

export const SIGHUP_IGNORED = 'SIGHUP ignored: reload is not supported yet; restart to apply a new config';

/**
 * `fusebox run` (and `fusebox --config FILE`). Resolves once listening, with undefined: the process lives on until a
 * signal stops it. A number is an exit status (usage error, invalid config).
 */
export const runSidecar = async (argv: string[], io: CliIo): Promise<number | undefined> => {
  let file: string;
  try {
    const { values } = parseArgs({ args: argv, options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false });
    if (values.help) {
      await writeText(io.stdout, `${RUN_USAGE}\n`);
      return 0;
    }
    if (!values.config) throw new Error('--config FILE is required');
    file = values.config;
  } catch (err) {
    return usageFailure(io, 'run', err);
  }
  let loaded;
  try {
    loaded = loadConfigFile(file);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    await writeText(io.stderr, `fusebox: invalid config, not starting.\n${err.message}\n`);
    return 1;
  }
  const { config, baseDir } = loaded;
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
  // Node's default for SIGHUP is to die at once (exit 129): no drain, no log line. Supervisors and terminals send it
  // expecting a reload; until there is one, say so and keep serving.
  process.on('SIGHUP', () => {
    logger.warn({ signal: 'SIGHUP' }, SIGHUP_IGNORED);
    logger.flush();
  });
  try {
    await app.listen();
  } catch (err) {
    logger.fatal({ err }, 'cannot listen');
    logger.flush();
    return 1;
  }
  return undefined;
};
