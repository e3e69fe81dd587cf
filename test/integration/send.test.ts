// The upstream send (src/upstream/send.ts) against a real upstream on loopback: what happens to one attempt when the
// call is aborted in each phase (queued for a connection, waiting for headers, streaming), and when the body reader
// stops early. Every wait is on an event: a connection left open or an answer never settled fails by the timeout.
import { once } from 'node:events';
import { PassThrough, type Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RouteSchema, type RouteConfig } from '../../src/config/schema.js';
import { ClientClosedError, UpstreamTimeoutError } from '../../src/errors.js';
import type { ProxyRequest } from '../../src/pipeline/types.js';
import { classifyPolicy } from '../../src/upstream/classify.js';
import { PoolSet } from '../../src/upstream/pool.js';
import { makeSend, type SendAttempt } from '../../src/upstream/send.js';
import { callContext } from '../helpers/pipeline.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

const get = (path: string): ProxyRequest => ({ method: 'GET', path, headers: {}, body: { kind: 'none' } });

describe('upstream send: one attempt, aborted or cut in every phase', () => {
  let up: TestUpstream;
  let pools: PoolSet;
  let route: RouteConfig;
  let send: SendAttempt;
  const releases: Array<() => void> = [];
  const arrivals: Array<() => void> = [];
  /** Resolves when the upstream next receives a request on `/held` or `/partial`; call before sending it. */
  const arrival = () => new Promise<void>((r) => arrivals.push(r));

  beforeAll(async () => {
    up = await startUpstream();
    // Holds its answer until the test releases it.
    up.on('/held', async (_req, res) => {
      for (const arrived of arrivals.splice(0)) arrived();
      await new Promise<void>((r) => releases.push(r));
      if (!res.destroyed) res.end('held answer');
    });
    // Headers and a first chunk, then the rest only when released.
    up.on('/partial', async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '20' });
      res.write('first half');
      for (const arrived of arrivals.splice(0)) arrived();
      await new Promise<void>((r) => releases.push(r));
      if (!res.destroyed) res.end('last half!');
    });
    // Headers and a first chunk, then the connection cut when released.
    up.on('/cut', async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '20' });
      res.write('first half');
      await new Promise<void>((r) => releases.push(r));
      res.socket?.destroy();
    });
    pools = new PoolSet(process.cwd());
    // One connection, so a second attempt waits in the pool's queue.
    route = RouteSchema.parse({ name: 'r', match: { pathPrefix: '/r' }, upstream: { url: up.url, connections: 1 } });
    const target = { name: 'r', origin: up.url, basePath: '', tls: route.upstream.tls, connections: 1, timeouts: route.timeouts };
    send = makeSend(target, pools, { policy: classifyPolicy(route), now: Date.now });
  });
  afterEach(() => {
    for (const release of releases.splice(0)) release();
  });
  afterAll(async () => {
    await pools?.close();
    await up?.close();
  });

  it('answers an attempt queued behind a busy connection with the call’s abort reason at once, releases its upload, and never sends it', async () => {
    const arrived = arrival();
    const busy = send(get('/held'), {}, callContext(route));
    // The upstream has the first request: the only connection is taken.
    await arrived;
    const queuedCtx = callContext(route);
    // A streamed upload (past the replay buffer): released with the attempt, not left for undici's turn.
    const upload = new PassThrough();
    upload.write('part of a large upload');
    const queued = send({ method: 'POST', path: '/held?queued', headers: {}, body: { kind: 'stream', stream: upload } }, {}, queuedCtx);
    const deadline = new UpstreamTimeoutError('the call took longer than 1 ms (timeouts.totalMs)', { phase: 'total' });
    queuedCtx.abort(deadline);
    // Answered while the first attempt still holds the connection (releasing it is what this test must not need).
    await expect(queued).rejects.toBe(deadline);
    expect(queuedCtx.attempts).toBe(1);
    expect(upload.destroyed).toBe(true);
    releases.shift()!();
    const answer = await busy;
    (answer.body as Readable).resume();
    await once(answer.body as Readable, 'end');
    // The pool serves its queue in order: once a later attempt is answered, the aborted one was dropped unsent.
    const later = await send(get('/fast'), {}, callContext(route));
    (later.body as Readable).resume();
    await once(later.body as Readable, 'end');
    expect(up.seen.map((s) => s.url)).not.toContain('/held?queued');
  });

  it('closes the upstream request when the call is aborted while waiting for headers, and rejects with the reason', async () => {
    const ctx = callContext(route);
    const arrived = arrival();
    const attempt = send(get('/held'), {}, ctx);
    await arrived;
    const seen = up.seen.findLast((s) => s.url === '/held')!;
    ctx.abort(new ClientClosedError('the client closed the connection'));
    await expect(attempt).rejects.toBeInstanceOf(ClientClosedError);
    await seen.closed;
  });

  it('a body destroyed before its end aborts the upstream request, and its reader hears UND_ERR_ABORTED', async () => {
    const answer = await send(get('/partial'), {}, callContext(route));
    expect(answer.statusCode).toBe(200);
    const body = answer.body as Readable;
    const [first] = (await once(body, 'data')) as [Buffer];
    expect(first.toString()).toBe('first half');
    const seen = up.seen.findLast((s) => s.url === '/partial')!;
    const heard = once(body, 'error');
    body.destroy();
    const [err] = (await heard) as [Error & { code?: string }];
    expect(err.code).toBe('UND_ERR_ABORTED');
    await seen.closed;
  });

  it('the call aborted mid-body destroys the body with the call’s reason and closes the upstream request', async () => {
    const ctx = callContext(route);
    const answer = await send(get('/partial'), {}, ctx);
    const body = answer.body as Readable;
    await once(body, 'data');
    const seen = up.seen.findLast((s) => s.url === '/partial')!;
    const heard = once(body, 'error');
    const reason = new ClientClosedError('the client closed the connection');
    ctx.abort(reason);
    expect((await heard)[0]).toBe(reason);
    await seen.closed;
  });

  it('an upstream cut before anyone listens to the body: the error waits for the pipeline’s listeners, never unheard', async () => {
    const answer = await send(get('/cut'), {}, callContext(route));
    const body = answer.body as Readable;
    const seen = up.seen.findLast((s) => s.url === '/cut')!;
    releases.shift()!();
    await seen.closed;
    // undici sees the cut on a later turn of the event loop; the pipeline's layers are still a few hops from
    // listening then. An error emitted at once would be unheard and crash this process.
    while (!body.destroyed) await new Promise((r) => setImmediate(r));
    const [err] = (await once(body, 'error')) as [Error & { code?: string }];
    expect(err.code).toMatch(/^UND_ERR_/);
  });
});
