/** Latency samples in nanoseconds, kept whole (10k samples at 1,000 req/s for 10 s: an array is cheaper than a histogram). */
export class Samples {
  private values: Float64Array;
  private n = 0;
  private sorted = true;

  constructor(capacity: number) {
    this.values = new Float64Array(Math.max(16, capacity));
  }

  add(ns: number): void {
    if (this.n === this.values.length) {
      const bigger = new Float64Array(this.values.length * 2);
      bigger.set(this.values);
      this.values = bigger;
    }
    this.values[this.n++] = ns;
    this.sorted = false;
  }

  get count(): number {
    return this.n;
  }

  /** Nearest-rank percentile (`q` in 0..1), in microseconds; NaN when empty. */
  percentileUs(q: number): number {
    if (this.n === 0) return NaN;
    if (!this.sorted) {
      this.values = this.values.slice(0, this.n).sort();
      this.sorted = true;
    }
    const rank = Math.min(this.n, Math.max(1, Math.ceil(q * this.n)));
    return (this.values[rank - 1] ?? NaN) / 1e3;
  }
}

export interface LatencySummary {
  /** Microseconds. */
  p50: number;
  p99: number;
  p999: number;
  max: number;
  count: number;
}

export const summarize = (s: Samples): LatencySummary => ({
  p50: s.percentileUs(0.5),
  p99: s.percentileUs(0.99),
  p999: s.percentileUs(0.999),
  max: s.percentileUs(1),
  count: s.count,
});
