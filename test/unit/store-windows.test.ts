import { describe, expect, it } from 'vitest';
import { dayId, monthId, nextUtcMidnight, nextUtcMonthStart, windowAt, windowEndFromId } from '../../src/budget/windows.js';

const t = (iso: string) => Date.parse(iso);

describe('budget windows (UTC)', () => {
  it('names the UTC day and month, whatever the local zone would say', () => {
    expect(dayId(t('2026-11-22T23:59:59.999Z'))).toBe('2026-11-22');
    expect(dayId(t('2026-11-23T00:00:00.000Z'))).toBe('2026-11-23');
    expect(monthId(t('2026-11-30T23:59:59.999Z'))).toBe('2026-11');
    expect(dayId(t('0999-01-05T00:00:00Z'))).toBe('0999-01-05');
  });

  it('ends a day at the next UTC midnight, and a day starting at midnight belongs to that day', () => {
    expect(nextUtcMidnight(t('2026-11-22T10:00:00Z'))).toBe(t('2026-11-23T00:00:00Z'));
    expect(nextUtcMidnight(t('2026-11-22T00:00:00Z'))).toBe(t('2026-11-23T00:00:00Z'));
    expect(nextUtcMidnight(t('2026-11-22T23:59:59.999Z'))).toBe(t('2026-11-23T00:00:00Z'));
  });

  it('ends months of 30 and 31 days, and December, on the right day', () => {
    expect(nextUtcMonthStart(t('2026-11-30T23:59:59.999Z'))).toBe(t('2026-12-01T00:00:00Z'));
    expect(nextUtcMonthStart(t('2026-01-31T12:00:00Z'))).toBe(t('2026-02-01T00:00:00Z'));
    expect(nextUtcMonthStart(t('2026-12-31T23:59:59.999Z'))).toBe(t('2027-01-01T00:00:00Z'));
    expect(dayId(t('2026-12-31T23:59:59.999Z') + 1)).toBe('2027-01-01');
  });

  it('knows February in leap years (2024, 2000) and common years (2026, 2100)', () => {
    expect(dayId(nextUtcMidnight(t('2024-02-28T12:00:00Z')))).toBe('2024-02-29');
    expect(nextUtcMonthStart(t('2024-02-29T23:59:59.999Z'))).toBe(t('2024-03-01T00:00:00Z'));
    expect(dayId(nextUtcMidnight(t('2000-02-28T12:00:00Z')))).toBe('2000-02-29');
    expect(dayId(nextUtcMidnight(t('2026-02-28T12:00:00Z')))).toBe('2026-03-01');
    expect(dayId(nextUtcMidnight(t('2100-02-28T12:00:00Z')))).toBe('2100-03-01');
  });

  it('gives a window id and end per kind; a workflow window has no calendar end', () => {
    const now = t('2024-02-29T08:00:00Z');
    expect(windowAt('day', now)).toEqual({ id: '2024-02-29', endsAt: t('2024-03-01T00:00:00Z') });
    expect(windowAt('month', now)).toEqual({ id: '2024-02', endsAt: t('2024-03-01T00:00:00Z') });
    expect(windowAt('workflow', now)).toEqual({ id: 'all', endsAt: null });
  });

  it('recovers a window end from its id (a reservation settled after the window changed)', () => {
    expect(windowEndFromId('day', '2024-02-29')).toBe(t('2024-03-01T00:00:00Z'));
    expect(windowEndFromId('day', '2026-12-31')).toBe(t('2027-01-01T00:00:00Z'));
    expect(windowEndFromId('month', '2026-12')).toBe(t('2027-01-01T00:00:00Z'));
    expect(windowEndFromId('month', '2100-02')).toBe(t('2100-03-01T00:00:00Z'));
    expect(windowEndFromId('workflow', 'all')).toBeNull();
  });
});
