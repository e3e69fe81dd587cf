import { z } from 'zod';
import { parseHostEntry } from '../net/address.js';
import { parseRedisUrl, RedisUrlError } from '../store/redis-url.js';

/**
 * The one schema for Fusebox's config file. Every field says its unit and default; the README's
 * reference is written from these comments. `z.strictObject` everywhere so a typo is an error, not a
 * silently ignored key.
 */

const ms = (def: number) => z.number().int().nonnegative().default(def);
const positiveInt = z.number().int().positive();
const percent = z.number().min(0).max(100);
const httpStatus = z.number().int().min(100).max(599);
/** A header name as HTTP allows it; compared lower-case. */
const headerName = z
  .string()
  .regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'must be a valid HTTP header name')
  .transform((s) => s.toLowerCase());
const routeName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, 'must be 1-64 letters, digits, "_", "-" or "." (it becomes a metric label)');
const httpUrl = z
  .string()
  .refine((s) => {
    try {
      const u = new URL(s);
      return (u.protocol === 'http:' || u.protocol === 'https:') && u.username === '' && u.password === '';
    } catch {
      return false;
    }
  }, 'must be an absolute http:// or https:// URL without credentials (use `credential` for secrets)');
const envVarName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be an environment variable name, like OPENAI_API_KEY');

export const ListenSchema = z.strictObject({
  /** Address to bind. Default 127.0.0.1: a sidecar shares the pod's network namespace, loopback is enough. */
  host: z.string().min(1).default('127.0.0.1'),
  /** TCP port; 0 picks a free one (tests). Default 4000. */
  port: z.number().int().min(0).max(65535).default(4000),
});

export const AdminSchema = z.strictObject({
  host: z.string().min(1).default('127.0.0.1'),
  /** Admin port (metrics, health, admin API). Default 9901. */
  port: z.number().int().min(0).max(65535).default(9901),
  /**
   * Name of the environment variable holding the bearer token for state-changing admin calls.
   * When unset or empty, those calls answer 403 ADMIN_DISABLED; read-only endpoints stay open.
   */
  tokenEnv: envVarName.default('FUSEBOX_ADMIN_TOKEN'),
});

export const TimeoutsSchema = z.strictObject({
  /** TCP (+TLS) connect timeout, ms. Default 5000. */
  connectMs: ms(5_000),
  /** Time from request sent to response headers, ms. Default 120000 (a non-streamed LLM answer arrives whole). */
  headersMs: ms(120_000),
  /** Longest silence between two body chunks, ms. Default 60000. 0 disables. */
  bodyIdleMs: ms(60_000),
  /** Whole call including retries and fallbacks, ms. Default 600000. */
  totalMs: ms(600_000),
});

export const CredentialSchema = z.strictObject({
  /** Environment variable holding the secret. The secret itself never goes in the file. */
  env: envVarName,
  /** Header to set. Default `authorization`. Whatever the agent sent in it is replaced. */
  header: headerName.default('authorization'),
  /** Text put before the secret. Default `Bearer ` (use '' for `x-api-key`). */
  prefix: z.string().default('Bearer '),
});

export const HeaderRulesSchema = z.strictObject({
  /** Headers set on the upstream request (replacing the agent's). */
  add: z.record(headerName, z.string()).default({}),
  /** Headers removed from the upstream request. */
  remove: z.array(headerName).default([]),
});

export const TlsSchema = z.strictObject({
  /** PEM file with extra CA certificates to trust for this upstream. */
  caFile: z.string().optional(),
  /** Verify the upstream certificate. Default true; turning it off is logged at startup. */
  rejectUnauthorized: z.boolean().default(true),
  /** SNI / certificate name to expect, when it differs from the URL's host. */
  servername: z.string().optional(),
});

export const UpstreamSchema = z.strictObject({
  /** Origin (and optional base path) requests go to, e.g. https://api.openai.com. */
  url: httpUrl,
  tls: TlsSchema.prefault({}),
  /** Most concurrent connections to this upstream. Default 256. */
  connections: positiveInt.default(256),
});

export const MatchSchema = z
  .strictObject({
    /**
     * Base-URL mode: origin-form requests whose path starts with this prefix (e.g. `/openai`) take this route.
     * The prefix is stripped unless `stripPrefix: false`.
     */
    pathPrefix: z
      .string()
      .regex(/^\/[^?#]*$/, 'must start with "/" and have no query')
      .optional(),
    /**
     * Proxy mode (HTTP_PROXY / HTTPS_PROXY): destinations this route serves, `host` or `host:port`
     * (`api.openai.com`, `tools.internal:8443`, `[::1]:9000`). A host without a port allows 80 and 443. Absolute-form
     * requests and CONNECT tunnels reach a route only on a listed host and port; spellings of one address
     * (`127.1`, `[::ffff:127.0.0.1]`) are normalized before they are compared.
     */
    hosts: z
      .array(
        z.string().superRefine((s, ctx) => {
          const parsed = parseHostEntry(s);
          if (typeof parsed === 'string') ctx.addIssue({ code: 'custom', message: parsed });
        }),
      )
      .optional(),
    /** Proxy mode: only absolute-form requests whose path starts with this take the route. Default `/`. */
    hostPathPrefix: z.string().regex(/^\//, 'must start with "/"').default('/'),
    /**
     * What a CONNECT tunnel to one of `hosts` gets. `intercept` (default): Fusebox serves the requests inside it
     * (TLS terminated with a leaf from the pod CA, or plain HTTP), so every policy applies. `tunnel`: bytes are
     * spliced end to end, for certificate-pinned clients or mutual TLS to the destination; no cap, credential,
     * retry or usage meter can apply then.
     */
    connect: z.enum(['intercept', 'tunnel']).default('intercept'),
    /** Replaced by ports in `hosts` entries. */
    connectPorts: z
      .unknown()
      .refine((v) => v === undefined, 'was replaced by ports in match.hosts: write "host:8443"; a host without a port allows 80 and 443')
      .optional(),
  })
  .refine((m) => m.pathPrefix !== undefined || (m.hosts !== undefined && m.hosts.length > 0), {
    message: 'needs `pathPrefix` (base-URL mode) or `hosts` (proxy mode), or both',
  });

export const RetrySchema = z.strictObject({
  /** Default true. */
  enabled: z.boolean().default(true),
  /** Retries after the first attempt. Default 3 (4 attempts). */
  maxRetries: z.number().int().min(0).max(10).default(3),
  /** Backoff base, ms: attempt n waits random(0, min(capMs, baseMs·2^n)). Default 500. */
  baseMs: ms(500),
  /** Backoff cap, ms. Default 30000. */
  capMs: ms(30_000),
  /** Longest Retry-After (or x-ratelimit-reset) Fusebox will wait, ms; longer → no retry. Default 60000. */
  retryAfterMaxMs: ms(60_000),
  /** Statuses that are retried. Default [429, 502, 503, 504]. 500 is governed by `maxRetriesOn500`. */
  retryableStatuses: z.array(httpStatus).default([429, 502, 503, 504]),
  /** Retries allowed for a 500 (often a deterministic bug upstream). Default 1. */
  maxRetriesOn500: z.number().int().min(0).max(10).default(1),
  /** Retry budget: retries may add at most this percent of recent requests. Default 20. */
  budgetPercent: percent.default(20),
  /** Retry budget floor: retries per second always allowed, accrued per second with a burst of one second's worth. Default 3 (Envoy's min_retry_concurrency). */
  minRetriesPerSecond: z.number().nonnegative().default(3),
  /** Retry budget window, ms: how long a call's deposit (budgetPercent of a retry) lasts. Default 10000 (Linkerd's ttl). */
  budgetWindowMs: ms(10_000),
  /** Request bodies up to this size are buffered so they can be replayed; larger ones stream and are never retried. Default 1 MiB. */
  bufferBytes: z.number().int().nonnegative().default(1024 * 1024),
});

export const BreakerSchema = z.strictObject({
  /** Default true. */
  enabled: z.boolean().default(true),
  /**
   * What one breaker guards. `route` (default), `upstream` (per fallback target), `model` (per `model` in the JSON
   * body), `tool` (per MCP tool name; the default for `provider: mcp`).
   */
  keyBy: z.enum(['route', 'upstream', 'model', 'tool']).optional(),
  /** Opens when failures reach this percent of calls in the window... Default 50. */
  errorRatePercent: percent.default(50),
  /** ...over this rolling window, ms. Default 60000. */
  windowMs: ms(60_000),
  /** ...once the window holds at least this many calls. Default 20. */
  minCalls: z.number().int().min(1).default(20),
  /** Or opens after this many failures in a row. Default 5. */
  consecutiveFailures: z.number().int().min(1).default(5),
  /** Time open before one probe is let through, ms. Default 30000. */
  resetMs: ms(30_000),
  /** Random spread added to resetMs so a fleet does not probe in lockstep, percent. Default 20. */
  resetJitterPercent: percent.default(20),
  /** A call slower than this counts as a breaker failure even if it succeeded, ms. Unset: never. */
  slowCallMs: z.number().int().positive().optional(),
  /** Most breakers kept for this route (LRU). Default 1000. */
  maxKeys: positiveInt.default(1000),
});

/** A step's name: its `name`, else `<type>-<index>` (shown in `x-fusebox-fallback` and the `step` label). */
export const fallbackStepName = (step: { type: string; name?: string | undefined }, index: number): string => step.name ?? `${step.type}-${index}`;

const fallbackCommon = {
  /** Step name: shown in `x-fusebox-fallback` and the `step` metric label. */
  name: routeName.optional(),
};

export const FallbackStepSchema = z.discriminatedUnion('type', [
  z.strictObject({
    type: z.literal('upstream'),
    ...fallbackCommon,
    url: httpUrl,
    tls: TlsSchema.prefault({}),
    credential: CredentialSchema.optional(),
    /** Replace `model` in the JSON request body, e.g. gpt-4o → gpt-4o-mini. */
    model: z.string().min(1).optional(),
    headers: HeaderRulesSchema.prefault({}),
  }),
  z.strictObject({
    type: z.literal('route'),
    ...fallbackCommon,
    /** Name of another route; its own pipeline (breaker, retries, credential) runs. */
    route: routeName,
    /** Replace `model` in the JSON request body. */
    model: z.string().min(1).optional(),
  }),
  z.strictObject({
    type: z.literal('lastGood'),
    ...fallbackCommon,
  }),
  z.strictObject({
    type: z.literal('static'),
    ...fallbackCommon,
    status: httpStatus.default(200),
    body: z.unknown(),
    headers: z.record(headerName, z.string()).default({}),
  }),
]);

export const LastGoodSchema = z.strictObject({
  /** Remember the last successful answer per (method, path, body) for the `lastGood` fallback step. Default false. */
  enabled: z.boolean().default(false),
  /** How long a remembered answer may be served, ms. Default 300000. */
  ttlMs: ms(300_000),
  /** Most answers remembered for this route. Default 1000. */
  maxEntries: positiveInt.default(1000),
  /** Largest answer remembered, bytes. Default 1 MiB. */
  maxBodyBytes: positiveInt.default(1024 * 1024),
  /** All remembered answers of this route together, bytes (least recently used go first). Default 64 MiB. */
  maxTotalBytes: positiveInt.default(64 * 1024 * 1024),
  /** Also remember streamed (SSE) answers and answers to non-idempotent tool calls. Default false. */
  includeUnsafe: z.boolean().default(false),
});

export const FaultsSchema = z.strictObject({
  /** Default false: no fault is ever injected. */
  enabled: z.boolean().default(false),
  abort: z.strictObject({ percent: percent, status: httpStatus.default(503) }).optional(),
  delay: z.strictObject({ percent: percent, ms: positiveInt }).optional(),
  reset: z.strictObject({ percent: percent }).optional(),
  /** Let the `x-fusebox-fault` request header (`abort=503`, `delay=200`, `reset`) trigger faults. Default false. */
  headerControl: z.boolean().default(false),
}).refine((f) => !f.headerControl || f.enabled, {
  message: 'headerControl needs enabled: true (with faults off, the x-fusebox-fault header would be silently ignored)',
  path: ['headerControl'],
});

export const PriceSchema = z.strictObject({
  /** USD per 1M input tokens. */
  inputPerM: z.number().nonnegative(),
  /** USD per 1M output tokens. */
  outputPerM: z.number().nonnegative(),
  /** USD per 1M cached input tokens. Default: the input price. */
  cachedInputPerM: z.number().nonnegative().optional(),
  /** USD per 1M prompt tokens written to the cache, 5-minute TTL (Anthropic). Default: 1.25 × the input price. */
  cacheWritePerM: z.number().nonnegative().optional(),
  /** USD per 1M prompt tokens written to the cache, 1-hour TTL (Anthropic). Default: 2 × the input price. */
  cacheWrite1hPerM: z.number().nonnegative().optional(),
});

export const RouteBudgetSchema = z.strictObject({
  /** Refuse a single request whose estimated cost is above this, USD. */
  maxRequestUsd: z.number().positive().optional(),
  /** Refuse a single request whose estimated tokens (prompt + max output) are above this. */
  maxRequestTokens: positiveInt.optional(),
  /** Daily cap for this route (all agents sharing the store), USD, UTC day. */
  dailyUsd: z.number().positive().optional(),
  /** `local` (default): keep enforcing on a local slice and replay charges later. `closed`: 503 BUDGET_STORE_UNAVAILABLE. */
  storeUnavailable: z.enum(['local', 'closed']).default('local'),
  /** Ask OpenAI for usage in streams (`stream_options.include_usage`). Default true for OpenAI routes. */
  includeStreamUsage: z.boolean().default(true),
  /** Output tokens assumed when the request sets no max, for the estimate. Default 1024. */
  defaultMaxOutputTokens: positiveInt.default(1024),
  /**
   * How an OpenAI route counts prompt tokens for the estimate (the real usage settles it). `bytes` (default):
   * ceil(UTF-8 bytes of the prompt text / 2), no tokenizer in memory: ~1.9× the o200k count for English prose and
   * code, above it for JSON and CJK; below it (at worst half) only for text of random identifiers or digit lists.
   * `o200k`: OpenAI's tokenizer, exact for GPT-4o and later, at ~45 MB of memory and ~0.4 s at startup.
   */
  tokenizer: z.enum(['bytes', 'o200k']).default('bytes'),
  /** Per-model prices overriding config/prices.yaml for this route. */
  prices: z.record(z.string(), PriceSchema).default({}),
});

const sloAction = z.enum(['alert', 'throttle', 'degrade', 'shed']);

export const SloSchema = z.strictObject({
  /** Default true: every route has SLOs; counters cost one batched store write per flush interval. */
  enabled: z.boolean().default(true),
  /** Share of calls that must not fail upstream (5xx, timeouts, resets, broken streams), percent. Default 99.5. */
  availability: z.strictObject({ objectivePercent: percent.default(99.5) }).prefault({}),
  /** Share of calls that must finish under `thresholdMs`. Defaults 5000 ms, 99 %. */
  latency: z.strictObject({ thresholdMs: positiveInt.default(5_000), objectivePercent: percent.default(99) }).prefault({}),
  /** Share of calls that must cost under `thresholdUsd`. Defaults $0.15, 98 %. */
  cost: z.strictObject({ thresholdUsd: z.number().positive().default(0.15), objectivePercent: percent.default(98) }).prefault({}),
  /** SLO window, days. Default 30. */
  windowDays: z.number().int().min(1).max(90).default(30),
  /** Fewest events in a window before a burn rate or budget is trusted. Default 10. */
  minEvents: positiveInt.default(10),
  /** What the sidecar does when an error budget is spent: alert (default), throttle, degrade or shed. */
  onBudgetExhausted: sloAction.default('alert'),
  /** What it does while the 1 h / 5 min burn rate is over 14.4×: alert (default), throttle, degrade or shed. */
  onFastBurn: sloAction.default('alert'),
  /** `throttle`: calls per second admitted. Default 1. */
  throttleRps: z.number().positive().default(1),
  /** `degrade`: index of the fallback step the chain starts at. Default 0 (the first fallback step). */
  degradeToStep: z.number().int().min(0).default(0),
});

export const RouteSchema = z.strictObject({
  /** Unique route name; a metric label. */
  name: routeName,
  /** API family, for usage parsing and per-tool breakers: openai, anthropic, mcp or none (default). */
  provider: z.enum(['openai', 'anthropic', 'mcp', 'none']).default('none'),
  match: MatchSchema,
  upstream: UpstreamSchema,
  /** Strip `match.pathPrefix` before forwarding. Default true. */
  stripPrefix: z.boolean().default(true),
  timeouts: TimeoutsSchema.prefault({}),
  headers: HeaderRulesSchema.prefault({}),
  credential: CredentialSchema.optional(),
  /**
   * The upstream treats repeated requests as harmless, so POST/PATCH may be retried after they were sent.
   * Default: true for LLM providers (openai, anthropic: a 429/5xx was not processed), false otherwise.
   */
  idempotent: z.boolean().optional(),
  retry: RetrySchema.prefault({}),
  breaker: BreakerSchema.prefault({}),
  /** Ordered steps tried when the primary fails (breaker open, retries exhausted, or a `fallbackOn` status). */
  fallback: z.array(FallbackStepSchema).default([]),
  /** Final upstream statuses that also start the fallback chain (e.g. [400] for context-length errors). */
  fallbackOn: z.array(httpStatus).default([]),
  lastGood: LastGoodSchema.prefault({}),
  faults: FaultsSchema.prefault({}),
  budget: RouteBudgetSchema.prefault({}),
  slo: SloSchema.prefault({}),
});

export const StoreSchema = z.strictObject({
  /** `memory` (default, one sidecar) or `redis` (a fleet shares budgets and counters). */
  kind: z.enum(['memory', 'redis']).default('memory'),
  /**
   * Redis URL, required for `redis`: one Redis (`redis://redis.fusebox:6379/0`, `rediss://` for TLS) or a Redis Cluster
   * given by seed nodes (`redis+cluster://10.0.0.1:6379,10.0.0.2:6379`, `rediss+cluster://` for TLS). A password goes
   * in the URL (`redis://:${REDIS_PASSWORD}@host:6379`); `${VAR}` is expanded and the password is never logged.
   */
  url: z.string().optional(),
  /**
   * TLS to Redis, for a `rediss://` or `rediss+cluster://` URL: a private CA (an in-cluster Redis whose certificate
   * cert-manager issued) and a client certificate (Redis asks for one by default: `tls-auth-clients yes`). Files
   * are read once at start; relative paths from the config file's folder.
   */
  tls: z
    .strictObject({
      /** PEM file of the CA certificates to trust for Redis (instead of Node's public CAs). */
      caFile: z.string().optional(),
      /** PEM client certificate, with `keyFile`, for Redis's `tls-auth-clients yes`. */
      certFile: z.string().optional(),
      /** PEM private key of `certFile`. */
      keyFile: z.string().optional(),
      /** Verify Redis's certificate. Default true; turning it off is logged at startup. */
      rejectUnauthorized: z.boolean().default(true),
      /** Name to expect on Redis's certificate (and SNI), when it differs from the URL's host. */
      servername: z.string().optional(),
    })
    .optional(),
  /** Prefix of every key Fusebox writes. Default `fusebox`. */
  keyPrefix: z.string().regex(/^[A-Za-z0-9:_-]+$/).default('fusebox'),
  /** Per-command timeout, ms. Default 250. */
  timeoutMs: positiveInt.default(250),
  /** Memory store: file its counters are saved to, so a restart keeps the spend. */
  snapshotPath: z.string().optional(),
  /** Memory store: how often the snapshot is written, ms. Default 5000. */
  snapshotIntervalMs: positiveInt.default(5_000),
  /**
   * Redis store: most charges kept while Redis is unreachable, to be replayed when it returns. Default 100000
   * (~100 s at 1,000 calls/s, ~30 min at 50/s; ~40 MB). When full the oldest is dropped, with a log line and
   * `fusebox_store_journal_dropped_total`.
   */
  journalMaxEntries: positiveInt.default(100_000),
  /**
   * Redis store: how long a commit may wait to ride the next reserve of the same agent (one script call and one round
   * trip for both), ms; sent alone after this long, or at shutdown. Default 1000; 0: every commit is sent at once.
   * No effect on a sidecar's calls since every window is leased (README, "Leases"): they run no per-call script.
   * Meanwhile the call's hold stays counted (a cap can only refuse more), its spend shows in Redis (other sidecars,
   * `/admin/budgets`, the spend gauges) up to this much later, and the commits waiting when a sidecar is killed
   * without a drain count at their estimate (their holds expire and are presumed spent). At most 30000: holds last a
   * route's totalMs plus a minute.
   */
  commitDelayMs: z.number().int().min(0).max(30_000).default(1_000),
  /**
   * How caps are shared by the sidecars (every window: route, fleet, agent, workflow; USD, tokens, calls): each holds
   * a leased slice (see README, "Leases").
   */
  lease: z
    .strictObject({
      /** How long a slice is this sidecar's, ms. Past it the sidecar admits nothing on it until renewed. Default 30000. */
      ttlMs: positiveInt.default(30_000),
      /** An expired slice is returned to the pool only this long after its expiry (covers clock skew), ms. Default 5000. */
      graceMs: positiveInt.default(5_000),
      /** Slice granted to a sidecar with no spend rate known yet, and the least granted after (unless a fair share of what is left is less), USD. Default 0.05. */
      minSliceUsd: z.number().nonnegative().default(0.05),
      /** A slice is renewed in the background once less than this percent of it is left. Default 25. */
      renewBelowPercent: percent.default(25),
      /**
       * USD a sidecar may admit per outage on a cap it holds no valid slice of (e.g. it started during the
       * outage). Default 0: nothing.
       */
      allowanceUsd: z.number().nonnegative().default(0),
      /**
       * Spend on leased windows is reported at most this often while there is some (slice renewals report it too),
       * ms. Default with `kind: redis` 20000: each report is a script call on the window's slot (five leased windows
       * per sidecar: at 10 s they were 0.5 script calls per call of a fleet calling once a second per sidecar, most of
       * its Redis CPU); other sidecars' views of that spend (`/admin/budgets`, spend gauges, alerts) lag by this much.
       * Caps do not: each sidecar spends only its slice. Default with `kind: memory` 1000 (every background tick): a
       * report is a function call there, and it is what puts the spend in the snapshot file and raises the alerts.
       */
      reportIntervalMs: positiveInt.optional(),
    })
    .prefault({}),
});

export const BudgetsSchema = z.strictObject({
  /**
   * Caps for this agent (the `agent.id`), UTC windows. Served from leased slices like the fleet's (README, "Leases"):
   * a call runs no store script for them.
   */
  agent: z
    .strictObject({
      dailyUsd: z.number().positive().optional(),
      monthlyUsd: z.number().positive().optional(),
      dailyTokens: positiveInt.optional(),
    })
    .prefault({}),
  /** Caps per workflow (`x-fusebox-workflow` header), served from leased slices (README, "Leases"): `maxCalls` holds exactly fleet-wide. */
  workflow: z
    .strictObject({
      usd: z.number().positive().optional(),
      tokens: positiveInt.optional(),
      /** Most calls (tool calls included) one workflow may make: the agent-loop stopper. */
      maxCalls: positiveInt.optional(),
      /** Counters of a workflow unseen this long expire, ms. Default 86400000. */
      idleTtlMs: positiveInt.default(86_400_000),
    })
    .prefault({}),
  /** Every agent sharing the store together, UTC day and month. Enforced through leased slices (README, "Leases"). */
  fleet: z.strictObject({ dailyUsd: z.number().positive().optional(), monthlyUsd: z.number().positive().optional() }).prefault({}),
  /** Percent of a cap at which one alert line and metric fire per window. Default 75. */
  alertPercent: percent.default(75),
  /** Price table file, relative to the config file. Default: the table shipped with Fusebox (config/prices.yaml). */
  pricesFile: z.string().optional(),
  /** Price charged for a model missing from the table (never zero). */
  defaultPrice: PriceSchema.default({ inputPerM: 15, outputPerM: 75 }),
});

export const LimitsSchema = z.strictObject({
  /** Largest request body accepted, bytes. Default 32 MiB. Over → 413 BODY_TOO_LARGE. */
  maxRequestBodyBytes: positiveInt.default(32 * 1024 * 1024),
  /** Largest request header section, bytes. Default 32768. Over → 431 HEADERS_TOO_LARGE. */
  maxHeaderBytes: z.number().int().min(1024).default(32 * 1024),
});

export const InterceptSchema = z
  .strictObject({
    ca: z
      .strictObject({
        /**
         * PEM certificate of the CA leaves are signed with, instead of one generated at startup: for a fleet that
         * wants one CA (mounted from a Secret). Needs `keyFile`. Relative paths resolve from the config file.
         */
        certFile: z.string().min(1).optional(),
        /** PEM (PKCS#8) private key of `certFile`. */
        keyFile: z.string().min(1).optional(),
        /** Validity of the CA generated at startup (its key lives in memory only), days. Default 365. */
        validityDays: positiveInt.default(365),
        /**
         * Folder the CA certificate (`ca.crt`, for NODE_EXTRA_CA_CERTS) and a bundle of the system roots plus the CA
         * (`ca-bundle.crt`, for SSL_CERT_FILE and friends) are written to before /readyz turns ready. The
         * environment variable FUSEBOX_CA_DIR (set by `fusebox inject`) takes precedence. Unset: nothing is written.
         */
        outDir: z.string().min(1).optional(),
        /**
         * Folder on a memory-backed volume only the sidecar mounts, where a generated CA's key and certificate are kept
         * so a restarted sidecar serves the CA its agents already trust. The environment variable FUSEBOX_CA_KEEP_DIR
         * (set by `fusebox inject`) takes precedence. Unset: a restart makes a new CA.
         */
        keepDir: z.string().min(1).optional(),
        /** A CA with fewer days left than this is logged at startup and daily, so it is replaced before it expires. Default 14. */
        expiryWarningDays: z.number().int().min(0).default(14),
      })
      .prefault({}),
    /** Lifetime of a leaf certificate, hours. Default 24. */
    leafValidityHours: z.number().int().min(1).max(24 * 7).default(24),
    /** Most leaf certificates kept minted (least recently used go first). Default 1000. */
    maxLeaves: positiveInt.default(1000),
    /**
     * How long a new tunnel may take to send its first byte, and then to finish its TLS handshake, ms. Default 10000.
     * A client that rejects the certificate without a TLS alert (Node's) is counted when this runs out.
     */
    handshakeTimeoutMs: positiveInt.default(10_000),
  })
  .refine((i) => (i.ca.certFile === undefined) === (i.ca.keyFile === undefined), {
    message: 'ca.certFile and ca.keyFile go together: give both (a CA of your own) or neither (one generated at startup)',
    path: ['ca'],
  });

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null;

/**
 * Whether the value at `path` came out of parsing with its declared type, given the issues found so far. An issue
 * inside the value breaks it; one on an ancestor only when the ancestor is not even the right kind of container.
 * Unknown keys and failed refinements leave a value typed.
 */
const typedAt = (issues: readonly z.core.$ZodRawIssue[], path: readonly PropertyKey[]): boolean =>
  !issues.some((issue) => {
    if (issue.code === 'custom' || issue.code === 'unrecognized_keys') return false;
    const at = issue.path ?? [];
    for (let k = 0; k < Math.min(at.length, path.length); k++) if (at[k] !== path[k]) return false;
    return at.length >= path.length || issue.code === 'invalid_type' || issue.code === 'invalid_union';
  });

/** `degrade` starts the fallback chain at `degradeToStep`: without that step it would silently do nothing. */
const checkDegrade = (slo: SloConfig, steps: number, path: PropertyKey[], ctx: z.core.$RefinementCtx): void => {
  const triggers = (['onBudgetExhausted', 'onFastBurn'] as const).filter((k) => slo[k] === 'degrade');
  if (triggers.length === 0) return;
  if (steps === 0) {
    for (const k of triggers) {
      ctx.addIssue({
        code: 'custom',
        path: [...path, k],
        message: '"degrade" starts the fallback chain at step degradeToStep, but this route has no `fallback` steps: add some (e.g. a cheaper model) or choose alert, throttle or shed',
      });
    }
  } else if (slo.degradeToStep >= steps) {
    ctx.addIssue({
      code: 'custom',
      path: [...path, 'degradeToStep'],
      message: `is ${slo.degradeToStep}, but the route has ${steps} fallback step${steps === 1 ? '' : 's'} (degradeToStep counts from 0, so at most ${steps - 1})`,
    });
  }
};

export const ConfigSchema = z
  .strictObject({
    /** Config format version. Must be 1. */
    version: z.literal(1).default(1),
    agent: z
      .strictObject({
        /** This agent's identity: budget scope and log field. `${POD_NAME}` is expanded. Default `local`. */
        id: z.string().min(1).default('local'),
      })
      .prefault({}),
    listen: z
      .strictObject({
        proxy: ListenSchema.prefault({}),
        admin: AdminSchema.prefault({}),
      })
      .prefault({}),
    limits: LimitsSchema.prefault({}),
    log: z
      .strictObject({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
      })
      .prefault({}),
    shutdown: z
      .strictObject({
        /** How long in-flight calls and streams may run after SIGTERM, ms. Default 25000 (under k8s' 30 s). */
        graceMs: ms(25_000),
      })
      .prefault({}),
    store: StoreSchema.prefault({}),
    sloCounters: z
      .strictObject({
        /**
         * How often SLO counts are written to the shared store, batched, ms. Default 10000: each flush is a script
         * call on the route's slot (at 5 s, 0.2 per call of a fleet calling once a second per sidecar; at 1 s, a third
         * of its script calls), and the shortest SLO window is 5 minutes, so the assessment (every 5 s) seeing counts
         * up to 10 s late moves a burn rate by ~3 % of that window at most.
         */
        flushIntervalMs: positiveInt.default(10_000),
      })
      .prefault({}),
    budgets: BudgetsSchema.prefault({}),
    /** TLS interception of CONNECT tunnels to routed hosts (routes with `match.connect: intercept`, the default). */
    intercept: InterceptSchema.prefault({}),
    routes: z.array(RouteSchema).min(1, 'needs at least one route: Fusebox forwards only to allow-listed destinations'),
  })
  .superRefine(
    (cfg, ctx) => {
      // This runs even when other fields failed (see `when` below), so a dangling reference is reported in the same
      // pass as a misspelled key. A field that failed holds its raw input: each check reads only fields `typed` vouches for.
      const typed = (...path: PropertyKey[]) => typedAt(ctx.issues, path);
      // Lists are read item by item: one bad route (or step) must not hide the references of the others.
      const routes = Array.isArray(cfg.routes) ? cfg.routes : [];
      const seen = new Map<string, number>();
      routes.forEach((r, i) => {
        if (!typed('routes', i, 'name')) return;
        const first = seen.get(r.name);
        if (first !== undefined) {
          ctx.addIssue({ code: 'custom', path: ['routes', i, 'name'], message: `duplicate route name "${r.name}" (also routes[${first}])` });
        } else seen.set(r.name, i);
      });
      // A fallback to a route whose name breaks the naming rule is that route's problem (reported there), not a dangling reference.
      const named = new Set(routes.map((r) => (isObject(r) ? r.name : undefined)).filter((n) => typeof n === 'string'));
      const prefixes = new Map<string, number>();
      routes.forEach((r, i) => {
        if (!typed('routes', i, 'match', 'pathPrefix')) return;
        const p = r.match.pathPrefix;
        if (p === undefined) return;
        const other = prefixes.get(p);
        if (other !== undefined) {
          ctx.addIssue({ code: 'custom', path: ['routes', i, 'match', 'pathPrefix'], message: `"${p}" is already taken by routes[${other}]` });
        } else prefixes.set(p, i);
      });
      // Proxy mode: one host:port (under one hostPathPrefix) is one route; a second would never be reached. And a
      // tunnel is intercepted or spliced as a whole, before any path is seen, so routes sharing a destination agree.
      const destinations = new Map<string, { index: number; connect: string }>();
      routes.forEach((r, i) => {
        if (!typed('routes', i, 'match')) return;
        (r.match.hosts ?? []).forEach((text, j) => {
          const entry = parseHostEntry(text);
          if (typeof entry === 'string') return;
          for (const port of entry.ports) {
            const at = `${entry.host}:${port}`;
            const pathKey = `${at}${r.match.hostPathPrefix}`;
            const same = destinations.get(pathKey);
            const nameOf = (k: number) => (isObject(routes[k]) ? `"${String(routes[k].name)}"` : '?');
            if (same !== undefined && same.index !== i) {
              ctx.addIssue({ code: 'custom', path: ['routes', i, 'match', 'hosts', j], message: `${at} (hostPathPrefix ${r.match.hostPathPrefix}) is already served by routes[${same.index}] (name ${nameOf(same.index)}): this route would never be reached` });
            } else destinations.set(pathKey, { index: i, connect: r.match.connect });
            const other = destinations.get(at);
            if (other !== undefined && other.index !== i && other.connect !== r.match.connect) {
              ctx.addIssue({ code: 'custom', path: ['routes', i, 'match', 'connect'], message: `${at} is also listed by routes[${other.index}] (name ${nameOf(other.index)}) with connect: ${other.connect}; routes sharing a host and port must agree` });
            } else if (other === undefined) destinations.set(at, { index: i, connect: r.match.connect });
          }
        });
      });
      routes.forEach((r, i) => {
        if (!isObject(r)) return;
        const steps = Array.isArray(r.fallback) ? r.fallback : [];
        // Names label metrics and the x-fusebox-fallback header: two steps under one name could not be told apart.
        const stepNames = new Map<string, number>();
        steps.forEach((step, j) => {
          if (!typed('routes', i, 'fallback', j)) return;
          const name = fallbackStepName(step, j);
          const other = stepNames.get(name);
          if (other !== undefined) {
            ctx.addIssue({ code: 'custom', path: ['routes', i, 'fallback', j, 'name'], message: `step name "${name}" is already used by fallback[${other}]` });
          } else stepNames.set(name, j);
        });
        steps.forEach((step, j) => {
          if (!typed('routes', i, 'fallback', j)) return;
          if (step.type === 'route' && !named.has(step.route)) {
            ctx.addIssue({ code: 'custom', path: ['routes', i, 'fallback', j, 'route'], message: `no route named "${step.route}" (routes: ${[...named].join(', ')})` });
          }
          if (step.type === 'route' && step.route === r.name) {
            ctx.addIssue({ code: 'custom', path: ['routes', i, 'fallback', j, 'route'], message: 'a route cannot fall back to itself' });
          }
          if (step.type === 'lastGood' && typed('routes', i, 'lastGood', 'enabled') && !r.lastGood.enabled) {
            ctx.addIssue({ code: 'custom', path: ['routes', i, 'fallback', j], message: 'a lastGood step needs `lastGood.enabled: true` on the route' });
          }
        });
        if (typed('routes', i, 'retry', 'capMs') && typed('routes', i, 'retry', 'baseMs') && r.retry.capMs < r.retry.baseMs) {
          ctx.addIssue({ code: 'custom', path: ['routes', i, 'retry', 'capMs'], message: `must be ≥ baseMs (${r.retry.baseMs})` });
        }
        if (typed('routes', i, 'slo') && r.slo.enabled) checkDegrade(r.slo, steps.length, ['routes', i, 'slo'], ctx);
        if (typed('routes', i, 'budget', 'tokenizer') && typed('routes', i, 'provider') && r.budget.tokenizer === 'o200k' && r.provider !== 'openai') {
          ctx.addIssue({
            code: 'custom',
            path: ['routes', i, 'budget', 'tokenizer'],
            message: `o200k counts OpenAI tokens, but this route's provider is "${r.provider}": remove it (other providers' prompts are estimated from their bytes)`,
          });
        }
      });
      if (typed('store') && cfg.store.kind === 'redis' && !cfg.store.url) {
        ctx.addIssue({ code: 'custom', path: ['store', 'url'], message: 'is required when store.kind is "redis" (e.g. redis://127.0.0.1:6379)' });
      } else if (typed('store') && cfg.store.kind === 'redis' && cfg.store.url) {
        try {
          const target = parseRedisUrl(cfg.store.url);
          if (cfg.store.tls !== undefined && !target.tls) {
            ctx.addIssue({ code: 'custom', path: ['store', 'tls'], message: 'is set but store.url does not use TLS: use rediss:// (or rediss+cluster://), or remove store.tls' });
          }
        } catch (err) {
          if (!(err instanceof RedisUrlError)) throw err;
          ctx.addIssue({ code: 'custom', path: ['store', 'url'], message: err.message });
        }
      }
      if (typed('store') && cfg.store.tls !== undefined && (cfg.store.tls.certFile === undefined) !== (cfg.store.tls.keyFile === undefined)) {
        ctx.addIssue({ code: 'custom', path: ['store', 'tls'], message: 'certFile and keyFile go together: a client certificate needs its key' });
      }
    },
    { when: () => true },
  );

export type Config = z.infer<typeof ConfigSchema>;
export type RouteConfig = z.infer<typeof RouteSchema>;
export type RetryConfig = z.infer<typeof RetrySchema>;
export type BreakerConfig = z.infer<typeof BreakerSchema>;
export type FallbackStep = z.infer<typeof FallbackStepSchema>;
export type FaultsConfig = z.infer<typeof FaultsSchema>;
export type Price = z.infer<typeof PriceSchema>;
export type StoreConfig = z.infer<typeof StoreSchema>;
export type BudgetsConfig = z.infer<typeof BudgetsSchema>;
export type TimeoutsConfig = z.infer<typeof TimeoutsSchema>;
export type CredentialConfig = z.infer<typeof CredentialSchema>;
export type SloConfig = z.infer<typeof SloSchema>;
export type TlsConfig = z.infer<typeof TlsSchema>;
export type StoreTlsConfig = NonNullable<z.infer<typeof StoreSchema>['tls']>;
export type InterceptConfig = z.infer<typeof InterceptSchema>;
