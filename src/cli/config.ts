import type { Config } from '../config/schema.js';
import type { CliIO, Command, CommandGroup } from './command.js';

// `tollgate config check [file]`: loads the configuration exactly as `serve` would, offline.

/** The one-line summary of a valid configuration; never contains a secret. */
export function configSummary(config: Config): string {
  const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;
  const disabled = config.upstreams.filter((u) => (u.type === 'azure' && !u.endpoint) || !u.apiKey).length;
  const upstreams = `${plural(config.upstreams.length, 'upstream')}${disabled ? ` (${disabled} disabled)` : ''}`;
  const redis = config.redis;
  const mode = redis?.cluster
    ? 'redis cluster mode'
    : redis?.sentinel
      ? 'redis sentinel mode'
      : redis?.url
        ? 'redis mode'
        : 'memory mode (nothing persists)';
  const parts = [upstreams, plural(config.models.length, 'model')];
  if (config.keys.length) parts.push(plural(config.keys.length, 'config key'));
  parts.push(mode, config.admin.apiKey ? 'admin API on' : 'admin API off (no admin.apiKey)');
  return parts.join(', ');
}

/** Prints `ok: <source>`, the warnings and a summary (0), or every problem on stderr (2). */
export async function checkConfig(io: CliIO, file?: string): Promise<number> {
  const { loadConfig, ConfigError } = await import('../config/load.js');
  try {
    const { config, source, warnings } = loadConfig(io.env, file);
    io.out(`ok: ${source}`);
    for (const w of warnings) io.out(`warning: ${w}`);
    io.out(configSummary(config));
    return 0;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    io.err(
      `invalid configuration (${err.issues.length} ${err.issues.length === 1 ? 'problem' : 'problems'}):`,
    );
    for (const issue of err.issues) io.err(`error: ${issue}`);
    return 2;
  }
}

const check: Command = {
  path: ['config', 'check'],
  args: '[file]',
  summary: 'Validate a configuration file (or the environment-only configuration) without starting',
  description: [
    'Without [file]: $GATEWAY_CONFIG, else config/gateway.yaml when it exists, else the environment alone.',
    `Variables (\${VAR}, PORT, HOST, REDIS_URL, ADMIN_API_KEY, LOG_LEVEL) are applied as at start-up.`,
    'Exit codes: 0 valid, 2 invalid (every problem is listed as "path: reason").',
  ].join('\n'),
  options: {},
  positionals: { min: 0, max: 1, names: ['[file]'] },
  env: { GATEWAY_CONFIG: 'configuration file used when [file] is not given' },
  examples: ['tollgate config check config/gateway.yaml'],
  run: ({ positionals, io }) => checkConfig(io, positionals[0]),
};

export const configGroup: CommandGroup = {
  name: 'config',
  summary: 'Check the gateway configuration',
  commands: [check],
};
