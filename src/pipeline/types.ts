import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { RouteConfig } from '../config/schema.js';

/** Header map as Fusebox passes it between layers: lower-case names, no hop-by-hop headers. */
export type HeaderMap = Record<string, string | string[]>;

/** The agent's request as a readable body with its framing headers (an IncomingMessage is one). */
export interface BodySource extends Readable {
  readonly headers: { 'content-length'?: string | undefined; 'transfer-encoding'?: string | undefined };
  /** All of the body arrived (the parser saw its end). */
  readonly complete: boolean;
}

/**
 * The request body as the pipeline sees it.
 * - `buffered`: it fit in the replay buffer, so retries and fallbacks can send it again.
 * - `stream`: larger than the replay buffer (or of unknown size past it); it can be sent once.
 */
export type RequestBody =
  | { readonly kind: 'none' }
  /** As the HTTP adapter hands it over: the request-body layer reads it into one of the other kinds. */
  | { readonly kind: 'unread'; readonly source: BodySource }
  | { readonly kind: 'buffered'; readonly bytes: Buffer }
  | { readonly kind: 'stream'; readonly stream: Readable; readonly length?: number };

export interface ProxyRequest {
  method: string;
  /** Path and query to send, relative to the upstream origin (the upstream's base path already joined). */
  path: string;
  headers: HeaderMap;
  body: RequestBody;
}

/** How a response body ended, as told to the observers registered on it. */
export interface BodyEnd {
  /** true when every byte reached the client; false on upstream error, client abort, or discard. */
  readonly ok: boolean;
  readonly bytes: number;
  readonly error?: Error;
  /** Who broke the body when `ok` is false: the upstream (a mid-stream failure) or the agent (it went away). */
  readonly failedBy?: 'upstream' | 'client';
  /** The response was never sent to the client (a retry or a fallback replaced it). */
  readonly discarded?: boolean;
}

/** Lets a layer watch a response body pass without buffering it (usage parsing, breaker, metrics). */
export interface BodyObserver {
  onChunk?(chunk: Buffer): void;
  onEnd?(end: BodyEnd): void;
}

/** How an attempt ended, in the classifier's words (`upstream/classify.ts` makes them; the table is there). */
export type AttemptOutcome = 'success' | 'retryable' | 'fatal';

/** A bounded metric label: why an attempt ended as it did. */
export type AttemptReason =
  | 'ok'
  | 'slow'
  | 'status_429'
  | 'status_5xx'
  | 'status_4xx'
  | 'connect'
  | 'dns'
  | 'tls'
  | 'reset'
  | 'timeout'
  | 'protocol'
  | 'stream_broken'
  | 'tool_error'
  | 'rpc_error'
  | 'aborted'
  | 'local'
  | 'internal';

/** The classifier's verdict on one attempt: what every layer reads, so that none of them disagree. */
export interface Verdict {
  /**
   * `retryable`: a transient failure, one that another attempt (or another upstream) may not meet. Whether this
   * call may still be retried (limits, `maxRetriesOn500`, idempotency, budget, deadline) is the retry layer's call.
   */
  readonly outcome: AttemptOutcome;
  /**
   * Counts against the breaker. True for upstream trouble (5xx, 429, network, timeouts, slow calls, broken
   * streams, MCP tool failures); false for the caller's own faults and for aborts.
   */
  readonly breakerFailure: boolean;
  readonly reason: AttemptReason;
  /** The failure happened before any request byte could reach the upstream: retrying is safe for any method. */
  readonly beforeSend: boolean;
  /** Wait the upstream asked for (Retry-After & co.), uncapped; the caller applies `retryAfterMaxMs`. */
  readonly retryAfterMs?: number;
}

/**
 * Rewrites a response body on its way to the agent, chunk by chunk, on the one data path that sends it (no stream of
 * its own: an upstream error, the agent going away and a discard reach the upstream body directly).
 */
export interface BodyRewrite {
  /** The bytes to send for this chunk as received; may be empty (held, or dropped). */
  push(chunk: Buffer): Buffer;
  /** The bytes still held once the body has ended cleanly (not called when it broke off). */
  end(): Buffer;
}

export interface ProxyResponse {
  statusCode: number;
  headers: HeaderMap;
  /** A stream from the upstream, or a complete body made by Fusebox (static fallback, cached answer). */
  body: Readable | Buffer;
  /** Observers are called in order for every chunk and once at the end, with the bytes sent (after `rewrite`). */
  observers: BodyObserver[];
  /**
   * Applied to the body as it is sent (src/http/respond.ts). Writer: the budget layer, removing the usage chunk it
   * asked for. A response with one has no `content-length` (the length changes).
   */
  rewrite?: BodyRewrite;
  /**
   * The verdict on the attempt that produced this response, made once where it arose (the upstream send) with the
   * route's classifier settings. Retry, breaker and fallback read it (`verdictOf` in upstream/classify.ts) and never
   * classify the status again, so they cannot disagree. A response made without one (a static or cached answer, an
   * injected fault) gets it from the first layer that asks, and keeps it.
   */
  verdict?: Verdict;
}

/** What the budget layer settled for a call: the usage read from the answer and what it cost. */
export interface CallSettlement {
  model: string | undefined;
  inputTokens: number;
  cachedInputTokens: number;
  outputTokens: number;
  /** Integer micro-dollars, as the store counts them. */
  costUsdMicros: number;
  /** The answer reported no usage (it broke off): charged from what was seen. */
  estimated: boolean;
}

/**
 * What layers tell each other about one call, each field with its one writer, so the compiler shows who writes
 * and who reads. The access log line prints them.
 */
export interface CallFacts {
  /** Request body bytes received from the agent. Writer: the request-body layer. Reader: the observer. */
  requestBytes?: number;
  /** `x-fusebox-fault` as the agent sent it. Writer: the HTTP adapter. Reader: the faults layer. */
  faultHeader?: string;
  /** The SLO action in force for this call. Writer: the SLO layer. Reader: the access log. */
  sloAction?: 'alert' | 'throttle' | 'degrade' | 'shed';
  /** `degrade`: the fallback step the chain starts at. Writer: the SLO layer. Reader: the fallback layer. */
  degradeToStep?: number;
  /** The model the call asked for and its pre-call estimate. Writer: the budget layer. */
  model?: string;
  estimatedUsd?: number;
  /** The model a fallback step rewrote the request to. Writer: the fallback layer. */
  fallbackModel?: string;
  /** Set when the answer's body has ended and its cost is known. Writer: the budget layer. */
  settlement?: CallSettlement;
  /**
   * Resolves (with the settlement, or undefined when there is nothing to bill) once the budget layer has settled the
   * call: the SLO layer reads the call's cost from it, whatever order the layers' body observers run in.
   */
  settled?: Promise<CallSettlement | undefined>;
}

/** Attribute values a span event carries; undefined ones are left out. */
export type TraceAttributes = Record<string, string | number | boolean | undefined>;

/**
 * The call's trace while tracing is on (src/telemetry/tracing.ts): the layers record their decisions (a retry, a
 * breaker refusal, a budget reservation) as events on it. Absent when tracing is off, so a layer's `ctx.trace?.`
 * is the whole cost then.
 */
export interface CallTrace {
  /** The trace the call's span belongs to (the agent's, when it sent a `traceparent`): the access line carries it. */
  readonly traceId: string;
  /** An event on the innermost open span: the current fallback hop, else the call. */
  event(name: string, attributes: TraceAttributes): void;
}

/** How a call reached Fusebox: a label on metrics and access-log lines. */
export type CallMode = 'base-url' | 'proxy' | 'intercept';

/** Per-request state shared by the layers. Long-lived state belongs in layer closures, never here. */
export interface CallContext {
  readonly requestId: string;
  readonly route: RouteConfig;
  /** Agent identity (config `agent.id`). */
  readonly agent: string;
  /** Workflow id from `x-fusebox-workflow`, if the agent sent one. */
  readonly workflow: string | undefined;
  /** Clock time (ms) the request arrived. */
  readonly startedAt: number;
  /** Clock time (ms) by which the whole call must be answered. */
  readonly deadline: number;
  /** Aborted when the client goes away or the route's total timeout passes. */
  readonly signal: AbortSignal;
  /** Abort the call with `reason` (the HTTP adapter when the agent goes away, the deadline layer). */
  abort(reason: Error): void;
  readonly mode: CallMode;
  readonly log: Logger;
  /** Upstream attempts made so far for this call (retries and fallback steps included). */
  attempts: number;
  /** Name of the fallback step that produced the answer, when it was not the primary. */
  fallbackStep?: string;
  readonly facts: CallFacts;
  /** The call's trace, when tracing is on. Writer: the tracing layer. Readers: the layers that record decisions. */
  trace?: CallTrace;
}

export type Handler = (req: ProxyRequest, ctx: CallContext) => Promise<ProxyResponse>;
export type Layer = (next: Handler) => Handler;
