import { describe, expect, it } from 'vitest';
import { createUsageChunkFilter } from '../../src/providers/openai.js';

const chunk = (choices: unknown[], usage: unknown = null) => JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', model: 'gpt-4o', choices, usage });
const delta = (content: string) => chunk([{ index: 0, delta: { content }, finish_reason: null }]);
const USAGE_CHUNK = chunk([], { prompt_tokens: 10, completion_tokens: 2, total_tokens: 12 });

/** Feeds `parts` through a fresh filter and returns everything it let through. */
const run = (parts: Buffer[], maxEventBytes = 1 << 20): string => {
  const f = createUsageChunkFilter(maxEventBytes);
  return Buffer.concat([...parts.map((p) => f.push(p)), f.end()]).toString('utf8');
};

/** Every way of cutting `text` in two, plus one byte at a time. */
const cuts = (text: string): Buffer[][] => {
  const b = Buffer.from(text);
  const out: Buffer[][] = [];
  for (let i = 0; i <= b.length; i++) out.push([b.subarray(0, i), b.subarray(i)]);
  out.push([...b].map((byte) => Buffer.from([byte])));
  return out;
};

describe('createUsageChunkFilter', () => {
  it.each([
    ['LF', '\n'],
    ['CRLF', '\r\n'],
    ['CR', '\r'],
  ])('removes exactly the usage-only event and keeps every other byte, wherever the chunks are cut (%s)', (_name, nl) => {
    const ev = (data: string) => `data: ${data}${nl}${nl}`;
    const kept = `: keep-alive${nl}${nl}${ev(delta('hel'))}id: 7${nl}${ev(delta('lo'))}`;
    const stream = `${kept}${ev(USAGE_CHUNK)}${ev('[DONE]')}`;
    for (const parts of cuts(stream)) expect(run(parts)).toBe(`${kept}${ev('[DONE]')}`);
  });

  it('keeps the chunks that only look like it: usage null, usage beside choices, a multi-line data event, text about usage', () => {
    const stream = [
      `data: ${delta('a')}\n\n`,
      `data: ${chunk([{ index: 0, delta: {}, finish_reason: 'stop' }], { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 })}\n\n`,
      `data: {"choices": [],\ndata: "note": 1}\n\n`,
      `data: ${delta('"usage": {} and choices: []')}\n\n`,
      'data: [DONE]\n\n',
    ].join('');
    expect(run([Buffer.from(stream)])).toBe(stream);
  });

  it('drops a usage-only event split over data lines, as an SSE parser would join them', () => {
    const split = `data: {"choices":[],\ndata: "usage":{"prompt_tokens":1}}\n\n`;
    expect(run([Buffer.from(`${split}data: [DONE]\n\n`)])).toBe('data: [DONE]\n\n');
  });

  it('drops a usage object whose key and value the upstream put on two data lines', () => {
    const split = `data: {"choices":[],"usage"\ndata: :{"prompt_tokens":1}}\n\n`;
    for (const parts of cuts(`${split}data: [DONE]\n\n`)) expect(run(parts)).toBe('data: [DONE]\n\n');
  });

  it('keeps every chunk that says "usage": null, however spaced, even with choices: []', () => {
    const stream = [`data: {"choices":[],"usage" :\tnull}\n\n`, `data: {"choices":[],"usage":null,"x":{"usage":null}}\n\n`, `data: ${delta('a')}\n\n`].join('');
    for (const parts of cuts(stream)) expect(run(parts)).toBe(stream);
  });

  it('drops the usage event even when the stream ends without its blank line, and forwards any other unfinished event', () => {
    expect(run([Buffer.from(`data: ${delta('a')}\n\ndata: ${USAGE_CHUNK}\n`)])).toBe(`data: ${delta('a')}\n\n`);
    expect(run([Buffer.from(`data: ${delta('a')}\n\ndata: ${delta('b')}`)])).toBe(`data: ${delta('a')}\n\ndata: ${delta('b')}`);
  });

  it('stops holding an event over maxEventBytes and passes the rest of the body through untouched', () => {
    const big = `data: ${'x'.repeat(100)}`;
    const stream = `${big}\n\ndata: ${USAGE_CHUNK}\n\n`;
    const parts = [Buffer.from(big), Buffer.from(`\n\ndata: ${USAGE_CHUNK}\n\n`)];
    expect(run(parts, 50)).toBe(stream);
  });
});
