import { writeFileSync } from 'node:fs';
import type { Session } from 'node:inspector/promises';
import { GCProfiler, getHeapStatistics } from 'node:v8';

/**
 * What a bench child spends between `measure-start` and `measure-stop` (bench/per-call.ts divides it by the calls it
 * drove): CPU time of the whole process, and bytes allocated on the JS heap. V8 has no running total of allocated
 * bytes, but every byte allocated is either still in the heap or was in it when a GC ran: the GC profiler gives the
 * heap's used size before and after each collection, so the sum of what grew between collections is what was allocated.
 * Buffers' backing stores live outside the JS heap and are not counted (their JS wrappers are).
 */
export interface Footprint {
  cpuUs: number;
  allocatedBytes: number;
  gcs: number;
  /** Time spent in those collections, µs (part of cpuUs). */
  gcUs: number;
}

interface GcEntry {
  cost: number;
  beforeGC: { heapStatistics: { usedHeapSize: number } };
  afterGC: { heapStatistics: { usedHeapSize: number } };
}

export const startFootprint = (): (() => Footprint) => {
  const profiler = new GCProfiler();
  profiler.start();
  const cpu0 = process.cpuUsage();
  const used0 = getHeapStatistics().used_heap_size;
  return () => {
    const used1 = getHeapStatistics().used_heap_size;
    const cpu = process.cpuUsage(cpu0);
    const entries = (profiler.stop()?.statistics ?? []) as GcEntry[];
    let allocated = 0;
    let gcUs = 0;
    let before = used0;
    for (const e of entries) {
      allocated += e.beforeGC.heapStatistics.usedHeapSize - before;
      before = e.afterGC.heapStatistics.usedHeapSize;
      gcUs += e.cost;
    }
    allocated += used1 - before;
    return { cpuUs: cpu.user + cpu.system, allocatedBytes: allocated, gcs: entries.length, gcUs };
  };
};

/**
 * Who allocates: V8's sampling heap profiler, keeping the samples of objects the GC already collected (what a
 * short-lived per-call object is), written as a `.heapprofile` (Chrome DevTools format).
 */
export const allocationProfiler = () => {
  let session: Session | undefined;
  return {
    async start(): Promise<void> {
      const { Session } = await import('node:inspector/promises');
      session = new Session();
      session.connect();
      await session.post('HeapProfiler.enable');
      await session.post('HeapProfiler.startSampling', {
        samplingInterval: 1024,
        includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: true,
      });
    },
    async stop(file: string): Promise<void> {
      if (session === undefined) throw new Error('alloc-profile-stop without alloc-profile-start');
      const { profile } = await session.post('HeapProfiler.stopSampling');
      writeFileSync(file, JSON.stringify(profile));
      session.disconnect();
      session = undefined;
    },
  };
};
