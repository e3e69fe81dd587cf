import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import { describeProblem, formatPath, positionOf, problemsOfIssue, type Problem } from './problems.js';
import { ConfigSchema, type Config } from './schema.js';

export { formatPath } from './problems.js';

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

/**
 * A file the config names (a CA, a client certificate), read relative to `baseDir` (the config file's folder). One
 * that cannot be read is as bad as a bad config file: a ConfigError naming the field, the path and why, so the
 * sidecar does not start (or a reload is invalid) instead of failing with a stack trace.
 */
export const readConfiguredFile = (baseDir: string, file: string, field: string): Buffer => {
  const path = resolve(baseDir, file);
  try {
    return readFileSync(path);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new ConfigError('config', [`${field}: cannot read ${path} (${e.code ?? e.message})`]);
  }
};

export interface LoadedConfig {
  config: Config;
  /** Folder of the config file; relative paths in it (prices, CA files) resolve from here. */
  baseDir: string;
}

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/**
 * Expand `${VAR}` and `${VAR:-default}`. Only applied to the fields where identities and environment-specific
 * addresses go (agent id, store URL, added header values): secrets are referenced by name (`credential.env`)
 * so they never pass through the config object at all.
 */
export const expandEnv = (value: string, env: NodeJS.ProcessEnv, path: readonly PropertyKey[], problems: Problem[]): string =>
  value.replace(ENV_REF, (_m, name: string, fallback: string | undefined) => {
    const v = env[name];
    if (v !== undefined && v !== '') return v;
    if (fallback !== undefined) return fallback;
    problems.push({ path, message: `environment variable ${name} is not set (write \${${name}:-default} to give a default)` });
    return '';
  });

const expandRaw = (raw: unknown, env: NodeJS.ProcessEnv, problems: Problem[]): void => {
  if (!isRecord(raw)) return;
  const agent = raw.agent;
  if (isRecord(agent) && typeof agent.id === 'string') agent.id = expandEnv(agent.id, env, ['agent', 'id'], problems);
  // Listen hosts: so one image config serves a pod (loopback) and a standalone container (0.0.0.0 behind -p).
  const listen = raw.listen;
  for (const which of ['proxy', 'admin'] as const) {
    const l = isRecord(listen) ? listen[which] : undefined;
    if (isRecord(l) && typeof l.host === 'string') l.host = expandEnv(l.host, env, ['listen', which, 'host'], problems);
  }
  const store = raw.store;
  if (isRecord(store) && typeof store.url === 'string') store.url = expandEnv(store.url, env, ['store', 'url'], problems);
  if (Array.isArray(raw.routes)) {
    raw.routes.forEach((route, i) => {
      const add = isRecord(route) && isRecord(route.headers) ? route.headers.add : undefined;
      if (!isRecord(add)) return;
      for (const [k, v] of Object.entries(add)) {
        if (typeof v === 'string') add[k] = expandEnv(v, env, ['routes', i, 'headers', 'add', k], problems);
      }
    });
  }
};

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Every problem of an already-parsed object, or the config when there is none. Expands `${VAR}` in `raw` in place. */
const validate = (raw: unknown, env: NodeJS.ProcessEnv): { config?: Config; problems: Problem[] } => {
  const problems: Problem[] = [];
  expandRaw(raw, env, problems);
  const result = ConfigSchema.safeParse(raw ?? {}, { reportInput: true });
  if (!result.success) {
    // A variable that is not set was reported above; the empty string it left would only be reported again.
    const unset = new Set(problems.map((p) => formatPath(p.path)));
    const found = result.error.issues.flatMap((issue) => problemsOfIssue(issue, ConfigSchema, raw));
    problems.push(...found.filter((p) => !unset.has(formatPath(p.path))));
  }
  return problems.length > 0 || !result.success ? { problems } : { config: result.data, problems };
};

/** Validate an already-parsed object (tests, embedded defaults). Throws ConfigError listing every problem. */
export const parseConfig = (raw: unknown, source = 'config', env: NodeJS.ProcessEnv = process.env): Config => {
  const { config, problems } = validate(raw, env);
  if (config === undefined) throw new ConfigError(source, problems.map((p) => describeProblem(p, raw)));
  return config;
};

/**
 * Read, parse and validate a YAML config file. Throws ConfigError with every problem found, each as
 * `FILE:LINE:COL: path: what` (the form editors and terminals turn into a link), in the order of the file.
 */
export const loadConfigFile = (file: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig => {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [`cannot read the file: ${(err as Error).message}`]);
  }
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true, lineCounter });
  if (doc.errors.length > 0) {
    throw new ConfigError(file, doc.errors.map((e) => `YAML: ${e.message.split('\n')[0]}`));
  }
  const raw: unknown = doc.toJS();
  const { config, problems } = validate(raw, env);
  if (config === undefined) {
    const located = problems.map((p) => ({ text: describeProblem(p, raw), pos: positionOf(p, doc, lineCounter) }));
    const order = (pos: { line: number; col: number } | undefined) => (pos === undefined ? -1 : pos.line * 1e6 + pos.col);
    located.sort((a, b) => order(a.pos) - order(b.pos));
    throw new ConfigError(file, located.map(({ text, pos }) => (pos === undefined ? text : `${file}:${pos.line}:${pos.col}: ${text}`)));
  }
  return { config, baseDir: dirname(resolve(file)) };
};
