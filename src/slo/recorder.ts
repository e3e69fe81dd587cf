import { randomUUID } from 'node:crypto';
import { addFields, FIELD, latencyField, minuteIndex, ttlSeconds, type BucketFields, type BucketRef } from './buckets.js';
import type { SloKind } from './burn.js';
import { WRITER_MARK_TTL_SECONDS, type BucketWrite, type CounterBatch, type CounterStore } from './counter-store.js';
import type { SloRouteSpec } from './spec.js';

/**
 * One finished call, as the SLO counters see it.
 * - `availability`: `bad` for upstream 5xx, 429, timeouts, resets, broken streams; `good` for answers; `skip` for
 *   calls that say nothing about the upstream (client 4xx, the agent went away).
 * - `refused`: Fusebox answered itself (budget, kill switch, SLO shed/throttle): counted apart, burns no budget.
 * Latency and cost are counted for `good` and `bad` calls only.
 */
export interface SloEvent {
  availability: 'good' | 'bad' | 'skip';
  /** From request received to last byte sent, ms. */
  latencyMs?: number;
  /** Settled cost of the call, integer µUSD; omit when unknown (not an LLM call). */
  costUsdMicros?: number;
  refused?: boolean;
}

/** Where the recorder counts events locally for Prometheus (prom-client Counter fits). */
export interface SloEventCounters {
  events?: { inc(labels: { route: string; slo: SloKind; kind: 'good' | 'bad' }, value?: number): void };
  refused?: { inc(labels: { route: string }, value?: number): void };
}

type Log = { warn(obj: object, msg: string): void; info(obj: object, msg: string): void };

export interface SloRecorderOptions {
  store: CounterStore;
  routes: readonly SloRouteSpec[];
  now: () => number;
  /** Config `sloCounters.flushIntervalMs`. */
  flushIntervalMs: number;
  logger?: Log;
  counters?: SloEventCounters;
  /** Unique per process; default a random UUID. */
  writerId?: string;
  /** Batches kept while the store is down, oldest dropped first (and any older than 30 min). Default 300 (5 min at 1 s). */
  maxPendingBatches?: number;
  /** Batches sent in one store call when catching up. Default 30. */
  maxBatchesPerWrite?: number;
}

export interface RecorderStats {
  pendingBatches: number;
  droppedBatches: number;
  /** Events in dropped batches: counted locally, never reached the fleet counters. */
  droppedEvents: number;
  lastFlushOk: boolean;
}

interface PendingBatch {
  seq: number;
  /** Clock time it was sealed (ms). */
  sealedAt: number;
  /** route → minute → fields */
  minutes: Map<string, Map<number, BucketFields>>;
  events: number;
}

/** Oldest batch still sent, ms: half the store's memory of a writer's last batch. */
export const MAX_BATCH_AGE_MS = (WRITER_MARK_TTL_SECONDS * 1000) / 2;

const addOne = (f: BucketFields, name: string, n = 1) => {
  f[name] = (f[name] ?? 0) + n;
};

/**
 * Adds events up in this process and writes them to the counter store every `flushIntervalMs`, so the request
 * path never waits on the store. A failed flush keeps its batch and sends it again next time (exactly once, see
 * CounterStore); at most `maxPendingBatches` are kept. Events of routes not in `routes` are ignored, which keeps
 * the key count bounded by the config.
 */
export class SloRecorder {
  private specs: Map<string, SloRouteSpec>;
  private readonly writerId: string;
  private readonly maxPending: number;
  private readonly maxPerWrite: number;
  private current: PendingBatch;
  private readonly pending: PendingBatch[] = [];
  private seq = 0;
  private flushing: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly stats_: RecorderStats = { pendingBatches: 0, droppedBatches: 0, droppedEvents: 0, lastFlushOk: true };

  constructor(private readonly opts: SloRecorderOptions) {
    this.specs = new Map(opts.routes.map((s) => [s.route, s]));
    this.writerId = opts.writerId ?? randomUUID();
    this.maxPending = opts.maxPendingBatches ?? 300;
    this.maxPerWrite = opts.maxBatchesPerWrite ?? 30;
    this.current = this.newBatch();
  }

  /** Start flushing every `flushIntervalMs`. The timer does not keep the process alive. */
  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.flush(), this.opts.flushIntervalMs);
    this.timer.unref();
  }

  /**
   * A config reload: count the routes of `routes` from now on. Counts already made (of any route) are still
   * written; the counters themselves live in the store, keyed by route name, so a kept route goes on where it was.
   */
  setRoutes(routes: readonly SloRouteSpec[]): void {
    this.specs = new Map(routes.map((s) => [s.route, s]));
  }

  /** Count one call. Synchronous and O(1): the hot path. */
  record(route: string, event: SloEvent): void {
    const spec = this.specs.get(route);
    if (spec === undefined) return;
    const minute = minuteIndex(this.opts.now());
    let byMinute = this.current.minutes.get(route);
    if (!byMinute) this.current.minutes.set(route, (byMinute = new Map()));
    let f = byMinute.get(minute);
    if (!f) byMinute.set(minute, (f = {}));
    this.current.events++;
    const c = this.opts.counters;
    if (event.refused === true) {
      addOne(f, FIELD.refused);
      c?.refused?.inc({ route });
      return;
    }
    if (event.availability === 'skip') {
      addOne(f, FIELD.skipped);
      return;
    }
    const good = event.availability === 'good';
    addOne(f, good ? FIELD.availabilityGood : FIELD.availabilityBad);
    c?.events?.inc({ route, slo: 'availability', kind: good ? 'good' : 'bad' });
    if (event.latencyMs !== undefined) {
      const fast = event.latencyMs <= spec.latencyThresholdMs;
      addOne(f, fast ? FIELD.latencyGood : FIELD.latencyBad);
      addOne(f, latencyField(event.latencyMs));
      c?.events?.inc({ route, slo: 'latency', kind: fast ? 'good' : 'bad' });
    }
    if (event.costUsdMicros !== undefined) {
      const micros = Math.round(event.costUsdMicros);
      const cheap = micros <= spec.costThresholdMicros;
      addOne(f, cheap ? FIELD.costGood : FIELD.costBad);
      addOne(f, FIELD.costSumMicros, micros);
      addOne(f, FIELD.costCount);
      c?.events?.inc({ route, slo: 'cost', kind: cheap ? 'good' : 'bad' });
    }
  }

  /**
   * Seal what was recorded since the last flush and send every pending batch (oldest first, up to
   * `maxBatchesPerWrite`). Never throws; a failure leaves the batches pending. Concurrent calls share one flush.
   */
  flush(): Promise<void> {
    this.flushing ??= this.doFlush().finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  /** Stop the timer and flush one last time. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.flush();
    if (this.pending.length > 0) {
      const events = this.pending.reduce((n, b) => n + b.events, 0);
      this.opts.logger?.warn({ batches: this.pending.length, events }, 'SLO counters not written to the store at shutdown: these events are missing from the fleet counters');
    }
  }

  stats(): RecorderStats {
    return { ...this.stats_, pendingBatches: this.pending.length };
  }

  private newBatch(): PendingBatch {
    return { seq: 0, sealedAt: 0, minutes: new Map(), events: 0 };
  }

  private drop(batch: PendingBatch): void {
    this.stats_.droppedBatches++;
    this.stats_.droppedEvents += batch.events;
  }

  private async doFlush(): Promise<void> {
    const now = this.opts.now();
    if (this.current.events > 0) {
      this.current.seq = ++this.seq;
      this.current.sealedAt = now;
      this.pending.push(this.current);
      this.current = this.newBatch();
    }
    while (this.pending.length > this.maxPending) this.drop(this.pending.shift()!);
    // The store remembers a writer's last batch for WRITER_MARK_TTL_SECONDS; a batch retried later than that could
    // be counted twice, so it is dropped well before.
    while (this.pending.length > 0 && now - this.pending[0]!.sealedAt > MAX_BATCH_AGE_MS) this.drop(this.pending.shift()!);
    if (this.pending.length === 0) return;
    const sending = this.pending.slice(0, this.maxPerWrite);
    const batches: CounterBatch[] = sending.map((b) => ({ seq: b.seq, writes: this.writesOf(b, now) }));
    try {
      await this.opts.store.write(this.writerId, batches);
    } catch (err) {
      if (this.stats_.lastFlushOk) {
        this.opts.logger?.warn({ err, pendingBatches: this.pending.length }, 'SLO counters: store write failed; keeping the counts and retrying at the next flush');
      }
      this.stats_.lastFlushOk = false;
      return;
    }
    this.pending.splice(0, sending.length);
    if (!this.stats_.lastFlushOk) {
      this.opts.logger?.info({ pendingBatches: this.pending.length, droppedBatches: this.stats_.droppedBatches }, 'SLO counters: store writes work again');
    }
    this.stats_.lastFlushOk = true;
  }

  /** Minute buckets as recorded, plus their sums into hour and day buckets. */
  private writesOf(batch: PendingBatch, now: number): BucketWrite[] {
    const writes: BucketWrite[] = [];
    for (const [route, byMinute] of batch.minutes) {
      const windowDays = this.specs.get(route)?.windowDays ?? 30;
      const coarse = new Map<string, { ref: BucketRef; fields: BucketFields }>();
      for (const [minute, fields] of byMinute) {
        writes.push(this.write({ route, tier: 'm', index: minute }, fields, windowDays, now));
        for (const ref of [
          { route, tier: 'h', index: Math.floor(minute / 60) },
          { route, tier: 'd', index: Math.floor(minute / 1440) },
        ] as const) {
          const id = `${ref.tier}:${ref.index}`;
          const entry = coarse.get(id) ?? { ref, fields: {} };
          addFields(entry.fields, fields);
          coarse.set(id, entry);
        }
      }
      for (const { ref, fields } of coarse.values()) writes.push(this.write(ref, fields, windowDays, now));
    }
    return writes;
  }

  private write(ref: BucketRef, fields: BucketFields, windowDays: number, now: number): BucketWrite {
    return { ref, fields, ttlSeconds: ttlSeconds(ref, windowDays, now) };
  }
}
