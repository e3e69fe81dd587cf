import { parseArgs } from 'node:util';
import { configJsonSchema, SCHEMA_FILE } from '../config/json-schema.js';
import { usageFailure, writeText, type CliIo } from './io.js';

export const SCHEMA_USAGE = `Usage: fusebox schema [-h]

Print the JSON Schema of the config file (generated from the one zod schema), as shipped in ${SCHEMA_FILE}.
Editors with the YAML language server use it when a config's first line is
  # yaml-language-server: $schema=<path or URL of fusebox.schema.json>

Options:
  -h, --help   this text

Exit status: 0 printed, 2 usage error.`;

/** `fusebox schema`. */
export const runSchema = async (argv: string[], io: CliIo): Promise<number> => {
  try {
    const { values } = parseArgs({ args: argv, options: { help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false });
    if (values.help) {
      await writeText(io.stdout, `${SCHEMA_USAGE}\n`);
      return 0;
    }
  } catch (err) {
    return usageFailure(io, 'schema', err);
  }
  await writeText(io.stdout, `${JSON.stringify(configJsonSchema(), null, 2)}\n`);
  return 0;
};
