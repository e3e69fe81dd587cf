import { EventEmitter } from 'node:events';
import { writeSync, writev } from 'node:fs';

/** Options of a LineDestination; every size in bytes. */
export interface LineDestinationOptions {
  /** File descriptor the lines go to. Default 1 (stdout). */
  fd?: number;
  /** A write starts once this much waits (or at the periodic flush). Default 4096. */
  minWriteBytes?: number;
  /**
   * What may wait, written or not yet, before new lines are dropped (and counted): bounds memory when the fd's reader
   * falls behind. Default 4 MiB (~6,000 access lines, several seconds at 1,000 calls/s).
   */
  maxBufferedBytes?: number;
  /** Lines never wait longer than this, ms. Default 1000. */
  flushIntervalMs?: number;
}

const CHUNK_BYTES = 16 * 1024;
/** Free chunks kept for reuse; more are left to the collector. */
const SPARE_CHUNKS = 4;
/** Wait before writing again to an fd that said EAGAIN (a non-blocking pipe that is full), ms. */
const RETRY_MS = 10;
/** Longest a synchronous flush (process exit) waits for a reader that does not read, ms. */
const SYNC_FLUSH_MAX_MS = 1_000;

/** A buffer of whole lines waiting to be written, or being written. */
interface Batch {
  buf: Buffer;
  /** Bytes of `buf` to write. */
  len: number;
  lines: number;
}

/**
 * A pino destination that copies each line into reusable 16 KiB Buffers and writes them with one `writev` per
 * batch, asynchronously (a libuv thread), so a stalled reader of stdout never blocks a call.
 *
 * Why not sonic-boom (`pino.destination({ minLength })`): it appends each line to a pending string and takes that
 * string's UTF-8 length on every write, which flattens the whole pending batch per line (2.3 KiB a call in
 * bench/README.md's profile), and it buffers without bound unless `maxLength` is set.
 *
 * What it keeps of pino's guarantees:
 * - `flush(cb)` writes everything written before it and calls back once it is out; `flushSync()` writes what waits
 *   synchronously, and runs on process exit (as pino does for its own asynchronous destinations).
 * - When more than `maxBufferedBytes` wait (the reader stopped reading), new lines are dropped and counted rather
 *   than kept: memory stays bounded, and the calls do not wait on the log's reader. Blocking instead would turn a
 *   stalled log collector into a stalled proxy for every agent of the pod. Each drop is a `'drop'` event (lines)
 *   for `fusebox_log_lines_dropped_total`, and `'caught-up'` (lines dropped meanwhile) follows once a write
 *   succeeds again, so the log itself says what it misses.
 * - A closed reader (EPIPE) ends writing: later lines are dropped and counted, as sonic-boom under pino does.
 */
export class LineDestination extends EventEmitter<{ drop: [lines: number]; 'caught-up': [dropped: number] }> {
  /** Lines dropped since the start: the reader fell behind, closed, or a write failed. */
  dropped = 0;
  private readonly fd: number;
  private readonly minWriteBytes: number;
  private readonly maxBufferedBytes: number;
  private current: Batch | undefined;
  private readonly queued: Batch[] = [];
  private inFlight: Batch[] = [];
  private readonly spare: Buffer[] = [];
  /** Bytes taken since the start, and bytes of those written or lost: a flush waits for the second to pass a mark. */
  private accepted = 0;
  private settled = 0;
  private writing = false;
  /** Set while a write waits to be tried again (EAGAIN): no write holds the in-flight batches then. */
  private retry: NodeJS.Timeout | undefined;
  private closed = false;
  private droppedSinceWrite = 0;
  private waiters: Array<{ mark: number; cb: () => void }> = [];
  private readonly timer: NodeJS.Timeout;

  constructor(opts: LineDestinationOptions = {}) {
    super();
    this.fd = opts.fd ?? 1;
    this.minWriteBytes = opts.minWriteBytes ?? 4096;
    this.maxBufferedBytes = opts.maxBufferedBytes ?? 4 * 1024 * 1024;
    this.timer = setInterval(() => this.flush(), opts.flushIntervalMs ?? 1000).unref();
    flushedAtExit.add(this);
  }

  /** Bytes waiting or being written. */
  get bufferedBytes(): number {
    return this.accepted - this.settled;
  }

  /** pino's stream interface: one whole line, newline included. */
  write(line: string): boolean {
    if (this.closed || this.accepted - this.settled >= this.maxBufferedBytes) {
      this.drop(1);
      return true;
    }
    let batch = this.current ?? (this.current = this.newBatch());
    // A UTF-16 unit is at most 3 UTF-8 bytes: the exact length is counted only when the line might not fit.
    if (batch.len + line.length * 3 > batch.buf.length) {
      const bytes = Buffer.byteLength(line);
      if (batch.len + bytes > batch.buf.length) {
        this.seal();
        if (bytes > CHUNK_BYTES) {
          this.queued.push({ buf: Buffer.from(line), len: bytes, lines: 1 });
          this.accepted += bytes;
          this.startWrite();
          return true;
        }
        batch = this.current = this.newBatch();
      }
    }
    const n = batch.buf.write(line, batch.len);
    batch.len += n;
    batch.lines += 1;
    this.accepted += n;
    if (!this.writing && this.accepted - this.settled >= this.minWriteBytes) this.startWrite();
    return true;
  }

  /** Write everything written so far; `cb` once it is out (or lost: a closed reader, a failed write). */
  flush(cb?: () => void): void {
    if (cb !== undefined) {
      if (this.settled >= this.accepted) process.nextTick(cb);
      else this.waiters.push({ mark: this.accepted, cb });
    }
    this.startWrite();
  }

  /** Write what waits, now, blocking: for process exit. A batch an asynchronous write holds is left to it. */
  flushSync(): void {
    if (this.closed) return;
    this.seal();
    let batches = this.queued.splice(0);
    if (this.retry !== undefined) {
      clearTimeout(this.retry);
      this.retry = undefined;
      this.writing = false;
      batches = [...this.inFlight.splice(0), ...batches];
    }
    // Bounded: at exit a reader that stopped reading must not keep the process from exiting (what is left is dropped
    // and counted, as in a stall while running).
    const deadline = performance.now() + SYNC_FLUSH_MAX_MS;
    for (const batch of batches) {
      let off = 0;
      while (off < batch.len && performance.now() < deadline) {
        try {
          off += writeSync(this.fd, batch.buf, off, batch.len - off);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') break;
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, RETRY_MS);
        }
      }
      this.release(batch, off < batch.len);
    }
  }

  /** Stop the periodic flush, after writing what waits. */
  close(cb?: () => void): void {
    clearInterval(this.timer);
    flushedAtExit.delete(this);
    this.flush(cb);
  }

  private newBatch(): Batch {
    return { buf: this.spare.pop() ?? Buffer.allocUnsafe(CHUNK_BYTES), len: 0, lines: 0 };
  }

  private seal(): void {
    const batch = this.current;
    if (batch === undefined || batch.len === 0) return;
    this.queued.push(batch);
    this.current = undefined;
  }

  private drop(lines: number): void {
    this.dropped += lines;
    this.droppedSinceWrite += lines;
    this.emit('drop', lines);
  }

  private startWrite(): void {
    if (this.writing) return;
    this.seal();
    if (this.queued.length === 0) return;
    if (this.closed) {
      for (const b of this.queued.splice(0)) this.release(b, true);
      return;
    }
    this.writing = true;
    this.inFlight = this.queued.splice(0);
    this.writeInFlight();
  }

  private readonly writeInFlight = (): void => {
    this.retry = undefined;
    writev(
      this.fd,
      this.inFlight.map((b) => b.buf.subarray(0, b.len)),
      (err, written) => (err ? this.failed(err) : this.wrote(written)),
    );
  };

  private wrote(written: number): void {
    while (this.inFlight.length > 0 && written >= this.inFlight[0]!.len) {
      written -= this.inFlight[0]!.len;
      this.release(this.inFlight.shift()!, false);
    }
    if (this.inFlight.length > 0) {
      // A partial write (a pipe that took part of it): the rest goes before anything newer.
      const head = this.inFlight[0]!;
      this.inFlight[0] = { buf: head.buf.subarray(written), len: head.len - written, lines: head.lines };
      this.settle(written);
      this.writeInFlight();
      return;
    }
    this.writing = false;
    if (this.droppedSinceWrite > 0 && this.accepted - this.settled < this.maxBufferedBytes) {
      const lines = this.droppedSinceWrite;
      this.droppedSinceWrite = 0;
      this.emit('caught-up', lines);
    }
    if (this.accepted - this.settled >= this.minWriteBytes || this.waiters.length > 0) this.startWrite();
  }

  private failed(err: NodeJS.ErrnoException): void {
    if (err.code === 'EAGAIN' || err.code === 'EBUSY') {
      this.retry = setTimeout(this.writeInFlight, RETRY_MS).unref();
      return;
    }
    // EPIPE: nobody reads any more. Anything else (EBADF, EIO): these lines are lost, later ones are tried.
    if (err.code === 'EPIPE') this.closed = true;
    for (const b of this.inFlight.splice(0)) this.release(b, true);
    this.writing = false;
    if (this.closed || this.waiters.length > 0 || this.accepted - this.settled >= this.minWriteBytes) this.startWrite();
  }

  private release(batch: Batch, lost: boolean): void {
    if (lost) this.drop(batch.lines);
    // Only whole chunks are used again: a partly written head is a view into its chunk.
    if (batch.buf.length === CHUNK_BYTES && batch.buf.byteOffset === 0 && this.spare.length < SPARE_CHUNKS) this.spare.push(batch.buf);
    this.settle(batch.len);
  }

  private settle(bytes: number): void {
    this.settled += bytes;
    if (this.waiters.length === 0) return;
    const settled = this.settled;
    const due = this.waiters.filter((w) => w.mark <= settled);
    if (due.length === 0) return;
    this.waiters = this.waiters.filter((w) => w.mark > settled);
    for (const w of due) process.nextTick(w.cb);
  }
}

/** Destinations to flush synchronously when the process exits (pino does the same for its asynchronous ones). */
const flushedAtExit = new Set<LineDestination>();
process.on('exit', () => {
  for (const d of flushedAtExit) d.flushSync();
});
