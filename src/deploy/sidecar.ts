import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IVolume } from 'kubernetes-models/v1/Volume';
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
/** Port names are what probes and the PodMonitor refer to; prefixed so they do not clash with the agent's own. */
export const PROXY_PORT_NAME = 'fusebox-proxy';
export const ADMIN_PORT_NAME = 'fusebox-admin';

/** Annotation on the pod template: the Fusebox version injected. */
export const INJECTED_ANNOTATION = 'fusebox.io/injected';
/** Annotation (on the workload or its pod template) that opts out: "false" or "disabled". */
export const INJECT_ANNOTATION = 'fusebox.io/inject';
/** Label on the pod template; the PodMonitor selects on it (PodMonitors select labels, not annotations). */
export const SIDECAR_LABEL = 'fusebox.io/sidecar';
export const SIDECAR_LABEL_VALUE = 'true';

/** The proxy variables set on every agent container. */
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
    ],
    // optional: a missing Secret must not keep the pod from starting; the calls needing a key answer
    // CREDENTIAL_MISSING instead, which says exactly what is wrong.
    envFrom: [{ secretRef: { name: o.secretName, optional: true } }],
    resources: { requests: { cpu: o.cpuRequest, memory: o.memoryRequest }, limits },
    volumeMounts: [{ name: CONFIG_VOLUME_NAME, mountPath: CONFIG_MOUNT_PATH, readOnly: true }],
    // For a native sidecar the startupProbe is the gate before the agent starts: ask for readiness, not mere
    // liveness, so the agent's first call finds a proxy that can route it.
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
