import { parseArgs } from 'node:util';
import { ConfigError, loadConfigFile } from '../config/load.js';
import { configWarnings } from '../config/warnings.js';
import { usageFailure, writeText, type CliIo } from './io.js';

export const CHECK_CONFIG_USAGE = `Usage: fusebox check-config FILE

Validates FILE exactly as "fusebox run" would before listening, and exits. Every problem is printed, in file order,
as FILE:LINE:COL: path: what is wrong (a misspelled key gets the nearest allowed key). \${VAR} references are
expanded from this environment, as at start.

Options:
  -h, --help   this text
  --           end of options (for a FILE whose name starts with "-")

Warnings (valid, but something will not apply: a tunnel-mode route's caps or credential) go to stderr with exit 0.

Exit status: 0 valid, 1 invalid, 2 usage error.`;

/** `fusebox check-config FILE`. */
export const runCheckConfig = async (argv: string[], io: CliIo): Promise<number> => {
  let file: string;
  try {
    const { values, positionals } = parseArgs({ args: argv, options: { help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: true });
    if (values.help) {
      await writeText(io.stdout, `${CHECK_CONFIG_USAGE}\n`);
      return 0;
    }
    if (positionals.length !== 1) throw new Error(positionals.length === 0 ? 'needs a FILE' : `takes one FILE, got ${positionals.length}`);
    file = positionals[0]!;
  } catch (err) {
    return usageFailure(io, 'check-config', err);
  }
  try {
    const { config } = loadConfigFile(file, io.env ?? process.env);
    const names = config.routes.map((r) => r.name);
    await writeText(io.stdout, `${file}: valid (${names.length} route${names.length === 1 ? '' : 's'}: ${names.join(', ')})\n`);
    // Choices that are valid but lose something (a tunnel-mode route's caps): said, not refused.
    const warnings = configWarnings(config);
    if (warnings.length > 0) await writeText(io.stderr, warnings.map((w) => `warning: ${w}\n`).join(''));
    return 0;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    await writeText(io.stderr, `${err.message}\n`);
    return 1;
  }
};
