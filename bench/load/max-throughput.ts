import { Pool } from 'undici';
import { hasCommand, LOAD_CPU, runPinned } from '../proc.js';
import { CLIENT_TIMEOUTS, type Via } from './client.js';

export interface ThroughputResult {
  rps: number;
  /** Non-2xx answers and socket errors. */
  errors: number;
}

export interface ThroughputTool {
  /** Figures of two different kinds are not compared (wrk leaves more of the load core to the upstream). */
  kind: 'wrk' | 'closed-loop';
  /** Shown in the report, e.g. `wrk -t1 -c32`. */
  label: string;
  run(url: string, durationS: number): Promise<ThroughputResult>;
}

const wrk = (connections: number): ThroughputTool => ({
  kind: 'wrk',
  label: `wrk -t1 -c${connections}`,
  async run(url, durationS) {
    const out = await runPinned(LOAD_CPU, 'wrk', ['-t1', `-c${connections}`, `-d${Math.max(1, Math.round(durationS))}s`, url], (durationS + 20) * 1000);
    const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
    if (rps?.[1] === undefined) throw new Error(`cannot read wrk's output:\n${out}`);
    const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0);
    const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
    const sockErrors = sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0;
    return { rps: Number(rps[1]), errors: non2xx + sockErrors };
  },
});

/**
 * Our own closed loop: `connections` loops, each sends its next request when the last is read. Used when wrk is not
 * installed, and always for a client wrk cannot be (a proxy client: wrk speaks neither CONNECT nor TLS inside it).
 */
export const closedLoop = (connections: number, via?: Via): ThroughputTool => ({
  kind: 'closed-loop',
  label: via ? `closed loop (undici ProxyAgent through HTTPS_PROXY, ${connections} connections)` : `closed loop (undici, ${connections} connections)`,
  async run(url, durationS) {
    const u = new URL(url);
    const pool = via?.dispatcher(connections) ?? new Pool(u.origin, { connections, ...CLIENT_TIMEOUTS });
    const path = u.pathname + u.search;
    const endAt = performance.now() + durationS * 1000;
    let done = 0;
    let errors = 0;
    const loop = async () => {
      while (performance.now() < endAt) {
        try {
          const res = await pool.request({ origin: u.origin, method: 'GET', path });
          await res.body.dump({ limit: 1 << 20 });
          if (res.statusCode === 200) done += 1;
          else errors += 1;
        } catch {
          errors += 1;
        }
      }
    };
    const began = performance.now();
    await Promise.all(Array.from({ length: connections }, loop));
    const elapsedS = (performance.now() - began) / 1000;
    await pool.destroy();
    return { rps: done / elapsedS, errors };
  },
});

/** wrk when installed (a C generator leaves more of the load core to the upstream), else our closed loop. */
export const throughputTool = (connections: number): ThroughputTool => {
  if (hasCommand('wrk')) return wrk(connections);
  const tool = closedLoop(connections);
  return { ...tool, label: tool.label.replace(/\)$/, '; wrk not installed)') };
};
