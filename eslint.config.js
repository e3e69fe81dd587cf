// Lint: typescript-eslint's recommended rules, plus the few habits we hold to (no floating promises is
// checked by review; type-aware rules would double the lint time on 2 cores).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'coverage/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-console': 'error',
      eqeqeq: ['error', 'always'],
    },
  },
  { files: ['bench/**', 'test/**'], rules: { 'no-console': 'off' } },
  // An ESM value import of node:http loads Node's bundled undici (~1.5 MB of RSS): src/net/node-http.ts says why.
  {
    files: ['src/**'],
    ignores: ['src/net/node-http.ts'],
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        { paths: [{ name: 'node:http', message: 'use `http` from src/net/node-http.ts (types: `import type`)', allowTypeImports: true }, { name: 'http', message: 'use `http` from src/net/node-http.ts (types: `import type`)', allowTypeImports: true }] },
      ],
    },
  },
  // The live page's script: plain browser JavaScript, served as written (no build step).
  {
    files: ['ui/**/*.js'],
    languageOptions: {
      sourceType: 'script',
      globals: { document: 'readonly', fetch: 'readonly', sessionStorage: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', Node: 'readonly' },
    },
  },
  // Agent scripts the tests run as child processes: plain Node ESM.
  { files: ['test/fixtures/**/*.mjs'], languageOptions: { globals: { process: 'readonly', fetch: 'readonly', console: 'readonly' } } },
);
