import { describe, expect, it } from 'vitest';
import { tracingDecision, type TracingDecision } from '../../src/telemetry/tracing-env.js';

const settingsOf = (d: TracingDecision) => {
  if (!d.on) throw new Error(`expected tracing on, got ${JSON.stringify(d)}`);
  return d.settings;
};

describe('tracing decision from the OTEL_* variables', () => {
  it('is off when nothing asks for it, and says why', () => {
    expect(tracingDecision({})).toEqual({ on: false, why: 'no OTEL_TRACES_EXPORTER=otlp nor OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT set' });
    expect(tracingDecision({ OTEL_SERVICE_NAME: 'x', OTEL_EXPORTER_OTLP_ENDPOINT: '' })).toMatchObject({ on: false });
  });

  it('is on with OTEL_TRACES_EXPORTER=otlp, exporting to the spec default endpoint over http/protobuf', () => {
    expect(settingsOf(tracingDecision({ OTEL_TRACES_EXPORTER: 'otlp' }))).toEqual({
      endpoint: 'http://localhost:4318/v1/traces',
      protocol: 'http/protobuf',
      resource: { 'service.name': 'fusebox' },
      sampler: { root: 'always_on', parentBased: true, ratio: 1 },
      batch: {},
    });
  });

  it('is on with an endpoint: the base one gets /v1/traces appended, the traces one is used as given and wins', () => {
    expect(settingsOf(tracingDecision({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/' })).endpoint).toBe('http://collector:4318/v1/traces');
    expect(
      settingsOf(tracingDecision({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://traces.example/otlp' })).endpoint,
    ).toBe('https://traces.example/otlp');
  });

  it('is off whatever else is set when OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none', () => {
    expect(tracingDecision({ OTEL_SDK_DISABLED: 'TRUE', OTEL_TRACES_EXPORTER: 'otlp' })).toEqual({ on: false, why: 'OTEL_SDK_DISABLED=true' });
    expect(tracingDecision({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' })).toEqual({ on: false, why: 'OTEL_TRACES_EXPORTER=none' });
    expect(settingsOf(tracingDecision({ OTEL_SDK_DISABLED: 'false', OTEL_TRACES_EXPORTER: 'otlp' })).protocol).toBe('http/protobuf');
  });

  it('takes the protocol, the signal’s own variable first', () => {
    expect(settingsOf(tracingDecision({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' })).protocol).toBe('http/json');
    expect(
      settingsOf(tracingDecision({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/protobuf' })).protocol,
    ).toBe('http/protobuf');
  });

  it('builds the resource: OTEL_SERVICE_NAME over service.name in OTEL_RESOURCE_ATTRIBUTES over fusebox, values percent-decoded', () => {
    const env = { OTEL_TRACES_EXPORTER: 'otlp', OTEL_RESOURCE_ATTRIBUTES: 'service.name=agent-a, team=a%2Cb ,k8s.pod.name=p-0' };
    expect(settingsOf(tracingDecision(env)).resource).toEqual({ 'service.name': 'agent-a', team: 'a,b', 'k8s.pod.name': 'p-0' });
    expect(settingsOf(tracingDecision({ ...env, OTEL_SERVICE_NAME: 'sidecar' })).resource['service.name']).toBe('sidecar');
  });

  it('reads the sampler and its ratio', () => {
    const sampler = (OTEL_TRACES_SAMPLER: string, OTEL_TRACES_SAMPLER_ARG?: string) =>
      settingsOf(tracingDecision({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_TRACES_SAMPLER, ...(OTEL_TRACES_SAMPLER_ARG !== undefined ? { OTEL_TRACES_SAMPLER_ARG } : {}) })).sampler;
    expect(sampler('parentbased_traceidratio', '0.25')).toEqual({ root: 'traceidratio', parentBased: true, ratio: 0.25 });
    expect(sampler('traceidratio')).toEqual({ root: 'traceidratio', parentBased: false, ratio: 1 });
    expect(sampler('always_off')).toEqual({ root: 'always_off', parentBased: false, ratio: 1 });
    expect(sampler('parentbased_always_off')).toEqual({ root: 'always_off', parentBased: true, ratio: 1 });
  });

  it('reads the batch processor variables SDK 3 no longer reads itself', () => {
    const env = { OTEL_TRACES_EXPORTER: 'otlp', OTEL_BSP_SCHEDULE_DELAY: '200', OTEL_BSP_EXPORT_TIMEOUT: '3000', OTEL_BSP_MAX_QUEUE_SIZE: '100', OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '50' };
    expect(settingsOf(tracingDecision(env)).batch).toEqual({ scheduledDelayMillis: 200, exportTimeoutMillis: 3000, maxQueueSize: 100, maxExportBatchSize: 50 });
  });

  it('lists every problem of variables that ask for tracing it cannot do', () => {
    expect(
      tracingDecision({
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'collector:4318',
        OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
        OTEL_RESOURCE_ATTRIBUTES: 'team',
        OTEL_TRACES_SAMPLER: 'sometimes',
        OTEL_BSP_MAX_QUEUE_SIZE: '10',
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '20',
        OTEL_BSP_SCHEDULE_DELAY: '-1',
      }),
    ).toEqual({
      on: false,
      problems: [
        'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "collector:4318" must be an http:// or https:// URL (Fusebox exports OTLP over HTTP)',
        "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported: Fusebox exports OTLP over HTTP; set http/protobuf or http/json and the collector's HTTP port (4318)",
        'OTEL_RESOURCE_ATTRIBUTES: "team" is not key=value (percent-encode \',\' and \'=\' inside keys and values)',
        'OTEL_TRACES_SAMPLER: "sometimes" is not supported; expected one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio',
        'OTEL_BSP_SCHEDULE_DELAY: "-1" is not a positive whole number',
        'OTEL_BSP_MAX_EXPORT_BATCH_SIZE (20) must not exceed OTEL_BSP_MAX_QUEUE_SIZE (10)',
      ],
    });
    expect(tracingDecision({ OTEL_TRACES_EXPORTER: 'otlp,zipkin' })).toEqual({
      on: false,
      problems: ['OTEL_TRACES_EXPORTER: "zipkin" not supported; Fusebox exports with otlp (or none: off)'],
    });
    expect(tracingDecision({ OTEL_EXPORTER_OTLP_ENDPOINT: 'not a url' })).toEqual({
      on: false,
      problems: ['OTEL_EXPORTER_OTLP_ENDPOINT: "not a url" is not a URL (expected e.g. http://otel-collector:4318)'],
    });
  });
});
