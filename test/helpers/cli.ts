import { PassThrough } from 'node:stream';

export interface CapturedRun {
  code: number;
  out: string;
  err: string;
}

/**
 * Run an in-process CLI entry (runRules, runGate, ...) that writes to the streams it is given, and collect what
 * it wrote: the same code path as the real `fusebox` command, without a process per case.
 */
export const runCaptured = async <Io extends object>(
  run: (args: string[], io: Io & { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream }) => Promise<number>,
  args: string[],
  io: Io,
): Promise<CapturedRun> => {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (c: Buffer) => (out += c.toString()));
  stderr.on('data', (c: Buffer) => (err += c.toString()));
  const code = await run(args, { ...io, stdout, stderr });
  return { code, out, err };
};
