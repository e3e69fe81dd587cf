import type { RouteConfig } from '../config/schema.js';

export interface PrefixMatch<R> {
  route: R;
  /** Path and query to forward (prefix stripped unless the route keeps it). Always starts with '/'. */
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
 * The allow-list: which destination each request may reach. Built once from the config; lookups are a scan of
 * a short list sorted most-specific first (route counts are in the tens, a Map per prefix would not pay).
 */
export class RouteTable<R extends { config: RouteConfig }> {
  private readonly prefixed: R[];
  private readonly hosted: R[];

  constructor(routes: R[]) {
    this.prefixed = routes
      .filter((r) => r.config.match.pathPrefix !== undefined)
      .sort((a, b) => b.config.match.pathPrefix!.length - a.config.match.pathPrefix!.length);
    this.hosted = routes
      .filter((r) => (r.config.match.hosts?.length ?? 0) > 0)
      .sort((a, b) => b.config.match.hostPathPrefix.length - a.config.match.hostPathPrefix.length);
  }

  /** Base-URL mode: `/openai/v1/chat/completions?x` → route `openai`, path `/v1/chat/completions?x`. */
  byPrefix(url: string): PrefixMatch<R> | undefined {
    for (const route of this.prefixed) {
      const prefix = route.config.match.pathPrefix!;
      if (!atBoundary(url, prefix)) continue;
      if (!route.config.stripPrefix) return { route, path: url };
      let rest = url.slice(prefix.endsWith('/') ? prefix.length - 1 : prefix.length);
      if (rest === '' || rest.startsWith('?')) rest = `/${rest}`;
      return { route, path: rest };
    }
    return undefined;
  }

  /** Proxy mode (absolute-form request): host must be allow-listed; the path is forwarded as is. */
  byHost(hostname: string, path: string): R | undefined {
    const host = hostname.toLowerCase();
    for (const route of this.hosted) {
      if (route.config.match.hosts!.some((h) => h.toLowerCase() === host) && atBoundary(path, route.config.match.hostPathPrefix)) {
        return route;
      }
    }
    return undefined;
  }

  /** CONNECT host:port: the host must be allow-listed and the port among the route's `connectPorts`. */
  forConnect(hostname: string, port: number): R | undefined {
    const host = hostname.toLowerCase();
    // A tunnel carries every path, so it is counted under the host's broadest route (least specific first).
    return this.hosted.findLast(
      (r) => r.config.match.connectPorts.includes(port) && r.config.match.hosts!.some((h) => h.toLowerCase() === host),
    );
  }
}
