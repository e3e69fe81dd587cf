/** Wait `ms`, or reject with the signal's reason as soon as it aborts (the agent left, or the deadline passed). */
export const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason as Error);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason as Error);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

/**
 * Waits for `work` at most `ms`: true when it finished in time; a rejection of `work` in time is thrown. The
 * timer is cleared either way, so none keeps the process up.
 */
export const settledWithin = async (work: Promise<unknown>, ms: number): Promise<boolean> => {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([work.then(() => true), new Promise<boolean>((done) => (timer = setTimeout(() => done(false), ms)))]);
  } finally {
    clearTimeout(timer);
  }
};
