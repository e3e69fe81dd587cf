import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IVolume } from 'kubernetes-models/v1/Volume';
import type { IVolumeMount } from 'kubernetes-models/v1/VolumeMount';
import type { InjectOptions } from './options.js';

/**
 * What the injector adds to a pod, as plain Kubernetes objects. The kustomize component in
 * deploy/kubernetes/components/fusebox-sidecar/ carries the same objects; a test keeps the two equal.
 * (Types only come from kubernetes-models, so a misspelt field is a compile error, not a silently ignored key.)
 */

/** Name of the sidecar container; also how an injected pod is recognised. */
export const SIDECAR_NAME = 'fusebox';
export const CONFIG_VOLUME_NAME = 'fusebox-config';
export const CONFIG_MOUNT_PATH = '/etc/fusebox';
/**
 * The pod-local CA. The sidecar writes `ca.crt` (the pod CA alone) and `ca-bundle.crt` (system roots + pod CA) into
 * FUSEBOX_CA_DIR before /readyz turns ready; its startupProbe on /readyz is what keeps the agents from starting
 * before the files exist (Node reads NODE_EXTRA_CA_CERTS once, at start: a file missing then is never read).
 */
export const CA_VOLUME_NAME = 'fusebox-ca';
export const CA_MOUNT_PATH = '/var/run/fusebox-ca';
export const CA_DIR_ENV = 'FUSEBOX_CA_DIR';
export const CA_FILE = `${CA_MOUNT_PATH}/ca.crt`;
export const CA_BUNDLE_FILE = `${CA_MOUNT_PATH}/ca-bundle.crt`;
/**
 * Two certificates and ~150 roots are ~250 KB. A memory-backed emptyDir costs only what is written; going over the
 * limit gets the pod evicted, so it is generous.
 */
export const CA_VOLUME_SIZE_LIMIT = '4Mi';
/**
 * Where the sidecar keeps the generated CA's key across its own restarts (FUSEBOX_CA_KEEP_DIR): memory-backed, and
 * mounted in the sidecar only. A restarted sidecar then serves the CA its agents trust (they read it once, at their
 * start); without it, a sidecar restart would fail every intercepted call until the agents restart too.
 */
export const CA_KEEP_VOLUME_NAME = 'fusebox-ca-key';
export const CA_KEEP_MOUNT_PATH = '/var/run/fusebox-ca-key';
export const CA_KEEP_ENV = 'FUSEBOX_CA_KEEP_DIR';

/**
 * What points each runtime's TLS client at the pod CA. Node adds NODE_EXTRA_CA_CERTS to its own roots, so it gets
 * the CA alone; the others replace their roots with the file named, so they get the bundle.
 */
export const TRUST_VARS: readonly { name: string; value: string; readBy: string }[] = [
  { name: 'NODE_EXTRA_CA_CERTS', value: CA_FILE, readBy: 'Node.js, Bun (read once, at start)' },
  // OpenSSL's default verify paths, which Python's ssl (aiohttp), httpx, Ruby and .NET use; Go reads it on Linux.
  { name: 'SSL_CERT_FILE', value: CA_BUNDLE_FILE, readBy: 'OpenSSL, Python ssl/httpx, Go' },
  // requests verifies against certifi's bundle, never OpenSSL's defaults.
  { name: 'REQUESTS_CA_BUNDLE', value: CA_BUNDLE_FILE, readBy: 'Python requests' },
  { name: 'CURL_CA_BUNDLE', value: CA_BUNDLE_FILE, readBy: 'curl' },
  // libcurl sets its compiled-in CA path itself, so git (and anything on libcurl) never reads SSL_CERT_FILE.
  { name: 'GIT_SSL_CAINFO', value: CA_BUNDLE_FILE, readBy: 'git' },
];

/** Port names are what probes and the PodMonitor refer to; prefixed so they do not clash with the agent's own. */
export const PROXY_PORT_NAME = 'fusebox-proxy';
export const ADMIN_PORT_NAME = 'fusebox-admin';

/** Annotation (on the pod template or the workload) naming the containers to proxy, comma-separated. */
export const CONTAINERS_ANNOTATION = 'fusebox.io/containers';
/** Annotation on the pod template: the Fusebox version injected. */
export const INJECTED_ANNOTATION = 'fusebox.io/injected';
/** Annotation (on the workload or its pod template) that opts out: "false" or "disabled". */
export const INJECT_ANNOTATION = 'fusebox.io/inject';
/** Label on the pod template; the PodMonitor selects on it (PodMonitors select labels, not annotations). */
export const SIDECAR_LABEL = 'fusebox.io/sidecar';
export const SIDECAR_LABEL_VALUE = 'true';

/** The proxy variables set on every proxied container. */
export const PROXY_VARS = ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'] as const;
/** NO_PROXY is read upper-case by some tools and lower-case by others (curl); both get the same value. */
export const NO_PROXY_VARS = ['NO_PROXY', 'no_proxy'] as const;

/** What HTTP_PROXY and HTTPS_PROXY point at: Fusebox's proxy port on the pod's loopback. */
export const proxyUrl = (o: InjectOptions): string => `http://127.0.0.1:${o.proxyPort}`;

/** Destinations that never go through Fusebox: the pod itself and in-cluster services. */
export const requiredNoProxy = (o: InjectOptions): string[] =>
  dedupe(['localhost', '127.0.0.1', '::1', '.svc', '.cluster.local', `.${o.clusterDomain}`, ...o.noProxy]);

/** Drops later case-insensitive repeats, keeping the first spelling and the order. */
export const dedupe = (entries: string[]): string[] => {
  const seen = new Set<string>();
  return entries.filter((e) => {
    const key = e.toLowerCase();
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
};

/**
 * Seconds the pod needs to stop cleanly: the preStop sleep, then Fusebox's drain, plus 5 s for the agent and the
 * kubelet. The injector only ever raises terminationGracePeriodSeconds to this, never lowers it.
 */
export const requiredGraceSeconds = (o: InjectOptions): number => o.preStopSeconds + Math.ceil(o.graceMs / 1000) + 5;

/** Annotations set on an injected pod template (the prometheus.io ones only if the pod does not use them already). */
export const podAnnotations = (o: InjectOptions): Record<string, string> => ({
  [INJECTED_ANNOTATION]: o.version,
  'prometheus.io/scrape': 'true',
  'prometheus.io/port': String(o.adminPort),
  'prometheus.io/path': '/metrics',
});

/** Labels set on an injected pod template. */
export const podLabels = (): Record<string, string> => ({ [SIDECAR_LABEL]: SIDECAR_LABEL_VALUE });

/** The pod volume holding Fusebox's config.yaml. */
export const configVolume = (o: InjectOptions): IVolume => ({
  name: CONFIG_VOLUME_NAME,
  configMap: { name: o.configMapName },
});

/** The memory-backed volume the sidecar writes the CA certificates into. */
export const caVolume = (): IVolume => ({
  name: CA_VOLUME_NAME,
  emptyDir: { medium: 'Memory', sizeLimit: CA_VOLUME_SIZE_LIMIT },
});

/** The memory-backed volume, the sidecar's alone, that keeps the generated CA key across sidecar restarts. */
export const caKeepVolume = (): IVolume => ({
  name: CA_KEEP_VOLUME_NAME,
  emptyDir: { medium: 'Memory', sizeLimit: '1Mi' },
});

/** Every volume an injected pod gets. */
export const podVolumes = (o: InjectOptions): IVolume[] => [configVolume(o), ...(o.ca ? [caVolume(), caKeepVolume()] : [])];

/** The CA directory in a proxied container: read-only, so an agent cannot swap the CA for the next process. */
export const agentCaMount = (): IVolumeMount => ({ name: CA_VOLUME_NAME, mountPath: CA_MOUNT_PATH, readOnly: true });

/**
 * Fusebox as a native sidecar: an init container with `restartPolicy: Always` (Kubernetes ≥ 1.29). The kubelet
 * starts it before the agent containers, waits for its startupProbe, and stops it only after they have exited,
 * so the agent never runs without its proxy and a Job still completes when its agent exits.
 */
export const sidecarContainer = (o: InjectOptions): IContainer => {
  const adminProbe = (path: string) => ({ httpGet: { path, port: ADMIN_PORT_NAME } });
  const limits: Record<string, string> = o.cpuLimit === '' ? { memory: o.memoryLimit } : { cpu: o.cpuLimit, memory: o.memoryLimit };
  return {
    name: SIDECAR_NAME,
    image: o.image,
    restartPolicy: 'Always',
    args: ['--config', `${CONFIG_MOUNT_PATH}/config.yaml`],
    ports: [
      { name: PROXY_PORT_NAME, containerPort: o.proxyPort, protocol: 'TCP' },
      { name: ADMIN_PORT_NAME, containerPort: o.adminPort, protocol: 'TCP' },
    ],
    env: [
      { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
      { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
      { name: 'FUSEBOX_AGENT', valueFrom: { fieldRef: { fieldPath: `metadata.labels['${o.agentLabel}']` } } },
      ...(o.ca
        ? [
            { name: CA_DIR_ENV, value: CA_MOUNT_PATH },
            { name: CA_KEEP_ENV, value: CA_KEEP_MOUNT_PATH },
          ]
        : []),
    ],
    // optional: a missing Secret must not keep the pod from starting; the calls needing a key answer
    // CREDENTIAL_MISSING instead, which says exactly what is wrong.
    envFrom: [{ secretRef: { name: o.secretName, optional: true } }],
    resources: { requests: { cpu: o.cpuRequest, memory: o.memoryRequest }, limits },
    volumeMounts: [
      { name: CONFIG_VOLUME_NAME, mountPath: CONFIG_MOUNT_PATH, readOnly: true },
      ...(o.ca
        ? [
            { name: CA_VOLUME_NAME, mountPath: CA_MOUNT_PATH },
            { name: CA_KEEP_VOLUME_NAME, mountPath: CA_KEEP_MOUNT_PATH },
          ]
        : []),
    ],
    // For a native sidecar the startupProbe is the gate before the agent starts: ask for readiness, not mere
    // liveness, so the agent's first call finds a proxy that can route it, and the CA files it trusts exist.
    startupProbe: { ...adminProbe('/readyz'), periodSeconds: 1, timeoutSeconds: 2, failureThreshold: 30 },
    readinessProbe: { ...adminProbe('/readyz'), periodSeconds: 5, timeoutSeconds: 2, failureThreshold: 2 },
    livenessProbe: { ...adminProbe('/healthz'), periodSeconds: 10, timeoutSeconds: 2, failureThreshold: 3 },
    // The sleep handler (Kubernetes ≥ 1.30) runs no command in the container, so it needs no shell or `sleep` binary.
    ...(o.preStopSeconds > 0 ? { lifecycle: { preStop: { sleep: { seconds: o.preStopSeconds } } } } : {}),
    securityContext: {
      runAsNonRoot: true,
      // The image's `node` user (its USER 1000:1000).
      runAsUser: 1000,
      runAsGroup: 1000,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    },
    terminationMessagePolicy: 'FallbackToLogsOnError',
  };
};
