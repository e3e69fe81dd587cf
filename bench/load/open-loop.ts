import { Worker } from 'node:worker_threads';
import { Pool, type Dispatcher } from 'undici';
import { Samples, summarize, type LatencySummary } from '../stats.js';
import { CLIENT_TIMEOUTS } from './client.js';

export interface OpenLoopOptions {
  /** Origin the requests name, e.g. http://127.0.0.1:4000 */
  origin: string;
  /**
   * Makes the client of this run (destroyed at its end), given its connection limit. Default: a keep-alive Pool to
   * `origin`. A proxy client (`viaHttpsProxy`) goes here.
   */
  dispatcher?: (connections: number) => Dispatcher;
  path: string;
  /** Requests started per second, whatever the server does (open loop). */
  rate: number;
  durationS: number;
  /** `response`: latency to the end of the body. `first-byte`: to the first body chunk (SSE time to first byte). */
  until: 'response' | 'first-byte';
}

export interface OpenLoopResult {
  /** From the *intended* send time: a stalled server is charged for every request it delayed (no coordinated omission). */
  latency: LatencySummary;
  /** From the moment the request was actually handed to the client. */
  service: LatencySummary;
  /** How late the generator itself sent (actual − intended): the floor of what it can resolve. */
  lateness: LatencySummary;
  sent: number;
  ok: number;
  errors: number;
  firstError?: string;
  elapsedS: number;
}

/**
 * The metronome: a worker thread that sleeps in `Atomics.wait` (a futex: no CPU while waiting) until just before
 * each request is due, spins the last stretch, and posts the request's index. The main thread's own timers have
 * 1 ms granularity, which at 1,000 req/s is the whole interval; spinning all the time instead would steal the core
 * the upstream shares with us.
 * If the main thread falls behind, every request already due goes in one message, so lateness shows up in the
 * numbers instead of piling up in a queue.
 */
const METRONOME = `
const { parentPort } = require('node:worker_threads');
parentPort.once('message', ({ startNs, intervalNs, count, stop, spinNs }) => {
  const flag = new Int32Array(stop);
  const start = BigInt(startNs);
  const spin = BigInt(spinNs);
  const due = (i) => start + BigInt(Math.round(i * intervalNs));
  let i = 0;
  while (i < count && Atomics.load(flag, 0) === 0) {
    const wait = due(i) - process.hrtime.bigint();
    if (wait > spin) {
      Atomics.wait(flag, 0, 0, Number(wait - spin) / 1e6);
      continue;
    }
    if (wait > 0n) continue;
    const now = process.hrtime.bigint();
    let j = i + 1;
    while (j < count && due(j) <= now) j++;
    parentPort.postMessage([i, j]);
    i = j;
  }
  parentPort.postMessage('done');
});
`;

const DRAIN_TIMEOUT_MS = 15_000;
const SPIN_MAX_NS = 150_000;
/** Enough that a stall never queues requests behind busy connections in the client. */
const CONNECTIONS = 256;

/** Fire requests on a fixed schedule and record each one's latency at µs resolution. */
export const openLoop = async (opts: OpenLoopOptions): Promise<OpenLoopResult> => {
  const count = Math.max(1, Math.round(opts.rate * opts.durationS));
  const intervalNs = 1e9 / opts.rate;
  // The futex wakes ~0.1 ms late on these VMs; the metronome sleeps until just before each send and spins the rest.
  // Capped at 1/8 of the interval so a high rate cannot turn it into a busy loop on the core the upstream shares.
  const spinNs = Math.round(Math.min(SPIN_MAX_NS, intervalNs / 8));
  const latency = new Samples(count);
  const service = new Samples(count);
  const lateness = new Samples(count);
  const client = opts.dispatcher?.(CONNECTIONS) ?? new Pool(opts.origin, { connections: CONNECTIONS, ...CLIENT_TIMEOUTS });
  const stop = new SharedArrayBuffer(4);
  const worker = new Worker(METRONOME, { eval: true });
  await new Promise<void>((resolve, reject) => {
    worker.once('online', resolve);
    worker.once('error', reject);
  });

  let sent = 0;
  let ok = 0;
  let errors = 0;
  let firstError: string | undefined;
  let inflight = 0;
  let onIdle: (() => void) | undefined;
  const settled = () => {
    inflight -= 1;
    if (inflight === 0) onIdle?.();
  };
  const failed = (why: string) => {
    errors += 1;
    firstError ??= why;
  };

  const start = process.hrtime.bigint() + 20_000_000n;
  const fire = async (i: number) => {
    const intended = start + BigInt(Math.round(i * intervalNs));
    const sentAt = process.hrtime.bigint();
    lateness.add(Number(sentAt - intended));
    sent += 1;
    inflight += 1;
    try {
      // A Pool ignores `origin` (it has its own); a proxy agent routes on it.
      const res = await client.request({ origin: opts.origin, method: 'GET', path: opts.path });
      let at: bigint | undefined;
      for await (const _chunk of res.body) {
        if (at === undefined && opts.until === 'first-byte') at = process.hrtime.bigint();
      }
      at ??= process.hrtime.bigint();
      if (res.statusCode !== 200) return failed(`status ${res.statusCode}`);
      ok += 1;
      latency.add(Number(at - intended));
      service.add(Number(at - sentAt));
    } catch (err) {
      failed((err as Error).message);
    } finally {
      settled();
    }
  };

  const began = process.hrtime.bigint();
  try {
    await new Promise<void>((resolve, reject) => {
      worker.on('message', (m: [number, number] | 'done') => {
        if (m === 'done') return resolve();
        for (let i = m[0]; i < m[1]; i++) void fire(i);
      });
      worker.once('error', reject);
      worker.postMessage({ startNs: start.toString(), intervalNs, count, stop, spinNs });
    });
    if (inflight > 0) {
      const drained = await Promise.race([
        new Promise<boolean>((r) => (onIdle = () => r(true))),
        new Promise<boolean>((r) => setTimeout(() => r(false), DRAIN_TIMEOUT_MS).unref()),
      ]);
      if (!drained) {
        errors += inflight;
        firstError ??= `${inflight} requests still unanswered ${DRAIN_TIMEOUT_MS} ms after the last was sent`;
      }
    }
  } finally {
    Atomics.store(new Int32Array(stop), 0, 1);
    Atomics.notify(new Int32Array(stop), 0);
    await worker.terminate();
    await client.destroy();
  }
  const elapsedS = Number(process.hrtime.bigint() - began) / 1e9;
  return {
    latency: summarize(latency),
    service: summarize(service),
    lateness: summarize(lateness),
    sent,
    ok,
    errors,
    ...(firstError !== undefined ? { firstError } : {}),
    elapsedS,
  };
};
