/**
 * Budget windows in UTC, computed from an injected clock reading (ms since epoch) so tests can stand on a
 * month end or a leap day. Day and month windows are calendar windows; a workflow window has no calendar
 * edge (its counters expire after an idle time, which the store tracks).
 */

/** What a cap is counted over. */
export type WindowKind = 'day' | 'month' | 'workflow';

const DAY_MS = 86_400_000;

const pad = (n: number, width = 2) => String(n).padStart(width, '0');

/**
 * Ids are asked for several times per call (every scope, reserve and commit) and change once a day: the last
 * day's ids are kept, so the hot path formats no dates.
 */
let memoDay = NaN;
let memoIds = { day: '', month: '' };
const idsOf = (now: number) => {
  const day = Math.floor(now / DAY_MS);
  if (day !== memoDay) {
    const d = new Date(day * DAY_MS);
    const month = `${pad(d.getUTCFullYear(), 4)}-${pad(d.getUTCMonth() + 1)}`;
    memoIds = { day: `${month}-${pad(d.getUTCDate())}`, month };
    memoDay = day;
  }
  return memoIds;
};

/** `2026-11-22` for any instant of that UTC day. */
export const dayId = (now: number): string => idsOf(now).day;

/** `2026-11` for any instant of that UTC month. */
export const monthId = (now: number): string => idsOf(now).month;

/** First instant (ms) of the next UTC day. */
export const nextUtcMidnight = (now: number): number => (Math.floor(now / DAY_MS) + 1) * DAY_MS;

/** First instant (ms) of the next UTC month; Date.UTC rolls month 12 over into January of the next year. */
export const nextUtcMonthStart = (now: number): number => {
  const d = new Date(now);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
};

/** The calendar window an instant falls in: its id (part of every counter key) and when it ends. */
export interface CalendarWindow {
  readonly id: string;
  /** First instant (ms) after the window: when its counters start again from zero. */
  readonly endsAt: number;
}

/**
 * The window of `kind` containing `now`. A workflow window is one open-ended window (`id` "all") whose
 * end is decided by idle time, so `endsAt` is `null` here.
 */
export function windowAt(kind: WindowKind, now: number): { id: string; endsAt: number | null } {
  switch (kind) {
    case 'day':
      return { id: dayId(now), endsAt: nextUtcMidnight(now) };
    case 'month':
      return { id: monthId(now), endsAt: nextUtcMonthStart(now) };
    case 'workflow':
      return { id: 'all', endsAt: null };
  }
}

/**
 * When a calendar window with this id ends. Used for a reservation made in one window and settled in the
 * next: it is charged to the window it was reserved in (see store.ts), whose end is derived from its id.
 */
export function windowEndFromId(kind: WindowKind, id: string): number | null {
  if (kind === 'workflow') return null;
  const memo = endMemo[kind];
  if (memo.id === id) return memo.end;
  const [y, m, d] = id.split('-').map(Number);
  if (y === undefined || m === undefined) return null;
  const end = kind === 'day' ? Date.UTC(y, m - 1, (d ?? 1) + 1) : Date.UTC(y, m, 1);
  endMemo[kind] = { id, end };
  return end;
}

/** The last id asked for per kind: almost every call asks for the current window. */
const endMemo: Record<'day' | 'month', { id: string; end: number }> = { day: { id: '', end: 0 }, month: { id: '', end: 0 } };
