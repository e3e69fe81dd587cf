import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { RouteConfig } from '../config/schema.js';
import { ProxyError } from '../errors.js';
import { providerErrorBody } from '../providers/errors.js';
import type { BodyEnd, BodyObserver, HeaderMap, ProxyResponse } from '../pipeline/types.js';

export interface ErrorScope {
  requestId: string;
  route?: string;
  /** The route's API family: an LLM provider's SDK is answered in that provider's error envelope. */
  provider?: RouteConfig['provider'];
}

/** The JSON body of every answer Fusebox makes itself. Details never carry secrets (they are built from config names). */
export const errorBody = (err: ProxyError, scope: ErrorScope) => ({
  statusCode: err.statusCode,
  error: STATUS_CODES[err.statusCode] ?? 'Error',
  code: err.code,
  message: err.message,
  ...(scope.route !== undefined ? { route: scope.route } : {}),
  requestId: scope.requestId,
  ...err.details,
});

/** The body of a Fusebox error as sent: Fusebox's shape, or on an LLM route that provider's envelope around it. */
const answerBody = (err: ProxyError, scope: ErrorScope): Record<string, unknown> => {
  const body = errorBody(err, scope);
  return providerErrorBody(scope.provider, { statusCode: err.statusCode, code: err.code, message: err.message, requestId: scope.requestId, body }) ?? body;
};

/**
 * Write a Fusebox error as JSON with `x-fusebox-error`, unless the response has already started. With
 * `scope.provider` set, the body is in that provider's error envelope (see providers/errors.ts).
 */
export const sendError = (res: ServerResponse, err: ProxyError, scope: ErrorScope, closeConnection = false): void => {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const payload = JSON.stringify(answerBody(err, scope));
  res.writeHead(err.statusCode, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(payload),
    'x-fusebox-error': err.code,
    'x-request-id': scope.requestId,
    ...err.headers,
    ...(closeConnection ? { connection: 'close' } : {}),
  });
  res.end(payload);
};

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
