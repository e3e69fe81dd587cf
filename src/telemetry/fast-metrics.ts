import { createRequire } from 'node:module';
import type { Counter, Gauge, Histogram } from 'prom-client';

/**
 * Metric series for the per-call path, without prom-client's per-update cost.
 *
 * prom-client hashes the label set into a string and returns a `{ labelHash }` object on every `inc()`, even of a
 * child made once by `labels()` (~300 B and a hash a call, 10–15 updates a call: bench/README.md). Here a series is
 * a plain object holding numbers, made once per label set; an update adds to them. The metric's `collect()` (run by
 * prom-client before every read: a scrape, `get()`, `/admin/status`) hands what was added since the last read to
 * prom-client, which keeps the totals and writes the exposition. Names, labels, HELP and TYPE are prom-client's;
 * only the moment a value reaches prom-client moves, from the update to the next read.
 *
 * A series exists in prom-client once it was updated at least once (as with `labels(...).inc()`), so a label set
 * that was never used does not appear; an update by 0 makes it appear with 0.
 */

/** A counter series of one label set. `inc` throws on a negative or infinite amount, as prom-client does. */
export interface CounterSeries {
  inc(by?: number): void;
}

/** A gauge series of one label set, for what rises and falls by steps (calls in flight). */
export interface GaugeSeries {
  inc(): void;
  dec(): void;
}

/** A histogram series of one label set. `observe` throws on a value that is not finite, as prom-client does. */
export interface HistogramSeries {
  observe(value: number): void;
}

type Labels = Record<string, string>;

/** What a metric's series share: one series per label set, and the fold into prom-client on each read. */
class Family<S extends { labels: Labels }> {
  private readonly byKey = new Map<string, S>();
  constructor(
    private readonly labelNames: readonly string[],
    private readonly make: (labels: Labels) => S,
  ) {}

  series(values: readonly string[]): S {
    // Asked once per label set by the callers, so the key string is not a per-call cost.
    const key = values.join('\u0000');
    let s = this.byKey.get(key);
    if (s === undefined) {
      if (values.length !== this.labelNames.length) throw new Error(`expected ${this.labelNames.length} label values (${this.labelNames.join(', ')}), got ${values.length}`);
      const labels: Labels = {};
      this.labelNames.forEach((name, i) => (labels[name] = values[i]!));
      this.byKey.set(key, (s = this.make(labels)));
    }
    return s;
  }

  all(): IterableIterator<S> {
    return this.byKey.values();
  }
}

class PendingCount {
  pending = 0;
  touched = false;
  constructor(readonly labels: Labels) {}
  inc(by = 1): void {
    if (by < 0 || by === Infinity) throw new RangeError(`a counter only grows by a finite amount, got ${by}`);
    this.pending += by;
    this.touched = true;
  }
}

class PendingLevel {
  pending = 0;
  touched = false;
  constructor(readonly labels: Labels) {}
  inc(): void {
    this.pending += 1;
    this.touched = true;
  }
  dec(): void {
    this.pending -= 1;
    this.touched = true;
  }
}

class PendingObservations {
  /** Observations since the last read, per bucket: `counts[i]` for values ≤ `bounds[i]` and > `bounds[i - 1]`. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  constructor(
    readonly labels: Labels,
    private readonly bounds: readonly number[],
  ) {
    this.counts = new Float64Array(bounds.length);
  }
  observe(value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`a histogram observes finite numbers, got ${value}`);
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    // Above the last bound: only in +Inf, which prom-client derives from the count.
    if (i < bounds.length) this.counts[i]! += 1;
    this.sum += value;
    this.count += 1;
  }
}

/** What prom-client's metrics carry at runtime besides their typed API (all of it set by its constructors). */
interface MetricInternals {
  labelNames: readonly string[];
  sortedLabelNames: readonly string[];
  collect?: (this: unknown) => void | Promise<void>;
}
/** prom-client's histogram entry of one label set: per-bucket (not cumulative) counts keyed by upper bound. */
interface HistogramEntry {
  bucketValues: Record<number, number>;
  sum: number;
  count: number;
}
interface HistogramInternals extends MetricInternals {
  upperBounds: readonly number[];
  hashMap: Record<string, HistogramEntry | undefined>;
}

/**
 * prom-client's own label hash, used only when a read folds a histogram series in: its public API observes one value
 * at a time, so the series' entry is updated in place (test/unit/fast-metrics.test.ts compares the result with
 * prom-client's own `observe` for the same values, so an upgrade that changes the entry's shape fails there).
 */
const { hashObject } = createRequire(import.meta.url)('prom-client/lib/util') as { hashObject: (labels: Labels, names: readonly string[]) => string };

/** Runs `fold` before the metric's own `collect` (if any) on every read. */
const beforeEachRead = (metric: object, fold: () => void): void => {
  const m = metric as MetricInternals;
  const own = m.collect;
  m.collect = function collect(this: unknown) {
    fold();
    return own?.call(this);
  };
};

const families = new WeakMap<object, Family<{ labels: Labels }>>();

const familyOf = <S extends { labels: Labels }>(metric: object, make: (labelNames: readonly string[]) => { family: Family<S>; fold: () => void }): Family<S> => {
  let family = families.get(metric) as Family<S> | undefined;
  if (family === undefined) {
    const made = make((metric as MetricInternals).labelNames);
    family = made.family;
    families.set(metric, family);
    beforeEachRead(metric, made.fold);
  }
  return family;
};

/** Hands each updated series' amount since the last read to prom-client (`inc` takes a delta on counters and gauges). */
const foldDeltas =
  (family: Family<PendingCount | PendingLevel>, inc: (labels: Labels, by: number) => void) =>
  (): void => {
    for (const s of family.all()) {
      if (!s.touched) continue;
      const by = s.pending;
      s.pending = 0;
      s.touched = false;
      inc(s.labels, by);
    }
  };

/** The series of `counter` with these label values (in the metric's label order); the same object for the same values. */
export const counterSeries = (counter: Counter<string>, ...values: string[]): CounterSeries =>
  familyOf(counter, (names) => {
    const family = new Family(names, (labels) => new PendingCount(labels));
    return { family, fold: foldDeltas(family, (labels, by) => counter.inc(labels, by)) };
  }).series(values);

/** The series of `gauge` with these label values; the same object for the same values. */
export const gaugeSeries = (gauge: Gauge<string>, ...values: string[]): GaugeSeries =>
  familyOf(gauge, (names) => {
    const family = new Family(names, (labels) => new PendingLevel(labels));
    return { family, fold: foldDeltas(family, (labels, by) => gauge.inc(labels, by)) };
  }).series(values);

/** The series of `histogram` with these label values; the same object for the same values. */
export const histogramSeries = (histogram: Histogram<string>, ...values: string[]): HistogramSeries =>
  familyOf(histogram, (names) => {
    const h = histogram as unknown as HistogramInternals;
    const bounds = h.upperBounds;
    const family = new Family(names, (labels) => new PendingObservations(labels, bounds));
    const fold = () => {
      for (const s of family.all()) {
        if (s.count === 0) continue;
        const hash = hashObject(s.labels, h.sortedLabelNames);
        if (h.hashMap[hash] === undefined) histogram.zero(s.labels);
        const entry = h.hashMap[hash]!;
        for (let i = 0; i < bounds.length; i++) {
          if (s.counts[i] !== 0) entry.bucketValues[bounds[i]!]! += s.counts[i]!;
          s.counts[i] = 0;
        }
        entry.sum += s.sum;
        entry.count += s.count;
        s.sum = 0;
        s.count = 0;
      }
    };
    return { family, fold };
  }).series(values);
