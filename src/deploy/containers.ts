import { CONTAINERS_ANNOTATION } from './sidecar.js';

/**
 * Which containers of a pod get the proxy variables, the CA and the base URLs (issue 11 item 19).
 *
 * Precedence, most specific first: the pod's `fusebox.io/containers` annotation (a workload knows its own
 * containers), then `--containers` (one list for a whole run), then the default: every container except the known
 * sidecars of other tools below. Those have egress of their own (a log shipper's backend, a mesh proxy's upstreams,
 * a database proxy's Google API calls); pointed at Fusebox they would get `403 DESTINATION_NOT_ALLOWED` for every
 * destination no route lists, so leaving them out is the safe default. Every container left out by the default is
 * reported, so a misjudged one shows.
 */

export interface KnownSidecar {
  /** What it is, for the report. */
  what: string;
  /** Container names it usually runs under (exact). */
  names: readonly string[];
  /**
   * Image repositories, compared with the end of the image's path (registry, tag and digest dropped): `fluent-bit`
   * matches `cr.fluentbit.io/fluent/fluent-bit:3.1`. Generic last segments (`agent`, `proxy`) are listed with
   * their owner (`datadog/agent`) so an agent image called `…/agent` is not taken for one.
   */
  images: readonly string[];
}

export const KNOWN_SIDECARS: readonly KnownSidecar[] = [
  { what: 'the Istio proxy', names: ['istio-proxy'], images: ['istio/proxyv2'] },
  { what: 'the Linkerd proxy', names: ['linkerd-proxy'], images: ['linkerd/proxy'] },
  { what: 'Envoy', names: ['envoy', 'envoy-sidecar'], images: ['envoyproxy/envoy', 'hashicorp/consul-dataplane'] },
  { what: 'Fluent Bit', names: ['fluent-bit', 'fluentbit'], images: ['fluent-bit'] },
  { what: 'Fluentd', names: ['fluentd'], images: ['fluentd', 'fluentd-kubernetes-daemonset'] },
  { what: 'Vector', names: ['vector'], images: ['timberio/vector'] },
  {
    what: 'the OpenTelemetry Collector',
    // otc-container: the name the OpenTelemetry Operator gives the sidecar it injects.
    names: ['otel-collector', 'otelcol', 'opentelemetry-collector', 'otc-container'],
    images: ['opentelemetry-collector', 'opentelemetry-collector-contrib', 'opentelemetry-collector-k8s', 'otelcol', 'otelcol-contrib', 'otelcol-k8s'],
  },
  { what: 'the Datadog Agent', names: ['datadog-agent'], images: ['datadog/agent'] },
  { what: 'the Cloud SQL Auth Proxy', names: ['cloud-sql-proxy', 'cloudsql-proxy'], images: ['cloud-sql-proxy', 'cloudsql-docker/gce-proxy'] },
  // The vault image also runs the server, so only the name counts.
  { what: 'the Vault Agent', names: ['vault-agent'], images: [] },
  { what: 'Filebeat', names: ['filebeat'], images: ['filebeat'] },
  { what: 'Promtail', names: ['promtail'], images: ['grafana/promtail'] },
  { what: 'the Jaeger agent', names: ['jaeger-agent'], images: ['jaegertracing/jaeger-agent'] },
];

/** `registry.example.com:5000/team/app:1.2@sha256:…` → `team/app` (lower-case). */
export const imagePath = (image: string): string => {
  let path = image.trim().toLowerCase().replace(/@.*$/, '');
  const lastSlash = path.lastIndexOf('/');
  const tag = path.indexOf(':', lastSlash + 1);
  if (tag !== -1) path = path.slice(0, tag);
  const first = path.split('/')[0] ?? '';
  // A first segment with a dot or a port, or `localhost`, is a registry, not part of the repository.
  if (path.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost')) path = path.slice(first.length + 1);
  return path;
};

/** The known sidecar a container is, and what gave it away; undefined for anything else. */
export const knownSidecar = (name: string, image: unknown): { sidecar: KnownSidecar; by: string } | undefined => {
  const path = typeof image === 'string' ? imagePath(image) : '';
  for (const sidecar of KNOWN_SIDECARS) {
    if (sidecar.names.includes(name)) return { sidecar, by: 'its name' };
    if (sidecar.images.some((i) => path === i || path.endsWith(`/${i}`))) return { sidecar, by: `its image ${String(image)}` };
  }
  return undefined;
};

export interface ContainerRef {
  name: string;
  image?: unknown;
}

export type Selection =
  | { ok: true; selected: Set<string>; notes: string[] }
  | { ok: false; status: 'refused' | 'skipped'; reason: string };

/** Comma-separated names, trimmed, empties dropped. */
export const splitNames = (value: string): string[] =>
  value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');

/**
 * Pick the containers to proxy. `annotation` is the value of `fusebox.io/containers` and where it was found,
 * `flag` the `--containers` list ([] when not given).
 */
export const selectContainers = (containers: ContainerRef[], annotation: { value: string; on: string } | undefined, flag: readonly string[]): Selection => {
  const names = containers.map((c) => c.name);
  const have = `it has ${names.join(', ')}`;
  if (annotation !== undefined) {
    const wanted = splitNames(annotation.value);
    const where = `the annotation ${CONTAINERS_ANNOTATION} on ${annotation.on}`;
    if (wanted.length === 0) {
      return { ok: false, status: 'refused', reason: `${where} names no container; to leave the workload alone, annotate it fusebox.io/inject: "false"` };
    }
    const missing = wanted.filter((n) => !names.includes(n));
    if (missing.length > 0) {
      return { ok: false, status: 'refused', reason: `${where} names ${missing.map((n) => `"${n}"`).join(', ')}, not a container of the pod (${have})` };
    }
    return { ok: true, selected: new Set(wanted), notes: [] };
  }
  if (flag.length > 0) {
    // One list serves every workload of the run, so a name one pod lacks is normal; a pod with none of them is not.
    const selected = names.filter((n) => flag.includes(n));
    if (selected.length === 0) {
      return { ok: false, status: 'refused', reason: `--containers names none of the pod's containers (${have}); name them, or set the annotation ${CONTAINERS_ANNOTATION}` };
    }
    return { ok: true, selected: new Set(selected), notes: [] };
  }
  const left: string[] = [];
  const selected = new Set<string>();
  for (const c of containers) {
    const known = knownSidecar(c.name, c.image);
    if (known === undefined) selected.add(c.name);
    else left.push(`container "${c.name}" (${known.sidecar.what}, by ${known.by})`);
  }
  const howToInclude = `name the containers to proxy with the annotation ${CONTAINERS_ANNOTATION} or --containers`;
  if (selected.size === 0) {
    return { ok: false, status: 'skipped', reason: `every container is a known sidecar of another tool: ${left.join(', ')}; to inject it anyway, ${howToInclude}` };
  }
  const notes = left.map((c) => `left out ${c}: known sidecars keep their own egress; to proxy it, ${howToInclude}`);
  return { ok: true, selected, notes };
};
