import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { inject, type InjectResult } from '../../src/deploy/inject.js';
import { InjectOptionsError, resolveInjectOptions, type InjectOptions } from '../../src/deploy/options.js';
import { sidecarContainer } from '../../src/deploy/sidecar.js';
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
}

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
];

describe('inject golden files (UPDATE_GOLDEN=1 rewrites them)', () => {
  for (const c of CASES) {
    it(`${c.name}: matches ${c.name}.out.yaml and reports ${c.expect.length} object(s) as reviewed`, () => {
      const { output, results } = inject(read(c.input), c.options);
      if (UPDATE) {
        writeFileSync(join(FIXTURES, `${c.name}.out.yaml`), output);
        writeFileSync(join(FIXTURES, `${c.name}.results.json`), `${JSON.stringify(results, null, 2)}\n`);
      }
      expect(statuses(results)).toEqual(c.expect);
      expect(output).toBe(read(`${c.name}.out.yaml`));
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
        for (const agent of spec.containers) {
          const env = envOf(agent);
          for (const v of ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy']) {
            expect(env[v], `${agent.name} ${v}`).toMatch(new RegExp(`^http://(127\\.0\\.0\\.1|localhost):${o.proxyPort}/?$`));
          }
          expect(env.NO_PROXY).toBe(env.no_proxy);
          expect(env.NO_PROXY?.split(',')).toEqual(expect.arrayContaining(['localhost', '127.0.0.1', '::1', '.svc', `.${o.clusterDomain}`]));
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
    expect(spec.volumes?.map((v) => v.name)).toEqual(['cache', 'fusebox-config']);
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
    expect(sidecarOf(named(output, 'triage-agent')).resources?.limits).toEqual({ memory: '512Mi' });
    expect(sidecarOf(named(output, 'triage-agent')).lifecycle).toBeUndefined();
    expect(spec.terminationGracePeriodSeconds).toBe(60);
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
