import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { configJsonSchema, SCHEMA_FILE } from '../../src/config/json-schema.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

describe('the config JSON Schema', () => {
  it(`is shipped in ${SCHEMA_FILE} exactly as \`fusebox schema\` prints it (regenerate: npm exec -- tsx src/main.ts schema > ${SCHEMA_FILE})`, () => {
    expect(JSON.parse(readFileSync(`${ROOT}/${SCHEMA_FILE}`, 'utf8'))).toEqual(configJsonSchema());
  });

  it('refuses unknown keys where the config does, and knows the defaults a person may leave out', () => {
    const schema = configJsonSchema() as { additionalProperties: boolean; required: string[]; properties: Record<string, { default?: unknown }> };
    expect(schema.additionalProperties).toBe(false);
    expect(schema.required).toEqual(['routes']);
    expect(schema.properties.listen?.default).toEqual({});
  });

  it('is what the example config points its editor at', () => {
    expect(readFileSync(`${ROOT}/config/example.yaml`, 'utf8').split('\n')[0]).toBe('# yaml-language-server: $schema=./fusebox.schema.json');
  });
});
