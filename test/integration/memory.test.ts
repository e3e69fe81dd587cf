// Issue 15: nothing made for one call outlives the call. Every call's objects are watched through the diagnostics
// channels (Fusebox's own, Node's http server's, undici's) with a FinalizationRegistry; after N calls of every kind
// and a forced GC, none may be left. Deterministic: it waits on collection, bounded by a number of GC rounds, never
// on a delay.
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gc } from '../helpers/gc.js';
import type { CallAnswerMessage, CallErrorMessage, CallStartMessage } from '../../src/telemetry/channels.js';
import { startFusebox, type RunningFusebox } from '../helpers/fusebox.js';
import { PRICES, startLlmUpstream, type LlmUpstream } from '../helpers/llm.js';
import { freePort } from '../helpers/net.js';


/** Calls of each kind: enough that a per-call leak cannot hide in a pool's or cache's fixed size. */
const N = 30;

/** Counts, per kind, the objects registered and those not collected yet. The registry holds only the kind's name. */
class Tracker {
  readonly registered = new Map<string, number>();
  readonly alive = new Map<string, number>();
  private readonly registry = new FinalizationRegistry<string>((kind) => this.alive.set(kind, (this.alive.get(kind) ?? 0) - 1));

  track(kind: string, target: object): void {
    this.registry.register(target, kind);
    this.registered.set(kind, (this.registered.get(kind) ?? 0) + 1);
    this.alive.set(kind, (this.alive.get(kind) ?? 0) + 1);
  }

  totalAlive(): number {
    return [...this.alive.values()].reduce((a, b) => a + b, 0);
  }
}

/**
 * Collect until every tracked object is gone, or give up after `rounds` GCs. Finalization callbacks run as tasks
 * after a GC, so each round yields to the event loop; an object still held stays counted whatever the rounds.
 */
const collect = async (tracker: Tracker, rounds = 30): Promise<void> => {
  for (let i = 0; i < rounds && tracker.totalAlive() > 0; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
  }
};

describe('memory: nothing per call outlives the call', () => {
  let up: LlmUpstream;
  let fb: RunningFusebox;
  let client: Agent;
  const tracker = new Tracker();
  const subscriptions: Array<[string, (message: unknown) => void]> = [];
  const on = (name: string, f: (message: unknown) => void) => {
    subscribe(name, f);
    subscriptions.push([name, f]);
  };

  beforeAll(async () => {
    up = await startLlmUpstream();
    const deadPort = await freePort();
    // Quick backoffs, and a retry budget that never says no: every retry path runs on every call.
    const fast = { baseMs: 1, capMs: 2, budgetPercent: 100, minRetriesPerSecond: 1_000 };
    fb = await startFusebox({
      budgets: { agent: { dailyUsd: 1_000 } },
      routes: [
        { name: 'llm', provider: 'openai', match: { pathPrefix: '/llm' }, upstream: { url: up.url }, retry: fast, budget: { prices: PRICES, maxRequestTokens: 100_000 } },
        // Always 503 (model broken-model): retries, then the fallback to `llm`; after 5 failures its breaker opens and
        // the fallback is taken at once.
        {
          name: 'flaky',
          provider: 'openai',
          match: { pathPrefix: '/flaky' },
          upstream: { url: up.url },
          retry: fast,
          budget: { prices: PRICES },
          fallback: [{ type: 'route', route: 'llm', model: 'test-model' }],
        },
        { name: 'tool', match: { pathPrefix: '/tool' }, upstream: { url: up.url }, retry: fast },
        { name: 'dead', match: { pathPrefix: '/dead' }, upstream: { url: `http://127.0.0.1:${deadPort}` }, retry: fast, breaker: { enabled: false } },
      ],
    });
    const proxy: Server = fb.app.proxy;
    const upstreamOrigin = new URL(up.url).origin;
    on('fusebox:call:start', (m) => {
      const { call, request: req } = m as CallStartMessage;
      tracker.track('call context', call);
      tracker.track('call request', req);
    });
    on('fusebox:call:answer', (m) => tracker.track('call response', (m as CallAnswerMessage).response));
    on('fusebox:call:error', (m) => tracker.track('call error', (m as CallErrorMessage).error));
    on('http.server.request.start', (m) => {
      const { request: req, response, server } = m as { request: IncomingMessage; response: ServerResponse; server: Server };
      if (server !== proxy) return;
      tracker.track('agent IncomingMessage', req);
      tracker.track('agent ServerResponse', response);
    });
    on('undici:request:create', (m) => {
      const { request: req } = m as { request: { origin: string | URL } };
      if (new URL(String(req.origin)).origin === upstreamOrigin) tracker.track('upstream undici request', req);
    });
    client = new Agent({ connections: 8 });
  });

  afterAll(async () => {
    for (const [name, f] of subscriptions) unsubscribe(name, f);
    await client?.close();
    await fb?.stop();
    await up?.close();
  });

  const chat = (prefix: string, body: Record<string, unknown>, headers: Record<string, string> = {}) =>
    request(`${fb.proxyUrl}${prefix}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ model: 'test-model', messages: [{ role: 'user', content: 'hello there' }], ...body }),
      dispatcher: client,
    });
  const get = (path: string) => request(`${fb.proxyUrl}${path}`, { dispatcher: client });
  /** Run `n` calls, four at a time, each answering `status`, its body read to the end. */
  const calls = async (n: number, status: number, call: (i: number) => ReturnType<typeof request>) => {
    for (let i = 0; i < n; i += 4) {
      await Promise.all(
        Array.from({ length: Math.min(4, n - i) }, async (_, j) => {
          const res = await call(i + j);
          await res.body.text();
          expect(res.statusCode).toBe(status);
        }),
      );
    }
  };

  it('after calls of every kind (buffered, streamed, retried, fallen back, refused, failed, cut, abandoned), each per-call object is collected', async () => {
    await calls(N, 200, () => chat('/llm', {}));
    await calls(N, 200, () => chat('/llm', { stream: true }));
    // 503 once, then retried.
    await calls(N, 200, (i) => chat('/llm', {}, { 'x-test-fail-once': `retry-${i}` }));
    // Retries exhausted, then after 5 failures an open breaker: both fall back to `llm`.
    await calls(N, 200, () => chat('/flaky', { model: 'broken-model' }));
    // Refused by the route's per-request token cap, before anything is sent.
    await calls(N, 402, () => chat('/llm', { max_tokens: 1_000_000 }));
    // An upstream 500 passed through after retries, then CIRCUIT_OPEN once the breaker opens.
    let passedThrough = 0;
    await Promise.all(
      Array.from({ length: N }, async () => {
        const res = await get('/tool/status?code=500');
        await res.body.text();
        if (res.statusCode === 500) passedThrough++;
        else expect(res.statusCode).toBe(503);
      }),
    );
    expect(passedThrough).toBeGreaterThan(0);
    // Nothing listens: UPSTREAM_CONNECT_FAILED after retries.
    await calls(N, 502, () => get('/dead/anything'));
    // The upstream cuts its stream after two events: the agent sees a broken body.
    for (let i = 0; i < N; i++) {
      const res = await get('/tool/sse?n=2&every=1&cut=1');
      await res.body.text().catch(() => undefined);
    }
    // The agent goes away after the first event of a stream that would last a minute.
    for (let i = 0; i < N; i++) {
      const res = await get('/tool/sse?n=3000&every=20');
      for await (const chunk of res.body) {
        expect(chunk.length).toBeGreaterThan(0);
        break;
      }
    }
    await fb.app.idle();

    // Every kind was seen, N times or more (retries and fallback hops make more upstream requests than calls).
    const kinds = ['call context', 'call request', 'call response', 'call error', 'agent IncomingMessage', 'agent ServerResponse', 'upstream undici request'];
    for (const kind of kinds) expect(tracker.registered.get(kind) ?? 0, kind).toBeGreaterThanOrEqual(N);
    await collect(tracker);
    expect(Object.fromEntries(tracker.alive)).toEqual(Object.fromEntries(kinds.map((k) => [k, 0])));
  });
});
