import type { ServerResponse } from 'node:http';
import { notifyEnd } from '../pipeline/body-end.js';
import type { BodyEnd, HeaderMap, ProxyResponse } from '../pipeline/types.js';

/**
 * Send the pipeline's answer. This is the commit point: once headers are written, nothing retries or falls back.
 * The body is streamed chunk by chunk with backpressure; observers see each chunk and the end (complete, broken
 * upstream, or agent gone). Resolves when the body is done either way; never rejects.
 */
export const sendResponse = (res: ServerResponse, answer: ProxyResponse, requestId: string, fallbackStep: string | undefined): Promise<BodyEnd> => {
  // A copy: the answer's headers may be shared (a cached or static answer).
  const headers: HeaderMap = { ...answer.headers };
  headers['x-request-id'] = requestId;
  // Which fallback step answered, when it was not the primary.
  if (fallbackStep !== undefined) headers['x-fusebox-fallback'] = fallbackStep;
  const observers = answer.observers;
  const rewrite = answer.rewrite;
  if (Buffer.isBuffer(answer.body)) {
    const body = rewrite === undefined ? answer.body : Buffer.concat([rewrite.push(answer.body), rewrite.end()]);
    headers['content-length'] = String(body.length);
    res.writeHead(answer.statusCode, headers);
    res.end(body);
    for (const o of observers) o.onChunk?.(body);
    const end: BodyEnd = { ok: true, bytes: body.length };
    notifyEnd(observers, end);
    return Promise.resolve(end);
  }

  const body = answer.body;
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
      notifyEnd(observers, end);
      resolve(end);
    };
    const send = (chunk: Buffer): boolean => {
      bytes += chunk.length;
      for (const o of observers) o.onChunk?.(chunk);
      return res.write(chunk);
    };
    const onData = (received: Buffer) => {
      const chunk = rewrite === undefined ? received : rewrite.push(received);
      if (chunk.length > 0 && !send(chunk)) body.pause();
    };
    const onDrain = () => body.resume();
    // `on`, not `once` (which wraps each listener per call): `finish` runs once whatever fires after it, and the
    // body's 'error' listener stays, so a late error is never unheard.
    body.on('data', onData);
    res.on('drain', onDrain);
    body.on('end', () => {
      const rest = rewrite?.end();
      if (rest !== undefined && rest.length > 0) send(rest);
      res.end();
      finish({ ok: true, bytes });
    });
    body.on('error', (error: Error) => {
      if (done) return;
      // Headers are gone; the only honest signal left is to cut the connection so the agent sees a broken body.
      res.destroy(error);
      finish({ ok: false, bytes, error, failedBy: 'upstream' });
    });
    res.on('close', () => {
      if (done) return;
      body.destroy();
      finish({ ok: false, bytes, error: new Error('client closed the connection mid-response'), failedBy: 'client' });
    });
  });
};
