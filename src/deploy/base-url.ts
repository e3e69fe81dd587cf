import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { ConfigError, parseConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { BASE_URL_VARS, type BaseUrlProvider, type BaseUrls } from './options.js';

/**
 * Where the SDK base URLs of `--base-url` and `--base-url-config` come from. A base URL only works if its path is
 * the `match.pathPrefix` of a route the sidecar runs, so the prefixes are either named by the user or read from the
 * very config file the sidecar is given; inject never guesses them.
 *
 * The OpenAI SDKs append `/chat/completions` to a base URL that ends in `/v1` (their default is
 * `https://api.openai.com/v1`); the Anthropic SDKs append `/v1/messages` to a bare host. Fusebox strips the prefix
 * and appends the rest to the route's `upstream.url`, so OpenAI's base URL gets `/v1` unless the upstream URL
 * already ends in it.
 */

/** A `--base-url` or `--base-url-config` value that cannot be used; the message says which and why. */
export class BaseUrlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BaseUrlError';
  }
}

const PREFIX = /^\/[^?#\s,=]*$/;

const isProvider = (p: string): p is BaseUrlProvider => Object.hasOwn(BASE_URL_VARS, p);

/** The path on the proxy port an SDK's base URL points at, for a route prefix. */
export const basePathFor = (provider: BaseUrlProvider, prefix: string, upstreamUrl?: string): string => {
  const p = prefix.replace(/\/+$/, '');
  const upstreamPath = upstreamUrl === undefined ? '' : new URL(upstreamUrl).pathname.replace(/\/+$/, '');
  const suffix = provider === 'openai' && !upstreamPath.endsWith('/v1') ? '/v1' : '';
  return `${p}${suffix}` || '/';
};

/** `openai=/openai,anthropic=/anthropic` (the flag may be repeated) → base paths. */
export const parseBaseUrlFlag = (values: readonly string[]): BaseUrls => {
  const out: BaseUrls = {};
  for (const entry of values.flatMap((v) => v.split(',')).map((s) => s.trim()).filter((s) => s !== '')) {
    const eq = entry.indexOf('=');
    const provider = eq === -1 ? entry : entry.slice(0, eq).trim();
    const prefix = eq === -1 ? '' : entry.slice(eq + 1).trim();
    if (!isProvider(provider)) throw new BaseUrlError(`--base-url: "${provider}" is not a provider inject knows (${Object.keys(BASE_URL_VARS).join(', ')})`);
    if (eq === -1 || !PREFIX.test(prefix)) {
      throw new BaseUrlError(`--base-url: "${entry}" must be PROVIDER=PREFIX, the route's match.pathPrefix (like ${provider}=/${provider})`);
    }
    if (out[provider] !== undefined) throw new BaseUrlError(`--base-url: ${provider} is given twice`);
    out[provider] = basePathFor(provider, prefix);
  }
  return out;
};

/**
 * The base paths a Fusebox config offers: per provider, the first route (in file order) with a `match.pathPrefix`
 * that is stripped before forwarding (a route that keeps its prefix forwards `/openai/v1/...` as is, which no
 * provider serves).
 */
export const baseUrlsFromConfig = (config: Config): BaseUrls => {
  const out: BaseUrls = {};
  for (const route of config.routes) {
    const prefix = route.match.pathPrefix;
    if (!isProvider(route.provider) || prefix === undefined || !route.stripPrefix || out[route.provider] !== undefined) continue;
    out[route.provider] = basePathFor(route.provider, prefix, route.upstream.url);
  }
  return out;
};

/**
 * Read a Fusebox config for inject: a config file, or a ConfigMap manifest holding one as `data["config.yaml"]`
 * (deploy/kubernetes/base/configmap.yaml). `${VAR}` references expand from `env`, as the sidecar would.
 *
 * @throws ConfigError naming every problem.
 */
export const readFuseboxConfig = (file: string, env: NodeJS.ProcessEnv): Config => {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [`cannot read the file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`]);
  }
  const parse = (t: string, source: string): unknown => {
    const doc = parseDocument(t, { prettyErrors: true, uniqueKeys: true });
    if (doc.errors.length > 0) throw new ConfigError(source, doc.errors.map((e) => `YAML: ${e.message.split('\n')[0]}`));
    return doc.toJS();
  };
  let raw = parse(text, file);
  let source = file;
  if (isRecord(raw) && raw.kind === 'ConfigMap') {
    const inner = isRecord(raw.data) ? raw.data['config.yaml'] : undefined;
    if (typeof inner !== 'string') throw new ConfigError(file, ['a ConfigMap without data["config.yaml"]; give the Fusebox config file itself']);
    source = `${file} (data["config.yaml"])`;
    raw = parse(inner, source);
  }
  return parseConfig(raw, source, env);
};

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
