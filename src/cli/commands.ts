import { closest } from '../config/problems.js';
import { FUSEBOX_VERSION } from '../version.js';
import { writeText, type CliIo } from './io.js';


/** A subcommand. `run` answers `--help` itself; commands load their modules only when run, so `inject` never loads the proxy. */
interface Command {
  readonly synopsis: string;
  readonly summary: string;
  /** An exit status, or undefined when the command keeps the process running (the sidecar). */
  readonly run: (args: string[], io: CliIo) => Promise<number | undefined>;
}

const COMMANDS: Readonly<Record<string, Command>> = {
  run: {
    synopsis: 'run --config FILE [-w]',
    summary: 'run the sidecar (also: fusebox --config FILE); -w reloads on a change',
    run: async (args, io) => (await import('./run.js')).runSidecar(args, io),
  },
  'check-config': {
    synopsis: 'check-config FILE',
    summary: 'validate a config file and exit (0 valid, 1 invalid)',
    run: async (args, io) => (await import('./check-config.js')).runCheckConfig(args, io),
  },
  inject: {
    synopsis: 'inject [-f FILE|-]',
    summary: 'add the Fusebox sidecar to Kubernetes YAML',
    run: async (args, io) => (await import('../deploy/cli.js')).runInject(args, io),
  },
  gate: {
    synopsis: 'gate --store URL --route R',
    summary: 'error-budget gate for CI/CD: PROCEED 0, HALT 10, ROLLBACK 20',
    run: async (args, io) => (await import('./gate.js')).runGate(args, { stdout: io.stdout, stderr: io.stderr, env: io.env ?? process.env }),
  },
  schema: {
    synopsis: 'schema',
    summary: 'print the JSON Schema of the config file (for editors)',
    run: async (args, io) => (await import('./schema.js')).runSchema(args, io),
  },
  rules: {
    synopsis: 'rules --config FILE',
    summary: 'print Prometheus recording and burn-rate alerting rules for the SLOs',
    run: async (args, io) => (await import('./rules.js')).runRules(args, { stdout: io.stdout, stderr: io.stderr, env: io.env ?? process.env }),
  },
  status: {
    synopsis: 'status [--admin URL] [-w]',
    summary: 'a running sidecar at a glance; exit 10 breaker open, 20 budget spent',
    run: async (args, io) => (await import('./status.js')).runStatus(args, io),
  },
};

const NAMES = [...Object.keys(COMMANDS), 'help'];

export const USAGE = `Usage: fusebox COMMAND [options]

Commands:
${Object.values(COMMANDS)
  .map((c) => `  ${c.synopsis.padEnd(30)} ${c.summary}`)
  .join('\n')}
  ${'help [COMMAND]'.padEnd(30)} this text, or a command's usage (same as fusebox COMMAND --help)

  fusebox --help | --version`;

const unknownCommand = async (name: string, io: CliIo): Promise<number> => {
  const guess = closest(name, NAMES);
  await writeText(
    io.stderr,
    `fusebox: unknown command "${name}"${guess === undefined ? '' : ` (did you mean "${guess}"?)`}\n` +
      `Commands: ${NAMES.join(', ')}. Run "fusebox help" for the usage.\n`,
  );
  return 2;
};

/**
 * The `fusebox` command line, without the process: returns the exit status, or undefined when the sidecar is
 * running (the process lives until a signal stops it).
 */
export const runCli = async (argv: string[], io: CliIo): Promise<number | undefined> => {
  const [first, ...rest] = argv;
  if (first === undefined) {
    await writeText(io.stderr, `${USAGE}\n`);
    return 2;
  }
  if (first === '--help' || first === '-h') {
    await writeText(io.stdout, `${USAGE}\n`);
    return 0;
  }
  if (first === '--version') {
    await writeText(io.stdout, `fusebox ${FUSEBOX_VERSION}\n`);
    return 0;
  }
  // `fusebox --config FILE`: the form the image, the manifests and `fusebox inject` use.
  if (first.startsWith('-')) return COMMANDS.run!.run(argv, io);
  if (first === 'help') {
    const [topic, ...extra] = rest;
    if (topic === undefined) {
      await writeText(io.stdout, `${USAGE}\n`);
      return 0;
    }
    if (extra.length > 0) {
      await writeText(io.stderr, `fusebox help: takes one COMMAND, got ${rest.length}\n`);
      return 2;
    }
    if (topic === 'help') {
      await writeText(io.stdout, `${USAGE}\n`);
      return 0;
    }
    const command = Object.hasOwn(COMMANDS, topic) ? COMMANDS[topic] : undefined;
    return command === undefined ? unknownCommand(topic, io) : command.run(['--help'], io);
  }
  const command = Object.hasOwn(COMMANDS, first) ? COMMANDS[first] : undefined;
  return command === undefined ? unknownCommand(first, io) : command.run(rest, io);
};
