/** Where each built-in workload keeps its pod template. */

/** Path from the object to its pod template (an object with `metadata` and `spec`); [] for a Pod itself. */
const TEMPLATE_PATHS: Record<string, readonly string[]> = {
  Deployment: ['spec', 'template'],
  StatefulSet: ['spec', 'template'],
  DaemonSet: ['spec', 'template'],
  ReplicaSet: ['spec', 'template'],
  ReplicationController: ['spec', 'template'],
  Job: ['spec', 'template'],
  CronJob: ['spec', 'jobTemplate', 'spec', 'template'],
  Pod: [],
};

/** API groups that define the kinds above; a `Job` from another group (Volcano, Kubeflow...) is a different thing. */
const BUILT_IN_GROUPS = new Set(['', 'apps', 'extensions', 'batch']);

export type WorkloadShape =
  | { type: 'workload'; templatePath: readonly string[] }
  | { type: 'other'; reason: string };

/** Does this object carry a pod template Fusebox can inject into, and where? */
export const workloadShape = (apiVersion: unknown, kind: string): WorkloadShape => {
  const templatePath = TEMPLATE_PATHS[kind];
  if (templatePath === undefined) return { type: 'other', reason: `${kind} has no pod template` };
  const group = typeof apiVersion === 'string' && apiVersion.includes('/') ? apiVersion.slice(0, apiVersion.indexOf('/')) : '';
  if (!BUILT_IN_GROUPS.has(group)) {
    return { type: 'other', reason: `${apiVersion as string} ${kind} is not the built-in Kubernetes ${kind}; its pod template cannot be found` };
  }
  return { type: 'workload', templatePath };
};
