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
