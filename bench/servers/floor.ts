import httpProxy from '@fastify/http-proxy';
import Fastify from 'fastify';
import type { AddressInfo } from 'node:net';
import { announce, requiredEnv } from './announce.js';

/**
 * The floor: the least a Node proxy on the same stack (fastify + undici) can do — `@fastify/http-proxy` with
 * no hooks, no logging, no policies. Fusebox cannot reasonably be cheaper than this; the gap is what our
 * pipeline costs.
 */
const app = Fastify({ logger: false });
await app.register(httpProxy, { upstream: requiredEnv('BENCH_UPSTREAM'), prefix: '/bench' });
await app.listen({ host: '127.0.0.1', port: 0 });
announce(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}`);
