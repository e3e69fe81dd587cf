import { Redis } from 'ioredis';

/** What the fleet bench reads from one node's INFO. */
export interface NodeSample {
  at: number;
  cpuS: number;
  commands: number;
  clients: number;
  usedMemory: number;
  /** Of it, what client connections hold (query and output buffers): grows with traffic, freed when clients go idle. */
  clientMemory: number;
  aofBytes: number;
  /** EVAL + EVALSHA + FCALL calls: one per store script run (the first run on a socket is an EVAL). */
  scripts: number;
  /** Microseconds Redis spent running them (commandstats `usec`): the scripts' own cost, without I/O or background work. */
  scriptsUsec: number;
  /** Every command Redis counted (commandstats), name → calls and usec: where a call's round trips go. */
  commandStats: Map<string, { calls: number; usec: number }>;
}

const field = (info: string, name: string): number => {
  const m = new RegExp(`^${name}:([^\\r\\n]*)`, 'm').exec(info);
  return m ? Number(m[1]) : 0;
};

const calls = (info: string, cmd: string): number => Number(new RegExp(`^cmdstat_${cmd}:calls=(\\d+)`, 'm').exec(info)?.[1] ?? 0);
const usec = (info: string, cmd: string): number => Number(new RegExp(`^cmdstat_${cmd}:calls=\\d+,usec=(\\d+)`, 'm').exec(info)?.[1] ?? 0);

const allCommandStats = (info: string): Map<string, { calls: number; usec: number }> => {
  const out = new Map<string, { calls: number; usec: number }>();
  for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/gm)) out.set(m[1]!, { calls: Number(m[2]), usec: Number(m[3]) });
  return out;
};

/** One INFO section as name → value (what bench:store and bench:lease read around a round). */
export const infoSection = async (raw: Redis, section: string): Promise<Map<string, string>> =>
  new Map(
    (await raw.info(section))
      .split('\r\n')
      .filter((l) => l.includes(':'))
      .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1)]),
  );

/** Redis's CPU time so far (user + system), seconds. */
export const cpuSeconds = async (raw: Redis): Promise<number> => {
  const cpu = await infoSection(raw, 'cpu');
  return Number(cpu.get('used_cpu_user') ?? NaN) + Number(cpu.get('used_cpu_sys') ?? NaN);
};

/** One admin connection per node (counted out of `clients`), reading INFO. */
export class NodeProbe {
  private readonly client: Redis;

  constructor(readonly port: number) {
    this.client = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 1 });
    this.client.on('error', () => {});
  }

  async sample(): Promise<NodeSample> {
    if (this.client.status === 'wait' || this.client.status === 'end') await this.client.connect();
    const info = await this.client.info('everything');
    return {
      at: Date.now(),
      cpuS: field(info, 'used_cpu_sys') + field(info, 'used_cpu_user'),
      commands: field(info, 'total_commands_processed'),
      // This probe's own connection is not a sidecar's.
      clients: field(info, 'connected_clients') - 1,
      usedMemory: field(info, 'used_memory'),
      clientMemory: field(info, 'mem_clients_normal'),
      aofBytes: field(info, 'aof_current_size'),
      scripts: calls(info, 'eval') + calls(info, 'evalsha') + calls(info, 'fcall'),
      scriptsUsec: usec(info, 'eval') + usec(info, 'evalsha') + usec(info, 'fcall'),
      commandStats: allCommandStats(info),
    };
  }

  /** `CONFIG GET maxclients`: what a node accepts (Redis lowers it to the open-file limit it got). */
  async maxclients(): Promise<number> {
    if (this.client.status === 'wait' || this.client.status === 'end') await this.client.connect();
    const reply = (await this.client.config('GET', 'maxclients')) as string[];
    return Number(reply[1]);
  }

  close(): void {
    this.client.disconnect();
  }
}

/** Differences between two samples of every node (same order). */
export interface FleetDelta {
  seconds: number;
  cpuS: number;
  commands: number;
  scriptsPerNode: number[];
  scriptsUsec: number;
  memoryBytes: number;
  clientMemoryBytes: number;
  aofBytes: number;
  clientsPerNode: number[];
  /** Per command: calls on each node (same order as the nodes), and usec summed over the nodes. */
  commandsByName: Map<string, { callsPerNode: number[]; usec: number }>;
}

export const delta = (before: NodeSample[], after: NodeSample[]): FleetDelta => {
  const sum = (f: (a: NodeSample, b: NodeSample) => number) => after.reduce((s, a, i) => s + f(before[i]!, a), 0);
  return {
    seconds: (after[0]!.at - before[0]!.at) / 1000,
    cpuS: sum((b, a) => a.cpuS - b.cpuS),
    commands: sum((b, a) => a.commands - b.commands),
    scriptsPerNode: after.map((a, i) => a.scripts - before[i]!.scripts),
    scriptsUsec: sum((b, a) => a.scriptsUsec - b.scriptsUsec),
    memoryBytes: sum((b, a) => a.usedMemory - b.usedMemory),
    clientMemoryBytes: sum((b, a) => a.clientMemory - b.clientMemory),
    aofBytes: sum((b, a) => a.aofBytes - b.aofBytes),
    clientsPerNode: after.map((a) => a.clients),
    commandsByName: commandDeltas(before, after),
  };
};

const commandDeltas = (before: NodeSample[], after: NodeSample[]): FleetDelta['commandsByName'] => {
  const out: FleetDelta['commandsByName'] = new Map();
  after.forEach((a, i) => {
    for (const [name, stat] of a.commandStats) {
      const was = before[i]!.commandStats.get(name) ?? { calls: 0, usec: 0 };
      const calls = stat.calls - was.calls;
      if (calls <= 0) continue;
      const row = out.get(name) ?? { callsPerNode: after.map(() => 0), usec: 0 };
      row.callsPerNode[i] = calls;
      row.usec += stat.usec - was.usec;
      out.set(name, row);
    }
  });
  return out;
};
