import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MemoryStore, SnapshotError } from '../../src/budget/memory-store.js';
import type { ScopeBudget } from '../../src/budget/store.js';

const day: ScopeBudget = { scope: { kind: 'agent', id: 'a1' }, window: 'day', caps: { usdMicros: 1_000_000 } };
const est = (usdMicros: number) => ({ usdMicros, tokens: 0, calls: 1 });

describe('MemoryStore snapshots', () => {
  let dir: string;
  let path: string;
  let t: number;
  const now = () => t;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'fusebox-snap-'));
    path = join(dir, 'state', 'budget.json');
    t = Date.parse('2026-11-22T10:00:00Z');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('keeps spend and kills across a restart, but not the holds of requests that died with it', async () => {
    const first = new MemoryStore({ now, snapshotPath: path });
    const r = await first.reserve({ scopes: [day], estimate: est(400_000) });
    if (!r.ok) throw new Error('refused');
    await first.commit(r.reservation, { usdMicros: 600_000, tokens: 10 });
    await first.reserve({ scopes: [day], estimate: est(100_000) });
    await first.setKill({ kind: 'workflow', id: 'w9' }, 'runaway');
    await first.close();

    const second = new MemoryStore({ now, snapshotPath: path });
    expect(second.snapshotLoadError).toBeUndefined();
    const [u] = await second.snapshot([day]);
    expect(u?.spent).toEqual({ usdMicros: 600_000, tokens: 10, calls: 1 });
    expect(u?.reserved).toEqual({ usdMicros: 0, tokens: 0, calls: 0 });
    expect(await second.getKills()).toEqual([{ target: { kind: 'workflow', id: 'w9' }, reason: 'runaway', at: t }]);
    const over = await second.reserve({ scopes: [day], estimate: est(500_000) });
    expect(over.ok).toBe(false);
    await second.close();
  });

  it('writes on its interval, atomically (no partial or temporary file left behind)', async () => {
    const store = new MemoryStore({ now, snapshotPath: path, snapshotIntervalMs: 20 });
    try {
      const r = await store.reserve({ scopes: [day], estimate: est(1) });
      if (r.ok) await store.commit(r.reservation, { usdMicros: 123, tokens: 0 });
      const deadline = Date.now() + 2_000;
      while (!existsSync(path) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 10));
      await store.saveSnapshot();
      expect(JSON.parse(readFileSync(path, 'utf8')).counters[0]).toEqual([
        'agent:a1:day:2026-11-22',
        expect.objectContaining({ spent: { usdMicros: 123, tokens: 0, calls: 1 } }),
      ]);
      expect(readdirSync(join(dir, 'state'))).toEqual(['budget.json']);
    } finally {
      await store.close();
    }
  });

  it('starts empty from a corrupt snapshot, says so clearly, moves the file aside and keeps working', async () => {
    const seen: Error[] = [];
    const store0 = new MemoryStore({ now, snapshotPath: path });
    await store0.close();
    writeFileSync(path, '{"version":1,"counters":[[');
    const store = new MemoryStore({ now, snapshotPath: path, onSnapshotError: (e) => seen.push(e) });
    expect(store.snapshotLoadError).toBeInstanceOf(SnapshotError);
    expect(store.snapshotLoadError?.message).toMatch(new RegExp(`budget snapshot ${path} is not usable .*starting with empty counters; the file was moved to ${path}\\.corrupt-${t}`));
    expect(seen).toEqual([store.snapshotLoadError]);
    expect(readFileSync(`${path}.corrupt-${t}`, 'utf8')).toBe('{"version":1,"counters":[[');
    expect((await store.reserve({ scopes: [day], estimate: est(1_000_000) })).ok).toBe(true);
    await store.close();
    expect(new MemoryStore({ now, snapshotPath: path }).snapshotLoadError).toBeUndefined();
  });

  it('rejects a snapshot of the wrong shape, naming the field', () => {
    writeFileSync(join(dir, 'v2.json'), JSON.stringify({ version: 2, savedAt: 0, counters: [], kills: [], buckets: [] }));
    const store = new MemoryStore({ now, snapshotPath: join(dir, 'v2.json') });
    expect(store.snapshotLoadError?.message).toMatch(/version: /);
    void store.close();
  });

  it('reports a failed write instead of crashing', async () => {
    const seen: Error[] = [];
    const store = new MemoryStore({ now, snapshotPath: path, onSnapshotError: (e) => seen.push(e) });
    writeFileSync(join(dir, 'state'), 'a file where the directory should be');
    await store.close();
    expect(seen).toHaveLength(1);
    expect((seen[0] as NodeJS.ErrnoException).code).toMatch(/EEXIST|ENOTDIR/);
  });

  it('drops windows two days past their end from the snapshot', async () => {
    const store = new MemoryStore({ now, snapshotPath: path });
    const r = await store.reserve({ scopes: [day], estimate: est(1) });
    if (r.ok) await store.commit(r.reservation, { usdMicros: 1, tokens: 0 });
    t = Date.parse('2026-11-25T00:00:00Z');
    await store.close();
    const file = JSON.parse(readFileSync(path, 'utf8'));
    expect(file.counters).toEqual([]);
  });

  it('reads a snapshot that still holds the generic buckets of earlier versions, and writes one they can read', async () => {
    const bucket = ['slo:r1:100', { fields: { ok: 4 }, expiresAt: t + 60_000 }];
    const spent = { usdMicros: 5, tokens: 0, calls: 1 };
    const counter = ['agent:a1:day:2026-11-22', { spent, alerted: [], lastSeen: t, gcAt: t + 86_400_000 }];
    mkdirSync(join(dir, 'state'));
    writeFileSync(path, JSON.stringify({ version: 1, savedAt: t, counters: [counter], kills: [], buckets: [bucket] }));
    const store = new MemoryStore({ now, snapshotPath: path });
    expect(store.snapshotLoadError).toBeUndefined();
    expect((await store.snapshot([day]))[0]?.spent).toEqual(spent);
    await store.close();
    expect(JSON.parse(readFileSync(path, 'utf8')).buckets).toEqual([]);
  });
});

describe('MemoryStore with one scope list reused for every call (the budget layer passes one per route)', () => {
  const month: ScopeBudget = { scope: { kind: 'agent', id: 'a1' }, window: 'month', caps: { usdMicros: 5_000_000 } };
  const scopes: readonly ScopeBudget[] = [day, month];

  it('charges each call to the windows of its own instant: across midnight and a month end, the reused list moves to the new windows', async () => {
    let t = Date.parse('2026-11-30T23:59:59.900Z');
    const store = new MemoryStore({ now: () => t });
    const before = await store.reserve({ scopes, estimate: est(300_000) });
    if (!before.ok) throw new Error('refused');
    t = Date.parse('2026-12-01T00:00:00.100Z');
    const after = await store.reserve({ scopes, estimate: est(200_000) });
    if (!after.ok) throw new Error('refused');
    expect(before.reservation.scopes.map((s) => s.windowId)).toEqual(['2026-11-30', '2026-11']);
    expect(after.reservation.scopes.map((s) => s.windowId)).toEqual(['2026-12-01', '2026-12']);
    // Settled after midnight, the first call is still charged to the windows it was reserved in.
    await store.commit(before.reservation, { usdMicros: 250_000, tokens: 0 });
    await store.commit(after.reservation, { usdMicros: 150_000, tokens: 0 });
    const [dec1, dec] = await store.snapshot(scopes);
    expect(dec1?.spent.usdMicros).toBe(150_000);
    expect(dec?.spent.usdMicros).toBe(150_000);
    t = Date.parse('2026-11-30T12:00:00Z');
    const [nov30, nov] = await store.snapshot(scopes);
    expect(nov30?.spent.usdMicros).toBe(250_000);
    expect(nov?.spent).toEqual({ usdMicros: 250_000, tokens: 0, calls: 1 });
    expect(nov?.reserved).toEqual({ usdMicros: 0, tokens: 0, calls: 0 });
  });

  it('returns a released hold of a reused list to the window it was held in, and gives every reservation its own id', async () => {
    const t = Date.parse('2026-11-22T10:00:00Z');
    const store = new MemoryStore({ now: () => t });
    const a = await store.reserve({ scopes, estimate: est(400_000) });
    const b = await store.reserve({ scopes, estimate: est(500_000) });
    if (!a.ok || !b.ok) throw new Error('refused');
    expect(a.reservation.id).not.toBe(b.reservation.id);
    // 400k + 500k held: a third call of 200k would pass the day's 1 USD cap.
    expect((await store.reserve({ scopes, estimate: est(200_000) })).ok).toBe(false);
    await store.release(a.reservation);
    expect((await store.reserve({ scopes, estimate: est(200_000) })).ok).toBe(true);
    const [d] = await store.snapshot(scopes);
    expect(d?.reserved.usdMicros).toBe(700_000);
  });

  it('still finds a kill set after the list was first used', async () => {
    const store = new MemoryStore({ now: () => Date.parse('2026-11-22T10:00:00Z') });
    expect((await store.reserve({ scopes, estimate: est(1) })).ok).toBe(true);
    await store.setKill({ kind: 'agent', id: 'a1' }, 'stop');
    const r = await store.reserve({ scopes, estimate: est(1) });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.refusal).toMatchObject({ reason: 'KILLED', scope: { kind: 'agent', id: 'a1' }, killReason: 'stop' });
  });
});
