import { readFileSync, watch } from 'node:fs';
import { basename, dirname } from 'node:path';
import { parseArgs } from 'node:util';
import type { Logger } from 'pino';
import { buildApp, createLogger, type Fusebox } from '../app.js';
import { ConfigError, loadConfigFile } from '../config/load.js';
import { usageFailure, writeText, type CliIo } from './io.js';
import { settleHeap } from './settle-heap.js';

export const RUN_USAGE = `Usage: fusebox run --config FILE [--watch-config]
       fusebox --config FILE [--watch-config]

Runs the sidecar: agent traffic on listen.proxy (default 127.0.0.1:4000), metrics, health and the admin API on
listen.admin (default 127.0.0.1:9901). An invalid config is refused before listening, with every problem listed.

Signals: SIGTERM and SIGINT turn the sidecar not-ready, let calls in flight finish for shutdown.graceMs, then exit 0.
SIGHUP reloads the config file: a valid one applies to new calls (calls in flight finish on the old routes); an
invalid one, or one that changes a setting only a restart applies (listen, store, ...), is logged problem by
problem and the config in effect keeps serving.

Options:
  -c, --config FILE   the config file (required)
  -w, --watch-config  also reload when the file changes (its folder is watched, so an editor's rename or a
                      Kubernetes ConfigMap update counts; changes are debounced for 300 ms)
  -h, --help          this text

Exit status: 0 stopped by SIGTERM or SIGINT, 1 invalid config, cannot listen or failed shutdown, 2 usage error.`;

/** The line a reload request writes, before the reload's own outcome line. */
export const RELOAD_REQUESTED = 'config reload requested';

/** Quiet time after the last change of the watched file before it is read: editors and ConfigMaps write in steps. */
export const WATCH_DEBOUNCE_MS = 300;

/** Read the file again and hand it to the running sidecar, whatever came of the parse. */
const reloadFrom = (app: Fusebox, file: string, logger: Logger, trigger: 'SIGHUP' | 'watch'): void => {
  logger.info({ trigger, file }, RELOAD_REQUESTED);
  let next;
  try {
    next = loadConfigFile(file).config;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    next = err;
  }
  app.reload(next);
  // Batched lines would otherwise wait up to a second: whoever sent the signal is watching for the outcome.
  logger.flush();
};

/**
 * Reload on changes of `file`. The folder is watched rather than the file: an editor saving by rename, or a
 * Kubernetes ConfigMap swapping its `..data` link, replaces the inode a file watch would follow. Events are
 * debounced, and a file whose text did not change (another file of the folder, a touch) reloads nothing.
 */
const watchConfig = (app: Fusebox, file: string, logger: Logger): void => {
  const read = () => {
    try {
      return readFileSync(file, 'utf8');
    } catch {
      return undefined;
    }
  };
  let last = read();
  let timer: NodeJS.Timeout | undefined;
  const watcher = watch(dirname(file), { persistent: false }, () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      const text = read();
      // A file caught mid-replacement (gone for a moment) is read again at the next event.
      if (text === undefined || text === last) return;
      last = text;
      reloadFrom(app, file, logger, 'watch');
    }, WATCH_DEBOUNCE_MS);
  });
  // An unheard 'error' (the folder removed) would crash the process: a reload by SIGHUP still works.
  watcher.on('error', (err) => logger.warn({ err, file }, 'config watch stopped: reload with SIGHUP'));
  logger.info({ folder: dirname(file), file: basename(file) }, 'watching the config file: a change reloads it');
};

/**
 * `fusebox run` (and `fusebox --config FILE`). Resolves once listening, with undefined: the process lives on until a
 * signal stops it. A number is an exit status (usage error, invalid config).
 */
export const runSidecar = async (argv: string[], io: CliIo): Promise<number | undefined> => {
  let file: string;
  let watchFile: boolean;
  try {
    const { values } = parseArgs({
      args: argv,
      options: { config: { type: 'string', short: 'c' }, 'watch-config': { type: 'boolean', short: 'w' }, help: { type: 'boolean', short: 'h' } },
      strict: true,
      allowPositionals: false,
    });
    if (values.help) {
      await writeText(io.stdout, `${RUN_USAGE}\n`);
      return 0;
    }
    if (!values.config) throw new Error('--config FILE is required');
    file = values.config;
    watchFile = values['watch-config'] === true;
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
  let app;
  try {
    app = await buildApp(config, { logger, baseDir });
  } catch (err) {
    // What is checked at build time (the OTEL_* variables, the files store.tls names) is as bad as a bad file.
    if (!(err instanceof ConfigError)) throw err;
    await writeText(io.stderr, `fusebox: invalid config or environment, not starting.\n${err.message}\n`);
    return 1;
  }
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
  // Node's default for SIGHUP is to die at once (exit 129): supervisors send it expecting a reload.
  process.on('SIGHUP', () => {
    if (!stopping) reloadFrom(app, file, logger, 'SIGHUP');
  });
  try {
    await app.listen();
  } catch (err) {
    logger.fatal({ err }, 'cannot listen');
    logger.flush();
    return 1;
  }
  // Listening, so startup is over: give back the young generation it grew (settle-heap.ts). One pause of ~0.1 s: a
  // call arriving in it waits that long, once; a native sidecar's agent starts only after /readyz, polled each second.
  const settling = performance.now();
  if (settleHeap()) logger.debug({ ms: Math.round(performance.now() - settling) }, 'heap settled after start');
  if (watchFile) watchConfig(app, file, logger);
  return undefined;
};
