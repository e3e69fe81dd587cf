/**
 * `store.url`, read once: one Redis (`redis://`, `rediss://`) or a Redis Cluster (`redis+cluster://`,
 * `rediss+cluster://`) given by a comma-separated list of seed nodes. One URL field rather than a separate node list
 * keeps one way to write the address everywhere it is given (the config, `${VAR}` expansion, `fusebox gate --store`)
 * and keeps the password in one place that is never logged (see {@link describeRedisTarget}).
 */

export interface RedisNodeAddress {
  readonly host: string;
  readonly port: number;
}

export type RedisTarget =
  | { readonly mode: 'single'; readonly url: string; readonly tls: boolean; readonly node: RedisNodeAddress }
  | {
      readonly mode: 'cluster';
      /** Seed nodes: the client learns every master from the first one that answers CLUSTER SLOTS. */
      readonly nodes: readonly RedisNodeAddress[];
      readonly tls: boolean;
      readonly username?: string;
      readonly password?: string;
    };

const SCHEMES = ['redis:', 'rediss:', 'redis+cluster:', 'rediss+cluster:'] as const;
const DEFAULT_PORT = 6379;

/** A URL Fusebox cannot use; the message names the part that is wrong and never repeats the password. */
export class RedisUrlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RedisUrlError';
  }
}

/** `host`, `host:port`, `[v6]` or `[v6]:port`. */
const parseNode = (text: string): RedisNodeAddress => {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]/?#@,\s]+))(?::(\d{1,5}))?$/.exec(text);
  if (!m) throw new RedisUrlError(`"${text}" is not a host or host:port`);
  const port = m[3] === undefined ? DEFAULT_PORT : Number(m[3]);
  if (port < 1 || port > 65_535) throw new RedisUrlError(`port ${m[3]} of "${text}" is not between 1 and 65535`);
  return { host: (m[1] ?? m[2])!, port };
};

const decode = (part: string, what: string): string => {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new RedisUrlError(`the ${what} in the URL is not valid percent-encoding`);
  }
};

/**
 * Reads `store.url`. A cluster URL is `redis+cluster://[user:password@]host:port,host:port[/]`: no database number
 * (a cluster has only database 0) and no query. Throws a RedisUrlError a person can act on.
 */
export const parseRedisUrl = (url: string): RedisTarget => {
  const scheme = SCHEMES.find((s) => url.toLowerCase().startsWith(`${s}//`));
  if (!scheme) throw new RedisUrlError(`must start with redis://, rediss://, redis+cluster:// or rediss+cluster:// (got "${shownScheme(url)}")`);
  const tls = scheme.startsWith('rediss');
  if (scheme === 'redis:' || scheme === 'rediss:') {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new RedisUrlError(`is not a valid URL (${redactRedisUrl(url)})`);
    }
    if (!parsed.hostname) throw new RedisUrlError('names no host');
    const host = parsed.hostname.startsWith('[') ? parsed.hostname.slice(1, -1) : parsed.hostname;
    return { mode: 'single', url, tls, node: { host, port: parsed.port ? Number(parsed.port) : DEFAULT_PORT } };
  }
  const rest = url.slice(scheme.length + 2).replace(/\/$/, '');
  if (/[/?#]/.test(rest)) throw new RedisUrlError('a cluster URL takes no database number, path or query (a cluster has only database 0)');
  const at = rest.lastIndexOf('@');
  const hosts = at === -1 ? rest : rest.slice(at + 1);
  const userinfo = at === -1 ? undefined : rest.slice(0, at);
  if (hosts === '') throw new RedisUrlError('a cluster URL needs at least one host:port after //');
  const nodes = hosts.split(',').map((h) => parseNode(h.trim()));
  let username: string | undefined;
  let password: string | undefined;
  if (userinfo !== undefined) {
    const colon = userinfo.indexOf(':');
    const user = colon === -1 ? userinfo : userinfo.slice(0, colon);
    if (user !== '') username = decode(user, 'user name');
    if (colon !== -1) password = decode(userinfo.slice(colon + 1), 'password');
  }
  return { mode: 'cluster', nodes, tls, ...(username !== undefined && { username }), ...(password !== undefined && { password }) };
};

const shownScheme = (url: string): string => {
  const i = url.indexOf('//');
  return i === -1 ? url.slice(0, 16) : url.slice(0, i + 2);
};

/** The URL with any password replaced by `***`: what logs and error messages may show. */
export const redactRedisUrl = (url: string): string => url.replace(/^([^:/]+:\/\/)([^@/]*)@/, (_m, scheme: string, userinfo: string) => {
  const colon = userinfo.indexOf(':');
  return `${scheme}${colon === -1 ? userinfo : `${userinfo.slice(0, colon)}:***`}@`;
});

/** `host:port`, IPv6 in brackets: how a node is named in logs. */
export const nodeName = (n: RedisNodeAddress): string => (n.host.includes(':') ? `[${n.host}]:${n.port}` : `${n.host}:${n.port}`);

/** What a log line may say about where the store is: mode and nodes, never credentials. */
export const describeRedisTarget = (t: RedisTarget): string =>
  t.mode === 'single' ? `${t.tls ? 'rediss' : 'redis'} ${nodeName(t.node)}` : `${t.tls ? 'rediss' : 'redis'} cluster ${t.nodes.map(nodeName).join(',')}`;
