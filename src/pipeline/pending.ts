/**
 * Work that outlives the answer it belongs to: a call until its last line is written, a budget commit until the
 * store has it. `idle()` resolves when none is left, so shutdown closes the store only after every settlement
 * landed (no spent money left uncounted) and tests wait on the event instead of sleeping.
 */
export class PendingWork {
  private count = 0;
  private waiters: Array<() => void> = [];

  /**
   * @param hurry called when someone waits for idle() while work is pending, and again for work begun while they wait:
   *   work that would otherwise wait on purpose (a budget commit waiting to ride the next reserve) goes now.
   */
  constructor(private readonly hurry: () => void = () => {}) {}

  get size(): number {
    return this.count;
  }

  begin(): void {
    this.count += 1;
    if (this.waiters.length > 0) this.hurry();
  }

  end(): void {
    this.count -= 1;
    if (this.count > 0) return;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** Count `work` until it settles, whatever its outcome; returns it unchanged. */
  track<T>(work: Promise<T>): Promise<T> {
    this.begin();
    work.then(
      () => this.end(),
      () => this.end(),
    );
    return work;
  }

  /** Resolves once nothing is pending (at once when nothing is). */
  idle(): Promise<void> {
    if (this.count === 0) return Promise.resolve();
    const idle = new Promise<void>((resolve) => this.waiters.push(resolve));
    this.hurry();
    return idle;
  }
}
