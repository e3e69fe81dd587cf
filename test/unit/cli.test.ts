import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { runCli, USAGE } from '../../src/cli/commands.js';
import { nodeVersionProblem } from '../../src/cli/node-version.js';
import { runCaptured } from '../helpers/cli.js';

/** The real command line in-process; -1 stands for "the sidecar keeps running" (never expected here). */
const fusebox = (args: string[]) => runCaptured((a, io) => runCli(a, io).then((code) => code ?? -1), args, { stdin: Readable.from([]), env: {} });

const COMMANDS = ['run', 'check-config', 'inject', 'gate', 'schema', 'rules', 'status'];

describe('fusebox command line', () => {
  it.each(COMMANDS)('%s answers --help and -h with its usage on stdout, exit 0, reading nothing', async (command) => {
    for (const flag of ['--help', '-h']) {
      const r = await fusebox([command, flag]);
      expect(r, `${command} ${flag}`).toMatchObject({ code: 0, err: '' });
      expect(r.out).toMatch(new RegExp(`^Usage: fusebox ${command} `));
    }
  });

  it('fusebox help [COMMAND] prints the same usage as COMMAND --help', async () => {
    for (const command of COMMANDS) {
      const help = await fusebox(['help', command]);
      expect(help).toEqual(await fusebox([command, '--help']));
    }
    const top = await fusebox(['help']);
    expect(top).toEqual({ code: 0, out: `${USAGE}\n`, err: '' });
    for (const command of [...COMMANDS, 'help']) expect(top.out).toMatch(new RegExp(`^  ${command} `, 'm'));
    expect(await fusebox(['--help'])).toEqual(top);
    expect(await fusebox(['-h'])).toEqual(top);
    expect(await fusebox(['help', 'help'])).toEqual(top);
  });

  it('an unknown command is named, with the commands that exist, exit 2', async () => {
    const r = await fusebox(['chek-config', 'x.yaml']);
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    expect(r.err).toBe('fusebox: unknown command "chek-config" (did you mean "check-config"?)\nCommands: run, check-config, inject, gate, schema, rules, status, help. Run "fusebox help" for the usage.\n');
    const topic = await fusebox(['help', 'deploy']);
    expect(topic.code).toBe(2);
    expect(topic.err).toContain('unknown command "deploy"');
    expect(topic.err).toContain('Commands: run, check-config, inject, gate, schema, rules, status, help.');
  });

  it('usage errors exit 2 and point at the command\'s help', async () => {
    expect(await fusebox(['check-config'])).toEqual({ code: 2, out: '', err: 'fusebox check-config: needs a FILE\nRun "fusebox check-config --help" for the usage.\n' });
    expect((await fusebox(['check-config', 'a.yaml', 'b.yaml'])).err).toContain('takes one FILE, got 2');
    expect((await fusebox(['run'])).err).toBe('fusebox run: --config FILE is required\nRun "fusebox run --help" for the usage.\n');
    expect((await fusebox([])).code).toBe(2);
    // A file really named "--help" can still be checked, after "--".
    expect((await fusebox(['check-config', '--', '--help'])).err).toContain("cannot read the file: ENOENT: no such file or directory, open '--help'");
  });

  it('--version', async () => {
    expect(await fusebox(['--version'])).toEqual({ code: 0, out: 'fusebox 0.1.0\n', err: '' });
  });
});

describe('fusebox check-config', () => {
  it('warns (exit 0) about a tunnel-mode route whose credential, metering and caps its tunnels would bypass', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fusebox-cli-'));
    const file = join(dir, 'fusebox.yaml');
    writeFileSync(
      file,
      [
        'budgets: { workflow: { maxCalls: 10 } }',
        'routes:',
        '  - { name: pinned, provider: openai, match: { hosts: [api.openai.com], connect: tunnel }, upstream: { url: "https://api.openai.com" }, credential: { env: OPENAI_API_KEY } }',
        '  - { name: fine, match: { hosts: [api.github.com] }, upstream: { url: "https://api.github.com" } }',
      ].join('\n'),
    );
    const r = await fusebox(['check-config', file]);
    expect(r.code).toBe(0);
    expect(r.out).toBe(`${file}: valid (2 routes: pinned, fine)\n`);
    expect(r.err).toBe(
      'warning: routes[0] (name "pinned"): match.connect is tunnel, so CONNECT tunnels to api.openai.com are spliced end to end and bypass its ' +
        'credential (OPENAI_API_KEY), openai usage metering and cost, workflow caps; retries and breakers do not apply either. Use match.connect: ' +
        'intercept (the default) unless the client pins certificates or needs mutual TLS to the destination; base-URL calls on this route keep every policy.\n',
    );
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('Node version check', () => {
  it('refuses Node before 24 with the version in use, and accepts 24 and later', () => {
    expect(nodeVersionProblem('20.20.2')).toMatch(/^Fusebox needs Node ≥ 24; you have v20\.20\.2\.\n/);
    expect(nodeVersionProblem('23.11.0')).toMatch(/you have v23\.11\.0/);
    expect(nodeVersionProblem('24.0.0')).toBeUndefined();
    expect(nodeVersionProblem('26.1.0')).toBeUndefined();
  });
});
