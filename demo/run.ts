// npm run demo [-- --fast] [-- --keep]: see demo/demo.ts. Exits 0 once every event was seen, 1 otherwise.
import { parseArgs } from 'node:util';
import { demoComplete, runDemo } from './demo.js';

const { values } = parseArgs({ options: { fast: { type: 'boolean' }, keep: { type: 'boolean' } }, strict: true });
const fast = values.fast === true || process.env.FUSEBOX_DEMO_FAST === '1';
const keepUntil = values.keep ? new Promise<void>((resolve) => process.once('SIGINT', () => resolve())) : undefined;
// Bounded however the story goes: every loop has a limit, and this stops a stuck call.
const deadline = setTimeout(() => {
  process.stderr.write('demo: did not finish within 60 s\n');
  process.exit(1);
}, 60_000);
if (keepUntil) clearTimeout(deadline);
else deadline.unref();

const summary = await runDemo({ out: process.stdout, fast, ...(keepUntil ? { keepUntil } : {}) });
const ok = demoComplete(summary);
process.stdout.write(ok ? '\nDemo complete: every event happened.\n' : '\nDemo incomplete: some event did not happen (see above).\n');
process.exit(ok ? 0 : 1);
