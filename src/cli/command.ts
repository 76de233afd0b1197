import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

// The small framework every `tollgate` command is built on: one declaration per command gives both
// the argument parser (node:util parseArgs) and the `--help` text, so the two cannot drift apart.

/** Parsed option values, keyed by the option's long name as typed (`max-concurrent`). */
export type Values = Record<string, string | boolean | undefined>;

/** Everything a command touches outside itself, so tests can run commands in-process. */
export interface CliIO {
  /** Writes one line (a trailing newline is added) to standard output. */
  out(text: string): void;
  /** Writes one line (a trailing newline is added) to standard error. */
  err(text: string): void;
  env: Record<string, string | undefined>;
  fetch: typeof fetch;
  readStdin(): Promise<string>;
  now(): Date;
}

/** A failure with the exit code it should end the process with (1 by default). */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = 1,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** Wrong arguments, a missing setting or an invalid configuration: exit code 2. */
export class UsageError extends CliError {
  constructor(message: string) {
    super(message, 2);
    this.name = 'UsageError';
  }
}

export interface OptionSpec {
  type: 'string' | 'boolean';
  short?: string;
  /** Placeholder shown in the help (`--rpm N`). */
  arg?: string;
  description: string;
}

export interface CommandContext {
  values: Values;
  positionals: string[];
  io: CliIO;
}

export interface Command {
  /** Words after `tollgate`, e.g. `['keys', 'create']`. */
  path: string[];
  /** What follows the command words in the usage line, e.g. `<id> [options]`. */
  args: string;
  summary: string;
  description?: string;
  options: Record<string, OptionSpec>;
  positionals: { min: number; max: number; names: string[] };
  /** Environment variables the command reads, shown in its help. */
  env?: Record<string, string>;
  examples?: string[];
  run(ctx: CommandContext): Promise<number>;
}

export interface CommandGroup {
  name: string;
  summary: string;
  commands: Command[];
}

export const HELP_OPTION: OptionSpec = { type: 'boolean', short: 'h', description: 'show this help' };

export const ADMIN_OPTIONS: Record<string, OptionSpec> = {
  url: {
    type: 'string',
    arg: 'URL',
    description: 'gateway URL (default: $TOLLGATE_URL or http://127.0.0.1:8080)',
  },
  'admin-key': {
    type: 'string',
    arg: 'KEY',
    description: 'admin API key (default: $ADMIN_API_KEY; prefer the variable, flags show up in ps)',
  },
};

export const ADMIN_ENV: Record<string, string> = {
  TOLLGATE_URL: 'gateway URL (default http://127.0.0.1:8080)',
  ADMIN_API_KEY: 'admin API key (the root admin key or a team-admin key)',
};

export const FORMAT_OPTION: OptionSpec = {
  type: 'string',
  arg: 'FMT',
  description: 'output format: table (default), json or csv',
};

/** True when `--help` / `-h` appears before a `--` terminator. */
export function wantsHelp(argv: string[]): boolean {
  for (const a of argv) {
    if (a === '--') return false;
    if (a === '--help' || a === '-h') return true;
  }
  return false;
}

/** Parses `argv` against the command's options; every problem becomes a UsageError. */
export function parseCommandArgs(cmd: Command, argv: string[]): { values: Values; positionals: string[] } {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const [name, spec] of Object.entries({ ...cmd.options, help: HELP_OPTION })) {
    options[name] = spec.short ? { type: spec.type, short: spec.short } : { type: spec.type };
  }
  let parsed: { values: Record<string, unknown>; positionals: string[] };
  try {
    parsed = parseArgs({ args: argv, options, strict: true, allowPositionals: true });
  } catch (err) {
    throw new UsageError(describeParseError(err));
  }
  const { positionals } = parsed;
  const { min, max, names } = cmd.positionals;
  if (positionals.length < min) throw new UsageError(`missing ${names[positionals.length] ?? 'argument'}`);
  if (positionals.length > max) throw new UsageError(`unexpected argument '${positionals[max]}'`);
  return { values: parsed.values as Values, positionals };
}

function describeParseError(err: unknown): string {
  const e = err as { code?: string; message?: string };
  const quoted = /'([^']+)'/.exec(e.message ?? '')?.[1];
  switch (e.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option '${quoted ?? '?'}'`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      if (quoted && /argument missing/.test(e.message ?? '')) return `option '${quoted}' needs a value`;
      if (quoted && /does not take an argument/.test(e.message ?? '')) {
        return `option '${quoted.split(' ')[0]}' does not take a value`;
      }
      return (e.message ?? 'invalid option value').split('\n')[0]!;
    default:
      return (e.message ?? String(err)).split('\n')[0]!;
  }
}

// ---------------------------------------------------------------------------------------------
// Help text

const pad = (s: string, width: number): string => s + ' '.repeat(Math.max(0, width - s.length));

/** Two-column list with aligned descriptions. */
export function twoColumns(rows: [string, string][], indent = 2): string[] {
  const width = Math.max(0, ...rows.map(([l]) => l.length)) + 2;
  return rows.map(([l, r]) => `${' '.repeat(indent)}${pad(l, width)}${r}`.trimEnd());
}

export function optionLabel(name: string, spec: OptionSpec): string {
  const long = `--${name}${spec.type === 'string' ? ` ${spec.arg ?? 'VALUE'}` : ''}`;
  return spec.short ? `-${spec.short}, ${long}` : `    ${long}`;
}

export function commandHelp(cmd: Command): string {
  const lines = [`Usage: tollgate ${cmd.path.join(' ')}${cmd.args ? ` ${cmd.args}` : ''}`, '', cmd.summary];
  if (cmd.description) lines.push('', cmd.description);
  lines.push('', 'Options:');
  lines.push(
    ...twoColumns(
      Object.entries({ ...cmd.options, help: HELP_OPTION }).map(([n, s]): [string, string] => [
        optionLabel(n, s),
        s.description,
      ]),
    ),
  );
  if (cmd.env && Object.keys(cmd.env).length) {
    lines.push('', 'Environment:', ...twoColumns(Object.entries(cmd.env)));
  }
  if (cmd.examples?.length) lines.push('', 'Examples:', ...cmd.examples.map((e) => `  ${e}`));
  return lines.join('\n');
}

export function groupHelp(group: CommandGroup): string {
  const lines = [`Usage: tollgate ${group.name} <command> [options]`, '', group.summary, '', 'Commands:'];
  lines.push(...twoColumns(group.commands.map((c): [string, string] => [commandLine(c), c.summary])));
  lines.push('', `Run 'tollgate ${group.name} <command> --help' for a command's options.`);
  return lines.join('\n');
}

/** `keys show <id>` for command listings. */
export function commandLine(cmd: Command): string {
  return [...cmd.path, ...cmd.positionals.names].join(' ');
}

// ---------------------------------------------------------------------------------------------
// Value parsers shared by the commands. Each names the flag in its error message.

const UNLIMITED = new Set(['unlimited', 'null', 'none']);

/** A limit: a non-negative integer, or `unlimited` / `null` for no limit (sent as null). */
export function parseLimit(flag: string, value: string): number | null {
  if (UNLIMITED.has(value.trim().toLowerCase())) return null;
  return parseNonNegativeInt(flag, value, "a non-negative integer or 'unlimited'");
}

export function parseNonNegativeInt(flag: string, value: string, what = 'a non-negative integer'): number {
  const v = value.trim();
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v)))
    throw new UsageError(`--${flag} must be ${what}, got '${value}'`);
  return Number(v);
}

export function parsePositiveInt(flag: string, value: string): number {
  const n = parseNonNegativeInt(flag, value, 'a positive integer');
  if (n === 0) throw new UsageError(`--${flag} must be a positive integer, got '${value}'`);
  return n;
}

/** A USD amount such as `25` or `12.50`. */
export function parseUsd(flag: string, value: string): number {
  const v = value.trim().replace(/^\$/, '');
  if (!/^(\d+(\.\d*)?|\.\d+)$/.test(v))
    throw new UsageError(`--${flag} must be an amount in USD (e.g. 25 or 12.50), got '${value}'`);
  return Number(v);
}

export function parseChoice<T extends string>(flag: string, value: string, choices: readonly T[]): T {
  if ((choices as readonly string[]).includes(value)) return value as T;
  throw new UsageError(`--${flag} must be one of ${choices.join(', ')}, got '${value}'`);
}

/** A comma-separated list; empty entries are dropped, so `''` is the empty list. */
export function parseList(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

export function parseJsonObject(flag: string, value: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch (err) {
    throw new UsageError(`--${flag} must be a JSON object: ${(err as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new UsageError(`--${flag} must be a JSON object, e.g. '{"owner":"alice"}'`);
  }
  return parsed as Record<string, unknown>;
}

/** An ISO-8601 date or date-time; returned normalised to full ISO-8601 UTC. */
export function parseTimestamp(flag: string, value: string): string {
  const v = value.trim();
  const ms = /^\d{4}-\d{2}-\d{2}([T ].*)?$/.test(v) ? Date.parse(v) : Number.NaN;
  if (Number.isNaN(ms)) {
    throw new UsageError(
      `--${flag} must be an ISO-8601 date or time (e.g. 2026-01-31 or 2026-01-31T12:00:00Z), got '${value}'`,
    );
  }
  return new Date(ms).toISOString();
}

/** A calendar day `YYYY-MM-DD` that exists. */
export function parseDay(flag: string, value: string): string {
  const v = value.trim();
  if (
    !/^\d{4}-\d{2}-\d{2}$/.test(v) ||
    Number.isNaN(Date.parse(v)) ||
    new Date(v).toISOString().slice(0, 10) !== v
  ) {
    throw new UsageError(`--${flag} must be a day as YYYY-MM-DD, got '${value}'`);
  }
  return v;
}

/** Reads a string option, or undefined when it was not given. */
export const str = (values: Values, name: string): string | undefined => {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
};

export const flag = (values: Values, name: string): boolean => values[name] === true;

/** The package version, read from package.json next to `src/` or `dist/`. */
export function cliVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version?: unknown;
    };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}
