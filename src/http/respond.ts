import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { BodyEnd, BodyObserver, HeaderMap, ProxyResponse } from '../pipeline/types.js';

const notify = (observers: BodyObserver[], end: BodyEnd): void => {
  for (const o of observers) {
    try {
      o.onEnd?.(end);
    } catch {
      // An observer's bug must not break the response; observers are our own code and tested.
    }
  }
};

/**
 * Discard a response the pipeline will not send (a retry or fallback replaces it). Always either consume or
 * destroy an upstream body: a body left alone keeps its socket from returning to the pool.
 */
export const discardResponse = (res: ProxyResponse, reason = 'discarded'): void => {
  if (!Buffer.isBuffer(res.body)) {
    const body = res.body as Readable;
    // Destroying an unfinished undici body makes it emit 'error' (aborted); unheard, that would crash the process.
    body.on('error', () => {});
    body.destroy();
  }
  notify(res.observers, { ok: false, bytes: 0, discarded: true, error: new Error(reason) });
};

/**
 * Send the pipeline's answer. This is the commit point: once headers are written, nothing retries or falls back.
 * The body is streamed chunk by chunk with backpressure; observers see each chunk and the end (complete, broken
 * upstream, or agent gone). Resolves when the body is done either way; never rejects.
 */
export const sendResponse = (res: ServerResponse, answer: ProxyResponse, extraHeaders: HeaderMap): Promise<BodyEnd> => {
  const headers = { ...answer.headers, ...extraHeaders };
  const observers = answer.observers;
  const body = answer.body;
  if (Buffer.isBuffer(body)) {
    headers['content-length'] = String(body.length);
    res.writeHead(answer.statusCode, headers);
    res.end(body);
    for (const o of observers) o.onChunk?.(body);
    const end: BodyEnd = { ok: true, bytes: body.length };
    notify(observers, end);
    return Promise.resolve(end);
  }

  return new Promise<BodyEnd>((resolve) => {
    res.writeHead(answer.statusCode, headers);
    // SSE: let the agent see the status before the first event arrives.
    const type = headers['content-type'];
    if (typeof type === 'string' && type.startsWith('text/event-stream')) res.flushHeaders();

    let bytes = 0;
    let done = false;
    const finish = (end: BodyEnd) => {
      if (done) return;
      done = true;
      body.off('data', onData);
      res.off('drain', onDrain);
      notify(observers, end);
      resolve(end);
    };
    const onData = (chunk: Buffer) => {
      bytes += chunk.length;
      for (const o of observers) o.onChunk?.(chunk);
      if (!res.write(chunk)) body.pause();
    };
    const onDrain = () => body.resume();
    body.on('data', onData);
    res.on('drain', onDrain);
    body.once('end', () => {
      res.end();
      finish({ ok: true, bytes });
    });
    body.once('error', (error: Error) => {
      // Headers are gone; the only honest signal left is to cut the connection so the agent sees a broken body.
      res.destroy(error);
      finish({ ok: false, bytes, error, failedBy: 'upstream' });
    });
    res.once('close', () => {
      if (done) return;
      body.destroy();
      finish({ ok: false, bytes, error: new Error('client closed the connection mid-response'), failedBy: 'client' });
    });
  });
};
