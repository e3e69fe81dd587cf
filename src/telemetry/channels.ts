import { channel } from 'node:diagnostics_channel';
import type { ProxyError } from '../errors.js';
import type { CallContext, ProxyRequest, ProxyResponse } from '../pipeline/types.js';

/** `fusebox:call:start`: a call was made from an agent's request. */
export interface CallStartMessage {
  readonly call: CallContext;
  /** What the route's pipeline receives (its body not read yet). */
  readonly request: ProxyRequest;
}

/** `fusebox:call:answer`: the pipeline answered; the response is about to be written (its body may still stream). */
export interface CallAnswerMessage {
  readonly call: CallContext;
  readonly response: ProxyResponse;
}

/** `fusebox:call:error`: the pipeline failed; this error is about to be written as the answer. */
export interface CallErrorMessage {
  readonly call: CallContext;
  readonly error: ProxyError;
}

/**
 * Every proxied call on `node:diagnostics_channel`, as undici publishes its requests (`undici:request:create`): for a
 * tracer, and for the memory regression test (test/integration/memory.test.ts), which watches each call's objects
 * until they are collected. Nothing subscribes in production: a publish is then one `hasSubscribers` check.
 * A subscriber must not keep what it is given, or it holds the call's memory itself.
 */
export const callChannels = {
  start: channel('fusebox:call:start'),
  answer: channel('fusebox:call:answer'),
  error: channel('fusebox:call:error'),
};
