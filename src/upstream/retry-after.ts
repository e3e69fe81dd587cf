/**
 * How long an upstream asks us to wait before the next attempt, from its response headers.
 *
 * Read in order, first usable wins:
 * 1. `retry-after-ms` (OpenAI, Azure): milliseconds, may be fractional.
 * 2. `retry-after` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date.
 * 3. OpenAI `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens`: Go durations like `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
 * 4. Anthropic `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset`: RFC 3339 timestamps.
 *
 * For the reset families (3, 4) a response usually carries several limits. When the matching `-remaining` header
 * says a limit is exhausted (0), only exhausted limits count; otherwise every reset present counts. Of those, the
 * longest wait wins: retrying before the limit that was hit resets only earns another 429.
 *
 * The result is whole milliseconds (rounded up, never negative) or undefined when no header says anything usable.
 * The caller caps it with `retry.retryAfterMaxMs`.
 */

/** Response headers: lower-case names, as in `HeaderMap`. */
export type ResponseHeaders = Readonly<Record<string, string | readonly string[] | undefined>>;

const first = (headers: ResponseHeaders, name: string): string | undefined => {
  const v = headers[name];
  const s = typeof v === 'string' ? v : v?.[0];
  const t = s?.trim();
  return t === undefined || t === '' ? undefined : t;
};

const DECIMAL = /^\d+(?:\.\d+)?$/;

/** `retry-after-ms`: a non-negative number of milliseconds. */
export const parseRetryAfterMs = (value: string): number | undefined =>
  DECIMAL.test(value) ? Math.ceil(Number(value)) : undefined;

/**
 * `Retry-After`: delta-seconds (RFC 9110 says integer; we also take `1.5`) or an HTTP-date, relative to `now` (ms).
 * A date in the past means "now": 0.
 */
export const parseRetryAfter = (value: string, now: number): number | undefined => {
  if (DECIMAL.test(value)) return Math.ceil(Number(value) * 1000);
  const at = parseHttpDate(value);
  return at === undefined ? undefined : Math.max(0, Math.ceil(at - now));
};

// RFC 9110 §5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms recipients must still accept.
// Checked before Date.parse, which reads almost anything ("May 5" is a date in 2001).
const IMF_FIXDATE = /^[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/;
const RFC850_DATE = /^[A-Za-z]+, \d{2}-[A-Za-z]{3}-\d{2} \d{2}:\d{2}:\d{2} GMT$/;
const ASCTIME_DATE = /^[A-Za-z]{3} [A-Za-z]{3} [ \d]\d \d{2}:\d{2}:\d{2} \d{4}$/;

/** An HTTP-date as ms since the epoch, or undefined. */
const parseHttpDate = (value: string): number | undefined => {
  let text: string;
  if (IMF_FIXDATE.test(value) || RFC850_DATE.test(value)) text = value;
  // asctime carries no zone but means GMT; Date.parse would read it as local time.
  else if (ASCTIME_DATE.test(value)) text = `${value} GMT`;
  else return undefined;
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : at;
};

const UNIT_MS: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1_000, ms: 1, us: 1e-3, µs: 1e-3, μs: 1e-3, ns: 1e-6 };
// `ms` before `m`, or `20ms` would read as 20 minutes and a stray `s`.
const DURATION_PART = /(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|μs|ns|h|m|s)/gy;

/** A Go-style duration as OpenAI sends it (`1s`, `6m0s`, `20ms`, `1h2m3.5s`), in ms; undefined if malformed. */
export const parseGoDuration = (value: string): number | undefined => {
  DURATION_PART.lastIndex = 0;
  let total = 0;
  let end = 0;
  for (let m = DURATION_PART.exec(value); m !== null; m = DURATION_PART.exec(value)) {
    total += Number(m[1]) * (UNIT_MS[m[2] ?? ''] ?? Number.NaN);
    end = DURATION_PART.lastIndex;
  }
  if (end === 0 || end !== value.length || !Number.isFinite(total)) return undefined;
  return Math.ceil(total);
};

const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$/;

/** An RFC 3339 timestamp as Anthropic sends it, as ms from `now` (0 if past); undefined if malformed. */
export const parseRfc3339Delay = (value: string, now: number): number | undefined => {
  if (!RFC3339.test(value)) return undefined;
  const at = Date.parse(value.replace(' ', 'T'));
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil(at - now));
};

interface ResetFamily {
  resets: readonly { reset: string; remaining: string }[];
  parse: (value: string, now: number) => number | undefined;
}

const OPENAI: ResetFamily = {
  resets: ['requests', 'tokens'].map((k) => ({ reset: `x-ratelimit-reset-${k}`, remaining: `x-ratelimit-remaining-${k}` })),
  parse: (v) => parseGoDuration(v),
};
const ANTHROPIC: ResetFamily = {
  resets: ['requests', 'tokens', 'input-tokens', 'output-tokens'].map((k) => ({
    reset: `anthropic-ratelimit-${k}-reset`,
    remaining: `anthropic-ratelimit-${k}-remaining`,
  })),
  parse: parseRfc3339Delay,
};

const fromResetFamily = (headers: ResponseHeaders, family: ResetFamily, now: number): number | undefined => {
  let exhausted: number | undefined;
  let any: number | undefined;
  for (const { reset, remaining } of family.resets) {
    const raw = first(headers, reset);
    const ms = raw === undefined ? undefined : family.parse(raw, now);
    if (ms === undefined) continue;
    any = Math.max(any ?? 0, ms);
    if (first(headers, remaining) === '0') exhausted = Math.max(exhausted ?? 0, ms);
  }
  return exhausted ?? any;
};

/**
 * Milliseconds the upstream asks us to wait, from `retry-after-ms`, `retry-after`, OpenAI or Anthropic
 * rate-limit reset headers (see the module comment for precedence), or undefined.
 * @param now clock time in ms, for HTTP-dates and RFC 3339 timestamps.
 */
export const parseRetryDelay = (headers: ResponseHeaders, now: number): number | undefined => {
  const ms = first(headers, 'retry-after-ms');
  const fromMs = ms === undefined ? undefined : parseRetryAfterMs(ms);
  if (fromMs !== undefined) return fromMs;
  const ra = first(headers, 'retry-after');
  const fromRa = ra === undefined ? undefined : parseRetryAfter(ra, now);
  if (fromRa !== undefined) return fromRa;
  return fromResetFamily(headers, OPENAI, now) ?? fromResetFamily(headers, ANTHROPIC, now);
};
