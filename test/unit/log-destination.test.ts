import { execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, createReadStream, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { LineDestination } from '../../src/telemetry/log-destination.js';

const line = (i: number) => `{"i":${i},"pad":"${'x'.repeat(90)}"}\n`;
const flushed = (d: LineDestination) => new Promise<void>((resolve) => d.flush(resolve));

describe('LineDestination', () => {
  let dir: string;
  const opened: LineDestination[] = [];
  const fds: number[] = [];
  afterEach(() => {
    for (const d of opened.splice(0)) d.close();
    for (const fd of fds.splice(0)) closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  });
  const open = (path: string, flags: string | number) => {
    const fd = openSync(path, flags);
    fds.push(fd);
    return fd;
  };
  const destination = (opts: ConstructorParameters<typeof LineDestination>[0]) => {
    const d = new LineDestination(opts);
    opened.push(d);
    return d;
  };

  it('writes every line, in order and whole, across batches and a line longer than a batch; flush(cb) calls back once they are out', async () => {
    dir = mkdtempSync(join(tmpdir(), 'fusebox-dest-'));
    const file = join(dir, 'out.log');
    const d = destination({ fd: open(file, 'w') });
    // Multi-byte characters and a line longer than a chunk: both need the exact byte count.
    const lines = Array.from({ length: 2000 }, (_, i) => (i === 700 ? `{"long":"${'é'.repeat(20_000)}"}\n` : line(i)));
    for (const l of lines) d.write(l);
    await flushed(d);
    expect(readFileSync(file, 'utf8')).toBe(lines.join(''));
    expect(d.bufferedBytes).toBe(0);
    expect(d.dropped).toBe(0);
  });

  it('keeps at most maxBufferedBytes while the reader does not read, counts what it drops, and writes the rest once it reads again', async () => {
    dir = mkdtempSync(join(tmpdir(), 'fusebox-dest-'));
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    // Read-write: opening does not wait for a reader, and nothing reads through this fd. Writes block once the
    // pipe's buffer (64 KiB) is full: a reader that stopped reading.
    const d = destination({ fd: open(fifo, 'r+'), maxBufferedBytes: 128 * 1024 });
    const drops: number[] = [];
    const caughtUp: number[] = [];
    d.on('drop', (n) => drops.push(n));
    d.on('caught-up', (n) => caughtUp.push(n));
    const total = 5000; // ~500 KB: more than the pipe and the buffer hold together
    for (let i = 0; i < total; i++) d.write(line(i));
    expect(d.bufferedBytes).toBeLessThanOrEqual(128 * 1024 + line(0).length);
    expect(d.dropped).toBeGreaterThan(0);
    expect(drops.reduce((a, b) => a + b, 0)).toBe(d.dropped);

    // The reader comes back: what was kept arrives, whole lines in order, and nothing else is lost.
    const reader = createReadStream('', { fd: openSync(fifo, 'r') });
    let received = '';
    const expected = total - d.dropped;
    const all = new Promise<void>((resolve) =>
      reader.on('data', (c) => {
        received += c.toString();
        if (received.split('\n').length - 1 === expected) resolve();
      }),
    );
    await flushed(d);
    await all;
    reader.destroy();
    const got = received.split('\n').slice(0, -1).map((l) => (JSON.parse(l) as { i: number }).i);
    expect(got).toEqual([...got].sort((a, b) => a - b));
    expect(got[0]).toBe(0);
    expect(caughtUp).toEqual([d.dropped]);
  });

  it('gives up a synchronous flush (process exit) on a reader that never reads, counting the rest as dropped', () => {
    dir = mkdtempSync(join(tmpdir(), 'fusebox-dest-'));
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    // Non-blocking, as a pipe to a log collector is: a full pipe answers EAGAIN, which flushSync retries. Nothing reads.
    const d = destination({ fd: open(fifo, constants.O_RDWR | constants.O_NONBLOCK), maxBufferedBytes: 1 << 20 });
    const total = 3000; // ~300 KB: more than the pipe holds
    for (let i = 0; i < total; i++) d.write(line(i));
    const droppedBefore = d.dropped;
    // Returns (a reader that never reads would otherwise hold the exit hook forever) and says what it could not write.
    d.flushSync();
    expect(d.dropped).toBeGreaterThan(droppedBefore);
  });

  it('writes what waits when the process exits, with no flush asked for', async () => {
    dir = mkdtempSync(join(tmpdir(), 'fusebox-dest-'));
    // A pino logger on the destination logs a burst, then the process exits at once: the exit hook writes it.
    const script = `
      import { pino } from 'pino';
      import { LineDestination } from './src/telemetry/log-destination.ts';
      const log = pino({ base: null, timestamp: false }, new LineDestination());
      for (let i = 0; i < 3000; i++) log.info({ i }, 'burst');
      process.exit(0);
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(code).toBe(0);
    const lines = out.split('\n').filter((l) => l !== '');
    expect(lines).toHaveLength(3000);
    expect(lines.at(-1)).toBe('{"level":30,"i":2999,"msg":"burst"}');
  }, 60_000);

  it('is what pino writes through, byte for byte as with its own destination', async () => {
    dir = mkdtempSync(join(tmpdir(), 'fusebox-dest-'));
    const ours = join(dir, 'ours.log');
    const theirs = join(dir, 'theirs.log');
    const d = destination({ fd: open(ours, 'w') });
    const sonic = pino.destination({ dest: theirs, sync: true });
    for (const dest of [d, sonic]) {
      const log = pino({ base: { service: 'fusebox' }, timestamp: false }, dest);
      log.child({ route: 'r' }).info({ status: 200, path: '/ü' }, 'request');
      log.warn({ n: 1 }, 'done');
    }
    await flushed(d);
    expect(readFileSync(ours, 'utf8')).toBe(readFileSync(theirs, 'utf8'));
  });
});
