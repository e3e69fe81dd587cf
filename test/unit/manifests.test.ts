import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { PassThrough } from 'node:stream';
import type { IPodMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor';
import type { IPrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import type { IStatefulSet } from 'kubernetes-models/apps/v1/StatefulSet';
import type { INetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import type { IConfigMap } from 'kubernetes-models/v1/ConfigMap';
import type { IPodTemplateSpec } from 'kubernetes-models/v1/PodTemplateSpec';
import type { ISecret } from 'kubernetes-models/v1/Secret';
import type { IService } from 'kubernetes-models/v1/Service';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { runRules } from '../../src/cli/rules.js';
import { parseConfig } from '../../src/config/load.js';
import { inject } from '../../src/deploy/inject.js';
import { DEFAULT_INJECT_OPTIONS, FUSEBOX_VERSION, resolveInjectOptions } from '../../src/deploy/options.js';
import { planAgentEnv } from '../../src/deploy/agent-env.js';
import { ADMIN_PORT_NAME, podAnnotations, podLabels, podVolumes, requiredGraceSeconds, sidecarContainer } from '../../src/deploy/sidecar.js';
import { validateK8s } from '../fixtures/k8s/k8s-schema.js';

/**
 * Everything deploy/kubernetes ships, checked: Kubernetes objects against the schema, the rest by shape and by what
 * inject() builds. The Prometheus Operator objects (the PodMonitor, deploy/prometheus's PrometheusRule and what
 * `fusebox rules --format prometheus-operator` prints) against the operator's CRD schemas.
 */

const ROOT = join(import.meta.dirname, '../..');
const DEPLOY = join(ROOT, 'deploy/kubernetes');
const UPDATE = process.env.UPDATE_GOLDEN === '1';
const o = resolveInjectOptions();

type Meta = NonNullable<IPodTemplateSpec['metadata']>;
/** A parsed object of any kind, before it is known which. */
interface AnyObject {
  apiVersion?: string;
  kind?: string;
  metadata?: Meta;
  [field: string]: unknown;
}
interface Kustomization extends AnyObject {
  resources?: string[];
  components?: string[];
  patches?: { path?: string; patch?: string; target?: Record<string, string> }[];
}

const yamlFiles = (dir: string): string[] =>
  readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return yamlFiles(path);
    return /\.ya?ml$/.test(name) ? [path] : [];
  });

const objectsIn = (path: string): AnyObject[] => {
  const docs = parseAllDocuments(readFileSync(path, 'utf8'), { version: '1.1', uniqueKeys: true });
  for (const d of docs) expect([...d.errors, ...d.warnings].map((e) => e.message), relative(ROOT, path)).toEqual([]);
  return docs.map((d) => d.toJS() as AnyObject | null).filter((x) => x !== null);
};

const deployFile = (path: string): AnyObject[] => objectsIn(join(DEPLOY, path));
/** The one object of `kind` (and `name`) in a file under deploy/kubernetes, typed as the caller says it is. */
const one = <T = AnyObject>(path: string, kind: string, name?: string): T => {
  const found = deployFile(path).filter((x) => x.kind === kind && (name === undefined || x.metadata?.name === name));
  expect(found, `${kind} ${name ?? ''} in ${path}`).toHaveLength(1);
  return found[0] as T;
};
const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const named = (v: unknown): v is { name: string } => isRecord(v) && typeof v.name === 'string';

const GENERATED_HEADER =
  '# GENERATED from deploy/kubernetes/examples/kustomize/agent.yaml by `fusebox inject`; do not edit by hand.\n' +
  '# test/unit/manifests.test.ts checks it is current; `UPDATE_GOLDEN=1 npx vitest run test/unit/manifests.test.ts` rewrites it.\n';

/** kustomize's strategic merge, as far as these patches need it: maps merge, lists of named objects merge by name. */
const strategicMerge = (target: unknown, patch: unknown): unknown => {
  if (Array.isArray(target) && Array.isArray(patch) && target.every(named) && patch.every(named)) {
    const merged = target.map((t) => {
      const p = patch.find((x) => x.name === t.name);
      return p ? strategicMerge(t, p) : t;
    });
    return [...merged, ...patch.filter((p) => !target.some((t) => t.name === p.name))];
  }
  if (isRecord(target) && isRecord(patch)) {
    const out: Record<string, unknown> = { ...target };
    for (const [k, v] of Object.entries(patch)) out[k] = k in out ? strategicMerge(out[k], v) : v;
    return out;
  }
  return patch;
};

describe('deploy/kubernetes', () => {
  const files = yamlFiles(DEPLOY);
  const KUSTOMIZE = new Set(['kustomize.config.k8s.io/v1beta1 Kustomization', 'kustomize.config.k8s.io/v1alpha1 Component']);

  it('ships YAML that parses cleanly, every object a kind this test knows how to check', () => {
    expect(files.length).toBeGreaterThanOrEqual(13);
    for (const file of files) {
      for (const obj of objectsIn(file)) {
        const id = `${obj.apiVersion} ${obj.kind}`;
        const checked = KUSTOMIZE.has(id) || relative(DEPLOY, file) === 'components/fusebox-sidecar/sidecar-patch.yaml';
        if (!checked) expect(() => validateK8s(obj), `${relative(ROOT, file)}: ${id} ${obj.metadata?.name}`).not.toThrow();
      }
    }
  });

  it('the default image and the injected annotation carry the package version', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(FUSEBOX_VERSION).toBe(pkg.version);
    expect(DEFAULT_INJECT_OPTIONS.image).toBe(`ghcr.io/fusebox/fusebox:${pkg.version}`);
  });

  it('base/agent-deployment.yaml is exactly what inject() makes of the example agent (UPDATE_GOLDEN=1 rewrites it)', () => {
    const { output, results } = inject(readFileSync(join(DEPLOY, 'examples/kustomize/agent.yaml'), 'utf8'));
    expect(results).toEqual([{ kind: 'Deployment', name: 'research-agent', status: 'injected' }]);
    const target = join(DEPLOY, 'base/agent-deployment.yaml');
    if (UPDATE) writeFileSync(target, GENERATED_HEADER + output);
    expect(readFileSync(target, 'utf8')).toBe(GENERATED_HEADER + output);
  });

  it('the example config is valid for Fusebox and agrees with the sidecar inject builds', () => {
    const cm = one<IConfigMap>('base/configmap.yaml', 'ConfigMap', o.configMapName);
    const text = cm.data?.['config.yaml'] ?? '';
    // The environment inject gives the sidecar: the agent label, not the pod name, is the budget identity.
    const env = { POD_NAME: 'research-agent-7d9f-abcde', FUSEBOX_AGENT: 'research-agent' };
    const config = parseConfig(parseAllDocuments(text)[0]!.toJS(), 'configmap.yaml', env);
    expect(config.agent.id).toBe('research-agent');
    // An unlabelled pod gets an empty FUSEBOX_AGENT from the downward API: a shared, visible fallback, not a crash.
    expect(parseConfig(parseAllDocuments(text)[0]!.toJS(), 'configmap.yaml', { ...env, FUSEBOX_AGENT: '' }).agent.id).toBe('unlabelled');
    expect(config.listen.proxy).toMatchObject({ host: '127.0.0.1', port: o.proxyPort });
    expect(config.listen.admin).toMatchObject({ host: '0.0.0.0', port: o.adminPort, tokenEnv: 'FUSEBOX_ADMIN_TOKEN' });
    expect(config.shutdown.graceMs).toBe(DEFAULT_INJECT_OPTIONS.graceMs);
    expect(config.store).toMatchObject({ kind: 'redis', url: 'redis://fusebox-redis.fusebox.svc.cluster.local:6379' });
    expect(config.routes.map((r) => r.credential?.env)).toEqual(['OPENAI_API_KEY', 'ANTHROPIC_API_KEY']);
    // The config is mounted at /etc/fusebox and read as config.yaml, which is what the sidecar's args name.
    expect(sidecarContainer(o).args).toEqual(['--config', '/etc/fusebox/config.yaml']);
  });

  it('the Secret example names every variable the config and the sidecar read, with placeholder values only', () => {
    const secret = one<ISecret>('base/secret.example.yaml', 'Secret', o.secretName);
    expect(Object.keys(secret.stringData ?? {}).sort()).toEqual(['ANTHROPIC_API_KEY', 'FUSEBOX_ADMIN_TOKEN', 'FUSEBOX_REDIS_URL', 'OPENAI_API_KEY']);
    for (const value of Object.values(secret.stringData ?? {})) expect(value).toContain('replace-me');
    const redisSecret = one<ISecret>('redis/secret.example.yaml', 'Secret', 'fusebox-redis-auth');
    expect(redisSecret.stringData).toEqual({ password: 'replace-me' });
  });

  it('no kustomization applies an example Secret (it would overwrite the real one)', () => {
    for (const file of files.filter((f) => f.endsWith('kustomization.yaml'))) {
      const k = objectsIn(file)[0] as Kustomization;
      expect(k.resources ?? [], relative(ROOT, file)).not.toContainEqual(expect.stringContaining('secret'));
    }
  });

  it('every kustomization names resources, components and patches that exist', () => {
    for (const file of files.filter((f) => f.endsWith('kustomization.yaml'))) {
      const k = objectsIn(file)[0] as Kustomization;
      expect(KUSTOMIZE.has(`${k.apiVersion} ${k.kind}`), relative(ROOT, file)).toBe(true);
      const patchFiles = (k.patches ?? []).flatMap((p) => (p.path === undefined ? [] : [p.path]));
      for (const entry of [...(k.resources ?? []), ...(k.components ?? []), ...patchFiles]) {
        const path = join(dirname(file), entry);
        expect(existsSync(path), `${relative(ROOT, file)} → ${entry}`).toBe(true);
        if (statSync(path).isDirectory()) expect(existsSync(join(path, 'kustomization.yaml')), `${entry} has a kustomization.yaml`).toBe(true);
      }
      for (const c of k.components ?? []) expect(objectsIn(join(dirname(file), c, 'kustomization.yaml'))[0]?.kind).toBe('Component');
    }
  });

  it('the PodMonitor selects the label inject puts on pods and scrapes the named admin port', () => {
    const pm = one<IPodMonitor>('base/podmonitor.yaml', 'PodMonitor', 'fusebox');
    expect(pm.apiVersion).toBe('monitoring.coreos.com/v1');
    expect(pm.spec.selector).toEqual({ matchLabels: podLabels() });
    expect(pm.spec.podMetricsEndpoints).toEqual([expect.objectContaining({ port: ADMIN_PORT_NAME, path: '/metrics' })]);
    expect(sidecarContainer(o).ports).toContainEqual(expect.objectContaining({ name: ADMIN_PORT_NAME, containerPort: o.adminPort }));
  });
});

describe('deploy/kubernetes/components/fusebox-sidecar', () => {
  const component = one<Kustomization>('components/fusebox-sidecar/kustomization.yaml', 'Component');
  const patch = one<IDeployment>('components/fusebox-sidecar/sidecar-patch.yaml', 'Deployment');
  const template = patch.spec!.template;

  it('is a kustomize Component patching Deployments selected by the fusebox.io/inject=enabled label or annotation', () => {
    expect(component.apiVersion).toBe('kustomize.config.k8s.io/v1alpha1');
    expect(component.patches?.map((p) => p.target)).toEqual([
      { group: 'apps', version: 'v1', kind: 'Deployment', labelSelector: 'fusebox.io/inject=enabled' },
      { group: 'apps', version: 'v1', kind: 'Deployment', annotationSelector: 'fusebox.io/inject=enabled' },
    ]);
    expect(component.patches?.every((p) => p.path === 'sidecar-patch.yaml')).toBe(true);
  });

  it('patches in the very sidecar container, volume, labels, annotations and grace period inject() builds', () => {
    expect(template.spec?.initContainers).toEqual([sidecarContainer(o)]);
    expect(template.spec?.volumes).toEqual(podVolumes(o));
    expect(template.metadata).toEqual({ labels: podLabels(), annotations: podAnnotations(o) });
    expect(template.spec?.terminationGracePeriodSeconds).toBe(requiredGraceSeconds(o));
    expect(template.metadata?.annotations?.['fusebox.io/injected']).toBe(FUSEBOX_VERSION);
  });

  it('its proxy-env ConfigMap holds the env inject() sets on an agent container without env of its own', () => {
    const cm = one<IConfigMap>('components/fusebox-sidecar/proxy-env.yaml', 'ConfigMap', 'fusebox-proxy-env');
    const plan = planAgentEnv('agent', [], o);
    if (!plan.ok) throw new Error('plan refused');
    expect(cm.data).toEqual(Object.fromEntries(plan.edits.map((e) => (e.op === 'append' ? [e.name, e.value] : []))));
  });

  it('applied with the example kustomization to the example agent, gives a valid Deployment with the pod inject() gives', () => {
    const agent = one<IDeployment>('examples/kustomize/agent.yaml', 'Deployment', 'research-agent');
    const overlay = one<Kustomization>('examples/kustomize/kustomization.yaml', 'Kustomization');
    const overlayPatch: unknown = parseAllDocuments(overlay.patches?.[0]?.patch ?? '')[0]!.toJS();
    const built = strategicMerge(strategicMerge(agent, patch), overlayPatch) as IDeployment;
    built.metadata = { ...built.metadata, name: agent.metadata?.name }; // kustomize keeps the target's name; the patch's is ignored
    expect(() => validateK8s(built)).not.toThrow();

    const injected = parseAllDocuments(inject(readFileSync(join(DEPLOY, 'examples/kustomize/agent.yaml'), 'utf8')).output)[0]!.toJS() as IDeployment;
    const pod = built.spec!.template;
    const want = injected.spec!.template;
    expect(pod.spec?.initContainers).toEqual(want.spec?.initContainers);
    expect(pod.spec?.volumes).toEqual(want.spec?.volumes);
    expect(pod.metadata).toEqual(want.metadata);
    expect(pod.spec?.terminationGracePeriodSeconds).toBe(want.spec?.terminationGracePeriodSeconds);
    expect(pod.spec?.containers[0]?.envFrom).toEqual([{ configMapRef: { name: 'fusebox-proxy-env' } }]);
    expect(pod.spec?.containers[0]?.volumeMounts).toEqual(want.spec?.containers[0]?.volumeMounts);
  });
});

describe('deploy/kubernetes/redis', () => {
  const objects = deployFile('redis/redis.yaml');
  const sts = one<IStatefulSet>('redis/redis.yaml', 'StatefulSet', 'fusebox-redis');
  const pod = sts.spec!.template;
  const redis = pod.spec!.containers[0]!;
  const service = one<IService>('redis/redis.yaml', 'Service', 'fusebox-redis');
  const conf = one<IConfigMap>('redis/redis.yaml', 'ConfigMap', 'fusebox-redis-config').data?.['redis.conf'] ?? '';
  const directive = (name: string) => conf.split('\n').find((l) => l.startsWith(`${name} `))?.slice(name.length + 1);

  it('never evicts a budget key and keeps an append-only file on a persistent volume', () => {
    expect(directive('maxmemory-policy')).toBe('noeviction');
    expect(directive('appendonly')).toBe('yes');
    expect(directive('appendfsync')).toBe('everysec');
    expect(directive('dir')).toBe('/data');
    expect(sts.spec?.volumeClaimTemplates?.map((t) => t.metadata?.name)).toEqual(['data']);
    expect(redis.volumeMounts).toContainEqual({ name: 'data', mountPath: '/data' });
  });

  it('keeps maxmemory below the container memory limit, leaving room for the AOF rewrite', () => {
    const maxmemoryMb = Number(/^(\d+)mb$/.exec(directive('maxmemory') ?? '')?.[1]);
    const limitMi = Number(/^(\d+)Mi$/.exec(String(redis.resources?.limits?.memory))?.[1]);
    expect(maxmemoryMb * 1e6).toBeLessThan(limitMi * 2 ** 20 * 0.8);
  });

  it('is reachable at the URL the example config defaults to, and only from injected pods', () => {
    const url = new URL('redis://fusebox-redis.fusebox.svc.cluster.local:6379');
    const servicePort = service.spec?.ports?.[0];
    expect(`${service.metadata?.name}.${service.metadata?.namespace}.svc.cluster.local`).toBe(url.hostname);
    expect(servicePort?.port).toBe(Number(url.port));
    expect(service.spec?.selector).toEqual(pod.metadata?.labels);
    expect(redis.ports?.map((p) => p.name)).toContain(servicePort?.targetPort);
    const np = one<INetworkPolicy>('redis/networkpolicy.yaml', 'NetworkPolicy', 'fusebox-redis');
    expect(np.spec?.podSelector?.matchLabels).toEqual(pod.metadata?.labels);
    expect(np.spec?.ingress?.[0]?.from?.[0]?.podSelector?.matchLabels).toEqual(podLabels());
    for (const obj of [...objects, np]) expect(obj.metadata?.namespace).toBe('fusebox');
  });

  it('takes its password from the Secret the example documents, for the server and for redis-cli', () => {
    expect(redis.env?.map((e) => [e.name, e.valueFrom?.secretKeyRef])).toEqual([
      ['REDIS_PASSWORD', { name: 'fusebox-redis-auth', key: 'password' }],
      ['REDISCLI_AUTH', { name: 'fusebox-redis-auth', key: 'password' }],
    ]);
    expect(redis.args).toEqual(['/etc/redis/redis.conf', '--requirepass', '$(REDIS_PASSWORD)']);
  });
});

describe('Prometheus Operator objects, against the operator\'s CRD schemas', () => {
  const podMonitor = one<IPodMonitor>('base/podmonitor.yaml', 'PodMonitor', 'fusebox');
  const prometheusRule = (): IPrometheusRule => {
    const objects = objectsIn(join(ROOT, 'deploy/prometheus/prometheusrule.yaml'));
    expect(objects.map((x) => `${x.apiVersion} ${x.kind}`)).toEqual(['monitoring.coreos.com/v1 PrometheusRule']);
    return objects[0] as unknown as IPrometheusRule;
  };
  const copy = <T>(x: T): T => structuredClone(x);

  it('deploy/kubernetes/base/podmonitor.yaml is a valid PodMonitor', () => {
    expect(() => validateK8s(podMonitor)).not.toThrow();
  });

  it('deploy/prometheus/prometheusrule.yaml is a valid PrometheusRule', () => {
    const rule = prometheusRule();
    expect(rule.spec.groups?.flatMap((g) => g.rules ?? []).length).toBeGreaterThan(10);
    expect(() => validateK8s(rule)).not.toThrow();
  });

  it('`fusebox rules --format prometheus-operator` prints a valid PrometheusRule, namespace and labels included', async () => {
    const stdout = new PassThrough();
    let out = '';
    stdout.on('data', (c: Buffer) => (out += c.toString()));
    const args = ['--config', join(ROOT, 'config/example.yaml'), '--format', 'prometheus-operator', '--namespace', 'monitoring', '--label', 'release=prometheus'];
    expect(await runRules(args, { stdout, stderr: new PassThrough(), env: {} })).toBe(0);
    const docs = parseAllDocuments(out).map((d) => d.toJS() as AnyObject);
    expect(docs).toHaveLength(1);
    const rule = docs[0] as unknown as IPrometheusRule;
    expect(rule).toMatchObject({ kind: 'PrometheusRule', metadata: { name: 'fusebox-slo', namespace: 'monitoring', labels: { release: 'prometheus' } } });
    expect(rule.spec.groups?.flatMap((g) => g.rules ?? []).some((r) => r.alert !== undefined && r.for === undefined)).toBe(true);
    expect(() => validateK8s(rule)).not.toThrow();
  });

  // The checks above can fail: the schemas reject a wrong type, a missing required field, a malformed duration.
  it('the schemas reject a PodMonitor or PrometheusRule the operator would reject', () => {
    const numericPort = copy(podMonitor);
    (numericPort.spec.podMetricsEndpoints![0]! as Record<string, unknown>).port = 9091;
    expect(() => validateK8s(numericPort)).toThrow(/podMetricsEndpoints\/0\/port must be string/);
    const badInterval = copy(podMonitor);
    badInterval.spec.podMetricsEndpoints![0]!.interval = '30 seconds';
    expect(() => validateK8s(badInterval)).toThrow(/podMetricsEndpoints\/0\/interval must match pattern/);
    const noSelector = copy(podMonitor) as unknown as { spec: Record<string, unknown> };
    delete noSelector.spec.selector;
    expect(() => validateK8s(noSelector)).toThrow(/data\/spec must have required property selector/);

    const rule = prometheusRule();
    const noExpr = copy(rule);
    delete (noExpr.spec.groups![0]!.rules![0]! as { expr?: unknown }).expr;
    expect(() => validateK8s(noExpr)).toThrow(/rules\/0 must have required property expr/);
    const badFor = copy(rule);
    const alert = badFor.spec.groups!.flatMap((g) => g.rules ?? []).find((r) => r.for !== undefined)!;
    alert.for = '5 minutes';
    expect(() => validateK8s(badFor)).toThrow(/for must match pattern/);
    const numericLabel = copy(rule);
    (numericLabel.spec.groups!.flatMap((g) => g.rules ?? []).find((r) => r.labels !== undefined)!.labels as Record<string, unknown>).severity = 1;
    expect(() => validateK8s(numericLabel)).toThrow(/labels\/severity must be string/);
  });
});
