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
 * A path's first segment: what follows the leading `/` up to the next `/` or `?` (`/openai/v1` → `openai`). A prefix
 * can only match a path at a boundary if both have the same first segment, or if the prefix has none (`/`).
 */
const firstSegment = (path: string): string => {
  let end = 1;
  while (end < path.length) {
    const c = path.charCodeAt(end);
    if (c === 47 /* / */ || c === 63 /* ? */) break;
    end++;
  }
  return path.slice(1, end);
};

/**
 * The allow-list: which destination each request may reach. Built from the config, and never changed after: a
 * reload builds a new one and swaps it in whole. Base-URL lookups scan the routes sharing the path's first segment,
 * sorted most-specific first (so 500 routes cost what a handful do); proxy-mode lookups go through a map keyed by the
 * normalized `host:port`, so every spelling of an address meets the same entry.
 */
export class RouteTable<R extends { config: RouteConfig }> {
  /** First segment → the routes whose prefix has it, plus those whose prefix has none, in `prefixed` order. */
  private readonly bySegment = new Map<string, R[]>();
  /** Routes whose prefix has no first segment (`/`): the candidates of a path whose segment no prefix names. */
  private readonly anySegment: R[] = [];
  /** `host:port` → the routes listing it, longest `hostPathPrefix` first. */
  private readonly byAuthority = new Map<string, R[]>();

  constructor(routes: R[]) {
    // Every route with a `pathPrefix`, longest first (ties in config order); each candidate list keeps that order.
    const prefixed = routes
      .filter((r) => r.config.match.pathPrefix !== undefined)
      .sort((a, b) => b.config.match.pathPrefix!.length - a.config.match.pathPrefix!.length);
    // One pass in that order: appending keeps every list sorted. A list starts with the `/` routes seen so far, and
    // each later `/` route joins every list.
    for (const route of prefixed) {
      const segment = firstSegment(route.config.match.pathPrefix!);
      if (segment === '') {
        this.anySegment.push(route);
        for (const list of this.bySegment.values()) list.push(route);
        continue;
      }
      let list = this.bySegment.get(segment);
      if (list === undefined) this.bySegment.set(segment, (list = [...this.anySegment]));
      list.push(route);
    }
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
    for (const route of this.bySegment.get(firstSegment(url)) ?? this.anySegment) {
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
