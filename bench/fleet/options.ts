import { parseArgs } from 'node:util';

export interface FleetOptions {
  /** Fleet sizes measured, in order. */
  sidecars: number[];
  /** After the list, keep doubling while the fleet keeps up (calls/s ≥ 95 % of target, p99 reserve < 100 ms), up to `maxSidecars`. */
  findMax: boolean;
  maxSidecars: number;
  /** Calls per second per sidecar. */
  rate: number;
  /** Busy phase, seconds. */
  seconds: number;
  /** Idle phase (sidecars connected, no calls: recorder and evaluator only), seconds. */
  idleSeconds: number;
  cluster: boolean;
  single: boolean;
  outage: boolean;
  /** Every call in a workflow with `maxCalls` (a leased window too since the multi-metric leases; before, reserve + commit scripts per call). */
  workflow: boolean;
  /** Sidecars in the outage run. */
  outageSidecars: number;
  /** How long the store is stopped in the outage run, seconds. */
  outageSeconds: number;
  /** `store.commitDelayMs` values measured at every fleet size, in order (0: every commit alone, as before issue 14's rides). */
  commitDelaysMs: number[];
}

export const FLEET_USAGE = `npm run bench:fleet -- [--sidecars=100,1000] [--rate=1] [--seconds=20] [--idle-seconds=10] [--cluster=on|off] [--single=on|off] [--outage=on|off] [--max=on]
  --sidecars=LIST     fleet sizes, comma-separated (default 100,1000)
  --rate=N            calls per second per sidecar (default 1)
  --seconds=S         busy phase per fleet size (default 20)
  --idle-seconds=S    idle phase per fleet size (default 10)
  --single=on|off     measure one Redis node (default on)
  --cluster=on|off    measure a 3-master Redis Cluster too (default on)
  --outage=on|off     stop the single node for --outage-seconds and restart it from its AOF (default on)
  --workflow=on|off   every call in a workflow with maxCalls too (default off). Every window is leased, so a call
                      runs no script either way; at a revision before the multi-metric leases, a workflow call
                      ran reserve + commit scripts on the agent's slot
  --outage-seconds=S  (default 10)   --outage-sidecars=N (default 100)
  --max=on            after the list, double the fleet while it keeps up, up to --max-sidecars (default 8000)
  --commit-delay-ms=LIST  store.commitDelayMs values run at every size, comma-separated (default 1000; 0: commits never ride)`;

const num = (name: string, v: string | undefined, def: number, min: number, max: number): number => {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max) throw new Error(`--${name} must be a number from ${min} to ${max}, got "${v}"\n${FLEET_USAGE}`);
  return n;
};

const onOff = (name: string, v: string | undefined, def: boolean): boolean => {
  if (v === undefined) return def;
  if (v === 'on' || v === 'off') return v === 'on';
  throw new Error(`--${name} must be on or off, got "${v}"\n${FLEET_USAGE}`);
};

export const parseFleetOptions = (argv: string[]): FleetOptions => {
  const { values } = parseArgs({
    args: argv,
    options: {
      sidecars: { type: 'string' },
      rate: { type: 'string' },
      seconds: { type: 'string' },
      'idle-seconds': { type: 'string' },
      cluster: { type: 'string' },
      single: { type: 'string' },
      outage: { type: 'string' },
      workflow: { type: 'string' },
      'outage-seconds': { type: 'string' },
      'outage-sidecars': { type: 'string' },
      max: { type: 'string' },
      'max-sidecars': { type: 'string' },
      'commit-delay-ms': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) throw new Error(FLEET_USAGE);
  const sidecars = (values.sidecars ?? '100,1000').split(',').map((s) => num('sidecars', s.trim(), 0, 1, 20_000));
  return {
    sidecars,
    findMax: onOff('max', values.max, false),
    maxSidecars: num('max-sidecars', values['max-sidecars'], 8_000, 1, 20_000),
    rate: num('rate', values.rate, 1, 0.01, 1_000),
    seconds: num('seconds', values.seconds, 20, 1, 600),
    idleSeconds: num('idle-seconds', values['idle-seconds'], 10, 1, 600),
    cluster: onOff('cluster', values.cluster, true),
    single: onOff('single', values.single, true),
    outage: onOff('outage', values.outage, true),
    workflow: onOff('workflow', values.workflow, false),
    outageSeconds: num('outage-seconds', values['outage-seconds'], 10, 1, 60),
    outageSidecars: num('outage-sidecars', values['outage-sidecars'], 100, 1, 5_000),
    commitDelaysMs: (values['commit-delay-ms'] ?? '1000').split(',').map((s) => num('commit-delay-ms', s.trim(), 0, 0, 30_000)),
  };
};
