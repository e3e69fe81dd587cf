import type { IncomingMessage, ServerResponse } from 'node:http';

/** How long, and how much, a lingering close keeps reading after the answer went out. */
export interface LingerLimits {
  /** Longest the socket stays half-closed after the answer is flushed, ms. */
  readonly timeMs: number;
  /** Most request bytes read and thrown away; past it the socket is destroyed at once. */
  readonly maxBytes: number;
}

/**
 * 2 s: Apache's lingering close waits 2 s too; a client in the same pod sees the answer within a millisecond, so
 * anything still sending after 2 s is not reading. 16 MiB: what can still be in flight when a client that reads while
 * it sends stops (its send buffer, up to tcp_wmem's 4 MiB, plus our receive buffer, up to tcp_rmem's 6 MiB by Linux
 * default), with room left for a client that writes its whole request before reading (Python's http.client) to
 * finish a body a few MiB over the limit. Reading and dropping 16 MiB on loopback costs a few ms of CPU and no memory;
 * the time bound is what stops a slow sender from holding the socket.
 */
export const LINGER_LIMITS: LingerLimits = { timeMs: 2_000, maxBytes: 16 * 1024 * 1024 };

/**
 * Close the connection of a request whose body was left unread (413 BODY_TOO_LARGE) without resetting it: the
 * staged close of RFC 9112 §9.6. Call it before writing the answer, which must carry `connection: close`.
 *
 * The hazard: closing a TCP socket with unread bytes in its receive buffer (or receiving more after the close) makes
 * the kernel answer with a RST, and a RST makes the client's kernel drop what it had received but not yet read:
 * the agent sees "connection reset" (curl exit 55, EPIPE) instead of the 413. Node's server does exactly that after
 * a `connection: close` answer (`socket.destroySoon()`: end, then destroy as soon as the answer is flushed).
 *
 * Instead: send the answer, half-close (FIN: the client sees the end of the answer), keep reading and discarding
 * the body, and destroy the socket once the body is all read, the client closes its side, `maxBytes` have been
 * thrown away, or `timeMs` has passed, whichever comes first.
 */
export const lingeringClose = (req: IncomingMessage, res: ServerResponse, limits: LingerLimits = LINGER_LIMITS): void => {
  const socket = req.socket;
  if (req.complete || socket.destroyed) return;
  const destroySoon = socket.destroySoon;
  let answered = false;
  let bodyDone = false;
  let stopped = false;
  let discarded = 0;
  let timer: NodeJS.Timeout | undefined;
  // End lingering: destroy the socket as soon as our answer is flushed (never before: that would cut the 413).
  const stop = () => {
    if (stopped) return;
    stopped = true;
    if (timer !== undefined) clearTimeout(timer);
    req.off('data', onData);
    destroySoon.call(socket);
  };
  const onData = (chunk: Buffer) => {
    discarded += chunk.length;
    if (discarded > limits.maxBytes && answered) stop();
  };
  // Read the body through the request (Node's HTTP parser owns the socket's reads). It also keeps the body flowing
  // before the answer is out, so the client never stalls on a full window.
  req.on('data', onData);
  // The body reader may have paused it when it stopped at the limit.
  req.resume();
  // Everything the client sent has been read: closing now leaves nothing unread behind.
  req.once('end', () => {
    bodyDone = true;
    if (answered) stop();
  });
  // The client closed its side: it read the answer (or gave up) and sends nothing more.
  socket.once('end', () => {
    if (answered) stop();
  });
  // Node's server calls this once the `connection: close` answer is finished; replaced for this socket only.
  socket.destroySoon = () => {
    answered = true;
    if (bodyDone || discarded > limits.maxBytes || socket.destroyed) return stop();
    socket.end();
    timer = setTimeout(stop, limits.timeMs);
    timer.unref();
  };
  // The answer may never finish (the client went away first): Node destroys the socket itself then.
  res.once('close', () => {
    if (!res.writableFinished) stop();
  });
};
