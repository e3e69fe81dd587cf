import { request } from 'undici';

/** One scrape of a Fusebox admin `/metrics` (Prometheus text format). */
export const scrapeMetrics = async (adminUrl: string): Promise<string> => {
  const res = await request(`${adminUrl}/metrics`, { headersTimeout: 10_000, bodyTimeout: 10_000 });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`GET ${adminUrl}/metrics answered ${res.statusCode}`);
  return text;
};

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/**
 * Sum of the samples of `name` whose labels include every pair of `labels`; 0 when there is none (a counter not
 * yet incremented is not exported).
 */
export const sumSamples = (text: string, name: string, labels: Record<string, string> = {}): number => {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = SAMPLE.exec(line);
    if (m?.[1] !== name) continue;
    const have = new Map<string, string>();
    for (const l of (m[2] ?? '').matchAll(LABEL)) have.set(l[1]!, l[2]!);
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) sum += Number(m[3]);
  }
  return sum;
};

/** What the intercepted row's Fusebox counted, at one moment. */
export interface InterceptCounters {
  /** TLS handshakes completed inside intercepted tunnels (`fusebox_tunnels_total{mode="intercept",outcome="opened"}`). */
  handshakes: number;
  /** Calls answered inside them (`fusebox_requests_total{mode="intercept"}`, every outcome). */
  requests: number;
  /** Leaf certificates minted, and their total time in seconds (`fusebox_intercept_leaf_mint_seconds`). */
  mints: number;
  mintSecondsSum: number;
}

export const interceptCounters = async (adminUrl: string): Promise<InterceptCounters> => {
  const text = await scrapeMetrics(adminUrl);
  return {
    handshakes: sumSamples(text, 'fusebox_tunnels_total', { mode: 'intercept', outcome: 'opened' }),
    requests: sumSamples(text, 'fusebox_requests_total', { mode: 'intercept' }),
    mints: sumSamples(text, 'fusebox_intercept_leaf_mint_seconds_count'),
    mintSecondsSum: sumSamples(text, 'fusebox_intercept_leaf_mint_seconds_sum'),
  };
};
