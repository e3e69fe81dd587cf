import { describe, expect, it } from 'vitest';
import {
  parseGoDuration,
  parseRetryAfter,
  parseRetryAfterMs,
  parseRetryDelay,
  parseRfc3339Delay,
} from '../../src/upstream/retry-after.js';

const NOW = Date.parse('2025-03-01T12:00:00.000Z');

describe('parseRetryAfter', () => {
  it('reads delta-seconds as ms', () => {
    expect(parseRetryAfter('0', NOW)).toBe(0);
    expect(parseRetryAfter('7', NOW)).toBe(7_000);
    expect(parseRetryAfter('120', NOW)).toBe(120_000);
  });

  it('accepts fractional seconds and rounds up to whole ms', () => {
    expect(parseRetryAfter('1.5', NOW)).toBe(1_500);
    expect(parseRetryAfter('0.0001', NOW)).toBe(1);
  });

  it('reads an IMF-fixdate relative to the injected now', () => {
    expect(parseRetryAfter('Sat, 01 Mar 2025 12:00:30 GMT', NOW)).toBe(30_000);
  });

  it('reads the obsolete RFC 850 and asctime date forms (asctime as GMT)', () => {
    expect(parseRetryAfter('Saturday, 01-Mar-25 12:01:00 GMT', NOW)).toBe(60_000);
    expect(parseRetryAfter('Sat Mar  1 12:00:05 2025', NOW)).toBe(5_000);
  });

  it('treats a date in the past as no wait', () => {
    expect(parseRetryAfter('Sat, 01 Mar 2025 11:59:00 GMT', NOW)).toBe(0);
  });

  it('rejects negative numbers, bare years and junk', () => {
    expect(parseRetryAfter('-5', NOW)).toBeUndefined();
    expect(parseRetryAfter('2025', NOW)).toBe(2_025_000); // digits are delta-seconds, never a year
    expect(parseRetryAfter('12:30', NOW)).toBeUndefined();
    expect(parseRetryAfter('soon', NOW)).toBeUndefined();
    expect(parseRetryAfter('1e3', NOW)).toBeUndefined();
    expect(parseRetryAfter('May 5', NOW)).toBeUndefined();
    expect(parseRetryAfter('Sat, 01 Mar 2025 12:00:30 PST', NOW)).toBeUndefined();
  });
});

describe('parseRetryAfterMs', () => {
  it('reads milliseconds, rounding fractions up', () => {
    expect(parseRetryAfterMs('250')).toBe(250);
    expect(parseRetryAfterMs('20.2')).toBe(21);
    expect(parseRetryAfterMs('0')).toBe(0);
  });

  it('rejects anything but a non-negative number', () => {
    expect(parseRetryAfterMs('-1')).toBeUndefined();
    expect(parseRetryAfterMs('1s')).toBeUndefined();
    expect(parseRetryAfterMs('')).toBeUndefined();
  });
});

describe('parseGoDuration (OpenAI x-ratelimit-reset-*)', () => {
  it.each([
    ['1s', 1_000],
    ['6m0s', 360_000],
    ['20ms', 20],
    ['1h2m3.5s', 3_723_500],
    ['0s', 0],
    ['59.9s', 59_900],
    ['2m30.123s', 150_123],
    ['1.5ms', 2],
    ['500us', 1],
    ['800ns', 1],
    ['1m20ms', 60_020],
  ])('reads %s as %i ms', (value, ms) => {
    expect(parseGoDuration(value)).toBe(ms);
  });

  it.each(['', 's', '1', '1x', '1s junk', ' 1s', '1m-2s', 'ms', '1sm'])('rejects %j', (value) => {
    expect(parseGoDuration(value)).toBeUndefined();
  });
});

describe('parseRfc3339Delay (anthropic-ratelimit-*-reset)', () => {
  it('reads a UTC timestamp relative to now', () => {
    expect(parseRfc3339Delay('2025-03-01T12:00:12Z', NOW)).toBe(12_000);
  });

  it('honours fractional seconds and offsets', () => {
    expect(parseRfc3339Delay('2025-03-01T12:00:00.250Z', NOW)).toBe(250);
    expect(parseRfc3339Delay('2025-03-01T13:00:01+01:00', NOW)).toBe(1_000);
  });

  it('treats a past timestamp as no wait', () => {
    expect(parseRfc3339Delay('2025-03-01T11:00:00Z', NOW)).toBe(0);
  });

  it('rejects dates without time or zone', () => {
    expect(parseRfc3339Delay('2025-03-01', NOW)).toBeUndefined();
    expect(parseRfc3339Delay('2025-03-01T12:00:12', NOW)).toBeUndefined();
    expect(parseRfc3339Delay('Sat, 01 Mar 2025 12:00:30 GMT', NOW)).toBeUndefined();
  });
});

describe('parseRetryDelay', () => {
  it('returns undefined when no header says anything', () => {
    expect(parseRetryDelay({}, NOW)).toBeUndefined();
    expect(parseRetryDelay({ 'retry-after': 'later', 'content-type': 'application/json' }, NOW)).toBeUndefined();
  });

  it('prefers retry-after-ms over retry-after', () => {
    expect(parseRetryDelay({ 'retry-after-ms': '1500', 'retry-after': '2' }, NOW)).toBe(1_500);
  });

  it('falls back to retry-after when retry-after-ms is malformed', () => {
    expect(parseRetryDelay({ 'retry-after-ms': 'x', 'retry-after': '2' }, NOW)).toBe(2_000);
  });

  it('prefers retry-after over rate-limit reset headers', () => {
    expect(parseRetryDelay({ 'retry-after': '3', 'x-ratelimit-reset-requests': '20s' }, NOW)).toBe(3_000);
  });

  it('uses the first value of a repeated header and ignores surrounding spaces', () => {
    expect(parseRetryDelay({ 'retry-after': [' 4 ', '9'] }, NOW)).toBe(4_000);
  });

  it('uses only the exhausted OpenAI limit when a remaining header is 0', () => {
    const headers = {
      'x-ratelimit-reset-requests': '6m0s',
      'x-ratelimit-remaining-requests': '120',
      'x-ratelimit-reset-tokens': '20ms',
      'x-ratelimit-remaining-tokens': '0',
    };
    expect(parseRetryDelay(headers, NOW)).toBe(20);
  });

  it('waits for the longest OpenAI reset when it cannot tell which limit was hit', () => {
    expect(parseRetryDelay({ 'x-ratelimit-reset-requests': '1s', 'x-ratelimit-reset-tokens': '6m0s' }, NOW)).toBe(360_000);
  });

  it('reads Anthropic reset timestamps, preferring exhausted limits', () => {
    const headers = {
      'anthropic-ratelimit-requests-reset': '2025-03-01T12:00:40Z',
      'anthropic-ratelimit-requests-remaining': '10',
      'anthropic-ratelimit-output-tokens-reset': '2025-03-01T12:00:05Z',
      'anthropic-ratelimit-output-tokens-remaining': '0',
    };
    expect(parseRetryDelay(headers, NOW)).toBe(5_000);
  });

  it('skips a malformed reset header and uses the valid one', () => {
    expect(parseRetryDelay({ 'x-ratelimit-reset-requests': 'soon', 'x-ratelimit-reset-tokens': '2s' }, NOW)).toBe(2_000);
  });
});
