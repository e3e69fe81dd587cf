import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * Every metric Fusebox exports, declared in one list. Labels are bounded: route names and step names come from
 * the config, models from the price table (unknown → `other`), classes and outcomes from fixed sets. Never a
 * workflow id, a user, a path or a key.
 */
export const createMetrics = (opts: { defaultMetrics?: boolean } = {}) => {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix: 'fusebox_' });

  const m = {
    registry,

    // --- core (every call) ---
    requests: new Counter({
      name: 'fusebox_requests_total',
      help:
        'Calls answered, by route, method, status class, outcome (success, upstream_error, failed, refused, aborted, stream_broken) ' +
        'and mode (base-url: SDK base URL; proxy: HTTP_PROXY absolute-form; intercept: inside a CONNECT tunnel Fusebox serves).',
      labelNames: ['route', 'method', 'code_class', 'outcome', 'mode'] as const,
      registers: [registry],
    }),
    requestDuration: new Histogram({
      name: 'fusebox_request_duration_seconds',
      help: 'Time from request received to last response byte sent, through Fusebox (retries and fallbacks included).',
      labelNames: ['route'] as const,
      // LLM calls run from 100 ms to minutes; tool calls from 1 ms.
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600],
      registers: [registry],
    }),
    upstreamAttempts: new Counter({
      name: 'fusebox_upstream_attempts_total',
      help: 'Requests sent upstream (each retry and fallback hop is one), by route, upstream target and result (status class or error code).',
      labelNames: ['route', 'upstream', 'result'] as const,
      registers: [registry],
    }),
    inflight: new Gauge({
      name: 'fusebox_inflight_requests',
      help: 'Calls in progress (until their last response byte).',
      labelNames: ['route'] as const,
      registers: [registry],
    }),
    requestBytes: new Counter({
      name: 'fusebox_request_bytes_total',
      help: 'Request body bytes received from agents.',
      labelNames: ['route'] as const,
      registers: [registry],
    }),
    responseBytes: new Counter({
      name: 'fusebox_response_bytes_total',
      help: 'Response body bytes sent to agents.',
      labelNames: ['route'] as const,
      registers: [registry],
    }),
    refusals: new Counter({
      name: 'fusebox_refusals_total',
      help: 'Requests Fusebox answered itself without reaching a route (no route, not allowed, too large, loop).',
      labelNames: ['code'] as const,
      registers: [registry],
    }),

    // --- CONNECT tunnels (HTTPS_PROXY) ---
    tunnels: new Counter({
      name: 'fusebox_tunnels_total',
      help:
        'CONNECT tunnels, by route, mode (intercept: Fusebox serves the requests inside; tunnel: bytes spliced end to end) and outcome ' +
        '(opened, refused, connect_failed, error, tls_failed, handshake_timeout).',
      labelNames: ['route', 'mode', 'outcome'] as const,
      registers: [registry],
    }),
    interceptTlsFailures: new Counter({
      name: 'fusebox_intercept_tls_failures_total',
      help:
        'TLS handshakes inside intercepted tunnels that failed, by route and reason (client_rejected_certificate: the client does not trust ' +
        'the pod CA or pins certificates, said by a TLS alert; closed_without_request: closed right after the handshake, how a Node client ' +
        'that rejects the certificate looks; sni_mismatch; not_allowed; tls_error).',
      labelNames: ['route', 'reason'] as const,
      registers: [registry],
    }),
    interceptLeafMintSeconds: new Histogram({
      name: 'fusebox_intercept_leaf_mint_seconds',
      help: 'Time to mint a leaf certificate for an intercepted host (once per host and leaf lifetime).',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1],
      registers: [registry],
    }),
    interceptCaExpiry: new Gauge({
      name: 'fusebox_intercept_ca_expiry_timestamp_seconds',
      help: 'When the pod CA used for interception expires (Unix time): alert well before it passes.',
      registers: [registry],
    }),
    tunnelConnectSeconds: new Histogram({
      name: 'fusebox_tunnel_connect_seconds',
      help: 'Time to open the upstream TCP connection of a CONNECT tunnel.',
      labelNames: ['route'] as const,
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    tunnelBytes: new Counter({
      name: 'fusebox_tunnel_bytes_total',
      help: 'Bytes carried by CONNECT tunnels, by direction (upstream = agent to destination).',
      labelNames: ['route', 'direction'] as const,
      registers: [registry],
    }),
    tunnelsOpen: new Gauge({
      name: 'fusebox_tunnels_open',
      help: 'CONNECT tunnels currently open.',
      labelNames: ['route'] as const,
      registers: [registry],
    }),

    // --- resilience ---
    retries: new Counter({
      name: 'fusebox_retries_total',
      help:
        'Retry decisions after a retryable failure, by route, reason (classifier reason: status_429, status_5xx, connect, reset, timeout...) ' +
        'and outcome (retried, budget_exhausted, deadline, retry_after_too_long, not_replayable, not_idempotent, limit_reached, circuit_open).',
      labelNames: ['route', 'reason', 'outcome'] as const,
      registers: [registry],
    }),
    breakerState: new Gauge({
      name: 'fusebox_breaker_state',
      help: 'Circuit breaker state: 0 closed, 1 half-open, 2 open (forced states map to 0 and 2). Keys are bounded by breaker.maxKeys; evicted keys are removed.',
      labelNames: ['route', 'key'] as const,
      registers: [registry],
    }),
    breakerForced: new Gauge({
      name: 'fusebox_breaker_forced',
      help: '1 while an operator override (POST /admin/breakers/open|close) holds this breaker, else 0: tells a breaker forced open from one that opened by itself.',
      labelNames: ['route', 'key'] as const,
      registers: [registry],
    }),
    breakerTransitions: new Counter({
      name: 'fusebox_breaker_transitions_total',
      help: 'Circuit breaker state changes, by route and new state (closed, open, half_open, forced_open, forced_closed).',
      labelNames: ['route', 'to'] as const,
      registers: [registry],
    }),
    breakerRejections: new Counter({
      name: 'fusebox_breaker_rejections_total',
      help: 'Calls refused by an open (or half-open, probe out) circuit breaker without contacting the upstream.',
      labelNames: ['route'] as const,
      registers: [registry],
    }),
    fallbacks: new Counter({
      name: 'fusebox_fallbacks_total',
      help: 'Answers served by a fallback step, by route, step name and why the chain ran (circuit_open, retries_exhausted, fallback_on).',
      labelNames: ['route', 'step', 'reason'] as const,
      registers: [registry],
    }),
    fallbackAttempts: new Counter({
      name: 'fusebox_fallback_attempts_total',
      help: 'Fallback steps tried, by route, step and outcome (success, failed, error, circuit_open, miss, not_replayable).',
      labelNames: ['route', 'step', 'outcome'] as const,
      registers: [registry],
    }),
    lastGood: new Counter({
      name: 'fusebox_last_good_total',
      help: 'Last-good answer cache events, by route and outcome (stored, served, miss).',
      labelNames: ['route', 'outcome'] as const,
      registers: [registry],
    }),
    faultsInjected: new Counter({
      name: 'fusebox_faults_injected_total',
      help: 'Faults injected on purpose (faults config or x-fusebox-fault header), by route and kind (abort, delay, reset).',
      labelNames: ['route', 'kind'] as const,
      registers: [registry],
    }),

    // --- budgets (tokens, cost, caps, store) ---
    tokens: new Counter({
      name: 'fusebox_tokens_total',
      help: 'Tokens used, read from LLM answers (or estimated from bytes when a stream broke off), by route, model (price-table id or "other") and type (input, cached_input, output, reasoning; reasoning is part of output).',
      labelNames: ['route', 'model', 'type'] as const,
      registers: [registry],
    }),
    cost: new Counter({
      name: 'fusebox_cost_usd_total',
      help: 'Money spent, USD, priced from the price table, by route and model.',
      labelNames: ['route', 'model'] as const,
      registers: [registry],
    }),
    usageEstimated: new Counter({
      name: 'fusebox_usage_estimated_total',
      help: 'Calls settled with an estimate because the answer reported no usage (stream cut by the agent or the upstream).',
      labelNames: ['route'] as const,
      registers: [registry],
    }),
    unknownModels: new Counter({
      name: 'fusebox_unknown_model_total',
      help: 'Calls to a model missing from the price table, charged at budgets.defaultPrice.',
      labelNames: ['route'] as const,
      registers: [registry],
    }),
    budgetSpent: new Gauge({
      name: 'fusebox_budget_spent_usd',
      help: 'Spend in the current window, USD, as the shared store counts it (fleet-wide for route and fleet scopes), by scope kind (agent, route, fleet), window (day, month) and route ("" for agent and fleet).',
      labelNames: ['scope_kind', 'window', 'route'] as const,
      registers: [registry],
    }),
    budgetLimit: new Gauge({
      name: 'fusebox_budget_limit_usd',
      help: 'Configured cap, USD, by scope kind, window and route ("" for agent and fleet). Absent when uncapped.',
      labelNames: ['scope_kind', 'window', 'route'] as const,
      registers: [registry],
    }),
    budgetRejections: new Counter({
      name: 'fusebox_budget_rejections_total',
      help: 'Calls refused before being sent, by scope kind (request, agent, workflow, route, fleet, global) and reason (BUDGET_EXCEEDED, CALL_LIMIT, KILLED, BUDGET_STORE_UNAVAILABLE).',
      labelNames: ['scope_kind', 'reason'] as const,
      registers: [registry],
    }),
    budgetAlerts: new Counter({
      name: 'fusebox_budget_alerts_total',
      help: 'A cap crossed budgets.alertPercent (once per scope window), by scope kind and metric (usd, tokens, calls).',
      labelNames: ['scope_kind', 'metric'] as const,
      registers: [registry],
    }),
    storeUp: new Gauge({
      name: 'fusebox_store_up',
      help: '1 while the budget store answers (always 1 for memory), 0 while Redis is unreachable and the local fallback or closed mode applies.',
      registers: [registry],
    }),
    storeSeconds: new Histogram({
      name: 'fusebox_store_operation_seconds',
      help: 'Budget store latency by operation (reserve, commit). A commit counts until it landed: with store.commitDelayMs, its wait to ride the next reserve is included.',
      labelNames: ['op'] as const,
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5],
      registers: [registry],
    }),
    storeErrors: new Counter({
      name: 'fusebox_store_errors_total',
      help:
        'Shared store commands that failed, by op (the Redis script or command group: fuseboxReserve, fuseboxSloApply, kills, sloRead...; reserve/commit/release when the budget layer itself saw the failure) and kind (connection, timeout, loading, oom, clusterdown, redirect, crossslot, noscript, reply, other).',
      labelNames: ['op', 'kind'] as const,
      registers: [registry],
    }),
    storeCommits: new Counter({
      name: 'fusebox_store_commits_total',
      help: 'Budget commits sent to Redis, by how: ridden (inside the next reserve of the same agent, within store.commitDelayMs: no round trip of their own) or alone (a commit script call: no reserve came in time, shutdown, a journal replay; commits queued for one agent share it).',
      labelNames: ['sent'] as const,
      registers: [registry],
    }),

    journalEntries: new Gauge({
      name: 'fusebox_store_journal_entries',
      help: 'Charges journaled while Redis is unreachable, waiting to be replayed (at most store.journalMaxEntries).',
      registers: [registry],
    }),
    journalDropped: new Counter({
      name: 'fusebox_store_journal_dropped_total',
      help: 'Journaled charges dropped, never replayed, by reason: full (store.journalMaxEntries reached: the oldest went), shutdown (Redis never came back).',
      labelNames: ['reason'] as const,
      registers: [registry],
    }),
    journalDroppedUsd: new Counter({
      name: 'fusebox_store_journal_dropped_usd_total',
      help: 'USD of the journaled charges dropped (spend Redis never counted), by reason.',
      labelNames: ['reason'] as const,
      registers: [registry],
    }),
    leaseGrants: new Counter({
      name: 'fusebox_budget_lease_grants_total',
      help: 'Slices of leased caps (every window: route, fleet, agent, workflow) taken by this sidecar, by scope kind (route, fleet, agent, workflow), route ("" for the others) and kind (acquire: no live slice before, renew).',
      labelNames: ['scope_kind', 'route', 'kind'] as const,
      registers: [registry],
    }),
    leaseRefusals: new Counter({
      name: 'fusebox_budget_lease_refusals_total',
      help: 'Calls refused by a leased cap (any window, any metric), by scope kind, route and reason (exhausted: the cap has nothing left for this call; no_lease: the store is unreachable and this sidecar holds no slice left).',
      labelNames: ['scope_kind', 'route', 'reason'] as const,
      registers: [registry],
    }),
    leaseRemaining: new Gauge({
      name: 'fusebox_budget_lease_remaining_usd',
      help: "What is left of the USD part of this sidecar's slice of a leased cap, USD (0 once it lapsed), by scope kind, window and route (windows sharing them summed: a sidecar's workflows).",
      labelNames: ['scope_kind', 'window', 'route'] as const,
      registers: [registry],
    }),
    // The token and call parts of the same slices (agent dailyTokens, workflow tokens and maxCalls): set only for
    // windows capping that metric. The USD gauge keeps its name: dashboards read it.
    leaseRemainingTokens: new Gauge({
      name: 'fusebox_budget_lease_remaining_tokens',
      help: "What is left of the token part of this sidecar's slice of a leased cap, tokens (0 once it lapsed), by scope kind, window and route (windows sharing them summed); only windows with a token cap.",
      labelNames: ['scope_kind', 'window', 'route'] as const,
      registers: [registry],
    }),
    leaseRemainingCalls: new Gauge({
      name: 'fusebox_budget_lease_remaining_calls',
      help: "What is left of the call part of this sidecar's slice of a leased cap, calls (0 once it lapsed), by scope kind, window and route (windows sharing them summed); only windows with a call cap (workflow maxCalls).",
      labelNames: ['scope_kind', 'window', 'route'] as const,
      registers: [registry],
    }),
    leaseOutageAdmissions: new Counter({
      name: 'fusebox_budget_lease_outage_admissions_total',
      help: 'Calls admitted on a leased cap while the store was unreachable, by scope kind, route and what paid (lease: a slice held, allowance: store.lease.allowanceUsd).',
      labelNames: ['scope_kind', 'route', 'on'] as const,
      registers: [registry],
    }),
    leaseOutageAdmittedUsd: new Counter({
      name: 'fusebox_budget_lease_outage_admitted_usd_total',
      help: 'Estimates admitted on leased caps while the store was unreachable, USD, by scope kind and route.',
      labelNames: ['scope_kind', 'route'] as const,
      registers: [registry],
    }),

    // --- SLOs ---
    sloEvents: new Counter({
      name: 'fusebox_slo_events_total',
      help: 'SLO events counted by this sidecar, by route, slo (availability, latency, cost) and kind (good, bad). Fusebox refusals and client 4xx are not events.',
      labelNames: ['route', 'slo', 'kind'] as const,
      registers: [registry],
    }),
    sloRefused: new Counter({
      name: 'fusebox_slo_refused_total',
      help: "Calls Fusebox itself refused (budget, kill switch, SLO shed/throttle): reported apart, they never burn the availability budget.",
      labelNames: ['route'] as const,
      registers: [registry],
    }),
    sloBudgetRemaining: new Gauge({
      name: 'fusebox_slo_error_budget_remaining',
      help: 'Fleet-wide error budget left over the SLO window, ratio (1 = untouched, 0 = spent, negative = overspent), from the shared counters. Absent until enough events.',
      labelNames: ['route', 'slo'] as const,
      registers: [registry],
    }),
    sloBurnRate: new Gauge({
      name: 'fusebox_slo_burn_rate',
      help: 'Fleet-wide burn rate (error ratio / allowed error ratio) over a window (5m, 30m, 1h, 6h, 3d), from the shared counters.',
      labelNames: ['route', 'slo', 'window'] as const,
      registers: [registry],
    }),
    sloAction: new Gauge({
      name: 'fusebox_slo_action',
      help: 'The SLO action in force per route: 1 for the current one (none, alert, throttle, degrade, shed), 0 for the others.',
      labelNames: ['route', 'action'] as const,
      registers: [registry],
    }),

    sloLeader: new Gauge({
      name: 'fusebox_slo_leader',
      help: "1 while this sidecar leads the route: it assesses the route's SLOs from the shared counters and publishes them for the fleet; 0 while it reads the leader's. A sidecar alone (memory store) leads every route.",
      labelNames: ['route'] as const,
      registers: [registry],
    }),
    sloAssessments: new Counter({
      name: 'fusebox_slo_assessments_total',
      help: "Assessments of a route's SLOs this sidecar computed from the counters (as the route's leader, or alone).",
      labelNames: ['route'] as const,
      registers: [registry],
    }),
    sloPublishFailures: new Counter({
      name: 'fusebox_slo_publish_failures_total',
      help: "Assessments this sidecar computed as the route's leader but could not publish to the shared store: the fleet keeps the last one until it is stale.",
      labelNames: ['route'] as const,
      registers: [registry],
    }),

    // --- lifecycle ---
    ready: new Gauge({
      name: 'fusebox_ready',
      help: '1 while the sidecar accepts traffic, 0 while starting or draining.',
      registers: [registry],
    }),
    configInfo: new Gauge({
      name: 'fusebox_config_info',
      help:
        'Always 1; labels describe the config in effect (one series: a reload replaces it). `hash` is the first 12 hex digits of the ' +
        "validated config's sha256; `agent` lets annotation-scraped fleets join per-agent panels (group_left).",
      labelNames: ['routes', 'store', 'agent', 'hash'] as const,
      registers: [registry],
    }),
    configLoadedTimestamp: new Gauge({
      name: 'fusebox_config_loaded_timestamp_seconds',
      help: 'Unix time the config in effect was loaded (at start, then at each applied reload).',
      registers: [registry],
    }),
    logLinesDropped: new Counter({
      name: 'fusebox_log_lines_dropped_total',
      help: "Log lines dropped, never written: stdout's reader fell more than 4 MiB behind, or closed. The log says how many once writing catches up.",
      registers: [registry],
    }),
    configReloads: new Counter({
      name: 'fusebox_config_reloads_total',
      help: 'Config reloads (SIGHUP, --watch-config), by result: ok (applied), invalid (the file has problems), refused (it changes a setting only a restart applies). The old config keeps serving unless ok.',
      labelNames: ['result'] as const,
      registers: [registry],
    }),

    // --- tracing (only when OTEL_* turns it on) ---
    traceSpansExported: new Counter({
      name: 'fusebox_trace_spans_exported_total',
      help: 'Spans sent to the OTLP endpoint, by result: ok, or failed (the endpoint refused them or could not be reached; those spans are lost). Present only when tracing is on.',
      labelNames: ['result'] as const,
      registers: [registry],
    }),
  };
  return m;
};

export type Metrics = ReturnType<typeof createMetrics>;

/** Methods outside this set are one label value, so a client cannot mint label values. */
export const KNOWN_METHODS: readonly string[] = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];
const KNOWN_METHOD_SET = new Set(KNOWN_METHODS);
export const methodLabel = (method: string): string => (KNOWN_METHOD_SET.has(method) ? method : 'OTHER');
const CODE_CLASSES = ['0xx', '1xx', '2xx', '3xx', '4xx', '5xx', '6xx', '7xx', '8xx', '9xx'];
/** `2xx` for 200..299: a label of every call, so the strings are made once. */
export const codeClass = (status: number | undefined): string =>
  status === undefined ? 'none' : (CODE_CLASSES[Math.floor(status / 100)] ?? `${Math.floor(status / 100)}xx`);
