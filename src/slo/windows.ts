import { coverWindow, DAY_MS, MINUTE_MS, refId, sumFields, TIER_MS, type BucketFields, type BucketRef } from './buckets.js';
import { BURN_WINDOWS, BURN_WINDOWS_MS, type WindowFields } from './burn.js';
import type { CounterStore } from './counter-store.js';

/**
 * Reads the buckets behind a set of windows in one store call and sums them per window. Buckets shared by two
 * windows are read once.
 */
export const readWindows = async <W extends string>(
  store: CounterStore,
  route: string,
  windowsMs: Readonly<Record<W, number>>,
  now: number,
  cache?: BucketCache,
): Promise<Record<W, BucketFields>> => {
  const covers = new Map<W, BucketRef[]>();
  const unique = new Map<string, BucketRef>();
  for (const [name, ms] of Object.entries(windowsMs) as Array<[W, number]>) {
    const refs = coverWindow(route, ms, now);
    covers.set(name, refs);
    for (const r of refs) unique.set(refId(r), r);
  }
  const values = new Map<string, BucketFields>();
  const missing: BucketRef[] = [];
  for (const [id, ref] of unique) {
    const hit = cache?.get(id, now);
    if (hit) values.set(id, hit);
    else missing.push(ref);
  }
  const fetched = await store.read(missing);
  missing.forEach((ref, i) => {
    const fields = fetched[i] ?? {};
    values.set(refId(ref), fields);
    cache?.put(ref, fields, now);
  });
  const out = {} as Record<W, BucketFields>;
  for (const [name, refs] of covers) out[name] = sumFields(refs.map((r) => values.get(refId(r)) ?? {}));
  return out;
};

/** The burn windows and the SLO window of a route. */
export const sloWindowsMs = (windowDays: number): Record<keyof WindowFields, number> => {
  const out = { budget: windowDays * DAY_MS } as Record<keyof WindowFields, number>;
  for (const w of BURN_WINDOWS) out[w] = BURN_WINDOWS_MS[w];
  return out;
};

export const readSloWindows = (store: CounterStore, route: string, windowDays: number, now: number, cache?: BucketCache): Promise<WindowFields> =>
  readWindows(store, route, sloWindowsMs(windowDays), now, cache);

/**
 * Keeps buckets that ended more than `settleMs` ago for `ttlMs`: they change only when a late flush lands, so an
 * evaluator polling every few seconds reads mostly the current minute, hour and day. Bounded: entries expire and
 * the map is swept when it grows past `maxEntries`.
 */
export class BucketCache {
  private readonly entries = new Map<string, { fields: BucketFields; until: number }>();

  constructor(private readonly opts: { settleMs?: number; ttlMs?: number; maxEntries?: number } = {}) {}

  get(id: string, now: number): BucketFields | undefined {
    const e = this.entries.get(id);
    if (e === undefined) return undefined;
    if (e.until <= now) {
      this.entries.delete(id);
      return undefined;
    }
    return e.fields;
  }

  put(ref: BucketRef, fields: BucketFields, now: number): void {
    const settleMs = this.opts.settleMs ?? 2 * MINUTE_MS;
    const endsAt = (ref.index + 1) * TIER_MS[ref.tier];
    if (endsAt + settleMs > now) return;
    if (this.entries.size >= (this.opts.maxEntries ?? 50_000)) {
      for (const [k, e] of this.entries) if (e.until <= now) this.entries.delete(k);
      if (this.entries.size >= (this.opts.maxEntries ?? 50_000)) this.entries.clear();
    }
    this.entries.set(refId(ref), { fields, until: now + (this.opts.ttlMs ?? MINUTE_MS) });
  }

  get size(): number {
    return this.entries.size;
  }
}
