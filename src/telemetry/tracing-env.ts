/**
 * Whether Fusebox traces, and how, from the standard OpenTelemetry variables
 * (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/). Pure: it reads the
 * environment it is given and loads nothing; the SDK itself is imported only when this says `on`
 * (src/telemetry/tracing.ts).
 *
 * Off by default, unlike an SDK whose `OTEL_TRACES_EXPORTER` defaults to `otlp`: a sidecar must not start
 * sending to `localhost:4318` because nobody said otherwise. On when `OTEL_TRACES_EXPORTER=otlp`, or when an
 * OTLP endpoint is set; `OTEL_SDK_DISABLED=true` and `OTEL_TRACES_EXPORTER=none` turn it off whatever else is set.
 */

export type OtlpProtocol = 'http/protobuf' | 'http/json';

export interface SamplerSettings {
  /** The root decision (`always_on`, `always_off`, `traceidratio`). */
  root: 'always_on' | 'always_off' | 'traceidratio';
  /** A span with a parent (the agent's `traceparent`) follows the parent's sampled flag. */
  parentBased: boolean;
  /** `traceidratio`'s ratio, 0..1. */
  ratio: number;
}

export interface TracingSettings {
  /** Where spans are POSTed: the full traces URL. */
  endpoint: string;
  protocol: OtlpProtocol;
  /** Resource attributes, `service.name` included. */
  resource: Record<string, string>;
  sampler: SamplerSettings;
  /** BatchSpanProcessor settings from `OTEL_BSP_*` (SDK 3 no longer reads them itself); unset: the SDK's defaults. */
  batch: { scheduledDelayMillis?: number; exportTimeoutMillis?: number; maxQueueSize?: number; maxExportBatchSize?: number };
}

export type TracingDecision =
  | { on: true; settings: TracingSettings }
  | { on: false; why: string }
  /** Variables that ask for tracing but cannot be honoured: Fusebox refuses to start rather than drop the spans. */
  | { on: false; problems: string[] };

export const DEFAULT_OTLP_TRACES_ENDPOINT = 'http://localhost:4318/v1/traces';

const SAMPLERS = ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'] as const;

const BATCH_VARIABLES = {
  OTEL_BSP_SCHEDULE_DELAY: 'scheduledDelayMillis',
  OTEL_BSP_EXPORT_TIMEOUT: 'exportTimeoutMillis',
  OTEL_BSP_MAX_QUEUE_SIZE: 'maxQueueSize',
  OTEL_BSP_MAX_EXPORT_BATCH_SIZE: 'maxExportBatchSize',
} as const;

/** An unset and an empty variable are the same thing (the spec says so). */
const read = (env: NodeJS.ProcessEnv, name: string): string | undefined => {
  const v = env[name]?.trim();
  return v === undefined || v === '' ? undefined : v;
};

const decode = (s: string): string | undefined => {
  try {
    return decodeURIComponent(s);
  } catch {
    return undefined;
  }
};

/** `OTEL_RESOURCE_ATTRIBUTES`: `key1=value1,key2=value2`, keys and values percent-encoded (W3C Baggage format). */
const parseResourceAttributes = (raw: string, problems: string[]): Record<string, string> => {
  const out: Record<string, string> = {};
  for (const pair of raw.split(',')) {
    if (pair.trim() === '') continue;
    const eq = pair.indexOf('=');
    const key = eq > 0 ? decode(pair.slice(0, eq).trim()) : undefined;
    const value = eq > 0 ? decode(pair.slice(eq + 1).trim()) : undefined;
    if (key === undefined || key === '' || value === undefined) {
      problems.push(`OTEL_RESOURCE_ATTRIBUTES: "${pair}" is not key=value (percent-encode ',' and '=' inside keys and values)`);
      continue;
    }
    out[key] = value;
  }
  return out;
};

/** The traces URL: the signal's own endpoint as given, or the base endpoint with `/v1/traces` appended (the spec's rule). */
const endpointOf = (env: NodeJS.ProcessEnv, problems: string[]): string => {
  const own = read(env, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
  const base = read(env, 'OTEL_EXPORTER_OTLP_ENDPOINT');
  const [name, given, url] =
    own !== undefined
      ? ['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', own, own]
      : base !== undefined
        ? ['OTEL_EXPORTER_OTLP_ENDPOINT', base, `${base.replace(/\/+$/, '')}/v1/traces`]
        : ['', DEFAULT_OTLP_TRACES_ENDPOINT, DEFAULT_OTLP_TRACES_ENDPOINT];
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    problems.push(`${name}: "${given}" is not a URL (expected e.g. http://otel-collector:4318)`);
    return url;
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') problems.push(`${name}: "${given}" must be an http:// or https:// URL (Fusebox exports OTLP over HTTP)`);
  return url;
};

const protocolOf = (env: NodeJS.ProcessEnv, problems: string[]): OtlpProtocol => {
  const name = read(env, 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL') !== undefined ? 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL' : 'OTEL_EXPORTER_OTLP_PROTOCOL';
  // The spec's default for OTLP exporters.
  const value = read(env, name) ?? 'http/protobuf';
  if (value === 'http/protobuf' || value === 'http/json') return value;
  problems.push(
    value === 'grpc'
      ? `${name}=grpc is not supported: Fusebox exports OTLP over HTTP; set http/protobuf or http/json and the collector's HTTP port (4318)`
      : `${name}: "${value}" is not a protocol; expected http/protobuf or http/json`,
  );
  return 'http/protobuf';
};

const samplerOf = (env: NodeJS.ProcessEnv, problems: string[]): SamplerSettings => {
  const value = read(env, 'OTEL_TRACES_SAMPLER') ?? 'parentbased_always_on';
  if (!(SAMPLERS as readonly string[]).includes(value)) {
    problems.push(`OTEL_TRACES_SAMPLER: "${value}" is not supported; expected one of ${SAMPLERS.join(', ')}`);
    return { root: 'always_on', parentBased: true, ratio: 1 };
  }
  const parentBased = value.startsWith('parentbased_');
  const root = (parentBased ? value.slice('parentbased_'.length) : value) as SamplerSettings['root'];
  let ratio = 1;
  const arg = read(env, 'OTEL_TRACES_SAMPLER_ARG');
  if (root === 'traceidratio' && arg !== undefined) {
    ratio = Number(arg);
    if (!Number.isFinite(ratio) || ratio < 0 || ratio > 1) {
      problems.push(`OTEL_TRACES_SAMPLER_ARG: "${arg}" is not a ratio between 0 and 1 (the share of new traces sampled)`);
      ratio = 1;
    }
  }
  return { root, parentBased, ratio };
};

const batchOf = (env: NodeJS.ProcessEnv, problems: string[]): TracingSettings['batch'] => {
  const batch: TracingSettings['batch'] = {};
  for (const [name, key] of Object.entries(BATCH_VARIABLES)) {
    const raw = read(env, name);
    if (raw === undefined) continue;
    const n = Number(raw);
    if (!Number.isInteger(n) || n <= 0) problems.push(`${name}: "${raw}" is not a positive whole number`);
    else batch[key] = n;
  }
  if (batch.maxExportBatchSize !== undefined && batch.maxQueueSize !== undefined && batch.maxExportBatchSize > batch.maxQueueSize) {
    problems.push(`OTEL_BSP_MAX_EXPORT_BATCH_SIZE (${batch.maxExportBatchSize}) must not exceed OTEL_BSP_MAX_QUEUE_SIZE (${batch.maxQueueSize})`);
  }
  return batch;
};

/** Decide from the environment whether to trace; every problem of the variables that ask for it, in words. */
export const tracingDecision = (env: NodeJS.ProcessEnv): TracingDecision => {
  if (read(env, 'OTEL_SDK_DISABLED')?.toLowerCase() === 'true') return { on: false, why: 'OTEL_SDK_DISABLED=true' };
  const exporters = read(env, 'OTEL_TRACES_EXPORTER')
    ?.split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  if (exporters !== undefined && exporters.length > 0) {
    const unsupported = exporters.filter((e) => e !== 'otlp' && e !== 'none');
    if (unsupported.length > 0) {
      return { on: false, problems: [`OTEL_TRACES_EXPORTER: ${unsupported.map((e) => `"${e}"`).join(', ')} not supported; Fusebox exports with otlp (or none: off)`] };
    }
    if (!exporters.includes('otlp')) return { on: false, why: 'OTEL_TRACES_EXPORTER=none' };
  } else if (read(env, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT') === undefined && read(env, 'OTEL_EXPORTER_OTLP_ENDPOINT') === undefined) {
    return { on: false, why: 'no OTEL_TRACES_EXPORTER=otlp nor OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT set' };
  }

  const problems: string[] = [];
  const endpoint = endpointOf(env, problems);
  const protocol = protocolOf(env, problems);
  const attributes = parseResourceAttributes(read(env, 'OTEL_RESOURCE_ATTRIBUTES') ?? '', problems);
  const sampler = samplerOf(env, problems);
  const batch = batchOf(env, problems);
  if (problems.length > 0) return { on: false, problems };
  // OTEL_SERVICE_NAME wins over a service.name in OTEL_RESOURCE_ATTRIBUTES (the spec's order).
  const resource = { ...attributes, 'service.name': read(env, 'OTEL_SERVICE_NAME') ?? attributes['service.name'] ?? 'fusebox' };
  return { on: true, settings: { endpoint, protocol, resource, sampler, batch } };
};
