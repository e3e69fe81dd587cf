import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, type ErrorCode } from '../../src/errors.js';

/** The README's error table (`| code | status | when |`), row by row as written. */
const readmeRows = (): string[] => {
  const lines = readFileSync(new URL('../../README.md', import.meta.url), 'utf8').split('\n');
  const start = lines.indexOf('| code | status | when |');
  if (start < 0) throw new Error('README.md has no "| code | status | when |" table');
  const rows: string[] = [];
  for (let i = start + 2; i < lines.length && lines[i]!.startsWith('|'); i++) rows.push(lines[i]!);
  return rows;
};

/** code → status as the README writes it; a row may name several codes (`A`, `B`). */
const readmeStatuses = (rows: readonly string[]): Map<string, number> => {
  const statuses = new Map<string, number>();
  for (const row of rows) {
    const m = /^\|\s*(.+?)\s*\|\s*(\d{3})\s*\|/.exec(row);
    if (!m) throw new Error(`README error table: cannot read the row ${row}`);
    for (const [, code] of m[1]!.matchAll(/`([A-Z_]+)`/g)) statuses.set(code!, Number(m[2]));
  }
  return statuses;
};

const moduleRows = (): string[] => Object.entries(ERROR_CODES).map(([code, s]) => `| \`${code}\` | ${s.status} | ${s.when} |`);

describe('the README error table and src/errors.ts', () => {
  const rows = readmeRows();
  const documented = readmeStatuses(rows);

  it('lists every code of the module, with its status', () => {
    const missing = Object.entries(ERROR_CODES)
      .filter(([code, s]) => documented.get(code) !== s.status)
      .map(([code, s]) => `${code} ${s.status} (README: ${documented.get(code) ?? 'absent'})`);
    expect(missing, 'codes the README lacks or gives another status').toEqual([]);
  });

  it('lists no code the module does not have', () => {
    const unknown = [...documented.keys()].filter((code) => !(code in ERROR_CODES));
    expect(unknown, 'codes in the README that src/errors.ts does not define').toEqual([]);
  });

  it('is exactly the table the module renders (paste the expected rows into README.md)', () => {
    expect(rows.join('\n')).toBe(moduleRows().join('\n'));
  });

  it('says x-should-retry: false for every code whose answers carry it', () => {
    const silent = (Object.keys(ERROR_CODES) as ErrorCode[]).filter(
      (code) => ERROR_CODES[code].sdkRetry === false && !ERROR_CODES[code].when.includes('`x-should-retry: false`'),
    );
    expect(silent).toEqual([]);
  });
});
