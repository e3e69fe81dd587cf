import { isMap, isScalar, isSeq, type Document, type YAMLMap } from 'yaml';
import { isJsonText, jsonIndent, printJson } from './json-print.js';
import { resolveInjectOptions, type InjectOptions } from './options.js';
import { injectPodTemplate } from './pod-template.js';
import { workloadShape } from './workloads.js';
import { child, plainAt } from './yaml-edit.js';
import { printDocument, printSource, readYamlStream, type StreamDocument } from './yaml-stream.js';

/**
 * `fusebox inject`: add the Fusebox sidecar to the workloads in a Kubernetes YAML stream, the way
 * `linkerd inject` and `istioctl kube-inject` do. Pure: text in, text and a report out.
 */

export type InjectStatus = 'injected' | 'skipped' | 'already' | 'refused';

/** What happened to one object of the input. */
export interface InjectResult {
  kind: string;
  name: string;
  namespace?: string;
  status: InjectStatus;
  /** Why it was skipped or refused (or a note on an existing injection). */
  reason?: string;
  /** Things the injector did or could not do that the user should know about; the object was still injected. */
  warnings?: string[];
}

export interface InjectOutput {
  /** The input with the sidecar added. Objects not injected are written back as they were. */
  output: string;
  /** One entry per object, in input order (a List contributes one per item). */
  results: InjectResult[];
}

/**
 * Inject the Fusebox sidecar into every Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController,
 * Job, CronJob and Pod of a (multi-document) YAML stream; `kind: List` items too. Everything else passes through.
 * A document that is refused (malformed, unknown shape, `hostNetwork`, conflicting proxy env) is written back
 * unchanged and reported; the others are still injected. Injecting an injected stream changes nothing.
 * A document written in JSON comes out in JSON, its unchanged parts as written; YAML comes out as YAML, comments kept.
 *
 * @throws InjectOptionsError when an option value is invalid.
 */
export const inject = (input: string, options: Partial<InjectOptions> = {}): InjectOutput => {
  const o = resolveInjectOptions(options);
  const stream = readYamlStream(input);
  const results: InjectResult[] = [];
  let output = '';
  stream.documents.forEach((d, i) => {
    const changed = injectDocument(d, i, input, o, results);
    if (!changed) output += printSource(d);
    else if (isJsonText(d.source)) output += d.prefix + (d.explicitStart ? '---\n' : '') + printJson(d.doc, input, jsonIndent(d.source)) + d.suffix;
    else output += printDocument(d, stream.style);
  });
  return { output: output + stream.trailer, results };
};

const injectDocument = (d: StreamDocument, index: number, input: string, o: InjectOptions, results: InjectResult[]): boolean => {
  const where = `document ${index + 1}`;
  const root = d.doc.contents;
  if (d.doc.errors.length > 0) {
    const err = d.doc.errors[0]!;
    const line = input.slice(0, err.pos[0]).split('\n').length;
    const guess = isMap(root) ? root : undefined;
    results.push({
      kind: stringAt(guess, ['kind']) ?? 'unknown',
      name: stringAt(guess, ['metadata', 'name']) ?? where,
      status: 'refused',
      reason: `malformed YAML in ${where}, line ${line}: ${err.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')}; written back unchanged`,
    });
    return false;
  }
  if (root === null || (isScalar(root) && (root.value === null || root.value === ''))) return false;
  if (!isMap(root)) {
    results.push({ kind: 'unknown', name: where, status: 'refused', reason: `${where} is not a Kubernetes object (not a mapping)` });
    return false;
  }
  return injectObject(d.doc, root, where, o, results);
};

const injectObject = (doc: Document, obj: YAMLMap, where: string, o: InjectOptions, results: InjectResult[]): boolean => {
  const kind = stringAt(obj, ['kind']);
  const name = stringAt(obj, ['metadata', 'name']) ?? stringAt(obj, ['metadata', 'generateName']) ?? `(unnamed, ${where})`;
  const namespace = stringAt(obj, ['metadata', 'namespace']);
  const report = (r: Omit<InjectResult, 'kind' | 'name' | 'namespace'>) =>
    results.push({ kind: kind ?? 'unknown', name, ...(namespace === undefined ? {} : { namespace }), ...r });

  if (kind === undefined) {
    report({ status: 'refused', reason: `${where} has no \`kind\`; not a Kubernetes object` });
    return false;
  }
  const items = child(obj, 'items');
  if (kind === 'List' || (kind.endsWith('List') && isSeq(items))) {
    if (!isSeq(items)) {
      report({ status: 'refused', reason: `${kind} without an \`items\` list` });
      return false;
    }
    let changed = false;
    items.items.forEach((item, i) => {
      const itemWhere = `${where}, item ${i + 1}`;
      if (isMap(item)) changed = injectObject(doc, item, itemWhere, o, results) || changed;
      else results.push({ kind: 'unknown', name: itemWhere, status: 'refused', reason: `${itemWhere} is not a Kubernetes object` });
    });
    return changed;
  }

  const shape = workloadShape(stringAt(obj, ['apiVersion']), kind);
  if (shape.type === 'other') {
    report({ status: 'skipped', reason: shape.reason });
    return false;
  }
  const outcome = injectPodTemplate(doc, obj, shape.templatePath, kind, o);
  report(outcome);
  return outcome.status === 'injected';
};

const stringAt = (map: YAMLMap | undefined, path: readonly string[]): string | undefined => {
  try {
    const v = plainAt(map, path);
    return typeof v === 'string' && v !== '' ? v : undefined;
  } catch {
    // A broken document can hold nodes that cannot be turned into values; the name is only for the report.
    return undefined;
  }
};
