import type { Logger } from 'pino';
import type { RouteConfig } from '../config/schema.js';
import type { CallContext, CallFacts, CallMode, CallTrace } from './types.js';

export interface CallInit {
  requestId: string;
  route: RouteConfig;
  agent: string;
  workflow: string | undefined;
  mode: CallMode;
  /** Clock time (ms) the request arrived. */
  startedAt: number;
  /** The agent's `x-fusebox-fault` header, for the faults layer. */
  faultHeader?: string | undefined;
  log: Logger;
}

/**
 * One call's context: made by the HTTP adapter, read and written by the layers. Aborting it (the agent went away,
 * the deadline passed) aborts every upstream attempt in flight. The child logger is made on first use: most calls
 * never log a decision, and a pino child costs a serialization.
 */
export class Call implements CallContext {
  attempts = 0;
  fallbackStep?: string;
  readonly facts: CallFacts = {};
  trace?: CallTrace;
  readonly requestId: string;
  readonly route: RouteConfig;
  readonly agent: string;
  readonly workflow: string | undefined;
  readonly mode: CallMode;
  readonly startedAt: number;
  readonly deadline: number;
  private readonly controller = new AbortController();
  private readonly base: Logger;
  private child?: Logger;

  constructor(init: CallInit) {
    this.requestId = init.requestId;
    this.route = init.route;
    this.agent = init.agent;
    this.workflow = init.workflow;
    this.mode = init.mode;
    this.startedAt = init.startedAt;
    this.deadline = init.startedAt + (init.route.timeouts.totalMs || 1e12);
    this.base = init.log;
    if (init.faultHeader !== undefined) this.facts.faultHeader = init.faultHeader;
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  abort(reason: Error): void {
    this.controller.abort(reason);
  }

  get log(): Logger {
    this.child ??= this.base.child({ requestId: this.requestId, route: this.route.name, workflow: this.workflow });
    return this.child;
  }
}
