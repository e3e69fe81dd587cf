import { describe, expect, it } from 'vitest';
import {
  CircuitBreaker,
  settlePermit,
  type Admission,
  type BreakerPermit,
  type CircuitBreakerOptions,
} from '../../src/policies/circuit-breaker.js';
import { seeded } from '../helpers/pipeline.js';

const defaults: CircuitBreakerOptions = {
  errorRatePercent: 50,
  windowMs: 60_000,
  minCalls: 20,
  consecutiveFailures: 5,
  resetMs: 30_000,
  resetJitterPercent: 20,
  slowCallMs: undefined,
};

/** A breaker on a hand-moved clock, with `random` answering from `randoms` in turn (then 0). */
const setup = (overrides: Partial<CircuitBreakerOptions> = {}, randoms: number[] = [0]) => {
  const clock = { t: 1_000_000 };
  const transitions: string[] = [];
  const breaker = new CircuitBreaker(
    { ...defaults, ...overrides },
    {
      now: () => clock.t,
      random: () => randoms.shift() ?? 0,
      onTransition: (from, to, reason, lastFailure) =>
        transitions.push(`${from}->${to} ${reason}${lastFailure === undefined ? '' : ` (${lastFailure})`}`),
    },
  );
  return { breaker, clock, transitions };
};

const permitOf = (a: Admission): BreakerPermit => {
  if (!a.allowed) throw new Error(`expected admission, got refusal in state ${a.state}`);
  return a.permit;
};
const fail = (b: CircuitBreaker, n = 1, reason = 'status_5xx') => {
  for (let i = 0; i < n; i++) permitOf(b.tryAcquire()).failure(reason);
};
const succeed = (b: CircuitBreaker, n = 1) => {
  for (let i = 0; i < n; i++) permitOf(b.tryAcquire()).success(10);
};

describe('CircuitBreaker: opening', () => {
  it('opens after 5 consecutive failures and rejects until the probe', () => {
    const { breaker, clock, transitions } = setup({}, [0.5]);
    fail(breaker, 4);
    expect(breaker.state()).toBe('closed');
    fail(breaker);
    expect(breaker.state()).toBe('open');
    expect(transitions).toEqual(['closed->open consecutive_failures (status_5xx)']);
    // resetMs 30000 + 0.5 × 20% × 30000 = 33000
    expect(breaker.tryAcquire()).toEqual({ allowed: false, state: 'open', retryAfterMs: 33_000 });
    clock.t += 32_999;
    expect(breaker.tryAcquire()).toEqual({ allowed: false, state: 'open', retryAfterMs: 1 });
    clock.t += 1;
    const probe = breaker.tryAcquire();
    expect(probe.allowed).toBe(true);
    expect(probe.allowed && probe.permit.probe).toBe(true);
    expect(breaker.state()).toBe('half_open');
  });

  it('restarts the consecutive count after a success', () => {
    const { breaker } = setup();
    fail(breaker, 4);
    succeed(breaker);
    fail(breaker, 4);
    expect(breaker.state()).toBe('closed');
    expect(breaker.stats().consecutiveFailures).toBe(4);
    fail(breaker);
    expect(breaker.state()).toBe('open');
  });

  it('opens when failures reach 50% of 20 calls in the window, at the 20th call', () => {
    const { breaker, transitions } = setup({ consecutiveFailures: 100 });
    for (let i = 0; i < 9; i++) {
      succeed(breaker);
      fail(breaker);
    }
    succeed(breaker); // 19 calls, 9 failures
    expect(breaker.state()).toBe('closed');
    fail(breaker); // 20 calls, 10 failures: 50%
    expect(breaker.state()).toBe('open');
    expect(transitions).toEqual(['closed->open error_rate (status_5xx)']);
  });

  it('stays closed at 45% (9 failures in 20 calls)', () => {
    const { breaker } = setup({ consecutiveFailures: 100 });
    succeed(breaker, 11);
    fail(breaker, 9);
    expect(breaker.state()).toBe('closed');
    expect(breaker.stats()).toMatchObject({ calls: 20, failures: 9, errorRatePercent: 45 });
  });

  it('does not judge the error rate before minCalls calls, even at 100% failures', () => {
    const { breaker } = setup({ consecutiveFailures: 100 });
    fail(breaker, 19);
    expect(breaker.state()).toBe('closed');
    fail(breaker);
    expect(breaker.state()).toBe('open');
  });

  it('forgets calls older than windowMs: failures at t0 leave the 60 s window at t0 + 60 s', () => {
    const { breaker, clock } = setup({ consecutiveFailures: 100 });
    // Move to a bucket boundary (buckets of 6 s: 167 × 6000) so the arithmetic is exact.
    clock.t = 1_002_000;
    fail(breaker, 15);
    clock.t += 59_999;
    expect(breaker.stats()).toMatchObject({ calls: 15, failures: 15 });
    clock.t += 1;
    expect(breaker.stats()).toMatchObject({ calls: 0, failures: 0 });
    succeed(breaker, 10);
    fail(breaker, 10);
    expect(breaker.state()).toBe('open');
  });

  it('slides in buckets of windowMs/10: only the oldest bucket leaves', () => {
    const { breaker, clock } = setup({ consecutiveFailures: 100 });
    clock.t = 1_002_000;
    succeed(breaker, 3); // bucket [1002 s, 1008 s)
    clock.t += 6_000;
    succeed(breaker, 4); // bucket [1008 s, 1014 s)
    clock.t = 1_062_000 - 1;
    expect(breaker.stats().calls).toBe(7);
    clock.t = 1_062_000;
    expect(breaker.stats().calls).toBe(4);
    clock.t = 1_068_000;
    expect(breaker.stats().calls).toBe(0);
  });

  it('with windowMs 0 only the consecutive rule opens it', () => {
    const { breaker } = setup({ windowMs: 0, minCalls: 1, consecutiveFailures: 3 });
    fail(breaker, 2);
    succeed(breaker);
    fail(breaker, 2);
    expect(breaker.state()).toBe('closed');
    fail(breaker);
    expect(breaker.state()).toBe('open');
  });

  it('counts a success slower than slowCallMs as a failure with reason slow', () => {
    const { breaker, transitions } = setup({ slowCallMs: 1_000, consecutiveFailures: 2 });
    permitOf(breaker.tryAcquire()).success(1_000); // equal: not slow
    expect(breaker.stats().failures).toBe(0);
    permitOf(breaker.tryAcquire()).success(1_001);
    permitOf(breaker.tryAcquire()).success(5_000);
    expect(breaker.state()).toBe('open');
    expect(transitions).toEqual(['closed->open consecutive_failures (slow)']);
  });

  it('counts nothing for a released permit', () => {
    const { breaker } = setup();
    permitOf(breaker.tryAcquire()).release();
    expect(breaker.stats()).toMatchObject({ calls: 0, failures: 0, consecutiveFailures: 0 });
  });

  it('counts a permit once even if it is settled twice', () => {
    const { breaker } = setup();
    const p = permitOf(breaker.tryAcquire());
    p.failure('reset');
    p.failure('reset');
    p.success(1);
    expect(breaker.stats()).toMatchObject({ calls: 1, failures: 1, consecutiveFailures: 1 });
  });

  it('ignores results of calls admitted before it opened', () => {
    const { breaker } = setup();
    const late = [permitOf(breaker.tryAcquire()), permitOf(breaker.tryAcquire())];
    fail(breaker, 5);
    const before = breaker.stats();
    late[0]?.failure('timeout');
    late[1]?.success(1);
    expect(breaker.stats()).toEqual(before);
    expect(breaker.state()).toBe('open');
  });
});

describe('CircuitBreaker: half-open', () => {
  const openAndWait = (overrides: Partial<CircuitBreakerOptions> = {}, randoms: number[] = [0]) => {
    const s = setup({ resetJitterPercent: 0, ...overrides }, randoms);
    fail(s.breaker, 5);
    s.clock.t += s.breaker.stats().msUntilProbe ?? 0;
    return s;
  };

  it('lets exactly one probe through and rejects concurrent callers while it is out', () => {
    const { breaker, clock } = openAndWait();
    const probe = permitOf(breaker.tryAcquire());
    expect(probe.probe).toBe(true);
    for (let i = 0; i < 50; i++) {
      const a = breaker.tryAcquire();
      expect(a.allowed).toBe(false);
      expect(!a.allowed && a.state).toBe('half_open');
    }
    clock.t += 10_000;
    expect(breaker.tryAcquire().allowed).toBe(false);
    expect(breaker.stats().probeInFlight).toBe(true);
  });

  it('closes with fresh counters when the probe succeeds', () => {
    const { breaker, transitions } = openAndWait();
    permitOf(breaker.tryAcquire()).success(20);
    expect(breaker.state()).toBe('closed');
    expect(breaker.stats()).toMatchObject({ calls: 0, failures: 0, consecutiveFailures: 0, msUntilProbe: undefined });
    expect(transitions).toEqual([
      'closed->open consecutive_failures (status_5xx)',
      'open->half_open probe_admitted',
      'half_open->closed probe_succeeded',
    ]);
    // A fresh start: it takes 5 new failures to open again.
    fail(breaker, 4);
    expect(breaker.state()).toBe('closed');
  });

  it('re-opens for another resetMs + fresh jitter when the probe fails', () => {
    const { breaker, clock, transitions } = openAndWait({ resetJitterPercent: 20 }, [0, 0.25]);
    const openedAgainAt = clock.t;
    permitOf(breaker.tryAcquire()).failure('timeout');
    expect(breaker.state()).toBe('open');
    expect(transitions.at(-1)).toBe('half_open->open probe_failed (timeout)');
    // 30000 + 0.25 × 6000
    expect(breaker.stats().msUntilProbe).toBe(31_500);
    expect(breaker.stats().openedAt).toBe(openedAgainAt);
    clock.t += 31_499;
    expect(breaker.tryAcquire().allowed).toBe(false);
    clock.t += 1;
    expect(permitOf(breaker.tryAcquire()).probe).toBe(true);
  });

  it('re-opens when the probe succeeds but slower than slowCallMs', () => {
    const { breaker, transitions } = openAndWait({ slowCallMs: 500 });
    permitOf(breaker.tryAcquire()).success(501);
    expect(breaker.state()).toBe('open');
    expect(transitions.at(-1)).toBe('half_open->open probe_failed (slow)');
  });

  it('admits the next caller as probe when the probe is released without a verdict', () => {
    const { breaker, transitions } = openAndWait();
    permitOf(breaker.tryAcquire()).release();
    expect(breaker.state()).toBe('half_open');
    const next = permitOf(breaker.tryAcquire());
    expect(next.probe).toBe(true);
    expect(breaker.tryAcquire().allowed).toBe(false);
    next.success(1);
    expect(breaker.state()).toBe('closed');
    expect(transitions.filter((t) => t.includes('half_open->'))).toEqual(['half_open->closed probe_succeeded']);
  });

  it('replaces a probe that was never settled once its lease max(resetMs, probeLeaseMs) runs out', () => {
    const { breaker, clock } = openAndWait({ probeLeaseMs: 45_000 });
    const lost = permitOf(breaker.tryAcquire());
    clock.t += 44_999;
    expect(breaker.tryAcquire()).toEqual({ allowed: false, state: 'half_open', retryAfterMs: 1 });
    clock.t += 1;
    const second = permitOf(breaker.tryAcquire());
    expect(second.probe).toBe(true);
    expect(breaker.tryAcquire().allowed).toBe(false);
    // The lost probe turning up late has no say; the current one decides.
    lost.success(1);
    expect(breaker.state()).toBe('half_open');
    second.failure('status_5xx');
    expect(breaker.state()).toBe('open');
  });

  it('uses resetMs as the lease when probeLeaseMs is shorter or unset', () => {
    const { breaker, clock } = openAndWait({ probeLeaseMs: 1_000 });
    permitOf(breaker.tryAcquire());
    clock.t += 29_999;
    expect(breaker.tryAcquire().allowed).toBe(false);
    clock.t += 1;
    expect(breaker.tryAcquire().allowed).toBe(true);
  });

  it('does not let a slow call from before the opening close the breaker while a probe is out', () => {
    const s = setup({ resetJitterPercent: 0 });
    const old = permitOf(s.breaker.tryAcquire());
    fail(s.breaker, 5);
    s.clock.t += 30_000;
    const probe = permitOf(s.breaker.tryAcquire());
    old.success(1);
    expect(s.breaker.state()).toBe('half_open');
    expect(s.breaker.tryAcquire().allowed).toBe(false);
    probe.success(1);
    expect(s.breaker.state()).toBe('closed');
  });

  it('stays open with msUntilProbe 0 until a call arrives (no timers)', () => {
    const { breaker } = openAndWait();
    expect(breaker.state()).toBe('open');
    expect(breaker.stats().msUntilProbe).toBe(0);
  });

  it('wouldAdmit answers for a moment without taking the probe or changing state', () => {
    const { breaker, clock, transitions } = setup({ resetJitterPercent: 0 });
    expect(breaker.wouldAdmit()).toBe(true);
    fail(breaker, 5);
    expect(breaker.wouldAdmit()).toBe(false);
    expect(breaker.wouldAdmit(clock.t + 29_999)).toBe(false);
    expect(breaker.wouldAdmit(clock.t + 30_000)).toBe(true);
    clock.t += 30_000;
    expect(breaker.wouldAdmit()).toBe(true);
    expect(breaker.state()).toBe('open');
    // Asking took nothing: the next caller is still the probe, and while it is out nobody else would be admitted.
    const probe = permitOf(breaker.tryAcquire());
    expect(probe.probe).toBe(true);
    expect(breaker.wouldAdmit()).toBe(false);
    probe.success(1);
    expect(breaker.wouldAdmit()).toBe(true);
    expect(transitions).toEqual(['closed->open consecutive_failures (status_5xx)', 'open->half_open probe_admitted', 'half_open->closed probe_succeeded']);
    breaker.forceOpen();
    expect(breaker.wouldAdmit(clock.t + 3_600_000)).toBe(false);
    breaker.forceClose();
    expect(breaker.wouldAdmit()).toBe(true);
  });

  it('spreads probes: jitter is random() × resetJitterPercent of resetMs', () => {
    const probeDelay = (r: number) => {
      const { breaker } = setup({ resetMs: 10_000, resetJitterPercent: 50 }, [r]);
      fail(breaker, 5);
      return breaker.stats().msUntilProbe;
    };
    expect(probeDelay(0)).toBe(10_000);
    expect(probeDelay(0.5)).toBe(12_500);
    expect(probeDelay(0.999_99)).toBe(14_999);
  });
});

describe('CircuitBreaker: many callers', () => {
  it('never has two live probes out, whatever order callers acquire, settle, release or vanish in', () => {
    const rnd = seeded(99);
    const clock = { t: 0 };
    const breaker = new CircuitBreaker({ ...defaults, consecutiveFailures: 3, resetMs: 5_000 }, { now: () => clock.t, random: rnd });
    const out: { permit: BreakerPermit; at: number }[] = [];
    const vanished: { permit: BreakerPermit; at: number }[] = [];
    let probesGranted = 0;
    let closes = 0;
    for (let step = 0; step < 20_000; step++) {
      clock.t += Math.floor(rnd() * 400);
      if (rnd() < 0.5) {
        const a = breaker.tryAcquire();
        if (!a.allowed) continue;
        if (a.permit.probe) {
          probesGranted++;
          const live = [...out, ...vanished].filter((o) => o.permit.probe && clock.t - o.at < 5_000);
          expect(live).toEqual([]);
        }
        out.push({ permit: a.permit, at: clock.t });
      } else if (out.length > 0) {
        const [o] = out.splice(Math.floor(rnd() * out.length), 1);
        if (o === undefined) continue;
        const r = rnd();
        const before = breaker.state();
        if (r < 0.1) vanished.push(o); // the caller vanished: never settled
        else if (r < 0.2) o.permit.release();
        else if (r < 0.75) o.permit.failure('status_5xx');
        else o.permit.success(1);
        if (before === 'half_open' && breaker.state() === 'closed') closes++;
      }
    }
    // The schedule really went through many open / half-open / closed cycles.
    expect(probesGranted).toBeGreaterThan(50);
    expect(closes).toBeGreaterThan(10);
  });
});

describe('CircuitBreaker: admin', () => {
  it('forceOpen refuses every call, even after resetMs, until reset, and promises no time (nothing will probe)', () => {
    const { breaker, clock, transitions } = setup();
    breaker.forceOpen();
    clock.t += 10 * 60_000;
    expect(breaker.tryAcquire()).toEqual({ allowed: false, state: 'forced_open', retryAfterMs: undefined });
    breaker.reset();
    expect(breaker.tryAcquire().allowed).toBe(true);
    expect(transitions).toEqual(['closed->forced_open forced', 'forced_open->closed reset']);
  });

  it('forceClose admits every call whatever fails, still counting', () => {
    const { breaker } = setup();
    breaker.forceClose();
    fail(breaker, 100);
    expect(breaker.state()).toBe('forced_closed');
    expect(breaker.stats()).toMatchObject({ calls: 100, failures: 100, consecutiveFailures: 100 });
    expect(breaker.tryAcquire().allowed).toBe(true);
  });

  it('reset closes an open breaker with fresh counters and ignores permits from before', () => {
    const { breaker } = setup();
    const old = permitOf(breaker.tryAcquire());
    fail(breaker, 5);
    breaker.reset();
    old.failure('reset');
    expect(breaker.state()).toBe('closed');
    expect(breaker.stats()).toMatchObject({ calls: 0, failures: 0, consecutiveFailures: 0, lastFailure: undefined });
  });

  it('reports no transition when reset finds it already closed', () => {
    const { breaker, transitions } = setup();
    fail(breaker, 2);
    breaker.reset();
    expect(transitions).toEqual([]);
    expect(breaker.stats().calls).toBe(0);
  });
});

describe('CircuitBreaker: stats', () => {
  it('reports rate, counts, consecutive failures and the last failure reason', () => {
    const { breaker } = setup();
    succeed(breaker, 3);
    fail(breaker, 1, 'timeout');
    expect(breaker.stats()).toEqual({
      state: 'closed',
      calls: 4,
      failures: 1,
      errorRatePercent: 25,
      consecutiveFailures: 1,
      msUntilProbe: undefined,
      probeInFlight: false,
      openedAt: undefined,
      lastFailure: 'timeout',
    });
  });
});

describe('settlePermit', () => {
  const spy = () => {
    const calls: string[] = [];
    const permit: BreakerPermit = {
      probe: false,
      success: (ms) => calls.push(`success ${ms}`),
      failure: (r) => calls.push(`failure ${r}`),
      release: () => calls.push('release'),
    };
    return { permit, calls };
  };

  it('maps breaker failures to failure, aborts to release, the rest to success', () => {
    const a = spy();
    settlePermit(a.permit, { breakerFailure: true, reason: 'status_5xx' }, 12);
    settlePermit(a.permit, { breakerFailure: false, reason: 'aborted' }, 12);
    settlePermit(a.permit, { breakerFailure: false, reason: 'status_4xx' }, 12);
    expect(a.calls).toEqual(['failure status_5xx', 'release', 'success 12']);
  });
});
