import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lingeringClose } from '../../src/http/lingering-close.js';
import { startFusebox, type RunningFusebox } from '../helpers/fusebox.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

const LIMIT = 64 * 1024;
const UPLOAD = 8 * 1024 * 1024;

/**
 * One upload the way a client that writes its whole request before reading the answer does it (Python's
 * http.client, urllib3): the answer is read only once the last byte is sent, and a failed send (a reset) ends the
 * exchange with nothing read.
 */
const blindUpload = (port: number, bytes: number, opts: { path?: string; chunked?: boolean } = {}) =>
  new Promise<{ received: string; error?: string }>((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.pause();
    let received = '';
    const done = (error?: string) => {
      socket.destroy();
      resolve({ received, ...(error !== undefined ? { error } : {}) });
    };
    const data = Buffer.alloc(64 * 1024, 120);
    // A chunk of the chunked coding: size line, data, CRLF; the last one is followed by the zero-size chunk.
    const chunk = opts.chunked === true ? Buffer.concat([Buffer.from(`${data.length.toString(16)}\r\n`), data, Buffer.from('\r\n')]) : data;
    let sent = 0;
    const pump = () => {
      while (sent < bytes) {
        sent += data.length;
        const last = sent >= bytes;
        const payload = last && opts.chunked === true ? Buffer.concat([chunk, Buffer.from('0\r\n\r\n')]) : chunk;
        const more = socket.write(payload, last ? () => socket.resume() : undefined);
        if (!more && !last) return socket.once('drain', pump);
      }
    };
    socket.on('connect', () => {
      const framing = opts.chunked === true ? 'transfer-encoding: chunked' : `content-length: ${bytes}`;
      socket.write(`POST ${opts.path ?? '/up/upload'} HTTP/1.1\r\nhost: 127.0.0.1\r\n${framing}\r\n\r\n`);
      pump();
    });
    socket.on('data', (c: Buffer) => (received += c.toString('latin1')));
    socket.on('error', (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
    socket.on('end', () => done());
  });

const curlUpload = (url: string, bytes: number) =>
  new Promise<{ status: string; exit: number }>((resolve) => {
    const child = execFile(
      'curl',
      ['-s', '-S', '--noproxy', '*', '-o', '/dev/null', '-w', '%{http_code}', '-H', 'content-type: application/octet-stream', '--data-binary', '@-', url],
      { env: { PATH: process.env.PATH ?? '' }, timeout: 10_000, encoding: 'utf8' },
      (err, stdout) => resolve({ status: stdout, exit: (err as { code?: number } | null)?.code ?? 0 }),
    );
    // curl reads the whole body from stdin first, then uploads it with a content-length.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(Buffer.alloc(bytes, 120));
  });

describe('413 with the body unread: a staged (lingering) close, RFC 9112 §9.6', () => {
  let up: TestUpstream;
  let fb: RunningFusebox;
  let port: number;

  beforeAll(async () => {
    up = await startUpstream();
    fb = await startFusebox({
      limits: { maxRequestBodyBytes: LIMIT },
      routes: [
        { name: 'up', match: { pathPrefix: '/up' }, upstream: { url: up.url } },
        // A replay buffer under the limit: a chunked body past it streams to the upstream until the limit cuts it.
        { name: 'streamed', match: { pathPrefix: '/streamed' }, upstream: { url: up.url }, retry: { bufferBytes: 16 * 1024 } },
      ],
    });
    port = Number(new URL(fb.proxyUrl).port);
  });
  afterAll(async () => {
    await fb?.stop();
    await up?.close();
  });

  it('20 uploads of 8 MiB in a row over a 64 KiB limit, each read only once sent: every one reads the 413 (no reset)', async () => {
    const results: Array<{ received: string; error?: string }> = [];
    for (let i = 0; i < 20; i++) results.push(await blindUpload(port, UPLOAD));
    const statusLines = results.map((r) => /HTTP\/1\.1 [2-5]\d\d[^\r]*/.exec(r.received)?.[0] ?? `(no final answer; ${r.error ?? 'closed'})`);
    expect(statusLines).toEqual(Array(20).fill('HTTP/1.1 413 Payload Too Large'));
    const head = results[0]!.received.toLowerCase();
    expect(head).toContain('connection: close');
    expect(head).toContain('x-fusebox-error: body_too_large');
    expect(up.count('/upload')).toBe(0);
  });

  it('chunked uploads over the limit, buffered or streamed, read the 413 too', async () => {
    up.on('/sink', (req, res) => {
      req.resume();
      req.on('end', () => res.end('{}'));
    });
    const results: Array<{ received: string; error?: string }> = [];
    for (const path of ['/up/sink', '/streamed/sink']) {
      for (let i = 0; i < 5; i++) results.push(await blindUpload(port, UPLOAD, { path, chunked: true }));
    }
    const statusLines = results.map((r) => /HTTP\/1\.1 [2-5]\d\d[^\r]*/.exec(r.received)?.[0] ?? `(no final answer; ${r.error ?? 'closed'})`);
    expect(statusLines).toEqual(Array(10).fill('HTTP/1.1 413 Payload Too Large'));
  });

  it('20 curl uploads of 8 MiB in a row: every one exits 0 with status 413 (no exit 55, no reset)', async () => {
    const results: Array<{ status: string; exit: number }> = [];
    for (let i = 0; i < 20; i++) results.push(await curlUpload(`${fb.proxyUrl}/up/upload`, UPLOAD));
    expect(results).toEqual(Array(20).fill({ status: '413', exit: 0 }));
  }, 60_000);
});

describe('lingeringClose bounds', () => {
  let server: Server;
  let port: number;
  const limits = { timeMs: 1_000, maxBytes: 1024 * 1024 };
  /** Resolves with how long the server's socket lived after the 413 was written, for the latest connection. */
  let serverClosed: Promise<number>;

  beforeAll(async () => {
    server = createServer((req, res) => {
      serverClosed = new Promise((resolve) => {
        let answeredAt = 0;
        res.once('finish', () => (answeredAt = performance.now()));
        req.socket.once('close', () => resolve(performance.now() - answeredAt));
      });
      lingeringClose(req, res, limits);
      res.writeHead(413, { connection: 'close', 'content-length': 0 });
      res.end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  /** Send the head of a `length`-byte upload, then what `write` sends; resolves with the answer once the server closed. */
  const upload = async (length: number, write: (socket: Socket) => void) => {
    // Half-open: the client's side stays open after the server's FIN, as a client still sending keeps it.
    const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let received = '';
    socket.on('data', (c: Buffer) => (received += c.toString('latin1')));
    socket.on('error', () => undefined);
    socket.on('connect', () => {
      socket.write(`POST / HTTP/1.1\r\nhost: x\r\ncontent-length: ${length}\r\n\r\n`);
      write(socket);
    });
    await new Promise((r) => socket.once('data', r));
    const lingeredMs = await serverClosed;
    socket.destroy();
    return { received, lingeredMs };
  };

  it('half-closes after the answer, reads the rest of the body, and closes as soon as it is all read', async () => {
    const r = await upload(8192, (socket) => {
      // The rest of the body comes only after the answer: the server must still be reading it.
      socket.once('data', () => socket.write(Buffer.alloc(8192 - 10, 120)));
      socket.write(Buffer.alloc(10, 120));
    });
    expect(r.received).toMatch(/^HTTP\/1\.1 413 /);
    expect(r.lingeredMs).toBeLessThan(limits.timeMs);
  });

  it('gives a client that stops sending timeMs, then closes', async () => {
    const r = await upload(10 * 1024 * 1024, (socket) => socket.write(Buffer.alloc(1024, 120)));
    expect(r.received).toMatch(/^HTTP\/1\.1 413 /);
    expect(r.lingeredMs).toBeGreaterThanOrEqual(limits.timeMs - 5);
  });

  it('closes a client that keeps sending once maxBytes have been thrown away, before timeMs', async () => {
    let sent = 0;
    const total = 256 * 1024 * 1024;
    const r = await upload(total, (socket) => {
      const chunk = Buffer.alloc(64 * 1024, 120);
      const pump = () => {
        while (!socket.destroyed && sent < total) {
          sent += chunk.length;
          if (!socket.write(chunk)) return socket.once('drain', pump);
        }
      };
      pump();
    });
    expect(r.received).toMatch(/^HTTP\/1\.1 413 /);
    expect(r.lingeredMs).toBeLessThan(limits.timeMs);
    expect(sent).toBeGreaterThan(limits.maxBytes);
    expect(sent).toBeLessThan(total);
  });
});
