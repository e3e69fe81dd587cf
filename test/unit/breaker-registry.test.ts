import { describe, expect, it } from 'vitest';
import { BreakerRegistry } from '../../src/policies/breaker-registry.js';
import type { CircuitBreaker, CircuitBreakerOptions } from '../../src/policies/circuit-breaker.js';

const breakerOptions: CircuitBreakerOptions = {
  errorRatePercent: 50,
  windowMs: 60_000,
  minCalls: 20,
  consecutiveFailures: 2,
  resetMs: 30_000,
  resetJitterPercent: 0,
  slowCallMs: undefined,
};

const setup = (maxKeys: number) => {
  const clock = { t: 0 };
  const transitions: string[] = [];
  const registry = new BreakerRegistry({
    breaker: breakerOptions,
    maxKeys,
    now: () => clock.t,
    random: () => 0,
    onTransition: (key, from, to, reason) => transitions.push(`${key}: ${from}->${to} ${reason}`),
  });
  return { registry, clock, transitions };
};

const trip = (b: CircuitBreaker) => {
  for (let i = 0; i < 2; i++) {
    const a = b.tryAcquire();
    if (a.allowed) a.permit.failure('status_5xx');
  }
  expect(b.state()).toBe('open');
};

const keysOf = (registry: BreakerRegistry) => registry.list().map((e) => e.key);

describe('BreakerRegistry', () => {
  it('makes one breaker per key on first use and returns the same one afterwards', () => {
    const { registry } = setup(10);
    const a = registry.get('gpt-4o');
    expect(registry.get('gpt-4o')).toBe(a);
    expect(registry.get('gpt-4o-mini')).not.toBe(a);
    expect(registry.size).toBe(2);
  });

  it('keeps breakers independent: one key opening leaves the others closed', () => {
    const { registry } = setup(10);
    trip(registry.get('search'));
    expect(registry.get('search').tryAcquire().allowed).toBe(false);
    expect(registry.get('fetch').tryAcquire().allowed).toBe(true);
  });

  it('never holds more than maxKeys breakers, evicting the least recently used closed one', () => {
    const { registry } = setup(3);
    registry.get('a');
    registry.get('b');
    registry.get('c');
    registry.get('a'); // b is now least recently used
    registry.get('d');
    expect(registry.size).toBe(3);
    expect(registry.peek('b')).toBeUndefined();
    expect(keysOf(registry)).toEqual(['d', 'a', 'c']);
  });

  it('evicts a closed breaker before an open one, so a failing key stays shut', () => {
    const { registry } = setup(3);
    trip(registry.get('dead'));
    registry.get('b');
    registry.get('c');
    registry.get('d'); // 'dead' is least recently used, but open
    expect(registry.peek('b')).toBeUndefined();
    const dead = registry.peek('dead');
    expect(dead?.state()).toBe('open');
    expect(registry.get('dead').tryAcquire().allowed).toBe(false);
  });

  it('when every breaker is open, evicts the least recently used open one, keeping forced ones', () => {
    const { registry } = setup(3);
    registry.get('pinned').forceOpen();
    trip(registry.get('x'));
    trip(registry.get('y'));
    registry.get('z');
    expect(keysOf(registry)).toEqual(['z', 'y', 'pinned']);
    expect(registry.peek('pinned')?.state()).toBe('forced_open');
  });

  it('prefers closed over half-open victims', () => {
    const { registry, clock } = setup(2);
    trip(registry.get('probing'));
    clock.t += 30_000;
    expect(registry.get('probing').tryAcquire().allowed).toBe(true);
    expect(registry.peek('probing')?.state()).toBe('half_open');
    registry.get('closed');
    registry.get('probing');
    registry.get('new');
    expect(keysOf(registry)).toEqual(['new', 'probing']);
  });

  it('peek neither makes a breaker nor refreshes its recency', () => {
    const { registry } = setup(2);
    expect(registry.peek('nope')).toBeUndefined();
    expect(registry.size).toBe(0);
    registry.get('a');
    registry.get('b');
    registry.peek('a');
    registry.get('c');
    expect(registry.peek('a')).toBeUndefined();
  });

  it('lists every breaker with its stats, most recently used first', () => {
    const { registry } = setup(5);
    trip(registry.get('a'));
    registry.get('b');
    const list = registry.list();
    expect(list.map((e) => [e.key, e.stats.state, e.stats.failures])).toEqual([
      ['b', 'closed', 0],
      ['a', 'open', 2],
    ]);
  });

  it('reports transitions with their key', () => {
    const { registry, transitions } = setup(5);
    trip(registry.get('tool:search'));
    expect(transitions).toEqual(['tool:search: closed->open consecutive_failures']);
  });

  it('resetAll closes every breaker', () => {
    const { registry } = setup(5);
    trip(registry.get('a'));
    registry.get('b').forceOpen();
    registry.resetAll();
    expect(registry.list().map((e) => e.stats.state)).toEqual(['closed', 'closed']);
  });

  it('delete forgets a key: the next get starts fresh and closed', () => {
    const { registry } = setup(5);
    const a = registry.get('a');
    trip(a);
    expect(registry.delete('a')).toBe(true);
    expect(registry.get('a')).not.toBe(a);
    expect(registry.get('a').state()).toBe('closed');
  });

  it('keeps the recency order through repeated gets of the newest key and deletes', () => {
    const { registry } = setup(2);
    registry.get('a');
    registry.get('b');
    registry.get('b');
    expect(registry.delete('b')).toBe(true);
    registry.get('c');
    registry.get('a');
    registry.get('a');
    expect(keysOf(registry)).toEqual(['a', 'c']);
    registry.get('d'); // c is the least recently used
    expect(keysOf(registry)).toEqual(['d', 'a']);
  });

  it('churning through 20000 keys keeps maxKeys breakers and arms no timer', () => {
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const before = timers();
    const { registry } = setup(100);
    for (let i = 0; i < 20_000; i++) {
      const b = registry.get(`model-${i}`);
      if (i % 7 === 0) trip(b);
    }
    expect(registry.size).toBe(100);
    expect(timers()).toBe(before);
  });
});
