import { describe, expect, it } from 'vitest';
import { classifyRedisError } from '../../src/store/redis-errors.js';
import { RedisReplyError } from '../../src/store/redis-script.js';
import { describeRedisTarget, parseRedisUrl, redactRedisUrl } from '../../src/store/redis-url.js';

describe('store.url', () => {
  it('reads one Redis, with TLS from rediss://', () => {
    expect(parseRedisUrl('redis://127.0.0.1:6380/2')).toEqual({ mode: 'single', url: 'redis://127.0.0.1:6380/2', tls: false, node: { host: '127.0.0.1', port: 6380 } });
    expect(parseRedisUrl('rediss://:pw@redis.example')).toMatchObject({ mode: 'single', tls: true, node: { host: 'redis.example', port: 6379 } });
  });

  it('reads a cluster from its seed nodes, with user, percent-decoded password, TLS and IPv6', () => {
    expect(parseRedisUrl('rediss+cluster://app:p%40ss@10.0.0.1:7000,[::1]:7001,redis-2/')).toEqual({
      mode: 'cluster',
      tls: true,
      username: 'app',
      password: 'p@ss',
      nodes: [
        { host: '10.0.0.1', port: 7000 },
        { host: '::1', port: 7001 },
        { host: 'redis-2', port: 6379 },
      ],
    });
  });

  it('refuses what it cannot use, saying which part is wrong', () => {
    expect(() => parseRedisUrl('http://x:1')).toThrow('must start with redis://, rediss://, redis+cluster:// or rediss+cluster:// (got "http://")');
    expect(() => parseRedisUrl('redis+cluster://a:1,b:99999')).toThrow('port 99999 of "b:99999" is not between 1 and 65535');
    expect(() => parseRedisUrl('redis+cluster://a:1/0')).toThrow('a cluster URL takes no database number');
    expect(() => parseRedisUrl('redis+cluster://:pw@')).toThrow('a cluster URL needs at least one host:port');
    expect(() => parseRedisUrl('redis+cluster://a:1,,b:2')).toThrow('"" is not a host or host:port');
  });

  it('never shows the password in what it logs or reports', () => {
    expect(redactRedisUrl('redis://user:s3cret@h:1/0')).toBe('redis://user:***@h:1/0');
    expect(redactRedisUrl('redis+cluster://:s3cret@a:1,b:2')).toBe('redis+cluster://:***@a:1,b:2');
    expect(describeRedisTarget(parseRedisUrl('redis+cluster://:s3cret@a:1,b:2'))).toBe('redis cluster a:1,b:2');
    expect(describeRedisTarget(parseRedisUrl('rediss://:s3cret@h:1'))).toBe('rediss h:1');
  });
});

describe('store error kinds', () => {
  const reply = (message: string) => Object.assign(new Error(message), { name: 'ReplyError' });
  it.each([
    [reply("OOM command not allowed when used memory > 'maxmemory'."), 'oom'],
    [reply("ERR Error running script (call to f_x): @user_script:3: OOM command not allowed when used memory > 'maxmemory'."), 'oom'],
    [reply('CLUSTERDOWN The cluster is down'), 'clusterdown'],
    [reply('TRYAGAIN Multiple keys request during rehashing of slot'), 'clusterdown'],
    [new Error('Too many Cluster redirections. Last error: ReplyError: CLUSTERDOWN Hash slot not served'), 'clusterdown'],
    [reply('MOVED 3999 127.0.0.1:7001'), 'redirect'],
    [reply('ASK 3999 127.0.0.1:7001'), 'redirect'],
    [new Error('Too many Cluster redirections. Last error: ReplyError: MOVED 1 127.0.0.1:7001'), 'redirect'],
    [reply("CROSSSLOT Keys in request don't hash to the same slot"), 'crossslot'],
    [reply('NOSCRIPT No matching script. Please use EVAL.'), 'noscript'],
    [reply('LOADING Redis is loading the dataset in memory'), 'loading'],
    [new Error('Command timed out'), 'timeout'],
    [new Error('Connection is closed.'), 'connection'],
    [new Error("Stream isn't writeable and enableOfflineQueue options is false"), 'connection'],
    [new Error("Cluster isn't ready and enableOfflineQueue options is false"), 'connection'],
    [Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:7001'), { code: 'ECONNREFUSED' }), 'connection'],
    [new RedisReplyError('fuseboxReserve', 'seen: expected a number'), 'reply'],
    [reply('ERR user_script:1: attempt to compare nil with number'), 'other'],
    ['a string', 'other'],
  ])('%s → %s', (err, kind) => {
    expect(classifyRedisError(err)).toBe(kind);
  });
});
