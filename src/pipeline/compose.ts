import type { Handler, Layer } from './types.js';

/** Compose layers around a terminal handler. The first layer listed is the outermost. */
export const compose =
  (...layers: Layer[]) =>
  (terminal: Handler): Handler =>
    layers.reduceRight<Handler>((next, layer) => layer(next), terminal);
