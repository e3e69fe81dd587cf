import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { RouteConfig } from '../config/schema.js';

/** Header map as Fusebox passes it between layers: lower-case names, no hop-by-hop headers. */
export type HeaderMap = Record<string, string | string[]>;

/**
 * The request body as the pipeline sees it.
 * - `buffered`: it fit in the replay buffer, so retries and fallbacks can send it again.
 * - `stream`: larger than the replay buffer (or of unknown size past it); it can be sent once.
 */
export type RequestBody =
  | { readonly kind: 'none' }
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

export interface ProxyResponse {
  statusCode: number;
  headers: HeaderMap;
  /** A stream from the upstream, or a complete body made by Fusebox (static fallback, cached answer). */
  body: Readable | Buffer;
  /** Observers are called in order for every chunk and once at the end. */
  observers: BodyObserver[];
}

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
  readonly log: Logger;
  /** Upstream attempts made so far for this call (retries and fallback steps included). */
  attempts: number;
  /** Name of the fallback step that produced the answer, when it was not the primary. */
  fallbackStep?: string;
  /** Free-form facts layers leave for the access log line (model, tokens, cost...). */
  readonly annotations: Record<string, unknown>;
}

export type Handler = (req: ProxyRequest, ctx: CallContext) => Promise<ProxyResponse>;
export type Layer = (next: Handler) => Handler;
