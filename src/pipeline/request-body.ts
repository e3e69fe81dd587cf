import { PassThrough } from 'node:stream';
import { BadRequestError, BodyTooLargeError, ClientClosedError } from '../errors.js';
import type { BodySource, Layer, RequestBody } from './types.js';

export interface BodyLimits {
  /** Largest body accepted at all (413 above). */
  maxBytes: number;
  /** Bodies up to this size are buffered so they can be replayed; larger ones stream once. */
  bufferBytes: number;
}

const tooLarge = (max: number) =>
  new BodyTooLargeError(`request body is larger than the limit of ${max} bytes (limits.maxRequestBodyBytes)`, { limitBytes: max });

/**
 * Read the agent's request body: buffered when it fits the replay buffer (so retries and fallbacks can resend
 * it, and budget estimates can read it), otherwise handed on as a one-shot stream that is still held to the
 * size limit. Never holds more than `bufferBytes` in memory.
 */
export const readRequestBody = (raw: BodySource, limits: BodyLimits): Promise<RequestBody> => {
  const lengthHeader = raw.headers['content-length'];
  const chunked = raw.headers['transfer-encoding'] !== undefined;
  if (lengthHeader === undefined && !chunked) return Promise.resolve({ kind: 'none' });
  const length = lengthHeader === undefined ? undefined : Number(lengthHeader);
  if (length !== undefined && !Number.isSafeInteger(length)) {
    return Promise.reject(new BadRequestError('content-length is not a number'));
  }
  if (length !== undefined && length > limits.maxBytes) return Promise.reject(tooLarge(limits.maxBytes));
  if (length === 0) return Promise.resolve({ kind: 'none' });
  if (length !== undefined && length > limits.bufferBytes) {
    // Node's parser already enforces that exactly `length` bytes arrive.
    return Promise.resolve({ kind: 'stream', stream: raw, length });
  }

  return new Promise<RequestBody>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const cleanup = () => {
      raw.off('data', onData);
      raw.off('end', onEnd);
      raw.off('error', onError);
      raw.off('close', onClose);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limits.maxBytes) {
        cleanup();
        settled = true;
        reject(tooLarge(limits.maxBytes));
        return;
      }
      if (size <= limits.bufferBytes) {
        chunks.push(chunk);
        return;
      }
      // Past the replay buffer with no length announced: stop buffering, stream what we hold plus the rest.
      cleanup();
      settled = true;
      raw.pause();
      chunks.push(chunk);
      resolve({ kind: 'stream', stream: limitedStream(raw, chunks, size, limits.maxBytes) });
    };
    const onEnd = () => {
      cleanup();
      settled = true;
      resolve(size === 0 ? { kind: 'none' } : { kind: 'buffered', bytes: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size) });
    };
    const onError = (err: Error) => {
      cleanup();
      if (!settled) reject(new ClientClosedError('the client aborted while sending the request body', {}, { cause: err }));
    };
    const onClose = () => {
      if (!settled && !raw.complete) onError(new Error('closed'));
    };
    raw.on('data', onData);
    raw.on('end', onEnd);
    raw.on('error', onError);
    raw.on('close', onClose);
  });
};

/** The already-read chunks followed by the rest of `raw`, failing with BODY_TOO_LARGE past `maxBytes`. */
const limitedStream = (raw: BodySource, head: Buffer[], headSize: number, maxBytes: number): PassThrough => {
  const out = new PassThrough();
  let size = headSize;
  if (size > maxBytes) {
    out.destroy(tooLarge(maxBytes));
    raw.resume();
    return out;
  }
  for (const c of head) out.write(c);
  const onData = (chunk: Buffer) => {
    size += chunk.length;
    if (size > maxBytes) {
      // Stop forwarding but leave the socket alone: the 413 is answered with a staged close (lingering-close.ts);
      // destroying the request here would reset the connection before the agent can read it.
      raw.pause();
      raw.off('data', onData);
      raw.off('end', onEnd);
      raw.off('error', onError);
      out.destroy(tooLarge(maxBytes));
      return;
    }
    if (!out.write(chunk)) raw.pause();
  };
  const onEnd = () => out.end();
  const onError = (err: Error) => out.destroy(err);
  raw.on('data', onData);
  out.on('drain', () => raw.resume());
  raw.on('end', onEnd);
  raw.on('error', onError);
  raw.resume();
  return out;
};

/**
 * The agent's body, read before any policy looks at the request: buffered up to the route's replay buffer (so
 * retries and fallback hops can resend it and the budget layer can read its prompt), streamed once beyond it, and
 * never past `limits.maxRequestBodyBytes` (413). Inside the observer, so a refused upload is counted and logged.
 */
export const requestBodyLayer =
  (maxBytes: number): Layer =>
  (next) =>
  async (req, ctx) => {
    if (req.body.kind !== 'unread') return next(req, ctx);
    const body = await readRequestBody(req.body.source, { maxBytes, bufferBytes: ctx.route.retry.bufferBytes });
    ctx.facts.requestBytes = body.kind === 'buffered' ? body.bytes.length : body.kind === 'stream' ? (body.length ?? 0) : 0;
    if (body.kind !== 'buffered') return next({ ...req, body }, ctx);
    // Layers may rewrite a buffered body (model rewrite, stream usage); undici sets the length of what is sent.
    const headers = { ...req.headers };
    delete headers['content-length'];
    return next({ ...req, headers, body }, ctx);
  };
