import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { ConfigError, formatPath } from '../config/load.js';
import { PriceSchema, type Price } from '../config/schema.js';
import type { Usage } from '../providers/usage.js';

const isoDate = z
  .string()
  .regex(/^\d{4}-\d{2}-\d{2}$/, { message: 'must be a date written YYYY-MM-DD', abort: true })
  .refine((s) => {
    const day = new Date(`${s}T00:00:00Z`);
    return !Number.isNaN(day.getTime()) && day.toISOString().startsWith(s);
  }, 'is not a real calendar date');

/** Model names become metric labels: keep them to the characters model ids use. */
const modelName = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._:@/-]{0,127}$/, 'must be lower-case letters, digits, ".", "_", ":", "@", "/" or "-"');

/** The price table file (config/prices.yaml). */
export const PriceTableSchema = z.strictObject({
  /** File format version. Must be 1. */
  version: z.literal(1),
  /** Day the prices were last checked against the vendors' pages, YYYY-MM-DD. */
  date: isoDate,
  /** Where the prices come from. */
  source: z.string().min(1),
  /** Prices per model id (base names; dated snapshots match their base, see PriceBook). */
  models: z.record(modelName, PriceSchema),
});

export type PriceTable = z.infer<typeof PriceTableSchema>;

/** Validate an already-parsed price table. Throws ConfigError listing every problem with its path. */
export const parsePriceTable = (raw: unknown, source = 'price table'): PriceTable => {
  const result = PriceTableSchema.safeParse(raw);
  if (result.success) return result.data;
  throw new ConfigError(source, result.error.issues.map(describeIssue));
};

const describeIssue = (issue: z.core.$ZodIssue): string => {
  const where = formatPath(issue.path) || '(top level)';
  // A bad model id: zod's own message ("Invalid key in record") hides the reason, which is nested.
  if (issue.code === 'invalid_key') return `${where}: model id ${issue.issues.map((i) => i.message).join('; ')}`;
  return `${where}: ${issue.message}`;
};

/** Read and validate a price table YAML file. Throws ConfigError. */
export const loadPriceTable = (file: string): PriceTable => {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [`cannot read the price table: ${(err as Error).message}`]);
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) throw new ConfigError(file, doc.errors.map((e) => `YAML: ${e.message.split('\n')[0]}`));
  return parsePriceTable(doc.toJS(), file);
};

/** A model's price as found by `PriceBook.lookup`. */
export interface PriceMatch {
  price: Price;
  /** false: the model is in neither the table nor the overrides, and the default price applies. */
  known: boolean;
  /** Bounded metric label: the matched table (or override) model id, or `other`. */
  label: string;
}

/**
 * What a dated snapshot adds to its base model id: `-2024-08-06`, `-20250929`, `-0613`, `@20250929`,
 * `-latest`, optionally followed by a Bedrock-style `-v1:0`. Only such suffixes match a base price:
 * `gpt-5-pro` must not be priced as `gpt-5`, nor `o3-mini` as `o3`.
 */
const SNAPSHOT_SUFFIX = /^(?:-\d{4}-\d{2}-\d{2}|-\d{8}|-\d{4}|@\d{8}|-latest)(?:-v\d+(?::\d+)?)?$/;

const OTHER = 'other';

/** Prices for a route: its overrides, then the shared table, then the default price. */
export class PriceBook {
  /**
   * Made on the first call that names a model: every route has a book, and most never price a model (a tool route
   * looks up none), while each book's copy of the table is ~1 KB per route (issue 15).
   */
  private index: { prices: Map<string, Price>; names: string[] } | undefined;

  constructor(
    private readonly table: PriceTable,
    private readonly overrides: Record<string, Price>,
    private readonly defaultPrice: Price,
  ) {}

  /** The price for `model`: exact id, else the longest known id it is a dated snapshot of, else the default. */
  lookup(model: string | undefined): PriceMatch {
    if (model === undefined) return { price: this.defaultPrice, known: false, label: OTHER };
    const { prices, names } = (this.index ??= this.buildIndex());
    const id = model.toLowerCase();
    const exact = prices.get(id);
    if (exact !== undefined) return { price: exact, known: true, label: id };
    for (const name of names) {
      if (id.length > name.length && id.startsWith(name) && SNAPSHOT_SUFFIX.test(id.slice(name.length))) {
        return { price: prices.get(name)!, known: true, label: name };
      }
    }
    return { price: this.defaultPrice, known: false, label: OTHER };
  }

  private buildIndex(): { prices: Map<string, Price>; names: string[] } {
    const prices = new Map<string, Price>();
    for (const [name, price] of Object.entries(this.table.models)) prices.set(name.toLowerCase(), price);
    for (const [name, price] of Object.entries(this.overrides)) prices.set(name.toLowerCase(), price);
    // Known ids, longest first, so `gpt-4o-mini-2024-07-18` finds `gpt-4o-mini` before `gpt-4o`.
    return { prices, names: [...prices.keys()].sort((a, b) => b.length - a.length) };
  }
}

/**
 * µUSD per 1M tokens, an integer. (USD per 1M tokens is µUSD per token, so this is that ×1e6.) Prices with
 * more than 6 decimals are rounded up; the small tolerance absorbs binary noise such as 0.075·1e6 = 75000.00000000001.
 */
const microUsdPerMillion = (usdPerM: number): bigint => BigInt(Math.max(0, Math.ceil(usdPerM * 1e6 - 1e-3)));

const tokens = (n: number): bigint => (Number.isFinite(n) && n > 0 ? BigInt(Math.ceil(n)) : 0n);

const MILLION = 1_000_000n;

/**
 * Cost of `usage` at `price`, in integer micro-dollars, rounded up once on the total (never undercount).
 * Exact: token counts and prices are integers in BigInt, so no float drift whatever the volume.
 * Cached input is priced at `cachedInputPerM`, or the input price when the model has none. Cache writes (part of
 * `inputTokens`) at `cacheWritePerM` / `cacheWrite1hPerM`, by default Anthropic's 1.25× and 2× the input price.
 */
export const costMicroUsd = (
  usage: Pick<Usage, 'inputTokens' | 'cachedInputTokens' | 'outputTokens' | 'cacheWriteInputTokens' | 'cacheWrite1hInputTokens'>,
  price: Price,
): number => {
  const input = tokens(usage.inputTokens);
  const write5m = tokens(usage.cacheWriteInputTokens ?? 0);
  const write1h = tokens(usage.cacheWrite1hInputTokens ?? 0);
  const plainInput = input > write5m + write1h ? input - write5m - write1h : 0n;
  const total =
    plainInput * microUsdPerMillion(price.inputPerM) +
    write5m * microUsdPerMillion(price.cacheWritePerM ?? price.inputPerM * 1.25) +
    write1h * microUsdPerMillion(price.cacheWrite1hPerM ?? price.inputPerM * 2) +
    tokens(usage.cachedInputTokens) * microUsdPerMillion(price.cachedInputPerM ?? price.inputPerM) +
    tokens(usage.outputTokens) * microUsdPerMillion(price.outputPerM);
  return Number((total + MILLION - 1n) / MILLION);
};

/** USD (as written in the config) to integer micro-dollars, to the nearest µUSD. */
export const microUsdFromUsd = (usd: number): number => Math.round(usd * 1e6);
