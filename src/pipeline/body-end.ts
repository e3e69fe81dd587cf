import type { Readable } from 'node:stream';
import type { BodyEnd, BodyObserver, ProxyResponse } from './types.js';

/** Tell every observer how a body ended. */
export const notifyEnd = (observers: BodyObserver[], end: BodyEnd): void => {
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
  notifyEnd(res.observers, { ok: false, bytes: 0, discarded: true, error: new Error(reason) });
};

