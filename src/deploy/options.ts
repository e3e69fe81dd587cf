/**
 * Options of `fusebox inject` and the values they default to. Every default here matches the example config in
 * deploy/kubernetes/base/configmap.yaml: if you change a port or the grace period there, pass the same value here.
 */

import { FUSEBOX_VERSION } from '../version.js';

export { FUSEBOX_VERSION };

export interface InjectOptions {
  /** Sidecar image. Default `ghcr.io/fusebox/fusebox:<FUSEBOX_VERSION>`. */
  image: string;
  /** Written into the `fusebox.io/injected` annotation. Default FUSEBOX_VERSION. */
  version: string;
  /** ConfigMap holding `config.yaml`, mounted at /etc/fusebox. Default `fusebox-config`. */
  configMapName: string;
  /** Secret whose keys become the sidecar's environment (provider keys, FUSEBOX_ADMIN_TOKEN, FUSEBOX_REDIS_URL). Default `fusebox-provider-keys`. */
  secretName: string;
  /** Port Fusebox's proxy listens on (config `listen.proxy.port`). Default 4000. */
  proxyPort: number;
  /** Port of health, readiness and metrics (config `listen.admin.port`). Default 9901. */
  adminPort: number;
  /** Pod label whose value the sidecar gets as FUSEBOX_AGENT. Default `app.kubernetes.io/name`. */
  agentLabel: string;
  /** Cluster DNS domain; `.<domain>` is added to NO_PROXY. Default `cluster.local`. */
  clusterDomain: string;
  /** More NO_PROXY entries (hosts, domain suffixes, IPs) the agent must reach directly. Default none. */
  noProxy: string[];
  /**
   * Replace the variables inject sets (proxy, CA trust, SDK base URLs) when an agent container already sets them to
   * something else, instead of refusing the workload. Default false.
   */
  overrideProxyEnv: boolean;
  /** Also set NODE_USE_ENV_PROXY=1 so Node's built-in fetch and http honour HTTP_PROXY. Default true. */
  nodeUseEnvProxy: boolean;
  /**
   * Wire the pod-local CA: a memory-backed emptyDir the sidecar writes `ca.crt` and `ca-bundle.crt` into
   * (FUSEBOX_CA_DIR), mounted read-only in the proxied containers, whose trust variables point at it. Default true.
   */
  ca: boolean;
  /**
   * Names of the containers to proxy, when no `fusebox.io/containers` annotation says otherwise. Default [] meaning
   * every container except known sidecars of other tools (containers.ts).
   */
  containers: string[];
  /**
   * SDK base URLs to set on proxied containers: provider → path on the proxy port, e.g. `{ openai: '/openai/v1' }`
   * gives OPENAI_BASE_URL=http://127.0.0.1:<proxyPort>/openai/v1. Default none.
   */
  baseUrls: BaseUrls;
  /** Sidecar CPU request. Default `50m`. */
  cpuRequest: string;
  /** Sidecar CPU limit; '' sets none. Default `500m`. */
  cpuLimit: string;
  /**
   * Sidecar memory request. Default `128Mi`: what it holds at work. Measured in a 384 MiB cgroup with the image's
   * environment (issue 15, 2026-12-05): ~80 MB RSS idle with config/example.yaml (`npm run bench:idle`; the cgroup is
   * charged ~30 MB of it, the rest being the node binary's shared page cache), 113–121 MB
   * after 20,000–40,000 calls with caps, 120 MB after the `npm run bench` phases (a saturation last).
   */
  memoryRequest: string;
  /**
   * Sidecar memory limit. Default `384Mi`: room for the V8 heap Node sizes from any limit up to 512 MiB (259 MiB: 256
   * of old space, at most) plus the ~60 MB the process holds outside it (of an idle sidecar's ~80 MB RSS, ~21 MB is
   * V8's heap), so a heap that runs full fails in V8, with a report, before the kernel's OOM killer (which takes the
   * agent's egress with it); ~3× the RSS measured at saturation in bench/. The image fixes that heap
   * (`NODE_OPTIONS=--max-old-space-size=256 --max-semi-space-size=4`, Dockerfile), so a higher limit gives the heap
   * no more room unless NODE_OPTIONS is set in the pod too, and a lower one keeps the same heap: it would trade V8's
   * failure for the OOM killer's.
   */
  memoryLimit: string;
  /** Fusebox's drain time after SIGTERM (config `shutdown.graceMs`), ms. Default 25000. */
  graceMs: number;
  /** preStop sleep before Fusebox gets SIGTERM, s; 0 adds no hook. Default 5. */
  preStopSeconds: number;
}

/** The SDKs whose base URL inject can set, and the variable each reads. */
export const BASE_URL_VARS = { openai: 'OPENAI_BASE_URL', anthropic: 'ANTHROPIC_BASE_URL' } as const;
export type BaseUrlProvider = keyof typeof BASE_URL_VARS;
export type BaseUrls = Partial<Record<BaseUrlProvider, string>>;

export const DEFAULT_INJECT_OPTIONS: Readonly<InjectOptions> = Object.freeze({
  image: `ghcr.io/fusebox/fusebox:${FUSEBOX_VERSION}`,
  version: FUSEBOX_VERSION,
  configMapName: 'fusebox-config',
  secretName: 'fusebox-provider-keys',
  proxyPort: 4000,
  adminPort: 9901,
  agentLabel: 'app.kubernetes.io/name',
  clusterDomain: 'cluster.local',
  noProxy: [],
  overrideProxyEnv: false,
  nodeUseEnvProxy: true,
  ca: true,
  containers: [],
  baseUrls: {},
  cpuRequest: '50m',
  cpuLimit: '500m',
  memoryRequest: '128Mi',
  memoryLimit: '384Mi',
  graceMs: 25_000,
  preStopSeconds: 5,
});

/** An option value Kubernetes or Fusebox would not accept. `problems` has one line per bad option. */
export class InjectOptionsError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid inject options:\n  - ${problems.join('\n  - ')}`);
    this.name = 'InjectOptionsError';
  }
}

const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
/** Kubernetes resource.Quantity, e.g. 50m, 0.5, 64Mi, 1G, 1e3. */
const QUANTITY = /^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$/;
/** What curl, Go and Python accept in NO_PROXY: a host, a `.suffix`, an IP or a CIDR; no scheme, no spaces, no commas. */
const NO_PROXY_ENTRY = /^[A-Za-z0-9.:\-_/[\]*]+$/;
/** A container name: an RFC 1123 label. */
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
/** A path on the proxy port: starts with "/", no query, fragment or spaces. */
const URL_PATH = /^\/[^?#\s]*$/;

const isLabelKey = (key: string): boolean => {
  const slash = key.indexOf('/');
  if (slash === -1) return LABEL_NAME.test(key);
  const prefix = key.slice(0, slash);
  return prefix.length <= 253 && DNS_SUBDOMAIN.test(prefix) && LABEL_NAME.test(key.slice(slash + 1));
};

const isPort = (n: number): boolean => Number.isInteger(n) && n >= 1 && n <= 65535;

/** Fill in defaults and check every value; throws InjectOptionsError listing every problem. */
export const resolveInjectOptions = (partial: Partial<InjectOptions> = {}): InjectOptions => {
  const defined = Object.fromEntries(Object.entries(partial).filter(([, v]) => v !== undefined));
  const o: InjectOptions = {
    ...DEFAULT_INJECT_OPTIONS,
    ...defined,
    noProxy: [...(partial.noProxy ?? DEFAULT_INJECT_OPTIONS.noProxy)],
    containers: [...(partial.containers ?? DEFAULT_INJECT_OPTIONS.containers)],
    baseUrls: { ...(partial.baseUrls ?? DEFAULT_INJECT_OPTIONS.baseUrls) },
  };
  const problems: string[] = [];
  if (o.image.trim() === '' || /\s/.test(o.image)) problems.push(`image: "${o.image}" is not an image reference`);
  if (o.version.trim() === '') problems.push('version: must not be empty');
  for (const [key, name] of [
    ['configMapName', o.configMapName],
    ['secretName', o.secretName],
  ] as const) {
    if (name.length > 253 || !DNS_SUBDOMAIN.test(name)) problems.push(`${key}: "${name}" is not a valid Kubernetes object name (lower-case DNS subdomain)`);
  }
  if (!isPort(o.proxyPort)) problems.push(`proxyPort: ${o.proxyPort} is not a port (1-65535)`);
  if (!isPort(o.adminPort)) problems.push(`adminPort: ${o.adminPort} is not a port (1-65535)`);
  if (o.proxyPort === o.adminPort) problems.push(`proxyPort and adminPort are both ${o.proxyPort}`);
  if (!isLabelKey(o.agentLabel)) problems.push(`agentLabel: "${o.agentLabel}" is not a valid label key`);
  if (!DNS_SUBDOMAIN.test(o.clusterDomain)) problems.push(`clusterDomain: "${o.clusterDomain}" is not a DNS domain`);
  for (const entry of o.noProxy) {
    if (!NO_PROXY_ENTRY.test(entry)) problems.push(`noProxy: "${entry}" is not a host, .domain suffix, IP or CIDR`);
    if (entry === '*') problems.push('noProxy: "*" would send every call around Fusebox');
  }
  for (const name of o.containers) {
    if (!DNS_LABEL.test(name)) problems.push(`containers: "${name}" is not a container name (lower-case RFC 1123 label)`);
  }
  for (const [provider, path] of Object.entries(o.baseUrls)) {
    if (!(provider in BASE_URL_VARS)) problems.push(`baseUrls: unknown provider "${provider}" (${Object.keys(BASE_URL_VARS).join(', ')})`);
    else if (path === undefined || !URL_PATH.test(path)) problems.push(`baseUrls.${provider}: "${path ?? ''}" is not a path (like /openai/v1)`);
  }
  for (const [key, q] of [
    ['cpuRequest', o.cpuRequest],
    ['memoryRequest', o.memoryRequest],
    ['memoryLimit', o.memoryLimit],
  ] as const) {
    if (!QUANTITY.test(q)) problems.push(`${key}: "${q}" is not a Kubernetes quantity (like 50m, 64Mi)`);
  }
  if (o.cpuLimit !== '' && !QUANTITY.test(o.cpuLimit)) problems.push(`cpuLimit: "${o.cpuLimit}" is not a Kubernetes quantity (or '' for none)`);
  if (!Number.isInteger(o.graceMs) || o.graceMs < 0) problems.push(`graceMs: ${o.graceMs} must be a whole number of ms ≥ 0`);
  if (!Number.isInteger(o.preStopSeconds) || o.preStopSeconds < 0 || o.preStopSeconds > 300) {
    problems.push(`preStopSeconds: ${o.preStopSeconds} must be a whole number of seconds from 0 to 300`);
  }
  if (problems.length > 0) throw new InjectOptionsError(problems);
  return o;
};
