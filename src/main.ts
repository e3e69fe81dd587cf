#!/usr/bin/env node
// Only this module and node-version.js load before the version check: on an older Node the rest may not even load
// (undici throws at import on Node 20), and the person would see a TypeError instead of the reason.
import { nodeVersionProblem } from './cli/node-version.js';

const problem = nodeVersionProblem(process.versions.node);
if (problem !== undefined) {
  process.stderr.write(`${problem}\n`);
  process.exit(1);
}

const { runCli } = await import('./cli/commands.js');
try {
  const code = await runCli(process.argv.slice(2), { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr });
  if (code !== undefined) process.exit(code);
} catch (err) {
  process.stderr.write(`fusebox: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(2);
}
