import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { costMicroUsd, loadPriceTable, microUsdFromUsd, parsePriceTable, PriceBook, type PriceTable } from '../../src/budget/prices.js';
import { ConfigError } from '../../src/config/load.js';

const PRICES_FILE = new URL('../../config/prices.yaml', import.meta.url).pathname;
const tmp = mkdtempSync(join(tmpdir(), 'fusebox-prices-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const problemsOf = (fn: () => unknown): string[] => {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected a ConfigError');
};

const table: PriceTable = {
  version: 1,
  date: '2025-12-01',
  source: 'test',
  models: {
    'gpt-4o': { inputPerM: 2.5, cachedInputPerM: 1.25, outputPerM: 10 },
    'gpt-4o-mini': { inputPerM: 0.15, cachedInputPerM: 0.075, outputPerM: 0.6 },
    'gpt-4': { inputPerM: 30, outputPerM: 60 },
    'gpt-5': { inputPerM: 1.25, cachedInputPerM: 0.125, outputPerM: 10 },
    o3: { inputPerM: 2, cachedInputPerM: 0.5, outputPerM: 8 },
    'claude-sonnet-4': { inputPerM: 3, cachedInputPerM: 0.3, outputPerM: 15 },
    'claude-sonnet-4-5': { inputPerM: 3, cachedInputPerM: 0.3, outputPerM: 15 },
    'claude-3-5-haiku': { inputPerM: 0.8, cachedInputPerM: 0.08, outputPerM: 4 },
  },
};
const DEFAULT = { inputPerM: 15, outputPerM: 75 };

describe('config/prices.yaml', () => {
  const prices = loadPriceTable(PRICES_FILE);

  it('is a valid table with a date and a source', () => {
    expect(prices.version).toBe(1);
    expect(prices.date).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    expect(prices.source).toMatch(/OpenAI.*Anthropic/);
  });

  it('prices every model Fusebox documents, chat models with a cached-input price', () => {
    const chat = ['gpt-4o', 'gpt-4o-mini', 'gpt-4.1', 'gpt-4.1-mini', 'gpt-4.1-nano', 'o3', 'o4-mini', 'gpt-5', 'gpt-5-mini', 'gpt-5-nano'];
    const claude = ['claude-opus-4-1', 'claude-opus-4', 'claude-sonnet-4-5', 'claude-sonnet-4', 'claude-3-7-sonnet', 'claude-haiku-4-5', 'claude-3-5-haiku'];
    for (const m of [...chat, ...claude]) {
      const p = prices.models[m];
      expect(p, m).toBeDefined();
      expect(p!.cachedInputPerM, m).toBeLessThan(p!.inputPerM);
      expect(p!.outputPerM, m).toBeGreaterThan(p!.inputPerM);
    }
    for (const m of ['text-embedding-3-small', 'text-embedding-3-large']) expect(prices.models[m]?.outputPerM, m).toBe(0);
  });

  it('matches the list prices it was transcribed from (spot checks)', () => {
    expect(prices.models['gpt-4o']).toEqual({ inputPerM: 2.5, cachedInputPerM: 1.25, outputPerM: 10 });
    expect(prices.models['claude-sonnet-4-5']).toEqual({ inputPerM: 3, cachedInputPerM: 0.3, outputPerM: 15 });
    expect(prices.models['claude-opus-4-1']).toEqual({ inputPerM: 15, cachedInputPerM: 1.5, outputPerM: 75 });
  });
});

describe('price table validation', () => {
  it('lists every problem with its path', () => {
    const problems = problemsOf(() =>
      parsePriceTable({
        version: 2,
        date: '2025-02-30',
        models: { 'gpt-4o': { inputPerM: 'cheap', outputPerM: 10, cachedInputPerM: -1, extra: 1 }, 'GPT 4': { inputPerM: 1, outputPerM: 1 } },
      }),
    );
    const text = problems.join('\n');
    expect(text).toContain('version:');
    expect(text).toContain('date: is not a real calendar date');
    expect(text).toContain('source:');
    expect(text).toContain('models.gpt-4o.inputPerM:');
    expect(text).toContain('models.gpt-4o.cachedInputPerM:');
    expect(text).toMatch(/models\.gpt-4o: .*extra/);
    expect(text).toMatch(/models\.GPT 4: model id must be lower-case letters/);
  });

  it('rejects dates not written YYYY-MM-DD', () => {
    expect(problemsOf(() => parsePriceTable({ version: 1, date: '1/12/2025', source: 's', models: {} }))).toEqual([
      'date: must be a date written YYYY-MM-DD',
    ]);
  });

  it('reports unreadable files and YAML syntax errors as ConfigError', () => {
    expect(problemsOf(() => loadPriceTable(join(tmp, 'missing.yaml')))[0]).toMatch(/^cannot read the price table/);
    const bad = join(tmp, 'bad.yaml');
    writeFileSync(bad, 'version: 1\nmodels:\n  gpt-4o: {inputPerM: 1\n');
    expect(problemsOf(() => loadPriceTable(bad))[0]).toMatch(/^YAML: /);
    const dup = join(tmp, 'dup.yaml');
    writeFileSync(dup, 'version: 1\ndate: 2025-01-01\nsource: s\nmodels:\n  a: {inputPerM: 1, outputPerM: 1}\n  a: {inputPerM: 2, outputPerM: 2}\n');
    expect(problemsOf(() => loadPriceTable(dup))[0]).toMatch(/^YAML: /);
  });
});

describe('PriceBook.lookup', () => {
  const book = new PriceBook(table, { 'gpt-4o': { inputPerM: 1, outputPerM: 2 }, 'my-finetune': { inputPerM: 4, outputPerM: 8 } }, DEFAULT);

  it('finds exact ids, route overrides first', () => {
    expect(book.lookup('gpt-4o')).toEqual({ price: { inputPerM: 1, outputPerM: 2 }, known: true, label: 'gpt-4o' });
    expect(book.lookup('my-finetune').label).toBe('my-finetune');
    expect(book.lookup('o3')).toEqual({ price: table.models.o3, known: true, label: 'o3' });
  });

  it('prices dated snapshots as their base model, the longest base first', () => {
    const cases: Array<[string, string]> = [
      ['gpt-4o-2024-08-06', 'gpt-4o'],
      ['gpt-4o-mini-2024-07-18', 'gpt-4o-mini'],
      ['gpt-4-0613', 'gpt-4'],
      ['gpt-5-2025-08-07', 'gpt-5'],
      ['o3-2025-04-16', 'o3'],
      ['claude-sonnet-4-5-20250929', 'claude-sonnet-4-5'],
      ['claude-sonnet-4-20250514', 'claude-sonnet-4'],
      ['claude-sonnet-4-5@20250929', 'claude-sonnet-4-5'],
      ['claude-3-5-haiku-latest', 'claude-3-5-haiku'],
      ['claude-3-5-haiku-20241022-v1:0', 'claude-3-5-haiku'],
      ['GPT-4o-Mini-2024-07-18', 'gpt-4o-mini'],
    ];
    for (const [model, label] of cases) expect(book.lookup(model), model).toMatchObject({ known: true, label });
  });

  it('does not price a different model as the one its name starts with', () => {
    for (const model of ['gpt-5-pro', 'o3-mini', 'o3-mini-2025-01-31', 'gpt-4o-audio-preview', 'gpt-50', 'claude-sonnet-4-7']) {
      expect(book.lookup(model), model).toEqual({ price: DEFAULT, known: false, label: 'other' });
    }
  });

  it('answers the default price labelled other for no model', () => {
    expect(book.lookup(undefined)).toEqual({ price: DEFAULT, known: false, label: 'other' });
  });
});

describe('costMicroUsd', () => {
  const gpt4o = table.models['gpt-4o']!;

  it('prices input, cached input and output separately, rounding the total up once', () => {
    // 93 × 2.5 = 232.5, 1024 × 1.25 = 1280, 46 × 10 = 460 → 1972.5 µUSD → 1973.
    expect(costMicroUsd({ inputTokens: 93, cachedInputTokens: 1024, outputTokens: 46 }, gpt4o)).toBe(1973);
  });

  it('is exact where float arithmetic drifts', () => {
    const o4mini = { inputPerM: 1.1, cachedInputPerM: 0.275, outputPerM: 4.4 };
    // In floats 50 × 1.1 + 100 × 4.4 = 495.00000000000006, so a naive ceil gives 496.
    expect(Math.ceil(50 * 1.1 + 100 * 4.4)).toBe(496);
    expect(costMicroUsd({ inputTokens: 50, cachedInputTokens: 0, outputTokens: 100 }, o4mini)).toBe(495);
    // 1000 × (0.15 + 0.075 + 0.6) = 825 exactly.
    expect(costMicroUsd({ inputTokens: 1000, cachedInputTokens: 1000, outputTokens: 1000 }, table.models['gpt-4o-mini']!)).toBe(825);
    // 4 × 0.075 = 0.3 µUSD → 1 (rounded up, never to zero).
    expect(costMicroUsd({ inputTokens: 0, cachedInputTokens: 4, outputTokens: 0 }, table.models['gpt-4o-mini']!)).toBe(1);
  });

  it('charges cached input at the input price when the model has no cached price', () => {
    expect(costMicroUsd({ inputTokens: 0, cachedInputTokens: 1000, outputTokens: 0 }, { inputPerM: 30, outputPerM: 60 })).toBe(30_000);
  });

  it('stays exact at volumes where float products exceed 2^53 in sub-µUSD units', () => {
    // 2e9 output tokens at $75/M = $150,000; 123,456,789 input at $0.075/M = 9,259,259.175 µUSD.
    const price = { inputPerM: 0.075, outputPerM: 75 };
    expect(costMicroUsd({ inputTokens: 123_456_789, cachedInputTokens: 0, outputTokens: 2_000_000_000 }, price)).toBe(150_000_000_000 + 9_259_260);
  });

  it('charges cache writes (part of the input) at 1.25× (5 min) and 2× (1 h) the input price unless priced', () => {
    const sonnet = { inputPerM: 3, cachedInputPerM: 0.3, outputPerM: 15 };
    // 1000 plain input × 3 + 2000 × 3.75 + 1000 × 6 + 4000 cached × 0.3 + 100 × 15 = 3000 + 7500 + 6000 + 1200 + 1500.
    const u = { inputTokens: 4000, cacheWriteInputTokens: 2000, cacheWrite1hInputTokens: 1000, cachedInputTokens: 4000, outputTokens: 100 };
    expect(costMicroUsd(u, sonnet)).toBe(19_200);
    // Before, every cache write was plain input: 4000 × 3 + 1200 + 1500 = 14,700 — $0.0045 a call left uncounted.
    expect(costMicroUsd({ ...u, cacheWriteInputTokens: 0, cacheWrite1hInputTokens: 0 }, sonnet)).toBe(14_700);
    // A price table's own rates win.
    expect(costMicroUsd(u, { ...sonnet, cacheWritePerM: 4, cacheWrite1hPerM: 5 })).toBe(3000 + 8000 + 5000 + 1200 + 1500);
  });

  it('is zero for no tokens and ignores nonsense counts', () => {
    expect(costMicroUsd({ inputTokens: 0, cachedInputTokens: 0, outputTokens: 0 }, gpt4o)).toBe(0);
    expect(costMicroUsd({ inputTokens: Number.NaN, cachedInputTokens: -5, outputTokens: Infinity }, gpt4o)).toBe(0);
  });

  it('converts configured USD to µUSD', () => {
    expect(microUsdFromUsd(0.15)).toBe(150_000);
    expect(microUsdFromUsd(25)).toBe(25_000_000);
    expect(microUsdFromUsd(0.1 + 0.2)).toBe(300_000);
  });
});
