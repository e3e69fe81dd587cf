import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { FastifyReply } from 'fastify';
import type { RouteConfig } from '../config/schema.js';
import type { ProxyError } from '../errors.js';
import { http } from '../net/node-http.js';
import { providerErrorBody } from '../providers/errors.js';

/*
 * The one writer of Fusebox's own answers. `errorAnswer` decides everything (body, provider envelope, headers);
 * three adapters only put it on a transport: a node:http response, a raw socket, a fastify reply.
 */

/** Where an error is answered. */
export interface ErrorScope {
  /** The call's id. Refusals made before a call has one (a raw socket, a request inside a tunnel) say `-`. */
  requestId?: string;
  route?: string;
  /** The route's API family: an LLM provider's SDK is answered in that provider's error envelope. */
  provider?: RouteConfig['provider'];
}

/** Fusebox's own shape of an error answer. Details never carry secrets (they are built from config names). */
export const errorBody = (err: ProxyError, scope: ErrorScope): Record<string, unknown> => ({
  statusCode: err.statusCode,
  error: http.STATUS_CODES[err.statusCode] ?? 'Error',
  code: err.code,
  message: err.message,
  ...(scope.route !== undefined ? { route: scope.route } : {}),
  requestId: scope.requestId ?? '-',
  ...err.details,
});

/** An error answer ready for any transport. */
export interface ErrorAnswer {
  readonly statusCode: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly payload: string;
}

/**
 * The answer to `err`: Fusebox's body, or on a route with an LLM `provider` that provider's envelope around it (see
 * providers/errors.ts); `x-fusebox-error`, the request id when there is one, and the error's own headers.
 */
export const errorAnswer = (err: ProxyError, scope: ErrorScope, closeConnection = false): ErrorAnswer => {
  const body = errorBody(err, scope);
  const requestId = scope.requestId ?? '-';
  const sent = providerErrorBody(scope.provider, { statusCode: err.statusCode, code: err.code, message: err.message, requestId, body }) ?? body;
  const payload = JSON.stringify(sent);
  return {
    statusCode: err.statusCode,
    headers: {
      'content-type': 'application/json; charset=utf-8',
      'content-length': String(Buffer.byteLength(payload)),
      'x-fusebox-error': err.code,
      ...(scope.requestId !== undefined ? { 'x-request-id': scope.requestId } : {}),
      ...err.headers,
      ...(closeConnection ? { connection: 'close' } : {}),
    },
    payload,
  };
};

/**
 * On a node:http response: proxied calls and the requests inside intercepted tunnels. A response whose headers are
 * gone cannot change its status: it is cut, so the agent sees a broken answer rather than a wrong one.
 */
export const sendError = (res: ServerResponse, err: ProxyError, scope: ErrorScope, closeConnection = false): void => {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const answer = errorAnswer(err, scope, closeConnection);
  res.writeHead(answer.statusCode, answer.headers);
  res.end(answer.payload);
};

/**
 * On a raw socket, where no HTTP server writes for us: a request Node could not parse, a refused CONNECT. The whole
 * HTTP/1.1 answer, then the socket ends: a connection whose request was not understood or not allowed is not reused.
 */
export const endWithError = (socket: Duplex, err: ProxyError): void => {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const answer = errorAnswer(err, {}, true);
  const head = Object.entries(answer.headers)
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('');
  socket.end(`HTTP/1.1 ${answer.statusCode} ${http.STATUS_CODES[answer.statusCode] ?? 'Error'}\r\n${head}\r\n${answer.payload}`);
};

/** On a fastify reply: the admin API's errors and its unknown endpoints. */
export const replyError = (reply: FastifyReply, err: ProxyError, scope: ErrorScope): FastifyReply => {
  const answer = errorAnswer(err, scope);
  return reply.code(answer.statusCode).headers(answer.headers).send(answer.payload);
};
