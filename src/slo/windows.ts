import { addFields, coverWindow, DAY_MS, minuteIndex, MINUTE_MS, refId, TIER_MS, type BucketFields, type BucketRef } from './buckets.js';
import { BURN_WINDOWS, BURN_WINDOWS_MS, type WindowFields } from './burn.js';
import type { CounterStore } from './counter-store.js';

/** A bucket of some route: what a window plan lists, the route added at read time. */
type Slot = Pick<BucketRef, 'tier' | 'index'>;

/**
 * Which buckets a set of windows covers at one minute, each listed once, and which of them each window sums. The same
 * for every route, and until the minute turns (coverWindow depends on the minute alone): made once per minute and set
 * of windows, not once per route per read.
 */
interface WindowPlan<W extends string> {
  readonly minute: number;
  readonly slots: readonly Slot[];
  readonly windows: ReadonlyArray<readonly [W, readonly number[]]>;
}

const plans = new WeakMap<object, WindowPlan<string>>();

const planOf = <W extends string>(windowsMs: Readonly<Record<W, number>>, now: number): WindowPlan<W> => {
  const minute = minuteIndex(now);
  const cached = plans.get(windowsMs) as WindowPlan<W> | undefined;
  if (cached?.minute === minute) return cached;
  const slots: Slot[] = [];
  const slotOf = new Map<string, number>();
  const windows: Array<readonly [W, number[]]> = [];
  for (const [name, ms] of Object.entries(windowsMs) as Array<[W, number]>) {
    const covered: number[] = [];
    for (const { tier, index } of coverWindow('', ms, now)) {
      const id = `${tier}:${index}`;
      let i = slotOf.get(id);
      if (i === undefined) {
        i = slots.push({ tier, index }) - 1;
        slotOf.set(id, i);
      }
      covered.push(i);
    }
    windows.push([name, covered]);
  }
  const plan: WindowPlan<W> = { minute, slots, windows };
  plans.set(windowsMs, plan);
  return plan;
};

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
  const plan = planOf(windowsMs, now);
  const values: BucketFields[] = new Array<BucketFields>(plan.slots.length);
  const missing: BucketRef[] = [];
  const missingAt: number[] = [];
  plan.slots.forEach(({ tier, index }, i) => {
    const ref: BucketRef = { route, tier, index };
    const hit = cache?.get(refId(ref), now);
    if (hit) values[i] = hit;
    else {
      missing.push(ref);
      missingAt.push(i);
    }
  });
  const fetched = await store.read(missing);
  missing.forEach((ref, j) => {
    const fields = fetched[j] ?? {};
    values[missingAt[j]!] = fields;
    cache?.put(ref, fields, now);
  });
  const out = {} as Record<W, BucketFields>;
  for (const [name, covered] of plan.windows) {
    const sum: BucketFields = {};
    for (const i of covered) addFields(sum, values[i]!);
    out[name] = sum;
  }
  return out;
};

const sloWindows = new Map<number, Record<keyof WindowFields, number>>();

/** The burn windows and the SLO window of a route (one object per `windowDays`, so its window plan is kept). */
export const sloWindowsMs = (windowDays: number): Record<keyof WindowFields, number> => {
  const known = sloWindows.get(windowDays);
  if (known !== undefined) return known;
  const out = { budget: windowDays * DAY_MS } as Record<keyof WindowFields, number>;
  for (const w of BURN_WINDOWS) out[w] = BURN_WINDOWS_MS[w];
  sloWindows.set(windowDays, Object.freeze(out));
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
