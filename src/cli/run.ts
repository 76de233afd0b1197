import { auditCommand } from './audit.js';
import {
  CliError,
  type CliIO,
  type Command,
  type CommandGroup,
  cliVersion,
  commandHelp,
  commandLine,
  groupHelp,
  parseCommandArgs,
  twoColumns,
  UsageError,
  wantsHelp,
} from './command.js';
import { configGroup } from './config.js';
import { keysGroup } from './keys.js';
import { serveCommand } from './serve.js';
import { teamsGroup } from './teams.js';
import { usageCommand } from './usage.js';

// The `tollgate` command line: finds the command, handles help, maps errors to exit codes
// (0 ok, 1 failure, 2 usage error or invalid configuration).

type Entry = Command | CommandGroup;

export const ENTRIES: Entry[] = [
  serveCommand,
  configGroup,
  keysGroup,
  teamsGroup,
  usageCommand,
  auditCommand,
];

const isGroup = (e: Entry): e is CommandGroup => 'commands' in e;
const entryName = (e: Entry): string => (isGroup(e) ? e.name : e.path[0]!);

/** Every leaf command, e.g. for tests that check each one's help. */
export function allCommands(): Command[] {
  return ENTRIES.flatMap((e) => (isGroup(e) ? e.commands : [e]));
}

export function topHelp(): string {
  const rows: [string, string][] = [];
  for (const e of ENTRIES) {
    for (const c of isGroup(e) ? e.commands : [e]) rows.push([commandLine(c), c.summary]);
  }
  rows.push(['help [command]', 'show help for a command']);
  return [
    'tollgate: OpenAI-compatible gateway for GPT-4.1 mini',
    '',
    'Usage: tollgate <command> [options]',
    '',
    'Commands:',
    ...twoColumns(rows),
    '',
    'Options:',
    ...twoColumns([
      ['-h, --help', 'show help (also after any command)'],
      ['-v, --version', 'print the version'],
    ]),
    '',
    'Environment:',
    ...twoColumns([
      ['TOLLGATE_URL', 'gateway URL for the admin commands (default http://127.0.0.1:8080)'],
      ['ADMIN_API_KEY', 'admin API key for the admin commands'],
      ['GATEWAY_CONFIG', 'configuration file for serve and config check'],
    ]),
    '',
    'Exit codes: 0 ok, 1 failure (API or network error), 2 usage error or invalid configuration.',
    "Run 'tollgate <command> --help' for a command's options.",
  ].join('\n');
}

type Resolved =
  | { kind: 'command'; command: Command; rest: string[] }
  | { kind: 'group'; group: CommandGroup; rest: string[] };

/** Finds the command named by the leading words of argv. */
function resolve(argv: string[]): Resolved | { kind: 'unknown'; message: string } {
  const [first, second, ...others] = argv;
  const entry = ENTRIES.find((e) => entryName(e) === first);
  if (!entry) return { kind: 'unknown', message: `unknown command '${first}'` };
  if (!isGroup(entry)) return { kind: 'command', command: entry, rest: argv.slice(1) };
  if (second === undefined || second.startsWith('-'))
    return { kind: 'group', group: entry, rest: argv.slice(1) };
  const command = entry.commands.find((c) => c.path[1] === second);
  if (!command) return { kind: 'unknown', message: `unknown command '${entry.name} ${second}'` };
  return { kind: 'command', command, rest: others };
}

function defaultIO(): CliIO {
  return {
    out: (text) => process.stdout.write(`${text}\n`),
    err: (text) => process.stderr.write(`${text}\n`),
    env: process.env,
    fetch: globalThis.fetch,
    readStdin: async () => {
      const chunks: Buffer[] = [];
      for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
      return Buffer.concat(chunks).toString('utf8');
    },
    now: () => new Date(),
  };
}

/** Runs the CLI with `argv` (without node and script) and returns the exit code. */
export async function run(argv: string[], io: Partial<CliIO> = {}): Promise<number> {
  const ctx: CliIO = { ...defaultIO(), ...io };
  const [first] = argv;
  if (first === undefined) {
    ctx.err(topHelp());
    return 2;
  }
  if (first === '--help' || first === '-h') {
    ctx.out(topHelp());
    return 0;
  }
  if (first === '--version' || first === '-v' || first === 'version') {
    ctx.out(cliVersion());
    return 0;
  }
  if (first === 'help') return help(argv.slice(1), ctx);
  if (first.startsWith('-'))
    return usage(ctx, `unknown option '${first}' (options go after the command)`, 'tollgate --help');

  const found = resolve(argv);
  if (found.kind === 'unknown') return usage(ctx, found.message, 'tollgate --help');
  if (found.kind === 'group') {
    if (wantsHelp(found.rest)) {
      ctx.out(groupHelp(found.group));
      return 0;
    }
    ctx.err(groupHelp(found.group));
    return 2;
  }
  const { command, rest } = found;
  const helpHint = `tollgate ${command.path.join(' ')} --help`;
  if (wantsHelp(rest)) {
    ctx.out(commandHelp(command));
    return 0;
  }
  try {
    const { values, positionals } = parseCommandArgs(command, rest);
    return await command.run({ values, positionals, io: ctx });
  } catch (err) {
    if (err instanceof UsageError) return usage(ctx, err.message, helpHint);
    if (err instanceof CliError) {
      ctx.err(`error: ${err.message}`);
      return err.exitCode;
    }
    ctx.err(`error: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
}

function usage(io: CliIO, message: string, hint: string): number {
  io.err(`error: ${message}`);
  io.err(`Run '${hint}' for usage.`);
  return 2;
}

/** `tollgate help [command...]`. */
function help(words: string[], io: CliIO): number {
  if (words.length === 0) {
    io.out(topHelp());
    return 0;
  }
  const found = resolve(words);
  if (found.kind === 'unknown') return usage(io, found.message, 'tollgate --help');
  io.out(found.kind === 'group' ? groupHelp(found.group) : commandHelp(found.command));
  return 0;
}
