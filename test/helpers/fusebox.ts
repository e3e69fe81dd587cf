import { Writable } from 'node:stream';
import { pino } from 'pino';
import { buildApp, REDACT_PATHS, type AppDeps, type Fusebox } from '../../src/app.js';
import { parseConfig } from '../../src/config/load.js';

export interface RunningFusebox {
  app: Fusebox;
  proxyUrl: string;
  adminUrl: string;
  /** Every log line written so far, parsed. */
  logs: Array<Record<string, unknown>>;
  /** The raw log text (for "never contains the secret" checks). */
  logText(): string;
  /**
   * The first log line that matches, written already or to come. A call is settled (metrics, breaker, budget,
   * last-good) when its `request` access line is written: wait for that line, never for a delay.
   */
  waitForLog(match: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
  metricsText(): Promise<string>;
  stop(): Promise<void>;
}

/**
 * Start a real Fusebox on loopback port 0 from a (partial) config object, with its logs captured.
 * `raw` is merged over listen/log defaults; it must contain `routes`.
 */
export const startFusebox = async (raw: Record<string, unknown>, deps: AppDeps = {}): Promise<RunningFusebox> => {
  const config = parseConfig({
    listen: { proxy: { port: 0 }, admin: { port: 0 } },
    ...raw,
    log: { level: 'info' },
  }, 'test config', deps.env ?? process.env);
  const lines: string[] = [];
  const waiters = new Set<() => void>();
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      for (const wake of [...waiters]) wake();
      cb();
    },
  });
  const waitForLog = (match: (line: Record<string, unknown>) => boolean) =>
    new Promise<Record<string, unknown>>((resolve) => {
      let checked = 0;
      const check = () => {
        for (; checked < lines.length; checked++) {
          const line = JSON.parse(lines[checked]!) as Record<string, unknown>;
          if (!match(line)) continue;
          waiters.delete(check);
          resolve(line);
          return;
        }
      };
      waiters.add(check);
      check();
    });
  const logger = pino({ level: 'info', redact: { paths: REDACT_PATHS, censor: '[REDACTED]' } }, sink);
  const app = await buildApp(config, { logger, ...deps });
  const { proxyUrl, adminUrl } = await app.listen();
  return {
    app,
    proxyUrl,
    adminUrl,
    get logs() {
      return lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    },
    logText: () => lines.join('\n'),
    waitForLog,
    metricsText: async () => (await fetch(`${adminUrl}/metrics`)).text(),
    stop: () => app.shutdown(1000),
  };
};

/** The value of one sample line of a Prometheus text exposition, or 0 when absent. */
export const metricValue = (text: string, name: string, labels: Record<string, string> = {}): number => {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return 0;
};
