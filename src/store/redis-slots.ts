import { generateMulti } from 'cluster-key-slot';

/**
 * True when every key hashes to one Redis Cluster slot (CRC16 of the `{hash tag}`, as Redis computes it): the only
 * key sets a script may be sent with on a cluster. A standalone Redis takes any set.
 */
export const sameSlot = (keys: readonly string[]): boolean => keys.length === 0 || generateMulti(keys) !== -1;

/**
 * A script was about to be sent to a Redis Cluster with keys of several slots. Redis would refuse it with CROSSSLOT;
 * this says which keys, before anything is sent. A TypeError because it is a wiring bug (on a cluster the lease
 * layer admits route and fleet scopes locally, so a per-call script gets one agent's keys), not an outage: the
 * local fallback must not hide it by serving from a local slice.
 */
export class CrossSlotError extends TypeError {
  constructor(
    readonly script: string,
    readonly keys: readonly string[],
  ) {
    super(`Redis script ${script} would touch keys of several cluster slots (${keys.join(', ')}); on a cluster every key of one call must share a hash tag`);
    this.name = 'CrossSlotError';
  }
}
