import type { RouteConfig } from '../config/schema.js';
import { parseHostEntry } from '../net/address.js';

export interface PrefixMatch<R> {
  route: R;
  /** Path and query to forward (prefix stripped unless the route keeps it): '' or starting with '/' or '?'. */
  path: string;
}

/** Does `path` start with `prefix` at a segment boundary? `/openai` matches `/openai/v1` and `/openai?x`, not `/openai2`. */
const atBoundary = (path: string, prefix: string): boolean => {
  if (!path.startsWith(prefix)) return false;
  if (prefix.endsWith('/') || path.length === prefix.length) return true;
  const next = path.charCodeAt(prefix.length);
  return next === 47 /* / */ || next === 63 /* ? */;
};

/**
 * The allow-list: which destination each request may reach. Built from the config, and never changed after: a
 * reload builds a new one and swaps it in whole. Base-URL lookups scan a short list sorted most-specific first
 * (route counts are in the tens); proxy-mode lookups go through a map keyed by the normalized `host:port`, so
 * every spelling of an address meets the same entry.
 */
export class RouteTable<R extends { config: RouteConfig }> {
  private readonly prefixed: R[];
  /** `host:port` → the routes listing it, longest `hostPathPrefix` first. */
  private readonly byAuthority = new Map<string, R[]>();

  constructor(routes: R[]) {
    this.prefixed = routes
      .filter((r) => r.config.match.pathPrefix !== undefined)
      .sort((a, b) => b.config.match.pathPrefix!.length - a.config.match.pathPrefix!.length);
    for (const route of routes) {
      for (const text of route.config.match.hosts ?? []) {
        const entry = parseHostEntry(text);
        if (typeof entry === 'string') throw new Error(`routes: ${route.config.name}: ${text}: ${entry}`); // the schema refuses these
        for (const port of entry.ports) {
          const key = `${entry.host}:${port}`;
          const list = this.byAuthority.get(key) ?? [];
          if (!list.includes(route)) list.push(route);
          list.sort((a, b) => b.config.match.hostPathPrefix.length - a.config.match.hostPathPrefix.length);
          this.byAuthority.set(key, list);
        }
      }
    }
  }

  /**
   * Base-URL mode: `/openai/v1/chat/completions?x` → route `openai`, path `/v1/chat/completions?x`. The rest after
   * the prefix is forwarded as is: `/mcp-a` itself forwards an empty path (the upstream URL's own path, exactly).
   */
  byPrefix(url: string): PrefixMatch<R> | undefined {
    for (const route of this.prefixed) {
      const prefix = route.config.match.pathPrefix!;
      if (!atBoundary(url, prefix)) continue;
      if (!route.config.stripPrefix) return { route, path: url };
      return { route, path: url.slice(prefix.endsWith('/') ? prefix.length - 1 : prefix.length) };
    }
    return undefined;
  }

  /** Proxy mode (absolute-form or intercepted request): the normalized host and port must be listed; the path is forwarded as is. */
  byHost(host: string, port: number, path: string): R | undefined {
    return this.byAuthority.get(`${host}:${port}`)?.find((r) => atBoundary(path, r.config.match.hostPathPrefix));
  }

  /** CONNECT host:port → the host's broadest route (a tunnel carries every path; it is counted there). */
  forConnect(host: string, port: number): R | undefined {
    return this.byAuthority.get(`${host}:${port}`)?.at(-1);
  }
}
