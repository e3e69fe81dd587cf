import { RedisReplyError } from './redis-script.js';

/**
 * Why a Redis command failed, as the label `kind` of `fusebox_store_errors_total`. Bounded: every error maps to one
 * of these, so an operator can tell "Redis is full" from "a node is down" from "our key layout is wrong".
 */
export type StoreErrorKind =
  /** Refused, reset or closed connection; no client connection to the node (it is down or restarting). */
  | 'connection'
  /** No answer within `store.timeoutMs` (a hung or overloaded node). The command may still run. */
  | 'timeout'
  /** The node is loading its data after a restart (`LOADING`). */
  | 'loading'
  /** Redis is at `maxmemory` and refuses writes (`OOM command not allowed`). */
  | 'oom'
  /** The cluster cannot serve the slot (`CLUSTERDOWN`, `MASTERDOWN`, `TRYAGAIN`). */
  | 'clusterdown'
  /** A `MOVED`/`ASK` the client did not follow (a plain `redis://` URL pointed at a cluster node, or a redirect loop). */
  | 'redirect'
  /** A script's keys span slots (`CROSSSLOT`): a key-layout bug, never an outage. */
  | 'crossslot'
  /** The node forgot a script and the retry with its body failed too. */
  | 'noscript'
  /** A reply Fusebox could not decode (RedisReplyError). */
  | 'reply'
  /** Any other error reply (a Lua runtime error, `READONLY`, `NOAUTH`...). */
  | 'other';

export const STORE_ERROR_KINDS: readonly StoreErrorKind[] = [
  'connection',
  'timeout',
  'loading',
  'oom',
  'clusterdown',
  'redirect',
  'crossslot',
  'noscript',
  'reply',
  'other',
];

const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ETIMEDOUT']);

/**
 * Classifies an error a command rejected with (ioredis's errors and Redis error replies). Redis error replies start
 * with their code word; a script's `redis.call` error is wrapped ("ERR Error running script ... OOM ..."), so the
 * code words are looked for anywhere in the message where that can happen.
 */
export const classifyRedisError = (err: unknown): StoreErrorKind => {
  if (err instanceof RedisReplyError) return 'reply';
  if (!(err instanceof Error)) return 'other';
  const code = (err as NodeJS.ErrnoException).code;
  if (code !== undefined && CONNECTION_CODES.has(code)) return 'connection';
  const msg = err.message;
  if (msg === 'Command timed out') return 'timeout';
  if (msg.includes('OOM command not allowed')) return 'oom';
  if (/^(?:Too many Cluster redirections\. Last error: )?(?:ReplyError: )?(?:MOVED|ASK) /.test(msg)) return 'redirect';
  if (/\bCROSSSLOT\b/.test(msg)) return 'crossslot';
  if (/^(?:CLUSTERDOWN|MASTERDOWN|TRYAGAIN)\b/.test(msg) || /Last error: (?:ReplyError: )?(?:CLUSTERDOWN|TRYAGAIN)/.test(msg)) return 'clusterdown';
  if (/^LOADING\b/.test(msg)) return 'loading';
  if (/^NOSCRIPT\b/.test(msg)) return 'noscript';
  if (
    msg === 'Connection is closed.' ||
    msg.startsWith("Stream isn't writeable") ||
    msg.startsWith("Cluster isn't ready") ||
    msg === 'Cluster is ended.' ||
    err.name === 'MaxRetriesPerRequestError' ||
    /^(?:connect|read|write) E[A-Z]+/.test(msg)
  ) {
    return 'connection';
  }
  return 'other';
};
