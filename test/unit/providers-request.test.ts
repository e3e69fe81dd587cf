import { describe, expect, it, vi } from 'vitest';
import { mcpToolName } from '../../src/providers/mcp.js';
import { parseJsonObject, requestInfo, rewriteModel, withStreamUsage } from '../../src/providers/request.js';

const buf = (s: string) => Buffer.from(s);
const text = (b: Buffer | undefined) => b?.toString('utf8');

describe('requestInfo', () => {
  it('reads model, stream and max_completion_tokens from an OpenAI chat body', () => {
    const body = buf(JSON.stringify({ model: 'gpt-4o', stream: true, max_completion_tokens: 500, messages: [{ role: 'user', content: 'hi' }] }));
    expect(requestInfo(body)).toEqual({ model: 'gpt-4o', stream: true, maxOutputTokens: 500 });
  });

  it('reads max_output_tokens (Responses API) and max_tokens (Anthropic), taking the highest when several are set', () => {
    expect(requestInfo({ model: 'o3', input: 'x', max_output_tokens: 2048 })).toEqual({ model: 'o3', stream: false, maxOutputTokens: 2048 });
    expect(requestInfo({ model: 'claude-sonnet-4-5', max_tokens: 1024, stream: false })).toEqual({ model: 'claude-sonnet-4-5', stream: false, maxOutputTokens: 1024 });
    expect(requestInfo({ max_tokens: 100, max_completion_tokens: 300 }).maxOutputTokens).toBe(300);
  });

  it('ignores caps that are not positive integers and a stream flag that is not true', () => {
    expect(requestInfo({ model: '', max_tokens: -1, max_completion_tokens: 1.5, max_output_tokens: '9', stream: 'true' })).toEqual({ stream: false });
  });

  it('answers an empty info for no body, bad JSON, or a JSON array', () => {
    expect(requestInfo(undefined)).toEqual({ stream: false });
    expect(requestInfo(buf('{"model": "gpt-4o"'))).toEqual({ stream: false });
    expect(requestInfo(buf('[{"model":"gpt-4o"}]'))).toEqual({ stream: false });
    expect(parseJsonObject(buf(''))).toBeUndefined();
  });
});

describe('withStreamUsage', () => {
  it('adds stream_options.include_usage to a streamed chat body, leaving every other byte as the agent wrote it', () => {
    const original = '{"model":"gpt-4o","stream":true,"seed":12345678901234567890,"logit_bias":{"50256":-100,"2":5},"messages":[{"role":"user","content":"héllo"}]}';
    expect(text(withStreamUsage(buf(original)))).toBe(
      '{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"seed":12345678901234567890,"logit_bias":{"50256":-100,"2":5},"messages":[{"role":"user","content":"héllo"}]}',
    );
  });

  it('merges into existing stream_options in place', () => {
    const original = '{\n  "stream_options": { "include_obfuscation": false },\n  "stream": true,\n  "messages": []\n}';
    expect(text(withStreamUsage(buf(original)))).toBe(
      '{\n  "stream_options": {"include_obfuscation":false,"include_usage":true},\n  "stream": true,\n  "messages": []\n}',
    );
    expect(text(withStreamUsage(buf('{"stream":true,"prompt":"x","stream_options":null}')))).toBe(
      '{"stream":true,"prompt":"x","stream_options":{"include_usage":true}}',
    );
  });

  it('changes nothing when not streamed, already decided by the agent, a Responses API body, or not JSON', () => {
    expect(withStreamUsage(buf('{"stream":false,"messages":[]}'))).toBeUndefined();
    expect(withStreamUsage(buf('{"messages":[]}'))).toBeUndefined();
    expect(withStreamUsage(buf('{"stream":true,"messages":[],"stream_options":{"include_usage":true}}'))).toBeUndefined();
    expect(withStreamUsage(buf('{"stream":true,"messages":[],"stream_options":{"include_usage":false}}'))).toBeUndefined();
    expect(withStreamUsage(buf('{"stream":true,"model":"gpt-4.1","input":"hi"}'))).toBeUndefined();
    expect(withStreamUsage(buf('{"stream":true,"messages":['))).toBeUndefined();
    expect(withStreamUsage(buf(''))).toBeUndefined();
  });

  it('always yields JSON that parses to the intended object', () => {
    const bodies = [
      ' \n{ "stream" : true , "messages" : [ { "content" : "a,}]\\"{" } ] } \n',
      '{"messages":[],"stream":true,"nested":{"stream_options":1}}',
    ];
    for (const b of bodies) {
      const out = withStreamUsage(buf(b));
      expect(JSON.parse(text(out)!)).toEqual({ ...JSON.parse(b), stream_options: { include_usage: true } });
    }
  });

  it('falls back to a full rewrite for duplicate or escaped keys, still leaving one stream_options', () => {
    const dup = withStreamUsage(buf('{"stream":true,"messages":[],"stream_options":{},"stream_options":{"x":1}}'));
    expect(JSON.parse(text(dup)!)).toEqual({ stream: true, messages: [], stream_options: { x: 1, include_usage: true } });
    const escaped = withStreamUsage(buf('{"stream":true,"messages":[],"stream_\\u006fptions":{"x":1}}'));
    expect(JSON.parse(text(escaped)!)).toEqual({ stream: true, messages: [], stream_options: { x: 1, include_usage: true } });
  });
});

describe('rewriteModel', () => {
  it('replaces the top-level model only, byte for byte elsewhere', () => {
    const original = '{"model":"gpt-4o","metadata":{"model":"keep"},"seed":98765432109876543210,"messages":[{"role":"user","content":"model"}]}';
    expect(text(rewriteModel(buf(original), 'gpt-4o-mini'))).toBe(
      '{"model":"gpt-4o-mini","metadata":{"model":"keep"},"seed":98765432109876543210,"messages":[{"role":"user","content":"model"}]}',
    );
  });

  it('handles a model key after nested objects and odd spacing, and escapes the new name', () => {
    const original = '{ "messages" : [ {"a" : {"b" : [1, "}"]}} ] ,\n "model" :\t"claude-opus-4-1" }';
    expect(text(rewriteModel(buf(original), 'claude-"x"'))).toBe('{ "messages" : [ {"a" : {"b" : [1, "}"]}} ] ,\n "model" :\t"claude-\\"x\\"" }');
  });

  it('changes nothing when the model is already the target, absent, or the body is not a JSON object', () => {
    expect(rewriteModel(buf('{"model":"gpt-4o"}'), 'gpt-4o')).toBeUndefined();
    expect(rewriteModel(buf('{"messages":[]}'), 'gpt-4o')).toBeUndefined();
    expect(rewriteModel(buf('not json'), 'gpt-4o')).toBeUndefined();
    expect(rewriteModel(buf('["model"]'), 'gpt-4o')).toBeUndefined();
  });

  it('rewrites bodies with a duplicated model key so no copy of the old model survives', () => {
    const out = rewriteModel(buf('{"model":"a","model":"b"}'), 'c');
    expect(text(out)).toBe('{"model":"c"}');
  });
});

describe('mcpToolName', () => {
  const call = (extra: object = {}) => buf(JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'search_issues', arguments: { q: 'x' } }, ...extra }));

  it('names the tool of a single JSON-RPC tools/call', () => {
    expect(mcpToolName(call())).toBe('search_issues');
    expect(mcpToolName(buf('{"jsonrpc":"2.0","id":1,"method":"tools\\/call","params":{"name":"escaped"}}'))).toBe('escaped');
  });

  it('answers undefined for batches, other methods, missing names, other protocol versions and bad JSON', () => {
    expect(mcpToolName(buf(`[${call().toString()}]`))).toBeUndefined();
    expect(mcpToolName(buf(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list', params: { cursor: 'tools/call' } })))).toBeUndefined();
    expect(mcpToolName(call({ params: { arguments: {} } }))).toBeUndefined();
    expect(mcpToolName(call({ params: { name: '' } }))).toBeUndefined();
    expect(mcpToolName(call({ jsonrpc: '1.0' }))).toBeUndefined();
    expect(mcpToolName(buf('{"method":"tools/call",'))).toBeUndefined();
    expect(mcpToolName(undefined)).toBeUndefined();
  });
});

describe('parseJsonObject: one parse per buffered body', () => {
  it('parses a body once however many layers read it (estimate, stream-usage rewrite, breaker key), and never mixes up two bodies', () => {
    const body = Buffer.from(JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], stream: true }));
    const parse = vi.spyOn(JSON, 'parse');
    try {
      const first = parseJsonObject(body);
      expect(requestInfo(body)).toEqual({ model: 'gpt-4o', stream: true });
      expect(withStreamUsage(body)?.toString()).toContain('"stream_options":{"include_usage":true}');
      expect(parseJsonObject(body)).toBe(first);
      expect(parse).toHaveBeenCalledTimes(1);
      // Same bytes in another buffer: its own parse, its own object.
      const twin = Buffer.from(body);
      expect(parseJsonObject(twin)).toEqual(first);
      expect(parseJsonObject(twin)).not.toBe(first);
      expect(parse).toHaveBeenCalledTimes(2);
      // A body that is not a JSON object is remembered as such too.
      const text = Buffer.from('not json');
      expect(parseJsonObject(text)).toBeUndefined();
      expect(parseJsonObject(text)).toBeUndefined();
      expect(parse).toHaveBeenCalledTimes(3);
    } finally {
      parse.mockRestore();
    }
  });
});
