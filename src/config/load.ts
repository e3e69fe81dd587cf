import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { ConfigSchema, type Config } from './schema.js';

/** A config that cannot be used. `problems` holds one readable line per mistake, each with its path. */
export class ConfigError extends Error {
  constructor(
    readonly source: string,
    readonly problems: string[],
  ) {
    super(`${source}: ${problems.length} problem${problems.length === 1 ? '' : 's'}\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
  }
}

export interface LoadedConfig {
  config: Config;
  /** Folder of the config file; relative paths in it (prices, CA files) resolve from here. */
  baseDir: string;
}

/** `routes[2].retry.baseMs`, the way a person reads a YAML path. */
export const formatPath = (path: readonly PropertyKey[]): string =>
  path.reduce<string>((acc, key) => (typeof key === 'number' ? `${acc}[${key}]` : acc ? `${acc}.${String(key)}` : String(key)), '');

const describeIssue = (issue: z.core.$ZodIssue): string => {
  const where = formatPath(issue.path) || '(top level)';
  switch (issue.code) {
    case 'unrecognized_keys':
      return `${where}: unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')} (check the spelling; see the README's config reference)`;
    case 'invalid_type':
      return issue.input === undefined ? `${where}: is required (${issue.expected})` : `${where}: expected ${issue.expected}, got ${typeOf(issue.input)}`;
    default:
      return `${where}: ${issue.message}`;
  }
};

const typeOf = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/**
 * Expand `${VAR}` and `${VAR:-default}`. Only applied to the fields where identities and environment-specific
 * addresses go (agent id, store URL, added header values): secrets are referenced by name (`credential.env`)
 * so they never pass through the config object at all.
 */
export const expandEnv = (value: string, env: NodeJS.ProcessEnv, path: string, problems: string[]): string =>
  value.replace(ENV_REF, (_m, name: string, fallback: string | undefined) => {
    const v = env[name];
    if (v !== undefined && v !== '') return v;
    if (fallback !== undefined) return fallback;
    problems.push(`${path}: environment variable ${name} is not set (write \${${name}:-default} to give a default)`);
    return '';
  });

const expandRaw = (raw: unknown, env: NodeJS.ProcessEnv, problems: string[]): void => {
  if (!isRecord(raw)) return;
  const agent = raw.agent;
  if (isRecord(agent) && typeof agent.id === 'string') agent.id = expandEnv(agent.id, env, 'agent.id', problems);
  // Listen hosts: so one image config serves a pod (loopback) and a standalone container (0.0.0.0 behind -p).
  const listen = raw.listen;
  for (const which of ['proxy', 'admin'] as const) {
    const l = isRecord(listen) ? listen[which] : undefined;
    if (isRecord(l) && typeof l.host === 'string') l.host = expandEnv(l.host, env, `listen.${which}.host`, problems);
  }
  const store = raw.store;
  if (isRecord(store) && typeof store.url === 'string') store.url = expandEnv(store.url, env, 'store.url', problems);
  if (Array.isArray(raw.routes)) {
    raw.routes.forEach((route, i) => {
      const add = isRecord(route) && isRecord(route.headers) ? route.headers.add : undefined;
      if (!isRecord(add)) return;
      for (const [k, v] of Object.entries(add)) {
        if (typeof v === 'string') add[k] = expandEnv(v, env, `routes[${i}].headers.add.${k}`, problems);
      }
    });
  }
};

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Validate an already-parsed object (tests, embedded defaults). Throws ConfigError listing every problem. */
export const parseConfig = (raw: unknown, source = 'config', env: NodeJS.ProcessEnv = process.env): Config => {
  const problems: string[] = [];
  expandRaw(raw, env, problems);
  const result = ConfigSchema.safeParse(raw ?? {}, { reportInput: true });
  if (!result.success) problems.push(...result.error.issues.map(describeIssue));
  if (problems.length > 0 || !result.success) throw new ConfigError(source, problems);
  return result.data;
};

/** Read, parse and validate a YAML config file. Throws ConfigError with every problem found. */
export const loadConfigFile = (file: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig => {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [`cannot read the file: ${(err as Error).message}`]);
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(file, doc.errors.map((e) => `YAML: ${e.message.split('\n')[0]}`));
  }
  return { config: parseConfig(doc.toJS(), file, env), baseDir: dirname(resolve(file)) };
};
