import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import type { IContainer } from 'kubernetes-models/v1/Container';
import { parseAllDocuments } from 'yaml';
import { runInject } from '../../src/deploy/inject.js';

const FIXTURES = join(import.meta.dirname, '../fixtures/k8s');
const fixture = (name: string): string => readFileSync(join(FIXTURES, name), 'utf8');
const dir = mkdtempSync(join(tmpdir(), 'fusebox-inject-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const sink = () => {
  const chunks: Buffer[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      cb();
    },
  });
  return { stream, text: () => Buffer.concat(chunks).toString('utf8') };
};

const run = async (argv: string[], stdinText = '') => {
  const out = sink();
  const err = sink();
  const code = await runInject(argv, { stdin: Readable.from([Buffer.from(stdinText)]), stdout: out.stream, stderr: err.stream });
  return { code, stdout: out.text(), stderr: err.text() };
};

const firstDeployment = (yaml: string): IDeployment => parseAllDocuments(yaml, { version: '1.1' })[0]!.toJS() as IDeployment;

const firstSidecar = (yaml: string): IContainer | undefined => firstDeployment(yaml).spec?.template.spec?.initContainers?.[0];

const agentEnv = (yaml: string): Record<string, string | undefined> =>
  Object.fromEntries(firstDeployment(yaml).spec?.template.spec?.containers[0]?.env?.map((e) => [e.name, e.value]) ?? []);

describe('fusebox inject (runInject)', () => {
  it('reads standard input when no file is given, writes the injected YAML to standard output and exits 0', async () => {
    const { code, stdout, stderr } = await run([], fixture('deployment-basic.in.yaml'));
    expect(code).toBe(0);
    expect(stdout).toBe(fixture('deployment-basic.out.yaml'));
    expect(stderr).toBe('deployment "agents/support-agent" injected\nservice "agents/support-agent" skipped: Service has no pod template\n');
  });

  it('reads "-" as standard input and joins several files into one stream, in order', async () => {
    const file = join(dir, 'list.yaml');
    writeFileSync(file, fixture('list.in.yaml').trimEnd()); // no final newline: must not glue onto the next document
    const { code, stdout, stderr } = await run(['-f', file, '-f', '-'], fixture('passthrough.in.yaml'));
    expect(code).toBe(0);
    expect(stderr).toContain(`${file}: deployment "agents/triage-agent" injected\n`);
    expect(stderr).toContain('-: namespace "agents" skipped: Namespace has no pod template\n');
    const kinds = parseAllDocuments(stdout, { version: '1.1' }).map((d) => (d.toJS() as { kind?: string } | null)?.kind);
    expect(kinds).toEqual(['List', 'Namespace', 'ConfigMap', 'Ingress']);
    expect(stdout).toContain(fixture('passthrough.in.yaml').slice('%YAML 1.1\n---\n'.length));
  });

  it('exits 1 when something is refused, still writing everything (the refused document unchanged) and saying why', async () => {
    const { code, stdout, stderr } = await run(['-f', join(FIXTURES, 'host-network.in.yaml')]);
    expect(code).toBe(1);
    expect(stdout).toBe(fixture('host-network.out.yaml'));
    expect(stderr).toMatch(/^pod "node-debugger-agent" refused: hostNetwork: true .*\ndeployment "ordinary-agent" injected\n$/);
  });

  it('prints warnings under the object they belong to, and only refusals and warnings with --quiet', async () => {
    const input = fixture('statefulset-init-containers.in.yaml') + '---\n' + fixture('deployment-basic.in.yaml');
    const loud = await run([], input);
    expect(loud.stderr).toContain('statefulset "memory-agent" injected\n  warning: kept the pod\'s own prometheus.io/port=8000');
    const quiet = await run(['-q'], input);
    expect(quiet.stderr).not.toContain('support-agent');
    expect(quiet.stderr).toContain('statefulset "memory-agent" injected\n  warning:');
  });

  it('passes the options through to the sidecar and the agent env', async () => {
    const { code, stdout } = await run(
      [
        '--image', 'example.com/fusebox:dev',
        '--config-map', 'cfg',
        '--secret', 'keys',
        '--no-proxy', 'a.example.com, b.example.com',
        '--no-proxy', '10.0.0.0/8',
        '--cluster-domain', 'corp.local',
        '--no-node-env-proxy',
        '--cpu-limit', '',
        '--memory-request', '100Mi',
        '--pre-stop-seconds', '0',
      ],
      fixture('deployment-basic.in.yaml'),
    );
    expect(code).toBe(0);
    const sidecar = firstSidecar(stdout);
    expect(sidecar?.image).toBe('example.com/fusebox:dev');
    expect(sidecar?.envFrom).toEqual([{ secretRef: { name: 'keys', optional: true } }]);
    expect(sidecar?.resources).toEqual({ requests: { cpu: '50m', memory: '100Mi' }, limits: { memory: '512Mi' } });
    expect(sidecar?.lifecycle).toBeUndefined();
    const env = agentEnv(stdout);
    expect(env.NO_PROXY).toBe('localhost,127.0.0.1,::1,.svc,.cluster.local,.corp.local,a.example.com,b.example.com,10.0.0.0/8');
    expect(env.NODE_USE_ENV_PROXY).toBeUndefined();
  });

  it('replaces a conflicting proxy only with --override-proxy-env', async () => {
    const refused = await run([], fixture('proxy-conflict.in.yaml'));
    expect(refused.code).toBe(1);
    const overridden = await run(['--override-proxy-env'], fixture('proxy-conflict.in.yaml'));
    expect(overridden.code).toBe(0);
    expect(agentEnv(overridden.stdout).HTTP_PROXY).toBe('http://127.0.0.1:4000');
  });

  it('exits 2 with nothing on standard output for an unknown flag, a missing file or a bad option value', async () => {
    for (const [argv, message] of [
      [['--imagee', 'x'], /Unknown option '--imagee'/],
      [['-f', join(dir, 'missing.yaml')], /cannot read .*missing\.yaml: ENOENT/],
      [['--proxy-port', 'four'], /--proxy-port: "four" is not a whole number/],
      [['--admin-port', '4000'], /proxyPort and adminPort are both 4000/],
      [['--memory-limit', 'lots'], /memoryLimit: "lots" is not a Kubernetes quantity/],
      [['-f', '-', '-f', '-'], /"-" \(standard input\) given twice/],
      [['extra-positional'], /Unexpected argument 'extra-positional'/],
    ] as const) {
      const { code, stdout, stderr } = await run([...argv], fixture('deployment-basic.in.yaml'));
      expect(code, argv.join(' ')).toBe(2);
      expect(stdout).toBe('');
      expect(stderr).toMatch(message);
    }
  });

  it('prints its usage with --help and exits 0', async () => {
    const { code, stdout } = await run(['--help']);
    expect(code).toBe(0);
    expect(stdout).toContain('Usage: fusebox inject [-f FILE|-]...');
    expect(stdout).toContain('--override-proxy-env');
    expect(stdout).toContain('default ghcr.io/fusebox/fusebox:0.1.0');
  });
});
