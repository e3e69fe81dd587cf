import { writeFileSync } from 'node:fs';
import type { Session } from 'node:inspector/promises';
import { allocationProfiler, startFootprint, type Footprint } from './footprint.js';

/**
 * The protocol every bench server child speaks: once it accepts connections it sends one IPC message
 * `{ url, pid, adminUrl? }` (`pid` is the process whose CPU and memory are measured, which for HAProxy is not this
 * one; `adminUrl` is Fusebox's admin listener, whose `/metrics` the orchestrator reads).
 * A child exits as soon as the IPC channel closes, so a killed or crashed orchestrator leaves nothing running.
 * With `--profile`, the orchestrator brackets the open-loop phase with `profile-start` / `profile-stop`; bench/per-call.ts
 * brackets its calls with `measure-start` / `measure-stop` (whose reply carries the child's {@link Footprint}) and, when
 * asked, `alloc-profile-start` / `alloc-profile-stop`.
 */
export interface ReadyMessage {
  url: string;
  pid: number;
  adminUrl?: string;
}

export type Command =
  | { id: number; cmd: 'profile-start' }
  | { id: number; cmd: 'profile-stop'; file: string }
  | { id: number; cmd: 'measure-start' }
  | { id: number; cmd: 'measure-stop' }
  | { id: number; cmd: 'alloc-profile-start' }
  | { id: number; cmd: 'alloc-profile-stop'; file: string };
export interface Reply {
  id: number;
  error?: string;
  /** `measure-stop`: what the process spent since `measure-start`. */
  footprint?: Footprint;
}

/** CPU profiling of this process through the inspector, written as a `.cpuprofile` (Chrome DevTools format). */
const profiler = () => {
  let session: Session | undefined;
  let measuring: (() => Footprint) | undefined;
  const allocations = allocationProfiler();
  return async (c: Command): Promise<Footprint | undefined> => {
    if (c.cmd === 'measure-start') {
      measuring = startFootprint();
      return undefined;
    }
    if (c.cmd === 'measure-stop') {
      if (measuring === undefined) throw new Error('measure-stop without measure-start');
      const footprint = measuring();
      measuring = undefined;
      return footprint;
    }
    if (c.cmd === 'alloc-profile-start') {
      await allocations.start();
      return undefined;
    }
    if (c.cmd === 'alloc-profile-stop') {
      await allocations.stop(c.file);
      return undefined;
    }
    if (c.cmd === 'profile-start') {
      // Loaded only when asked, so an unprofiled child carries none of it.
      const { Session } = await import('node:inspector/promises');
      session = new Session();
      session.connect();
      await session.post('Profiler.enable');
      // 100 µs: enough samples in 10 s at 1,000 req/s without the sampling itself showing up in the numbers.
      await session.post('Profiler.setSamplingInterval', { interval: 100 });
      await session.post('Profiler.start');
      return;
    }
    if (session === undefined) throw new Error('profile-stop without profile-start');
    const { profile } = await session.post('Profiler.stop');
    writeFileSync(c.file, JSON.stringify(profile));
    session.disconnect();
    session = undefined;
    return undefined;
  };
};

export interface AnnounceOptions {
  /** Process whose CPU and memory are measured. Default: this one. */
  pid?: number;
  /** Admin listener of the server, when it has one (Fusebox). */
  adminUrl?: string;
  /** Runs before this process exits (stop what it started). */
  onExit?: () => void;
}

export const announce = (url: string, { pid = process.pid, adminUrl, onExit = () => {} }: AnnounceOptions = {}): void => {
  if (process.send === undefined) {
    console.error('this script is started by bench/run.ts (it needs an IPC channel)');
    process.exit(2);
  }
  const bye = () => {
    onExit();
    process.exit(0);
  };
  process.once('disconnect', bye);
  process.once('SIGTERM', bye);
  const profile = profiler();
  process.on('message', (c: Command) => {
    profile(c).then(
      (footprint) => process.send?.({ id: c.id, ...(footprint !== undefined ? { footprint } : {}) } satisfies Reply),
      (err: Error) => process.send?.({ id: c.id, error: err.message } satisfies Reply),
    );
  });
  process.send({ url, pid, ...(adminUrl !== undefined ? { adminUrl } : {}) } satisfies ReadyMessage);
};

/** Environment variable a child cannot run without. */
export const requiredEnv = (name: string): string => {
  const v = process.env[name];
  if (v === undefined || v === '') {
    console.error(`missing ${name}`);
    process.exit(2);
  }
  return v;
};
