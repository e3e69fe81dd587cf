/**
 * The oldest Node major Fusebox runs on (package.json `engines`). Older ones fail far from the cause: undici 8
 * reads `zlib.createZstdDecompress` when it is imported, which Node 20 lacks, so the CLI dies in a TypeError
 * before printing anything of its own.
 *
 * This module imports nothing, so the entry can check the version before loading anything that may not even load.
 */
export const MIN_NODE_MAJOR = 24;

/** What to tell a person running Fusebox on `version` (`process.versions.node`, no "v"), or undefined when it is new enough. */
export const nodeVersionProblem = (version: string): string | undefined => {
  const major = Number(version.split('.')[0]);
  if (Number.isInteger(major) && major >= MIN_NODE_MAJOR) return undefined;
  return (
    `Fusebox needs Node ≥ ${MIN_NODE_MAJOR}; you have v${version}.\n` +
    `Install Node ${MIN_NODE_MAJOR} or newer, or use the container image. In a checkout of the project, npm start, npm test ` +
    `and npm exec run on the project's own Node ${MIN_NODE_MAJOR} (the "node" dev dependency).`
  );
};
