import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { inject, type InjectResult } from '../../src/deploy/inject.js';
import { InjectOptionsError, resolveInjectOptions, type InjectOptions } from '../../src/deploy/options.js';
import { agentCaMount, caVolume, sidecarContainer, TRUST_VARS } from '../../src/deploy/sidecar.js';
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import type { ICronJob } from 'kubernetes-models/batch/v1/CronJob';
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IPodSpec } from 'kubernetes-models/v1/PodSpec';
import type { IPodTemplateSpec } from 'kubernetes-models/v1/PodTemplateSpec';
import { podSpecOf, validateK8s } from '../fixtures/k8s/k8s-schema.js';

const FIXTURES = join(import.meta.dirname, '../fixtures/k8s');
const UPDATE = process.env.UPDATE_GOLDEN === '1';
const read = (file: string): string => readFileSync(join(FIXTURES, file), 'utf8');

type IObjectMeta = NonNullable<IPodTemplateSpec['metadata']>;

/** A parsed Kubernetes object, as far as these tests look into it. */
interface Obj {
  apiVersion?: string;
  kind?: string;
  metadata?: IObjectMeta;
  spec?: Record<string, unknown>;
  items?: Obj[];
}

/** Every object in a YAML stream (List items flattened), skipping documents that do not parse. */
const objectsOf = (text: string): Obj[] =>
  parseAllDocuments(text, { version: '1.1' })
    .filter((d) => d.errors.length === 0)
    .map((d) => d.toJS() as unknown)
    .filter((o): o is Obj => typeof o === 'object' && o !== null && !Array.isArray(o))
    .flatMap((o) => (o.kind === 'List' ? (o.items ?? []) : [o]));

const named = (text: string, name: string): Obj => {
  const found = objectsOf(text).find((o) => (o.metadata?.name ?? o.metadata?.generateName) === name);
  if (!found) throw new Error(`no object ${name} in output`);
  return found;
};

/** The pod template of a workload (the Pod itself for a Pod), with its spec and metadata always present. */
const podOf = (obj: Obj): { spec: IPodSpec; metadata: IObjectMeta } => {
  const spec = podSpecOf(obj as Record<string, unknown>) as IPodSpec | undefined;
  if (!spec) throw new Error(`${obj.kind} ${obj.metadata?.name} has no pod spec`);
  const template = (obj.kind === 'Pod' ? obj : obj.kind === 'CronJob' ? (obj as unknown as ICronJob).spec?.jobTemplate.spec?.template : (obj as unknown as IDeployment).spec?.template) as IPodTemplateSpec;
  return { spec, metadata: template.metadata ?? {} };
};

const sidecarOf = (obj: Obj): IContainer => {
  const first = podOf(obj).spec.initContainers?.[0];
  if (!first) throw new Error('no init container');
  return first;
};

const envOf = (container: IContainer | undefined): Record<string, string | undefined> =>
  Object.fromEntries(container?.env?.map((e) => [e.name, e.value]) ?? []);

const statuses = (results: InjectResult[]) => results.map((r) => `${r.kind}/${r.name}: ${r.status}`);

interface GoldenCase {
  name: string;
  input: string;
  options?: Partial<InjectOptions>;
  /** Reviewed by hand: what must happen to each object, in order. */
  expect: string[];
  /** Objects of the input that are deliberately not valid built-in Kubernetes objects (by name); everything else must validate. */
  invalid?: string[];
  /** Containers (by name) of injected pods that are deliberately not proxied: known sidecars, or not selected. */
  unproxied?: string[];
}

/** A JSON input has a JSON golden output. */
const outFile = (c: GoldenCase): string => `${c.name}.out.${c.input.endsWith('.json') ? 'json' : 'yaml'}`;

const CASES: GoldenCase[] = [
  { name: 'deployment-basic', input: 'deployment-basic.in.yaml', expect: ['Deployment/support-agent: injected', 'Service/support-agent: skipped'] },
  { name: 'pod-multi-container', input: 'pod-multi-container.in.yaml', expect: ['Pod/coder-agent-0: injected'] },
  { name: 'statefulset-init-containers', input: 'statefulset-init-containers.in.yaml', expect: ['StatefulSet/memory-agent: injected'] },
  {
    name: 'existing-no-proxy',
    input: 'existing-no-proxy.in.yaml',
    expect: ['DaemonSet/log-triage-agent: injected', 'ReplicaSet/batch-summarizer: injected'],
  },
  {
    name: 'cronjob-and-job',
    input: 'cronjob-and-job.in.yaml',
    expect: ['CronJob/nightly-report-agent: injected', 'Job/backfill-agent-: injected'],
  },
  { name: 'list', input: 'list.in.yaml', expect: ['Deployment/triage-agent: injected', 'Service/triage-agent: skipped'] },
  {
    name: 'passthrough',
    input: 'passthrough.in.yaml',
    expect: ['Namespace/agents: skipped', 'ConfigMap/agent-settings: skipped', 'Ingress/agent-ui: skipped'],
  },
  {
    name: 'malformed',
    input: 'malformed.in.yaml',
    expect: ['Deployment/good-agent: injected', 'Deployment/broken-agent: refused', 'ConfigMap/after-the-broken-one: skipped'],
  },
  {
    name: 'host-network',
    input: 'host-network.in.yaml',
    expect: ['Pod/node-debugger-agent: refused', 'Deployment/ordinary-agent: injected'],
  },
  {
    name: 'opt-out',
    input: 'opt-out.in.yaml',
    expect: ['Deployment/legacy-agent: skipped', 'StatefulSet/vector-store: skipped', 'CronJob/cleanup: skipped'],
  },
  {
    name: 'proxy-conflict',
    input: 'proxy-conflict.in.yaml',
    expect: [
      'Deployment/corp-proxy-agent: refused',
      'Deployment/no-proxy-from-configmap: refused',
      'Deployment/no-proxy-star: refused',
    ],
  },
  {
    name: 'proxy-conflict-override',
    input: 'proxy-conflict.in.yaml',
    options: { overrideProxyEnv: true },
    expect: [
      'Deployment/corp-proxy-agent: injected',
      'Deployment/no-proxy-from-configmap: injected',
      'Deployment/no-proxy-star: injected',
    ],
  },
  {
    name: 'unknown-shapes',
    input: 'unknown-shapes.in.yaml',
    expect: [
      'Deployment/no-template: refused',
      'Job/volcano-training: skipped',
      'unknown/no-kind-at-all: refused',
      'unknown/document 4: refused',
      'Deployment/anchored: refused',
      'Deployment/clashes: refused',
    ],
    invalid: ['no-template', 'volcano-training', 'no-kind-at-all'],
  },
  {
    name: 'custom-options',
    input: 'deployment-basic.in.yaml',
    options: {
      image: 'registry.example.com/mirror/fusebox:0.1.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef',
      configMapName: 'helpdesk-fusebox',
      secretName: 'helpdesk-llm-keys',
      proxyPort: 14000,
      adminPort: 19901,
      agentLabel: 'app.kubernetes.io/part-of',
      clusterDomain: 'k8s.example.internal',
      noProxy: ['10.0.0.0/8', '.internal.example.com'],
      nodeUseEnvProxy: false,
      cpuLimit: '',
      memoryLimit: '128Mi',
      graceMs: 55_000,
      preStopSeconds: 0,
    },
    expect: ['Deployment/support-agent: injected', 'Service/support-agent: skipped'],
  },
  {
    name: 'no-ca',
    input: 'deployment-basic.in.yaml',
    options: { ca: false },
    expect: ['Deployment/support-agent: injected', 'Service/support-agent: skipped'],
  },
  {
    name: 'base-url',
    input: 'deployment-basic.in.yaml',
    options: { ca: false, baseUrls: { openai: '/openai/v1', anthropic: '/anthropic' } },
    expect: ['Deployment/support-agent: injected', 'Service/support-agent: skipped'],
  },
  {
    name: 'sidecars',
    input: 'sidecars.in.yaml',
    expect: ['Deployment/logged-agent: injected', 'Deployment/planner-worker: injected', 'DaemonSet/node-logs: skipped', 'Deployment/misnamed: refused'],
    unproxied: ['logs', 'planner', 'vector'],
  },
  {
    name: 'sidecars-containers-option',
    input: 'sidecars.in.yaml',
    options: { containers: ['agent', 'logs', 'fluent-bit'] },
    expect: ['Deployment/logged-agent: injected', 'Deployment/planner-worker: injected', 'DaemonSet/node-logs: injected', 'Deployment/misnamed: refused'],
    unproxied: ['planner', 'vector'],
  },
  {
    name: 'ca-conflict',
    input: 'ca-conflict.in.yaml',
    expect: ['Deployment/corp-ca-agent: refused', 'Deployment/path-taken: refused', 'Pod/hand-wired: injected'],
  },
  {
    name: 'ca-conflict-no-ca',
    input: 'ca-conflict.in.yaml',
    options: { ca: false },
    expect: ['Deployment/corp-ca-agent: injected', 'Deployment/path-taken: injected', 'Pod/hand-wired: injected'],
  },
  { name: 'json', input: 'deployment.in.json', expect: ['Deployment/json-agent: injected'] },
];

describe('inject golden files (UPDATE_GOLDEN=1 rewrites them)', () => {
  for (const c of CASES) {
    it(`${c.name}: matches ${outFile(c)} and reports ${c.expect.length} object(s) as reviewed`, () => {
      const { output, results } = inject(read(c.input), c.options);
      if (UPDATE) {
        writeFileSync(join(FIXTURES, outFile(c)), output);
        writeFileSync(join(FIXTURES, `${c.name}.results.json`), `${JSON.stringify(results, null, 2)}\n`);
      }
      expect(statuses(results)).toEqual(c.expect);
      expect(output).toBe(read(outFile(c)));
      expect(results).toEqual(JSON.parse(read(`${c.name}.results.json`)));
    });
  }
});

describe('inject output', () => {
  for (const c of CASES) {
    it(`${c.name}: injecting the output again changes nothing`, () => {
      const once = inject(read(c.input), c.options).output;
      const twice = inject(once, c.options);
      expect(twice.output).toBe(once);
      expect(twice.results.filter((r) => r.status === 'injected')).toEqual([]);
    });

    it(`${c.name}: every object in the output is valid against the Kubernetes schema`, () => {
      const { output, results } = inject(read(c.input), c.options);
      const checked = objectsOf(output).filter((o) => !c.invalid?.includes(o.metadata?.name ?? ''));
      for (const o of checked) expect(() => validateK8s(o), `${o.kind} ${o.metadata?.name}`).not.toThrow();
      expect(checked.length).toBeGreaterThanOrEqual(results.filter((r) => r.status === 'injected').length);
    });

    it(`${c.name}: every injected pod carries exactly the sidecar the options describe`, () => {
      const o = resolveInjectOptions(c.options);
      const { output, results } = inject(read(c.input), c.options);
      for (const r of results.filter((x) => x.status === 'injected')) {
        const { spec, metadata } = podOf(named(output, r.name));
        expect(spec.initContainers?.[0]).toEqual(sidecarContainer(o));
        expect(spec.initContainers?.filter((x) => x.name === 'fusebox')).toHaveLength(1);
        expect(spec.volumes).toContainEqual({ name: 'fusebox-config', configMap: { name: o.configMapName } });
        expect(metadata.annotations?.['fusebox.io/injected']).toBe(o.version);
        expect(metadata.labels?.['fusebox.io/sidecar']).toBe('true');
        expect(spec.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(o.preStopSeconds + Math.ceil(o.graceMs / 1000));
        // Without the CA, inject adds no CA volume (a pod may have wired one by hand: ca-conflict-no-ca).
        if (o.ca) expect(spec.volumes?.filter((v) => v.name === 'fusebox-ca')).toEqual([caVolume()]);
        for (const agent of spec.containers) {
          const env = envOf(agent);
          if (c.unproxied?.includes(agent.name)) {
            expect(env.HTTP_PROXY, `${agent.name} is left out`).toBeUndefined();
            expect(agent.volumeMounts?.some((m) => m.name === 'fusebox-ca') ?? false, `${agent.name} is left out`).toBe(false);
            continue;
          }
          for (const v of ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy']) {
            expect(env[v], `${agent.name} ${v}`).toMatch(new RegExp(`^http://(127\\.0\\.0\\.1|localhost):${o.proxyPort}/?$`));
          }
          expect(env.NO_PROXY).toBe(env.no_proxy);
          expect(env.NO_PROXY?.split(',')).toEqual(expect.arrayContaining(['localhost', '127.0.0.1', '::1', '.svc', `.${o.clusterDomain}`]));
          if (o.ca) {
            expect(agent.volumeMounts?.filter((m) => m.name === 'fusebox-ca' || m.mountPath === '/var/run/fusebox-ca'), agent.name).toEqual([agentCaMount()]);
            for (const v of TRUST_VARS) expect(agent.env?.filter((e) => e.name === v.name), `${agent.name} ${v.name}`).toEqual([{ name: v.name, value: v.value }]);
          }
          if (o.baseUrls.openai) expect(env.OPENAI_BASE_URL).toBe(`http://127.0.0.1:${o.proxyPort}${o.baseUrls.openai}`);
          if (o.baseUrls.anthropic) expect(env.ANTHROPIC_BASE_URL).toBe(`http://127.0.0.1:${o.proxyPort}${o.baseUrls.anthropic}`);
        }
      }
    });
  }
});

describe('inject behaviour', () => {
  it('writes documents it does not change back byte for byte, comments, directives and trailer included', () => {
    const input = read('passthrough.in.yaml');
    expect(inject(input).output).toBe(input);
  });

  it('keeps unchanged neighbours of an injected document byte for byte', () => {
    const input = read('deployment-basic.in.yaml');
    const service = input.slice(input.indexOf('---\napiVersion: v1\nkind: Service'));
    expect(inject(input).output.endsWith(service)).toBe(true);
  });

  it('keeps comments inside an injected document', () => {
    const { output } = inject(read('deployment-basic.in.yaml'));
    expect(output).toContain('# Output of `kubectl create deployment');
    expect(output).toContain('# pinned by CI');
    expect(output).toContain('# in-cluster, must not go through the proxy');
  });

  it('adds the sidecar before existing init containers, keeps them, and never lowers the grace period', () => {
    const { output } = inject(read('statefulset-init-containers.in.yaml'));
    const { spec } = podOf(named(output, 'memory-agent'));
    expect(spec.initContainers?.map((x) => x.name)).toEqual(['fusebox', 'migrate']);
    expect(spec.terminationGracePeriodSeconds).toBe(90);
    expect(spec.volumes?.map((v) => v.name)).toEqual(['cache', 'fusebox-config', 'fusebox-ca', 'fusebox-ca-key']);
  });

  it('raises a short grace period to preStop + drain + 5 s', () => {
    const { output } = inject(read('existing-no-proxy.in.yaml'));
    expect(podOf(named(output, 'log-triage-agent')).spec.terminationGracePeriodSeconds).toBe(35);
    expect(podOf(named(output, 'batch-summarizer')).spec.terminationGracePeriodSeconds).toBe(35);
  });

  it('merges NO_PROXY: existing entries first and in order, then the missing required ones, same value in both cases', () => {
    const { output } = inject(read('existing-no-proxy.in.yaml'));
    const env = envOf(podOf(named(output, 'log-triage-agent')).spec.containers[0]);
    const expected = 'vault.internal.example.com,10.0.0.0/8,localhost,.corp.example.com,127.0.0.1,::1,.svc,.cluster.local';
    expect(env.NO_PROXY).toBe(expected);
    expect(env.no_proxy).toBe(expected);
    expect(env.ELASTIC_URL).toBe('https://elastic.internal.example.com:9200');
  });

  it('leaves an already complete NO_PROXY entry untouched and adds the lower-case twin', () => {
    const { output } = inject(read('existing-no-proxy.in.yaml'));
    const agent = podOf(named(output, 'batch-summarizer')).spec.containers[0];
    expect(agent?.env?.[0]).toEqual({ name: 'NO_PROXY', value: 'localhost,127.0.0.1,::1,.svc,.cluster.local' });
    expect(envOf(agent).no_proxy).toBe('localhost,127.0.0.1,::1,.svc,.cluster.local');
  });

  it('keeps a proxy variable that already points at the sidecar and sets every agent container of a multi-container pod', () => {
    const { output, results } = inject(read('pod-multi-container.in.yaml'));
    const { spec, metadata } = podOf(named(output, 'coder-agent-0'));
    expect(envOf(spec.containers[0]).HTTPS_PROXY).toBe('http://localhost:4000/');
    expect(envOf(spec.containers[1]).HTTP_PROXY).toBe('http://127.0.0.1:4000');
    expect(metadata.annotations?.team).toBe('platform');
    expect(results[0]?.warnings).toEqual([expect.stringContaining('container "executor" also reads envFrom')]);
  });

  it('does not take over prometheus.io annotations the pod already uses for its own metrics, and says so', () => {
    const { output, results } = inject(read('statefulset-init-containers.in.yaml'));
    const { metadata } = podOf(named(output, 'memory-agent'));
    expect(metadata.annotations?.['prometheus.io/port']).toBe('8000');
    expect(metadata.annotations?.['prometheus.io/path']).toBeUndefined();
    expect(metadata.annotations?.['fusebox.io/injected']).toBe('0.1.0');
    expect(results[0]?.warnings?.join('\n')).toMatch(/kept the pod's own prometheus\.io\/port=8000.*PodMonitor/);
  });

  it('warns when the agent label is missing, since FUSEBOX_AGENT would be empty', () => {
    const { results } = inject(read('statefulset-init-containers.in.yaml'));
    expect(results[0]?.warnings?.join('\n')).toContain('no label app.kubernetes.io/name');
  });

  it('injects CronJob pods through jobTemplate.spec.template and Jobs created with generateName', () => {
    const { output } = inject(read('cronjob-and-job.in.yaml'));
    const cron = named(output, 'nightly-report-agent');
    expect(sidecarOf(cron).restartPolicy).toBe('Always');
    expect(cron.spec?.schedule).toBe('0 3 * * *');
    expect(podOf(named(output, 'backfill-agent-')).spec.restartPolicy).toBe('Never');
  });

  it('injects the items of a kind: List and passes the other items through', () => {
    const { output } = inject(read('list.in.yaml'));
    const list = objectsOf(output);
    expect(list.map((o) => o.kind)).toEqual(['Deployment', 'Service']);
    expect(sidecarOf(list[0]!).name).toBe('fusebox');
    expect(list[1]).toEqual(objectsOf(read('list.in.yaml'))[1]);
  });

  it('refuses a malformed document with its line, writes it back unchanged and still injects the others', () => {
    const input = read('malformed.in.yaml');
    const { output, results } = inject(input);
    const broken = input.slice(input.indexOf('---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: broken-agent'), input.indexOf('---\napiVersion: v1\nkind: ConfigMap'));
    expect(output).toContain(broken);
    expect(results[1]?.reason).toMatch(/^malformed YAML in document 2, line \d+: .+; written back unchanged$/);
    expect(sidecarOf(named(output, 'good-agent')).name).toBe('fusebox');
  });

  it('refuses a hostNetwork pod and explains that loopback would be the node\'s', () => {
    const { output, results } = inject(read('host-network.in.yaml'));
    expect(results[0]?.reason).toMatch(/hostNetwork: true .*127\.0\.0\.1 is the node's loopback/);
    expect(podOf(named(output, 'node-debugger-agent')).spec.initContainers).toBeUndefined();
  });

  it('names the opt-out annotation and where it was found', () => {
    const { results } = inject(read('opt-out.in.yaml'));
    expect(results.map((r) => r.reason)).toEqual([
      'opted out by the annotation fusebox.io/inject: "false" on metadata',
      'opted out by the annotation fusebox.io/inject: "disabled" on spec.template.metadata',
      'opted out by the annotation fusebox.io/inject: "false" on spec.jobTemplate.metadata',
    ]);
  });

  it('refuses to replace a proxy the agent already uses, naming the variable, its value and the way out', () => {
    const { output, results } = inject(read('proxy-conflict.in.yaml'));
    expect(output).toBe(read('proxy-conflict.in.yaml'));
    expect(results[0]?.reason).toContain('container "agent" already sets HTTP_PROXY to "http://squid.corp.example.com:3128"');
    expect(results[0]?.reason).toContain('--override-proxy-env');
    expect(results[1]?.reason).toContain('takes NO_PROXY from valueFrom');
    expect(results[2]?.reason).toContain('NO_PROXY to "*"');
  });

  it('with overrideProxyEnv replaces the conflicting variables and reports each replacement', () => {
    const { output, results } = inject(read('proxy-conflict.in.yaml'), { overrideProxyEnv: true });
    const corp = podOf(named(output, 'corp-proxy-agent')).spec.containers[0];
    expect(envOf(corp).HTTP_PROXY).toBe('http://127.0.0.1:4000');
    expect(results[0]?.warnings).toEqual([
      'container "agent": replaced HTTP_PROXY set to "http://squid.corp.example.com:3128"',
      'container "agent": replaced HTTPS_PROXY set to "http://squid.corp.example.com:3128"',
    ]);
    const fromRef = podOf(named(output, 'no-proxy-from-configmap')).spec.containers[0];
    expect(fromRef?.env?.[0]).toEqual({ name: 'NO_PROXY', value: 'localhost,127.0.0.1,::1,.svc,.cluster.local' });
    expect(envOf(podOf(named(output, 'no-proxy-star')).spec.containers[0]).no_proxy).not.toContain('*');
  });

  it('refuses unknown shapes, foreign anchors, a container named fusebox and a port the sidecar needs, each with its reason', () => {
    const { results } = inject(read('unknown-shapes.in.yaml'));
    const reasons = results.map((r) => r.reason ?? '');
    expect(reasons[0]).toBe('unknown Deployment shape: spec.template is missing or not a mapping');
    expect(reasons[1]).toMatch(/batch\.volcano\.sh\/v1alpha1 Job is not the built-in Kubernetes Job/);
    expect(reasons[2]).toContain('has no `kind`');
    expect(reasons[3]).toContain('not a Kubernetes object');
    expect(reasons[4]).toContain('anchors or aliases');
    expect(reasons[5]).toContain('a regular container is already named "fusebox"');
    expect(reasons[5]).toContain('container "agent" uses port 9901');
  });

  it('leaves a refused item of a List exactly as it was while injecting its neighbour', () => {
    const input = [
      'apiVersion: v1',
      'kind: List',
      'items:',
      '- apiVersion: apps/v1',
      '  kind: Deployment',
      '  metadata: {name: odd}',
      '  spec:',
      '    template:',
      '      metadata: {labels: [not, a, map]}',
      '      spec: {containers: [{name: a, image: a}]}',
      '- apiVersion: v1',
      '  kind: Pod',
      '  metadata: {name: fine}',
      '  spec: {containers: [{name: b, image: b}]}',
      '',
    ].join('\n');
    const { output, results } = inject(input);
    expect(statuses(results)).toEqual(['Deployment/odd: refused', 'Pod/fine: injected']);
    expect(results[0]?.reason).toBe("unknown Deployment shape: the pod template's metadata.labels is not a mapping");
    expect(objectsOf(output)[0]).toEqual(objectsOf(input)[0]);
  });

  it('reports an outdated injection as already injected with the version it has', () => {
    const injected = inject(read('list.in.yaml'), { version: '0.0.9' }).output;
    const { results } = inject(injected);
    expect(results[0]).toMatchObject({ status: 'already', reason: expect.stringContaining('injected by Fusebox 0.0.9, not 0.1.0') });
  });

  it('keeps YAML 1.1 look-alike strings quoted so Kubernetes does not read them as booleans or numbers', () => {
    const { output } = inject(read('list.in.yaml'), { version: '1.10' });
    expect(output).toContain('fusebox.io/injected: "1.10"');
    expect(output).toContain('prometheus.io/scrape: "true"');
    expect(output).toContain('prometheus.io/port: "9901"');
  });

  it('writes the sidecar without a CPU limit or preStop hook when asked, and raises the grace period for a longer drain', () => {
    const { output } = inject(read('list.in.yaml'), { cpuLimit: '', preStopSeconds: 0, graceMs: 55_000 });
    const { spec } = podOf(named(output, 'triage-agent'));
    expect(sidecarOf(named(output, 'triage-agent')).resources?.limits).toEqual({ memory: '384Mi' });
    expect(sidecarOf(named(output, 'triage-agent')).lifecycle).toBeUndefined();
    expect(spec.terminationGracePeriodSeconds).toBe(60);
  });

  it('wires the pod CA: a memory emptyDir, read-write in the sidecar with FUSEBOX_CA_DIR, read-only in each proxied container with the trust variables', () => {
    const { output } = inject(read('pod-multi-container.in.yaml'));
    const { spec } = podOf(named(output, 'coder-agent-0'));
    expect(spec.volumes).toContainEqual({ name: 'fusebox-ca', emptyDir: { medium: 'Memory', sizeLimit: '4Mi' } });
    const sidecar = spec.initContainers![0]!;
    expect(sidecar.volumeMounts).toContainEqual({ name: 'fusebox-ca', mountPath: '/var/run/fusebox-ca' });
    expect(envOf(sidecar).FUSEBOX_CA_DIR).toBe('/var/run/fusebox-ca');
    for (const agent of spec.containers) {
      expect(agent.volumeMounts).toContainEqual({ name: 'fusebox-ca', mountPath: '/var/run/fusebox-ca', readOnly: true });
      expect(envOf(agent)).toMatchObject({
        NODE_EXTRA_CA_CERTS: '/var/run/fusebox-ca/ca.crt',
        SSL_CERT_FILE: '/var/run/fusebox-ca/ca-bundle.crt',
        REQUESTS_CA_BUNDLE: '/var/run/fusebox-ca/ca-bundle.crt',
        CURL_CA_BUNDLE: '/var/run/fusebox-ca/ca-bundle.crt',
        GIT_SSL_CAINFO: '/var/run/fusebox-ca/ca-bundle.crt',
      });
    }
  });

  it('starts the sidecar first, as a native sidecar whose startupProbe waits for /readyz, so agents start only once the CA files exist', () => {
    const { output } = inject(read('statefulset-init-containers.in.yaml'));
    const { spec } = podOf(named(output, 'memory-agent'));
    // The kubelet starts init containers in order and moves past a restartPolicy: Always one only once its
    // startupProbe succeeds; Fusebox answers /readyz only after writing ca.crt and ca-bundle.crt.
    const [first, ...rest] = spec.initContainers ?? [];
    expect(first).toMatchObject({ name: 'fusebox', restartPolicy: 'Always', startupProbe: { httpGet: { path: '/readyz', port: 'fusebox-admin' } } });
    expect(rest.map((c) => c.name)).toEqual(['migrate']);
    const caDir = envOf(first).FUSEBOX_CA_DIR;
    expect(first?.volumeMounts?.find((m) => m.name === 'fusebox-ca')?.mountPath).toBe(caDir);
    const agentMount = spec.containers[0]?.volumeMounts?.find((m) => m.name === 'fusebox-ca');
    expect(agentMount?.mountPath).toBe(caDir);
    for (const v of TRUST_VARS) expect(envOf(spec.containers[0])[v.name]?.startsWith(`${caDir}/`), v.name).toBe(true);
    // The agent's own init containers run after the sidecar is ready, but are not proxied.
    expect(rest[0]?.volumeMounts?.some((m) => m.name === 'fusebox-ca') ?? false).toBe(false);
  });

  it('adds the CA volume, mounts and variables once, whatever the number of runs', () => {
    const once = inject(read('pod-multi-container.in.yaml')).output;
    const thrice = inject(inject(once).output).output;
    expect(thrice).toBe(once);
    const { spec } = podOf(named(thrice, 'coder-agent-0'));
    expect(spec.volumes?.filter((v) => v.name === 'fusebox-ca')).toHaveLength(1);
    for (const agent of spec.containers) {
      expect(agent.volumeMounts?.filter((m) => m.name === 'fusebox-ca')).toHaveLength(1);
      expect(agent.env?.filter((e) => e.name === 'SSL_CERT_FILE')).toHaveLength(1);
    }
  });

  it('keeps a CA volume, mount and variable wired by hand exactly as inject would, adding only what is missing', () => {
    const { output } = inject(read('ca-conflict.in.yaml'));
    const { spec } = podOf(named(output, 'hand-wired'));
    expect(spec.volumes?.map((v) => v.name)).toEqual(['fusebox-ca', 'fusebox-config', 'fusebox-ca-key']);
    expect(spec.containers[0]?.volumeMounts).toEqual([{ name: 'fusebox-ca', mountPath: '/var/run/fusebox-ca', readOnly: true }]);
    expect(spec.containers[0]?.env?.filter((e) => e.name === 'NODE_EXTRA_CA_CERTS')).toHaveLength(1);
  });

  it('refuses to replace a CA bundle the agent trusts, and a volume or mount already at the CA\'s name or path', () => {
    const { output, results } = inject(read('ca-conflict.in.yaml'));
    expect(results[0]?.reason).toContain('container "agent" already sets SSL_CERT_FILE to "/etc/ssl/corp/bundle.pem"');
    expect(results[0]?.reason).toContain('--no-ca');
    expect(results[1]?.reason).toContain('a volume named fusebox-ca that is not Fusebox\'s CA emptyDir');
    expect(results[1]?.reason).toContain('container "agent" already mounts run at /var/run/fusebox-ca');
    expect(podOf(named(output, 'corp-ca-agent')).spec.initContainers).toBeUndefined();
  });

  it('with ca off adds no CA volume, mount or trust variable, and leaves the agent\'s own trust variables alone', () => {
    const { output } = inject(read('deployment-basic.in.yaml'), { ca: false });
    expect(output).not.toContain('fusebox-ca');
    for (const v of TRUST_VARS) expect(output).not.toContain(v.name);
    const corp = podOf(named(inject(read('ca-conflict.in.yaml'), { ca: false }).output, 'corp-ca-agent')).spec.containers[0];
    expect(envOf(corp).SSL_CERT_FILE).toBe('/etc/ssl/corp/bundle.pem');
    expect(envOf(corp).HTTPS_PROXY).toBe('http://127.0.0.1:4000');
  });

  it('sets the SDK base URLs on the proxy port when asked, next to the proxy variables', () => {
    const { output } = inject(read('list.in.yaml'), { proxyPort: 14000, baseUrls: { openai: '/oai/v1', anthropic: '/claude' } });
    const env = envOf(podOf(named(output, 'triage-agent')).spec.containers[0]);
    expect(env.OPENAI_BASE_URL).toBe('http://127.0.0.1:14000/oai/v1');
    expect(env.ANTHROPIC_BASE_URL).toBe('http://127.0.0.1:14000/claude');
    expect(env.HTTPS_PROXY).toBe('http://127.0.0.1:14000');
  });

  it('by default proxies every container but known sidecars of other tools, and reports each one left out', () => {
    const { output, results } = inject(read('sidecars.in.yaml'));
    const { spec } = podOf(named(output, 'logged-agent'));
    expect(envOf(spec.containers[0]).HTTP_PROXY).toBe('http://127.0.0.1:4000');
    expect(spec.containers[1]?.env).toBeUndefined();
    expect(spec.containers[1]?.volumeMounts).toEqual([{ name: 'varlog', mountPath: '/var/log/agent' }]);
    expect(results[0]?.warnings).toEqual([expect.stringMatching(/^left out container "logs" \(Fluent Bit, by its image cr\.fluentbit\.io\/fluent\/fluent-bit:3\.1\.4\)/)]);
    expect(results[2]).toMatchObject({ kind: 'DaemonSet', status: 'skipped', reason: expect.stringContaining('every container is a known sidecar') });
  });

  it('proxies only the containers the fusebox.io/containers annotation names, and refuses one naming a container the pod lacks', () => {
    const { output, results } = inject(read('sidecars.in.yaml'));
    const { spec } = podOf(named(output, 'planner-worker'));
    expect(spec.containers.map((c) => [c.name, envOf(c).HTTP_PROXY !== undefined])).toEqual([
      ['planner', false],
      ['worker', true],
      ['vector', false],
    ]);
    expect(results[1]?.warnings).toBeUndefined();
    expect(results[3]?.reason).toBe('the annotation fusebox.io/containers on metadata names "worker", not a container of the pod (it has agent)');
  });

  it('with the containers option proxies the named containers (a known sidecar too), the annotation still winning', () => {
    const { output, results } = inject(read('sidecars.in.yaml'), { containers: ['agent', 'logs', 'fluent-bit'] });
    expect(podOf(named(output, 'logged-agent')).spec.containers.every((c) => envOf(c).HTTP_PROXY !== undefined)).toBe(true);
    expect(podOf(named(output, 'node-logs')).spec.containers[0]?.volumeMounts).toEqual([agentCaMount()]);
    expect(podOf(named(output, 'planner-worker')).spec.containers.map((c) => envOf(c).HTTP_PROXY !== undefined)).toEqual([false, true, false]);
    expect(results.map((r) => r.warnings)).toEqual([undefined, undefined, undefined, undefined]);
  });

  it('refuses a pod that has none of the containers the option names, and takes the pod template\'s annotation over the workload\'s', () => {
    const { results } = inject(read('deployment-basic.in.yaml'), { containers: ['worker'] });
    expect(results[0]).toMatchObject({ status: 'refused', reason: "--containers names none of the pod's containers (it has agent); name them, or set the annotation fusebox.io/containers" });
    const input = [
      'apiVersion: v1',
      'kind: List',
      'items:',
      '- apiVersion: apps/v1',
      '  kind: Deployment',
      '  metadata: {name: two, annotations: {fusebox.io/containers: a}}',
      '  spec:',
      '    template:',
      '      metadata: {annotations: {fusebox.io/containers: b}}',
      '      spec: {containers: [{name: a, image: a}, {name: b, image: b}]}',
      '',
    ].join('\n');
    const { spec } = podOf(objectsOf(inject(input).output)[0]!);
    expect(spec.containers.map((c) => envOf(c).HTTP_PROXY !== undefined)).toEqual([false, true]);
  });

  it('writes JSON out for JSON in: valid JSON, the file\'s indentation, untouched members exactly as written', () => {
    const input = read('deployment.in.json');
    const { output } = inject(input);
    const parsed = JSON.parse(output) as IDeployment;
    expect(parsed.spec?.template.spec?.initContainers?.[0]?.name).toBe('fusebox');
    expect(output).toContain('\n    "apiVersion": "apps/v1",\n');
    for (const line of [
      '"selector": {"matchLabels": {"app.kubernetes.io/name": "json-agent"}},',
      '"args": ["--workers", "4", "--greeting", "gr\\u00fc\\u00dfe"],',
      '{"name": "LOG_LEVEL", "value": "info"},',
      '"resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}',
      '"terminationGracePeriodSeconds": 60',
    ]) {
      expect(output).toContain(line);
    }
    expect(output.endsWith('}\n')).toBe(true);
  });

  it('writes minified JSON input back as 2-space JSON, a JSON List included', () => {
    const list = { apiVersion: 'v1', kind: 'List', items: [JSON.parse(read('deployment.in.json')) as unknown] };
    const { output, results } = inject(JSON.stringify(list));
    expect(results.map((r) => r.status)).toEqual(['injected']);
    const parsed = JSON.parse(output) as { items: IDeployment[] };
    expect(parsed.items[0]?.spec?.template.spec?.volumes?.map((v) => v.name)).toEqual(['fusebox-config', 'fusebox-ca', 'fusebox-ca-key']);
    expect(output.startsWith('{\n  "apiVersion": "v1",\n  "kind": "List",\n  "items": [\n    {\n')).toBe(true);
  });

  it('writes a refused or untouched JSON document back byte for byte', () => {
    const refused = JSON.stringify({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p' }, spec: { hostNetwork: true, containers: [{ name: 'a', image: 'a' }] } });
    expect(inject(refused).output).toBe(refused);
    const service = '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}\n';
    expect(inject(service).output).toBe(service);
  });

  it('keeps YAML flow collections and aligned comments of an injected document as written', () => {
    const { output } = inject(read('deployment-basic.in.yaml'));
    expect(output).toContain('    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}\n');
    expect(output).toContain('        args: ["--workers", "4"]\n');
    expect(output).toContain('        - name: TICKETS_URL   # in-cluster, must not go through the proxy\n');
  });

  it('returns empty output and no results for empty input', () => {
    expect(inject('')).toEqual({ output: '', results: [] });
    expect(inject('# only a comment\n')).toEqual({ output: '# only a comment\n', results: [] });
  });

  it('rejects invalid options, listing each problem', () => {
    expect(() => inject('', { proxyPort: 70_000, adminPort: 70_000, configMapName: 'Not_A_Name', memoryLimit: 'lots', noProxy: ['*'] })).toThrow(
      InjectOptionsError,
    );
    try {
      inject('', { proxyPort: 0, secretName: 'UPPER', cpuRequest: '1 core' });
    } catch (err) {
      expect((err as InjectOptionsError).problems).toEqual([
        'secretName: "UPPER" is not a valid Kubernetes object name (lower-case DNS subdomain)',
        'proxyPort: 0 is not a port (1-65535)',
        'cpuRequest: "1 core" is not a Kubernetes quantity (like 50m, 64Mi)',
      ]);
    }
  });
});
