import { describe, expect, it } from 'vitest';
import { imagePath, knownSidecar, selectContainers } from '../../src/deploy/containers.js';

describe('known sidecars of other tools', () => {
  it.each([
    ['fluent/fluent-bit:3.1', 'fluent/fluent-bit'],
    ['cr.fluentbit.io/fluent/fluent-bit:3.1.4', 'fluent/fluent-bit'],
    ['registry.example.com:5000/team/app:1.2@sha256:0123', 'team/app'],
    ['localhost/agent', 'agent'],
    ['Timberio/Vector', 'timberio/vector'],
    ['busybox', 'busybox'],
  ])('reads the repository path of %s as %s', (image, path) => {
    expect(imagePath(image)).toBe(path);
  });

  it.each([
    ['x', 'datadog/agent:7', 'the Datadog Agent'],
    ['x', 'gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.11.0', 'the Cloud SQL Auth Proxy'],
    ['x', 'gcr.io/cloudsql-docker/gce-proxy:1.33', 'the Cloud SQL Auth Proxy'],
    ['x', 'otel/opentelemetry-collector-contrib:0.104.0', 'the OpenTelemetry Collector'],
    ['x', 'docker.io/istio/proxyv2:1.22.0', 'the Istio proxy'],
    ['otc-container', 'anything', 'the OpenTelemetry Collector'],
    ['linkerd-proxy', undefined, 'the Linkerd proxy'],
  ])('takes container %s with image %s for %s', (name, image, what) => {
    expect(knownSidecar(name, image)?.sidecar.what).toBe(what);
  });

  it.each([
    ['agent', 'ghcr.io/acme/agent:1'],
    ['proxy', 'ghcr.io/acme/proxy:1'],
    ['vector-store', 'qdrant/qdrant:1.9'],
    ['agent', 'ghcr.io/acme/vector:1'],
    ['vault', 'hashicorp/vault:1.17'],
  ])('does not take container %s with image %s for one', (name, image) => {
    expect(knownSidecar(name, image)).toBeUndefined();
  });

  it('never selects nothing silently: an explicit list that matches no container refuses, the default skips', () => {
    const pod = [{ name: 'fluentd', image: 'fluent/fluentd:v1.17' }];
    expect(selectContainers(pod, undefined, ['agent'])).toMatchObject({ ok: false, status: 'refused' });
    expect(selectContainers(pod, undefined, [])).toMatchObject({ ok: false, status: 'skipped' });
    expect(selectContainers(pod, { value: ' , ', on: 'metadata' }, [])).toMatchObject({ ok: false, status: 'refused', reason: expect.stringContaining('names no container') });
  });
});
