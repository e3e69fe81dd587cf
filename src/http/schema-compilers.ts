import { createRequire } from 'node:module';
import type { FastifyServerOptions } from 'fastify';

type Factory = (...args: unknown[]) => unknown;
type CompilersFactory = NonNullable<NonNullable<FastifyServerOptions['schemaController']>['compilersFactory']>;

/** fastify's own dependencies, resolved from fastify's folder: they are not ours, and may not be hoisted beside us. */
const requireFromFastify = createRequire(createRequire(import.meta.url).resolve('fastify'));

/** The default compiler factory `pkg` (`@fastify/ajv-compiler`...), loaded on first use, with a clear error if it cannot be. */
const onFirstUse = (pkg: string): Factory => {
  let build: Factory | undefined;
  return (...args) => {
    if (build === undefined) {
      try {
        build = (requireFromFastify(pkg) as () => Factory)();
      } catch (err) {
        throw new Error(`a fastify route declares a schema, and fastify's compiler ${pkg} could not be loaded: ${(err as Error).message}`, { cause: err });
      }
    }
    return build(...args);
  };
};

/**
 * fastify's `schemaController.compilersFactory` with its default compilers (ajv, fast-json-stringify) loaded only
 * when a route declares a schema. fastify otherwise loads both when an instance is made: ~90 files, ~1.7 MB of V8 heap
 * and ~3 MB of RSS, in a sidecar whose admin routes declare none (their bodies are checked with zod). fastify treats a
 * factory given here as custom, which changes one thing: a `headers` schema is passed to ajv as written, without
 * fastify lowercasing its keys first (lowercase them in the schema).
 */
export const lazySchemaCompilers = (): CompilersFactory => ({
  buildValidator: onFirstUse('@fastify/ajv-compiler') as NonNullable<CompilersFactory['buildValidator']>,
  buildSerializer: onFirstUse('@fastify/fast-json-stringify-compiler') as NonNullable<CompilersFactory['buildSerializer']>,
});
