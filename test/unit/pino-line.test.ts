import { Writable } from 'node:stream';
import { pino, type LoggerOptions } from 'pino';
import { describe, expect, it } from 'vitest';
import { REDACT_PATHS } from '../../src/app.js';
import { pinoLineWriter } from '../../src/telemetry/pino-line.js';

/** A logger whose lines are collected, with a fixed clock so two loggers' lines can be compared. */
const capture = (opts: LoggerOptions = {}) => {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(chunk.toString());
      done();
    },
  });
  const log = pino({ base: { service: 'fusebox', host: 'pod-1' }, timestamp: () => ',"time":"2026-12-05T20:00:00.000Z"', ...opts }, stream);
  return { log, lines, flushed: () => new Promise<void>((r) => setImmediate(r)) };
};

const fields = {
  requestId: 'a-1',
  workflow: undefined,
  method: 'POST',
  path: '/v1/chat/completions?key=[REDACTED]',
  quote: 'say "hi" \\ there',
  control: 'tab\there\nnewline',
  long: 'é'.repeat(50),
  status: 200,
  durationMs: 1.234,
  notFinite: Number.NaN,
  usageEstimated: true,
  costUsd: 0.000123,
};

describe('pinoLineWriter', () => {
  it("writes pino's own bytes for the same object and message, at each level, with bindings", async () => {
    const theirs = capture({ redact: { paths: REDACT_PATHS, censor: '[REDACTED]' } });
    const ours = capture({ redact: { paths: REDACT_PATHS, censor: '[REDACTED]' } });
    // As the access log is made: a child without redaction, route and agent bound.
    const theirLog = theirs.log.child({}, { redact: [] }).child({ route: 'chat', agent: 'agent-1' });
    const ourLog = ours.log.child({}, { redact: [] }).child({ route: 'chat', agent: 'agent-1' });
    const write = pinoLineWriter(ourLog)!;
    expect(write).toBeDefined();
    theirLog.info(fields, 'request');
    theirLog.warn(fields, 'request');
    expect(write('info', fields, 'request')).toBe(true);
    expect(write('warn', fields, 'request')).toBe(true);
    await Promise.all([theirs.flushed(), ours.flushed()]);
    expect(theirs.lines).toHaveLength(2);
    expect(ours.lines).toEqual(theirs.lines);
  });

  it('writes nothing below the level, like pino', async () => {
    const ours = capture({ level: 'warn' });
    const write = pinoLineWriter(ours.log)!;
    expect(write('info', fields, 'request')).toBe(true);
    await ours.flushed();
    expect(ours.lines).toEqual([]);
  });

  it('leaves a line with an object value to pino, and a logger that changes the bytes entirely', () => {
    const { log } = capture();
    expect(pinoLineWriter(log)!('info', { traceparent: ['a', 'b'] }, 'request')).toBe(false);
    expect(pinoLineWriter(capture({ mixin: () => ({ extra: 1 }) }).log)).toBeUndefined();
    expect(pinoLineWriter(capture({ formatters: { log: (o) => o } }).log)).toBeUndefined();
    expect(pinoLineWriter(capture({ msgPrefix: '[x] ' }).log)).toBeUndefined();
    // The root logger redacts `*.authorization` and the like: its lines go through pino.
    expect(pinoLineWriter(capture({ redact: { paths: REDACT_PATHS } }).log)).toBeUndefined();
    expect(pinoLineWriter(pino({}, pino.multistream([{ stream: process.stdout }])))).toBeUndefined();
    const serialized = capture({ serializers: { status: (s: number) => `HTTP ${s}` } }).log;
    expect(pinoLineWriter(serialized)!('info', { status: 200 }, 'request')).toBe(false);
  });
});
