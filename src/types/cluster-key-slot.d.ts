/** Types for cluster-key-slot (ioredis's own Redis Cluster slot hashing; the package ships none). */
declare module 'cluster-key-slot' {
  /** The Redis Cluster slot (0..16383) of a key, honouring its `{hash tag}` (the CommonJS module itself). */
  const calculateSlot: (key: string | Buffer) => number;
  export default calculateSlot;
  /** The slot shared by every key, or -1 when two keys hash to different slots. */
  export function generateMulti(keys: ReadonlyArray<string | Buffer>): number;
}
