import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { ConfigError } from '../config/load.js';
import { BaseUrlError, baseUrlsFromConfig, parseBaseUrlFlag, readFuseboxConfig } from './base-url.js';
import { KNOWN_SIDECARS, splitNames } from './containers.js';
import { inject, type InjectResult } from './inject.js';
import { DEFAULT_INJECT_OPTIONS, InjectOptionsError, type BaseUrls, type InjectOptions } from './options.js';
import { CA_MOUNT_PATH, TRUST_VARS } from './sidecar.js';

const D = DEFAULT_INJECT_OPTIONS;

/** Words of `text` on lines of at most `width` characters, each starting with `indent`. */
const wrap = (text: string, width: number, indent: string): string =>
  text
    .split(' ')
    .reduce<string[]>((lines, word) => {
      const last = lines.at(-1);
      if (last !== undefined && last.length + 1 + word.length <= width) lines[lines.length - 1] = `${last} ${word}`;
      else lines.push(indent + word);
      return lines;
    }, [])
    .join('\n');

/** `fusebox inject --help`. */
export const INJECT_USAGE = `Usage: fusebox inject [-f FILE|-]... [options] > injected.yaml

Adds the Fusebox sidecar (a native sidecar: an init container with restartPolicy: Always, Kubernetes >= 1.30)
to every Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob and Pod in the input,
and points the proxied containers at it. Other objects pass through unchanged. JSON in gives JSON out, YAML in
YAML out (comments kept). Reads standard input when no -f is given. Writes the result to standard output, one line
per object to standard error.

What each proxied container gets:
  HTTP_PROXY, HTTPS_PROXY, http_proxy, https_proxy=http://127.0.0.1:PROXY-PORT, NO_PROXY/no_proxy merged with the
  pod and cluster addresses, NODE_USE_ENV_PROXY=1; and the pod CA, so HTTPS through HTTPS_PROXY to a routed host
  gets every policy: the sidecar writes it to ${CA_MOUNT_PATH} (an emptyDir, read-only here) before it turns
  ready, and the kubelet starts the agents only after that. Trust variables:
${TRUST_VARS.map((v) => `    ${`${v.name}=${v.value}`.padEnd(53)} ${v.readBy}`).join('\n')}
  Out of reach of the CA: JVMs (they read a truststore: import ca.crt with keytool in an init container, or pass
  -Djavax.net.ssl.trustStore), clients that pin certificates or ship their own roots (give their host a route in
  tunnel mode: counted, but no caps or credentials). For those, or to run without the CA, set SDK base URLs
  (--base-url) and pass --no-ca.

Which containers: the pod annotation fusebox.io/containers: "a,b" if set, else --containers, else every
container except known sidecars of other tools, by name or image, which keep their own egress (pointed at Fusebox,
a log shipper would be refused every destination no route lists):
${wrap(KNOWN_SIDECARS.flatMap((k) => k.names.slice(0, 1)).join(', '), 110, '  ')}.

Options:
  -f, --filename FILE        YAML or JSON file to read; "-" is standard input; may be repeated
      --image IMAGE          sidecar image (default ${D.image})
      --config-map NAME      ConfigMap with config.yaml (default ${D.configMapName})
      --secret NAME          Secret with provider keys, FUSEBOX_ADMIN_TOKEN... (default ${D.secretName})
      --proxy-port PORT      Fusebox proxy port (default ${D.proxyPort})
      --admin-port PORT      Fusebox admin port: health, readiness, metrics (default ${D.adminPort})
      --agent-label KEY      pod label passed to Fusebox as FUSEBOX_AGENT (default ${D.agentLabel})
      --cluster-domain NAME  cluster DNS domain, kept off the proxy (default ${D.clusterDomain})
      --no-proxy LIST        more comma-separated NO_PROXY entries the agent reaches directly; may be repeated
      --containers LIST      comma-separated names of the containers to proxy (default: all but known sidecars);
                             a pod with none of them is refused; may be repeated
      --no-ca                do not wire the pod CA (no volume, FUSEBOX_CA_DIR or trust variables): HTTPS through
                             HTTPS_PROXY stays an end-to-end tunnel that Fusebox only counts
      --base-url LIST        set SDK base URLs, PROVIDER=PREFIX comma-separated, PREFIX a route's match.pathPrefix:
                             openai=/openai gives OPENAI_BASE_URL=http://127.0.0.1:PROXY-PORT/openai/v1,
                             anthropic=/anthropic gives ANTHROPIC_BASE_URL=http://127.0.0.1:PROXY-PORT/anthropic
                             (the SDKs still want an API key set; Fusebox replaces it); may be repeated
      --base-url-config FILE the same, with each provider's PREFIX read from the sidecar's Fusebox config (or its
                             ConfigMap manifest): its first openai / anthropic route with a match.pathPrefix; its
                             listen ports must equal --proxy-port and --admin-port; --base-url entries win over it
      --override-proxy-env   replace proxy, trust and base-URL variables a proxied container already sets to
                             something else, instead of refusing the workload
      --no-node-env-proxy    do not set NODE_USE_ENV_PROXY=1 (makes Node's fetch and http honour HTTP_PROXY)
      --cpu-request Q        sidecar CPU request (default ${D.cpuRequest})
      --cpu-limit Q          sidecar CPU limit, "" for none (default ${D.cpuLimit})
      --memory-request Q     sidecar memory request (default ${D.memoryRequest})
      --memory-limit Q       sidecar memory limit (default ${D.memoryLimit})
      --grace-ms MS          Fusebox's shutdown.graceMs (default ${D.graceMs})
      --pre-stop-seconds S   preStop sleep before Fusebox is stopped, 0 for none (default ${D.preStopSeconds})
  -q, --quiet                report only refused objects and warnings on standard error
  -h, --help                 show this help

Opt a workload out with the annotation fusebox.io/inject: "false". An injected workload is left as it is
(re-running changes nothing); to change its options, inject the original manifest again.
Exit status: 0 all injected or passed through, 1 something was refused (it is written out unchanged),
2 usage or I/O error (nothing is written).`;

/** The streams runInject uses; process.stdin/stdout/stderr in the real CLI, in-memory streams in tests. */
export interface InjectIo {
  stdin: NodeJS.ReadableStream;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  /** Expands `\${VAR}` in a --base-url-config file, as the sidecar would. Default process.env. */
  env?: NodeJS.ProcessEnv;
}

const OPTIONS = {
  filename: { type: 'string', short: 'f', multiple: true },
  image: { type: 'string' },
  'config-map': { type: 'string' },
  secret: { type: 'string' },
  'proxy-port': { type: 'string' },
  'admin-port': { type: 'string' },
  'agent-label': { type: 'string' },
  'cluster-domain': { type: 'string' },
  'no-proxy': { type: 'string', multiple: true },
  containers: { type: 'string', multiple: true },
  ca: { type: 'boolean', default: true },
  'base-url': { type: 'string', multiple: true },
  'base-url-config': { type: 'string' },
  'override-proxy-env': { type: 'boolean' },
  'node-env-proxy': { type: 'boolean', default: true },
  'cpu-request': { type: 'string' },
  'cpu-limit': { type: 'string' },
  'memory-request': { type: 'string' },
  'memory-limit': { type: 'string' },
  'grace-ms': { type: 'string' },
  'pre-stop-seconds': { type: 'string' },
  quiet: { type: 'boolean', short: 'q' },
  help: { type: 'boolean', short: 'h' },
} as const;

class UsageError extends Error {}

/** A whole number or undefined; anything else is a usage error naming the flag. */
const intFlag = (flag: string, value: string | undefined): number | undefined => {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new UsageError(`--${flag}: "${value}" is not a whole number`);
  return Number(value);
};

const toOptions = (v: ReturnType<typeof parse>['values']): Partial<InjectOptions> => ({
  image: v.image,
  configMapName: v['config-map'],
  secretName: v.secret,
  proxyPort: intFlag('proxy-port', v['proxy-port']),
  adminPort: intFlag('admin-port', v['admin-port']),
  agentLabel: v['agent-label'],
  clusterDomain: v['cluster-domain'],
  noProxy: v['no-proxy']?.flatMap((list) => list.split(',').map((s) => s.trim()).filter((s) => s !== '')),
  containers: v.containers?.flatMap(splitNames),
  ca: v.ca,
  overrideProxyEnv: v['override-proxy-env'],
  nodeUseEnvProxy: v['node-env-proxy'],
  cpuRequest: v['cpu-request'],
  cpuLimit: v['cpu-limit'],
  memoryRequest: v['memory-request'],
  memoryLimit: v['memory-limit'],
  graceMs: intFlag('grace-ms', v['grace-ms']),
  preStopSeconds: intFlag('pre-stop-seconds', v['pre-stop-seconds']),
});

/**
 * The SDK base paths asked for: from the sidecar's config file first, then the explicit --base-url entries over
 * them. The config's ports are checked against inject's, since a base URL or probe on another port reaches nothing.
 */
const resolveBaseUrls = (v: ReturnType<typeof parse>['values'], o: Partial<InjectOptions>, env: NodeJS.ProcessEnv): BaseUrls => {
  const file = v['base-url-config'];
  let fromConfig: BaseUrls = {};
  if (file !== undefined) {
    const config = readFuseboxConfig(file, env);
    fromConfig = baseUrlsFromConfig(config);
    if (Object.keys(fromConfig).length === 0) {
      throw new UsageError(`--base-url-config: ${file} has no route with provider openai or anthropic and a match.pathPrefix it strips`);
    }
    for (const [which, flag, listen, ours] of [
      ['proxy', 'proxy-port', config.listen.proxy.port, o.proxyPort ?? D.proxyPort],
      ['admin', 'admin-port', config.listen.admin.port, o.adminPort ?? D.adminPort],
    ] as const) {
      if (listen !== ours) throw new UsageError(`--base-url-config: ${file} sets listen.${which}.port ${listen} but inject uses ${ours}; pass --${flag} ${listen}`);
    }
  }
  return { ...fromConfig, ...parseBaseUrlFlag(v['base-url'] ?? []) };
};

const parse = (argv: string[]) => parseArgs({ args: argv, options: OPTIONS, strict: true, allowPositionals: false, allowNegative: true });

const readAll = async (stream: NodeJS.ReadableStream): Promise<string> => {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer));
  return Buffer.concat(chunks).toString('utf8');
};

const readInputs = async (files: string[], stdin: NodeJS.ReadableStream): Promise<string[]> => {
  // Reads every file before injecting any, so an unreadable file fails the run before anything is written.
  const texts: string[] = [];
  let stdinUsed = false;
  for (const file of files) {
    if (file === '-') {
      if (stdinUsed) throw new UsageError('"-" (standard input) given twice');
      stdinUsed = true;
      texts.push(await readAll(stdin));
      continue;
    }
    try {
      texts.push(await readFile(file, 'utf8'));
    } catch (err) {
      throw new UsageError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  return texts;
};

/**
 * One YAML stream out of several. A file that does not end in a newline must not glue onto the next `---`, and a
 * stream starting with a directive (`%YAML`) may only follow an explicit document end (`...`).
 */
const joinStreams = (texts: string[]): string =>
  texts
    .filter((t) => t !== '')
    .map((t) => (t.endsWith('\n') ? t : `${t}\n`))
    .reduce((all, t, i) => (i === 0 ? t : t.startsWith('%') ? `${all}...\n${t}` : t.startsWith('---') ? all + t : `${all}---\n${t}`), '');

const describe = (r: InjectResult): string => {
  const id = `${r.kind.toLowerCase()} "${r.namespace ? `${r.namespace}/` : ''}${r.name}"`;
  const head = r.reason ? `${id} ${r.status}: ${r.reason}` : `${id} ${r.status}`;
  return [head, ...(r.warnings ?? []).map((w) => `  warning: ${w}`)].join('\n');
};

const write = (stream: NodeJS.WritableStream, text: string): Promise<void> =>
  new Promise((resolve, reject) => {
    stream.write(text, (err) => (err ? reject(err) : resolve()));
  });

/**
 * `fusebox inject`. `argv` is what follows `inject` on the command line.
 * Returns the exit status: 0 fine, 1 at least one object refused, 2 usage or I/O error.
 */
export const runInject = async (argv: string[], io: InjectIo): Promise<number> => {
  let texts: string[];
  let files: string[];
  let options: Partial<InjectOptions>;
  let quiet = false;
  try {
    const { values } = parse(argv);
    if (values.help) {
      await write(io.stdout, `${INJECT_USAGE}\n`);
      return 0;
    }
    quiet = values.quiet ?? false;
    options = toOptions(values);
    options.baseUrls = resolveBaseUrls(values, options, io.env ?? process.env);
    files = values.filename ?? ['-'];
    texts = await readInputs(files, io.stdin);
  } catch (err) {
    const known = err instanceof UsageError || err instanceof BaseUrlError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
    const message = err instanceof ConfigError ? `--base-url-config: ${err.message}` : known ? (err as Error).message : String(err);
    await write(io.stderr, `fusebox inject: ${message}\nRun "fusebox inject --help" for the options.\n`);
    return 2;
  }
  // Each file is injected as its own stream (its directives and document numbers are its own), then joined.
  const outputs: string[] = [];
  const lines: string[] = [];
  let refused = false;
  try {
    texts.forEach((text, i) => {
      const { output, results } = inject(text, options);
      outputs.push(output);
      const from = texts.length > 1 ? `${files[i]}: ` : '';
      for (const r of results) {
        refused ||= r.status === 'refused';
        if (!quiet || r.status === 'refused' || (r.warnings?.length ?? 0) > 0) lines.push(from + describe(r));
      }
    });
  } catch (err) {
    if (!(err instanceof InjectOptionsError)) throw err;
    await write(io.stderr, `fusebox inject: ${err.message}\n`);
    return 2;
  }
  await write(io.stdout, joinStreams(outputs));
  if (lines.length > 0) await write(io.stderr, `${lines.join('\n')}\n`);
  return refused ? 1 : 0;
};
