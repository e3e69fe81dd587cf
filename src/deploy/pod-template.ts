import { isDeepStrictEqual } from 'node:util';
import { isMap, isSeq, type Document, type YAMLMap, type YAMLSeq } from 'yaml';
import type { InjectOptions } from './options.js';
import { planAgentEnv, type EnvEdit } from './agent-env.js';
import { selectContainers } from './containers.js';
import {
  ADMIN_PORT_NAME,
  agentCaMount,
  CA_MOUNT_PATH,
  CA_VOLUME_NAME,
  CA_KEEP_VOLUME_NAME,
  caKeepVolume,
  caVolume,
  CONFIG_VOLUME_NAME,
  configVolume,
  CONTAINERS_ANNOTATION,
  INJECT_ANNOTATION,
  INJECTED_ANNOTATION,
  podAnnotations,
  podLabels,
  PROXY_PORT_NAME,
  requiredGraceSeconds,
  SIDECAR_NAME,
  sidecarContainer,
} from './sidecar.js';
import { child, childAt, ensureMap, ensureSeq, plain, plainAt, usesAnchors } from './yaml-edit.js';

/** What happened to one pod template. */
export interface TemplateOutcome {
  status: 'injected' | 'skipped' | 'already' | 'refused';
  reason?: string;
  warnings?: string[];
}

const OPT_OUT_VALUES = new Set(['false', 'disabled']);

/**
 * Check one workload's pod template and, when every check passes, add the sidecar to it in place. Any check that
 * fails leaves the document untouched: a half-injected workload is worse than none.
 */
export const injectPodTemplate = (doc: Document, obj: YAMLMap, templatePath: readonly string[], kind: string, o: InjectOptions): TemplateOutcome => {
  const template = templatePath.length === 0 ? obj : childAt(obj, templatePath);
  const templateName = templatePath.length === 0 ? 'the Pod' : templatePath.join('.');

  // Opt-out is looked for on the workload, on a CronJob's jobTemplate and on the pod template.
  const optOutPaths = [['metadata'], ['spec', 'jobTemplate', 'metadata'], [...templatePath, 'metadata']];
  for (const path of optOutPaths) {
    const value = plainAt(obj, [...path, 'annotations', INJECT_ANNOTATION]);
    if (value !== undefined && OPT_OUT_VALUES.has(String(value).toLowerCase())) {
      return { status: 'skipped', reason: `opted out by the annotation ${INJECT_ANNOTATION}: "${String(value)}" on ${path.join('.')}` };
    }
  }

  if (!isMap(template)) return refuse(`unknown ${kind} shape: ${templateName} is missing or not a mapping`);
  const spec = child(template, 'spec');
  const containers = isMap(spec) ? child(spec, 'containers') : undefined;
  if (!isMap(spec) || !isSeq(containers) || containers.items.length === 0) {
    return refuse(`unknown ${kind} shape: ${[...templatePath, 'spec', 'containers'].join('.')} is missing or empty`);
  }
  if (usesAnchors(template)) {
    return refuse(
      `the pod template uses YAML anchors or aliases; editing a shared node would change every place that refers to it. ` +
        `Expand them first (e.g. \`yq 'explode(.)'\`)`,
    );
  }
  const podSpec = plain(spec) as PodSpecView;
  if (!podSpec.containers.every((c) => isRecord(c) && typeof c.name === 'string')) {
    return refuse(`unknown ${kind} shape: every container needs a name`);
  }
  // Every shape problem is found before the first edit: a refused object inside a List is printed with the rest
  // of the List, so it must come out of here untouched.
  const templateMeta = plainAt(template, ['metadata']);
  const shapeProblems = [
    ['spec.initContainers', podSpec.initContainers, Array.isArray],
    ['spec.volumes', podSpec.volumes, Array.isArray],
    ['metadata', templateMeta, isRecord],
    ['metadata.annotations', isRecord(templateMeta) ? templateMeta.annotations : undefined, isRecord],
    ['metadata.labels', isRecord(templateMeta) ? templateMeta.labels : undefined, isRecord],
  ] as const;
  for (const [path, value, isShape] of shapeProblems) {
    if (value !== undefined && value !== null && !isShape(value)) return refuse(`unknown ${kind} shape: the pod template's ${path} is not a ${isShape === isRecord ? 'mapping' : 'list'}`);
  }
  const initContainers = Array.isArray(podSpec.initContainers) ? podSpec.initContainers.filter(isRecord) : [];

  const existing = initContainers.find((c) => c.name === SIDECAR_NAME);
  if (existing !== undefined) {
    const version = plainAt(template, ['metadata', 'annotations', INJECTED_ANNOTATION]);
    if (version !== undefined && String(version) !== o.version) {
      return {
        status: 'already',
        reason: `injected by Fusebox ${String(version)}, not ${o.version}; remove the ${SIDECAR_NAME} init container to inject this version`,
      };
    }
    return { status: 'already' };
  }

  const agents = podSpec.containers as ContainerView[];
  // Nearest to the pod first: the pod template's annotation wins over the workload's.
  const annotation = [...optOutPaths]
    .reverse()
    .map((path) => ({ on: path.join('.'), value: plainAt(obj, [...path, 'annotations', CONTAINERS_ANNOTATION]) }))
    .find((a) => a.value !== undefined && a.value !== null);
  const selection = selectContainers(
    agents.map((c) => ({ name: String(c.name), image: c.image })),
    annotation === undefined ? undefined : { on: annotation.on, value: String(annotation.value) },
    o.containers,
  );
  if (!selection.ok) return { status: selection.status, reason: selection.reason };
  const proxied = (c: ContainerView) => selection.selected.has(String(c.name));

  const reasons: string[] = [];
  if (podSpec.hostNetwork === true) {
    reasons.push(
      'hostNetwork: true puts the pod in the node\'s network namespace, so 127.0.0.1 is the node\'s loopback: Fusebox ' +
        `would bind ports ${o.proxyPort} and ${o.adminPort} on the node (clashing with every other such pod there) and ` +
        'any process on the node could spend through it',
    );
  }
  if (agents.some((c) => c.name === SIDECAR_NAME)) {
    reasons.push(`a regular container is already named "${SIDECAR_NAME}" (a hand-written sidecar?); remove it or opt the workload out`);
  }
  for (const c of [...agents, ...initContainers]) {
    for (const port of Array.isArray(c.ports) ? c.ports.filter(isRecord) : []) {
      if (port.containerPort === o.proxyPort || port.containerPort === o.adminPort) {
        reasons.push(`container "${String(c.name)}" uses port ${String(port.containerPort)}, which the sidecar needs (pass --proxy-port / --admin-port and change the config to match)`);
      }
      if (port.name === PROXY_PORT_NAME || port.name === ADMIN_PORT_NAME) {
        reasons.push(`container "${String(c.name)}" already has a port named ${String(port.name)}`);
      }
    }
  }
  const volumes = Array.isArray(podSpec.volumes) ? podSpec.volumes.filter(isRecord) : [];
  const sameNameVolume = volumes.find((v) => v.name === CONFIG_VOLUME_NAME);
  const reuseVolume = sameNameVolume !== undefined && isRecord(sameNameVolume.configMap) && sameNameVolume.configMap.name === o.configMapName;
  if (sameNameVolume !== undefined && !reuseVolume) {
    reasons.push(`the pod already has a volume named ${CONFIG_VOLUME_NAME} that is not the ConfigMap ${o.configMapName}`);
  }
  const sameNameCaVolume = volumes.find((v) => v.name === CA_VOLUME_NAME);
  const reuseCaVolume = sameNameCaVolume !== undefined && isDeepStrictEqual(sameNameCaVolume, caVolume());
  if (o.ca && sameNameCaVolume !== undefined && !reuseCaVolume) {
    reasons.push(`the pod already has a volume named ${CA_VOLUME_NAME} that is not Fusebox's CA emptyDir; rename it, or pass --no-ca`);
  }
  const sameNameKeepVolume = volumes.find((v) => v.name === CA_KEEP_VOLUME_NAME);
  const reuseKeepVolume = sameNameKeepVolume !== undefined && isDeepStrictEqual(sameNameKeepVolume, caKeepVolume());
  if (o.ca && sameNameKeepVolume !== undefined && !reuseKeepVolume) {
    reasons.push(`the pod already has a volume named ${CA_KEEP_VOLUME_NAME} that is not Fusebox's CA key emptyDir; rename it, or pass --no-ca`);
  }
  // Which proxied containers still need the CA mount; one that has exactly it already keeps it.
  const needsCaMount = new Set<number>();
  if (o.ca) {
    agents.forEach((c, i) => {
      if (!proxied(c)) return;
      if (c.volumeMounts !== undefined && c.volumeMounts !== null && !Array.isArray(c.volumeMounts)) {
        reasons.push(`container "${String(c.name)}": volumeMounts is not a list`);
        return;
      }
      const mounts = Array.isArray(c.volumeMounts) ? c.volumeMounts.filter(isRecord) : [];
      const clashing = mounts.filter((m) => m.name === CA_VOLUME_NAME || m.mountPath === CA_MOUNT_PATH);
      if (clashing.length === 0) needsCaMount.add(i);
      else if (!clashing.every((m) => isDeepStrictEqual(m, agentCaMount()))) {
        reasons.push(
          `container "${String(c.name)}" already mounts ${clashing.map((m) => `${String(m.name)} at ${String(m.mountPath)}`).join(', ')}, ` +
            `where the pod CA goes (${CA_VOLUME_NAME} at ${CA_MOUNT_PATH}); move it, or pass --no-ca`,
        );
      }
    });
  }
  const grace = podSpec.terminationGracePeriodSeconds;
  if (grace !== undefined && grace !== null && !Number.isInteger(grace)) {
    reasons.push('terminationGracePeriodSeconds is not a whole number');
  }

  const warnings: string[] = [...selection.notes];
  const envEdits = new Map<number, EnvEdit[]>();
  agents.forEach((c, i) => {
    if (!proxied(c)) return;
    const plan = planAgentEnv(String(c.name), c.env, o);
    if (!plan.ok) reasons.push(...plan.reasons);
    else {
      envEdits.set(i, plan.edits);
      warnings.push(...plan.warnings);
    }
    if (Array.isArray(c.envFrom) && c.envFrom.length > 0) {
      warnings.push(`container "${String(c.name)}" also reads envFrom; a proxy, CA or base-URL variable set there is overridden by the injected env`);
    }
  });
  if (reasons.length > 0) return refuse(reasons.join('; '));

  // Every check passed: from here on the document is edited, and the shapes are known to be right.
  const metadata = shaped(ensureMap(doc, template, 'metadata'));
  const annotations = shaped(ensureMap(doc, metadata, 'annotations'));
  const labels = shaped(ensureMap(doc, metadata, 'labels'));
  // Written before `containers`, the order the kubelet starts them in.
  const initSeq = shaped(ensureSeq(doc, spec, 'initContainers', 'containers'));
  const volumeSeq = reuseVolume && (!o.ca || (reuseCaVolume && reuseKeepVolume)) ? undefined : shaped(ensureSeq(doc, spec, 'volumes'));

  const want = podAnnotations(o);
  const promKeys = Object.keys(want).filter((k) => k.startsWith('prometheus.io/'));
  const clashing = promKeys.filter((k) => annotations.has(k) && String(plain(annotations.get(k, true))) !== want[k]);
  for (const [k, v] of Object.entries(want)) {
    // The prometheus.io annotations name one port per pod: if the agent already uses them for its own metrics,
    // taking them over would silently stop that scrape.
    if (clashing.length > 0 && promKeys.includes(k)) continue;
    annotations.set(k, v);
  }
  if (clashing.length > 0) {
    warnings.push(
      `kept the pod's own ${clashing.map((k) => `${k}=${String(plain(annotations.get(k, true)))}`).join(', ')}; ` +
        'scrape Fusebox with the PodMonitor (deploy/kubernetes/base/podmonitor.yaml) instead',
    );
  }
  for (const [k, v] of Object.entries(podLabels())) labels.set(k, v);
  const agentLabel = plainAt(template, ['metadata', 'labels', o.agentLabel]);
  if (agentLabel === undefined) {
    warnings.push(`the pod template has no label ${o.agentLabel}, so FUSEBOX_AGENT will be empty (add the label or pass --agent-label)`);
  }

  initSeq.items.unshift(doc.createNode(sidecarContainer(o)));
  if (!reuseVolume) volumeSeq?.items.push(doc.createNode(configVolume(o)));
  if (o.ca && !reuseCaVolume) volumeSeq?.items.push(doc.createNode(caVolume()));
  if (o.ca && !reuseKeepVolume) volumeSeq?.items.push(doc.createNode(caKeepVolume()));
  const required = requiredGraceSeconds(o);
  if (typeof grace !== 'number' || grace < required) spec.set('terminationGracePeriodSeconds', required);

  containers.items.forEach((node, i) => {
    if (!isMap(node)) return;
    const edits = envEdits.get(i);
    if (edits && edits.length > 0) applyEnvEdits(doc, shaped(ensureSeq(doc, node, 'env')), edits);
    if (needsCaMount.has(i)) shaped(ensureSeq(doc, node, 'volumeMounts')).items.push(doc.createNode(agentCaMount()));
  });

  return { status: 'injected', ...(warnings.length > 0 ? { warnings } : {}) };
};

const applyEnvEdits = (doc: Document, env: YAMLSeq, edits: EnvEdit[]): void => {
  for (const edit of edits) {
    if (edit.op === 'append') {
      env.items.push(doc.createNode({ name: edit.name, value: edit.value }));
      continue;
    }
    const entry = env.items[edit.index];
    if (!isMap(entry)) continue;
    entry.delete('valueFrom');
    entry.set('value', edit.value);
  }
};

const refuse = (reason: string): TemplateOutcome => ({ status: 'refused', reason });

const shaped = <T>(node: T | undefined): T => {
  if (node === undefined) throw new Error('internal: a pod template changed shape between the checks and the edits');
  return node;
};

interface PodSpecView {
  containers: unknown[];
  initContainers?: unknown;
  volumes?: unknown;
  hostNetwork?: unknown;
  terminationGracePeriodSeconds?: unknown;
}

interface ContainerView {
  name?: unknown;
  image?: unknown;
  env?: unknown;
  volumeMounts?: unknown;
  envFrom?: unknown;
  ports?: unknown;
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
