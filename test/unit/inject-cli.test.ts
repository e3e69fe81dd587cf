import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import type { IContainer } from 'kubernetes-models/v1/Container';
import { parseAllDocuments } from 'yaml';
import { runInject } from '../../src/deploy/cli.js';

const ROOT = join(import.meta.dirname, '../..');
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
    expect(sidecar?.resources).toEqual({ requests: { cpu: '50m', memory: '100Mi' }, limits: { memory: '384Mi' } });
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

  it('wires the pod CA by default and leaves it out with --no-ca', async () => {
    const wired = await run([], fixture('deployment-basic.in.yaml'));
    expect(firstSidecar(wired.stdout)?.env).toContainEqual({ name: 'FUSEBOX_CA_DIR', value: '/var/run/fusebox-ca' });
    expect(agentEnv(wired.stdout).NODE_EXTRA_CA_CERTS).toBe('/var/run/fusebox-ca/ca.crt');
    const bare = await run(['--no-ca'], fixture('deployment-basic.in.yaml'));
    expect(bare.code).toBe(0);
    expect(bare.stdout).toBe(fixture('no-ca.out.yaml'));
  });

  it('sets SDK base URLs from --base-url PROVIDER=PREFIX entries', async () => {
    const { code, stdout } = await run(['--no-ca', '--base-url', 'openai=/openai, anthropic=/anthropic/'], fixture('deployment-basic.in.yaml'));
    expect(code).toBe(0);
    expect(stdout).toBe(fixture('base-url.out.yaml'));
    const ported = await run(['--proxy-port', '14000', '--base-url', 'openai=/llm/openai', '--base-url', 'anthropic=/'], fixture('deployment-basic.in.yaml'));
    expect(agentEnv(ported.stdout)).toMatchObject({ OPENAI_BASE_URL: 'http://127.0.0.1:14000/llm/openai/v1', ANTHROPIC_BASE_URL: 'http://127.0.0.1:14000/' });
  });

  it('takes the base-URL prefixes from the sidecar\'s config file or its ConfigMap manifest with --base-url-config', async () => {
    for (const file of [join(ROOT, 'config/example.yaml'), join(ROOT, 'deploy/kubernetes/base/configmap.yaml')]) {
      const { code, stdout, stderr } = await run(['--base-url-config', file], fixture('deployment-basic.in.yaml'));
      expect(stderr, file).not.toContain('fusebox inject:');
      expect(code, file).toBe(0);
      expect(agentEnv(stdout)).toMatchObject({ OPENAI_BASE_URL: 'http://127.0.0.1:4000/openai/v1', ANTHROPIC_BASE_URL: 'http://127.0.0.1:4000/anthropic' });
    }
  });

  it('reads the first stripped-prefix route of each provider from --base-url-config, explicit --base-url entries winning', async () => {
    const config = join(dir, 'fusebox.yaml');
    writeFileSync(
      config,
      [
        'version: 1',
        'listen: { proxy: { port: 4000 }, admin: { port: 9901 } }',
        'routes:',
        '  - { name: raw, provider: openai, stripPrefix: false, match: { pathPrefix: /raw }, upstream: { url: "https://gw.example.com" } }',
        '  - { name: azure, provider: openai, match: { pathPrefix: /azure/ }, upstream: { url: "https://gw.example.com/openai/v1" } }',
        '  - { name: second, provider: openai, match: { pathPrefix: /second }, upstream: { url: "https://api.openai.com" } }',
        '  - { name: claude, provider: anthropic, match: { pathPrefix: /claude }, upstream: { url: "https://api.anthropic.com" } }',
        '',
      ].join('\n'),
    );
    const fromFile = await run(['--base-url-config', config], fixture('deployment-basic.in.yaml'));
    // The upstream URL already ends in /v1, so the SDK's base URL must not add it again.
    expect(agentEnv(fromFile.stdout)).toMatchObject({ OPENAI_BASE_URL: 'http://127.0.0.1:4000/azure', ANTHROPIC_BASE_URL: 'http://127.0.0.1:4000/claude' });
    const both = await run(['--base-url-config', config, '--base-url', 'anthropic=/other'], fixture('deployment-basic.in.yaml'));
    expect(agentEnv(both.stdout)).toMatchObject({ OPENAI_BASE_URL: 'http://127.0.0.1:4000/azure', ANTHROPIC_BASE_URL: 'http://127.0.0.1:4000/other' });
  });

  it('exits 2 when --base-url-config disagrees with inject\'s ports, offers no route, or is not a valid config', async () => {
    const write = (name: string, text: string) => {
      const path = join(dir, name);
      writeFileSync(path, text);
      return path;
    };
    const ports = write('ports.yaml', 'version: 1\nlisten: { proxy: { port: 4100 } }\nroutes: [{ name: o, provider: openai, match: { pathPrefix: /o }, upstream: { url: "https://api.openai.com" } }]\n');
    const noRoute = write('none.yaml', 'version: 1\nroutes: [{ name: g, match: { hosts: [api.github.com] }, upstream: { url: "https://api.github.com" } }]\n');
    const invalid = write('invalid.yaml', 'version: 1\nroutes: [{ name: o, provider: openai, match: { pathPrefix: /o }, upstrem: {} }]\n');
    for (const [argv, message] of [
      [['--base-url-config', ports], /listen\.proxy\.port 4100 but inject uses 4000; pass --proxy-port 4100/],
      [['--base-url-config', noRoute], /has no route with provider openai or anthropic and a match\.pathPrefix/],
      [['--base-url-config', invalid], /--base-url-config: .*invalid\.yaml: \d+ problems?\n {2}- routes\[0\]/],
      [['--base-url-config', join(dir, 'missing.yaml')], /cannot read the file: ENOENT/],
    ] as const) {
      const { code, stdout, stderr } = await run([...argv], fixture('deployment-basic.in.yaml'));
      expect(code, argv.join(' ')).toBe(2);
      expect(stdout).toBe('');
      expect(stderr).toMatch(message);
    }
    const matched = await run(['--base-url-config', ports, '--proxy-port', '4100'], fixture('deployment-basic.in.yaml'));
    expect(matched.code).toBe(0);
    expect(agentEnv(matched.stdout).OPENAI_BASE_URL).toBe('http://127.0.0.1:4100/o/v1');
  });

  it('proxies only the containers --containers names', async () => {
    const { code, stdout } = await run(['--containers', 'agent,logs', '--containers', 'fluent-bit'], fixture('sidecars.in.yaml'));
    expect(code).toBe(1); // the misnamed Deployment's annotation still refuses it
    expect(stdout).toBe(fixture('sidecars-containers-option.out.yaml'));
  });

  it('reads JSON on standard input and writes JSON', async () => {
    const { code, stdout } = await run([], fixture('deployment.in.json'));
    expect(code).toBe(0);
    expect(stdout).toBe(fixture('json.out.json'));
    expect(() => JSON.parse(stdout) as unknown).not.toThrow();
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
      [['--base-url', 'gemini=/gemini'], /--base-url: "gemini" is not a provider inject knows \(openai, anthropic\)/],
      [['--base-url', 'openai'], /--base-url: "openai" must be PROVIDER=PREFIX/],
      [['--base-url', 'openai=openai'], /must be PROVIDER=PREFIX, the route's match\.pathPrefix \(like openai=\/openai\)/],
      [['--base-url', 'openai=/a,openai=/b'], /--base-url: openai is given twice/],
      [['--containers', 'Agent'], /containers: "Agent" is not a container name/],
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
    for (const text of ['--no-ca', '--base-url LIST', '--base-url-config FILE', '--containers LIST', 'fusebox.io/containers', 'NODE_EXTRA_CA_CERTS=/var/run/fusebox-ca/ca.crt', 'GIT_SSL_CAINFO', 'keytool', 'tunnel mode', 'fluent-bit']) {
      expect(stdout).toContain(text);
    }
    expect(stdout.split('\n').filter((l) => l.length > 118)).toEqual([]);
  });
});
