/** The streams a command writes to: the process's in the real CLI, in-memory ones in tests. */
export interface CliIo {
  stdin: NodeJS.ReadableStream;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  env?: NodeJS.ProcessEnv;
}

/** Resolves once the text is handed to the stream: the CLI calls process.exit right after, which would drop a pending write. */
export const writeText = (stream: NodeJS.WritableStream, text: string): Promise<void> =>
  new Promise((resolve, reject) => {
    stream.write(text, (err) => (err ? reject(err) : resolve()));
  });

/** A usage error of `command` (bad option, missing argument): the reason, where to read more, exit 2. */
export const usageFailure = async (io: CliIo, command: string, err: unknown): Promise<number> => {
  const message = err instanceof Error ? err.message : String(err);
  await writeText(io.stderr, `fusebox ${command}: ${message}\nRun "fusebox ${command} --help" for the usage.\n`);
  return 2;
};
