/**
 * Hosts and ports as the allow-list compares them. One normalization for every way a destination reaches
 * Fusebox (a `match.hosts` entry, an absolute-form request, a CONNECT authority, a TLS SNI), so that
 * `127.1`, `0x7f000001`, `[::ffff:127.0.0.1]` and `127.0.0.1` are one host and `[::1]` equals `::1`.
 * WHATWG URL parsing does the IPv4/IPv6/IDNA work (the same rules browsers and undici use).
 */

/** A normalized destination: `host` is lower-case DNS, dotted IPv4, or bracketed IPv6 (`[::1]`). */
export interface Authority {
  host: string;
  port: number;
}

const IPV4_MAPPED = /^\[::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})\]$/;

/**
 * `host` (any spelling, IPv6 with or without brackets) → its canonical form, or undefined when it is not a
 * valid host. An IPv4-mapped IPv6 address becomes the IPv4 address it maps to: it reaches the same socket.
 */
export const normalizeHost = (raw: string): string | undefined => {
  if (raw === '' || /[/?#@\s\\]/.test(raw)) return undefined;
  const bracketed = raw.includes(':') && !raw.startsWith('[') ? `[${raw}]` : raw;
  let host: string;
  try {
    host = new URL(`http://${bracketed}/`).hostname;
  } catch {
    return undefined;
  }
  if (host.endsWith('.')) host = host.slice(0, -1);
  if (host === '') return undefined;
  const mapped = IPV4_MAPPED.exec(host);
  if (mapped) {
    const hi = parseInt(mapped[1]!, 16);
    const lo = parseInt(mapped[2]!, 16);
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  }
  return host;
};

/** `[::1]` → `::1`: the form TLS (SNI, certificate IP SANs) and `net.connect` want. */
export const bareHost = (host: string): string => (host.startsWith('[') ? host.slice(1, -1) : host);

export const isIpHost = (host: string): boolean => host.startsWith('[') || /^\d+\.\d+\.\d+\.\d+$/.test(host);

/** Split `host:port` / `[v6]:port` / `host` without judging the parts. */
const splitHostPort = (text: string): { host: string; port?: string } | undefined => {
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close === -1) return undefined;
    const rest = text.slice(close + 1);
    if (rest === '') return { host: text.slice(0, close + 1) };
    return rest.startsWith(':') ? { host: text.slice(0, close + 1), port: rest.slice(1) } : undefined;
  }
  const colon = text.indexOf(':');
  if (colon === -1) return { host: text };
  if (text.indexOf(':', colon + 1) !== -1) return undefined; // a bare IPv6 address: must be bracketed to carry a port
  return { host: text.slice(0, colon), port: text.slice(colon + 1) };
};

const parsePort = (text: string): number | undefined => {
  if (!/^\d{1,5}$/.test(text)) return undefined;
  const port = Number(text);
  return port >= 1 && port <= 65535 ? port : undefined;
};

/** A CONNECT request target (`host:port`, RFC 9110 §9.3.6: the port is required). */
export const parseConnectAuthority = (text: string): Authority | undefined => {
  const parts = splitHostPort(text);
  if (parts?.port === undefined) return undefined;
  const host = normalizeHost(parts.host);
  const port = parsePort(parts.port);
  return host !== undefined && port !== undefined ? { host, port } : undefined;
};

/** The ports a `match.hosts` entry without a port allows: plain HTTP and TLS. */
export const DEFAULT_PORTS: readonly number[] = [80, 443];

export interface HostEntry {
  host: string;
  /** The ports this entry allows: the one written, else 80 and 443. */
  ports: readonly number[];
}

/** A `match.hosts` entry (`api.example.com`, `api.example.com:8443`, `[::1]:9000`) → its parts; an error text when malformed. */
export const parseHostEntry = (text: string): HostEntry | string => {
  if (text.includes('://')) return 'must be a host name or address with an optional port, without a scheme ("api.example.com:8443")';
  const parts = splitHostPort(text);
  if (parts === undefined) return 'must be a host name or address with an optional port (IPv6 in brackets: "[::1]:8443"), no scheme or path';
  const host = normalizeHost(parts.host);
  if (host === undefined) return `"${parts.host}" is not a valid host name or address`;
  if (parts.port === undefined) return { host, ports: DEFAULT_PORTS };
  const port = parsePort(parts.port);
  if (port === undefined) return `"${parts.port}" is not a port (1-65535)`;
  return { host, ports: [port] };
};

/** The port an absolute-form URL reaches: the one written, else the scheme's. */
export const urlPort = (url: URL): number => (url.port !== '' ? Number(url.port) : url.protocol === 'https:' ? 443 : 80);

/**
 * Addresses that reach this machine (the pod, for a sidecar): a request to one of them on one of Fusebox's own
 * ports would loop back into Fusebox.
 */
export const isLocalHost = (host: string): boolean =>
  host === 'localhost' || host === '[::1]' || host === '[::]' || host === '0.0.0.0' || /^127\.\d+\.\d+\.\d+$/.test(host);
