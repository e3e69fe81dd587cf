import { describe, expect, it } from 'vitest';
import { parseOptions } from '../../bench/options.js';
import { prepareRevision } from '../../bench/revisions.js';

describe('bench --compare-rev', () => {
  it('takes revisions repeated or comma-separated, in order, each once', () => {
    const o = parseOptions(['--compare-rev=1000723,abc', '--compare-rev', ' def ', '--compare-rev=abc'], {});
    expect(o.compareRevs).toEqual(['1000723', 'abc', 'def']);
  });

  it('falls back to BENCH_COMPARE_REV, and is empty by default', () => {
    expect(parseOptions([], { BENCH_COMPARE_REV: 'a,b' }).compareRevs).toEqual(['a', 'b']);
    expect(parseOptions([], {}).compareRevs).toEqual([]);
  });

  it('skips a revision that is not a commit with its reason, without making a worktree', () => {
    expect(prepareRevision('no-such-revision-of-fusebox')).toEqual({
      spec: 'no-such-revision-of-fusebox',
      reason: '"no-such-revision-of-fusebox" is not a commit of this repository',
    });
  });
});
