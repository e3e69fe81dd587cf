import { parseArgs } from 'node:util';

export interface BenchOptions {
  quick: boolean;
  /** Length of each measured phase (open loop, max throughput), seconds. */
  durationS: number;
  /** Open-loop rate, requests per second. */
  rate: number;
  /** Closed-loop warm-up before measuring, seconds. */
  warmupS: number;
  /** Connections of the max-throughput generator. */
  connections: number;
  /** SSE time-to-first-byte samples per target, and the rate they are started at. */
  sseSamples: number;
  sseRate: number;
  /** Only targets whose name contains one of these (direct always runs). Empty: all. */
  only: string[];
  /** Replace the "Latest results" section of bench/README.md. */
  writeReadme: boolean;
  /** CPU-profile each Node server under test during its open-loop phase. */
  profile: boolean;
  /**
   * Git revisions whose Fusebox is measured in the same run, each selected Fusebox target once more beside the current
   * one (`fusebox @1000723`). As given: resolved, checked out and built by bench/revisions.ts.
   */
  compareRevs: string[];
}

export const USAGE = `npm run bench -- [--quick] [--duration=S] [--rate=N] [--connections=N] [--targets=a,b] [--profile] [--compare-rev=REV]... [--readme|--no-readme]
  --quick          2 s phases, short warm-up: a smoke test (README not updated unless --readme)
  --duration=S     seconds per measured phase (default 10; env BENCH_DURATION_S)
  --rate=N         open-loop requests per second (default 1000; env BENCH_RATE)
  --connections=N  max-throughput connections (default 32; env BENCH_CONNECTIONS)
  --targets=a,b    only targets whose name contains one of these, optional ones included (env BENCH_TARGETS)
  --profile        CPU-profile each Node server during its open-loop phase and print what dominates
  --compare-rev=R  also measure Fusebox built from git revision R, each selected Fusebox target beside the current one
                   (repeatable or comma-separated; env BENCH_COMPARE_REV)`;

const positive = (name: string, v: string | undefined, def: number): number => {
  if (v === undefined || v === '') return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number, got "${v}"\n${USAGE}`);
  return n;
};

/** A whole-number option of a bench (`--calls=4000`): its default when not given, an error naming it and `usage` otherwise. */
export const positiveInteger = (name: string, v: string | undefined, def: number, usage = ''): number => {
  const n = v === undefined ? def : Number(v);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got "${v}"${usage && `\n${usage}`}`);
  return n;
};

export const parseOptions = (argv: string[], env: NodeJS.ProcessEnv): BenchOptions => {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean' },
      duration: { type: 'string' },
      rate: { type: 'string' },
      connections: { type: 'string' },
      targets: { type: 'string' },
      readme: { type: 'boolean' },
      'no-readme': { type: 'boolean' },
      profile: { type: 'boolean' },
      'compare-rev': { type: 'string', multiple: true },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const quick = values.quick ?? (env.BENCH_QUICK === '1' || env.BENCH_QUICK === 'true');
  const list = (given: string[]) => [
    ...new Set(
      given
        .flatMap((v) => v.split(','))
        .map((s) => s.trim())
        .filter(Boolean),
    ),
  ];
  const durationS = positive('--duration', values.duration ?? env.BENCH_DURATION_S, quick ? 2 : 10);
  return {
    quick,
    durationS,
    rate: positive('--rate', values.rate ?? env.BENCH_RATE, 1000),
    warmupS: quick ? 0.5 : 3,
    connections: Math.round(positive('--connections', values.connections ?? env.BENCH_CONNECTIONS, 32)),
    sseSamples: quick ? 150 : 600,
    sseRate: 300,
    only: list([values.targets ?? env.BENCH_TARGETS ?? '']),
    writeReadme: values['no-readme'] ? false : (values.readme ?? !quick),
    profile: values.profile ?? false,
    compareRevs: list(values['compare-rev'] ?? [env.BENCH_COMPARE_REV ?? '']),
  };
};
