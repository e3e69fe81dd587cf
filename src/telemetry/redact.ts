/** Query parameters whose values are never logged. */
const SECRET_PARAM = /key|token|secret|password|passwd|signature|sig|auth|credential|session/i;

/** The path for logs: query values of key-like parameters replaced by `[REDACTED]`. */
export const redactPath = (path: string): string => {
  const q = path.indexOf('?');
  if (q === -1) return path;
  const params = path
    .slice(q + 1)
    .split('&')
    .map((pair) => {
      const eq = pair.indexOf('=');
      const name = eq === -1 ? pair : pair.slice(0, eq);
      return eq !== -1 && SECRET_PARAM.test(decodeURIComponentSafe(name)) ? `${name}=[REDACTED]` : pair;
    });
  return `${path.slice(0, q)}?${params.join('&')}`;
};

const decodeURIComponentSafe = (s: string): string => {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
};

/** What a redacted value is shown as. */
export const REDACTED = '[REDACTED]';

/** A URL for display: its password and key-like query values replaced. A string that is not a URL is hidden whole. */
export const redactUrl = (url: string): string => {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return REDACTED;
  }
  // Rewritten only when it has a password, so that the URL is shown as written; set on the URL, '[REDACTED]'
  // would come out percent-encoded.
  if (u.password === '') return redactPath(url);
  u.password = 'REDACTED';
  return redactPath(u.toString());
};

/**
 * The config in effect, fit to show on an open admin port. Secrets are referenced by env var name and those names
 * stay; what can still hold a secret is redacted wherever it appears: the values of `headers.add` (an API key
 * written as `${VAR}`), and URLs (a Redis password in `store.url`, a key in a query string).
 */
export const redactConfig = (config: object): Record<string, unknown> => redactTree(config, undefined) as Record<string, unknown>;

const redactTree = (value: unknown, parentKey: string | undefined): unknown => {
  if (Array.isArray(value)) return value.map((v) => redactTree(v, parentKey));
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(
    Object.entries(value).map(([key, v]) => {
      if (key === 'add' && parentKey === 'headers' && v !== null && typeof v === 'object') return [key, Object.fromEntries(Object.keys(v).map((h) => [h, REDACTED]))];
      if (key === 'url' && typeof v === 'string') return [key, redactUrl(v)];
      return [key, redactTree(v, key)];
    }),
  );
};
