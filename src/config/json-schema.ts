import { z } from 'zod';
import { ConfigSchema } from './schema.js';

/** Where the generated schema is shipped; config files point their YAML language server at it. */
export const SCHEMA_FILE = 'config/fusebox.schema.json';

/**
 * The config's JSON Schema, generated from the one zod schema (so editors with the YAML language server complete and
 * check a config as `fusebox check-config` would, short of the cross-field checks). `input`: what a person writes,
 * defaults optional.
 */
export const configJsonSchema = (): Record<string, unknown> => ({
  ...z.toJSONSchema(ConfigSchema, { io: 'input', unrepresentable: 'any' }),
  title: 'Fusebox config',
  description: 'The config file of the Fusebox egress sidecar (fusebox check-config FILE validates one, cross-field checks included).',
});
