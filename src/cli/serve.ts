import { type Command, parseNonNegativeInt, str } from './command.js';

// `tollgate serve`: runs the gateway in this process (the same as `npm start`).

export const serveCommand: Command = {
  path: ['serve'],
  args: '[options]',
  summary: 'Start the gateway',
  description: 'Runs until SIGTERM/SIGINT, then drains and exits 0. An invalid configuration exits 2.',
  options: {
    config: {
      type: 'string',
      short: 'c',
      arg: 'FILE',
      description: 'configuration file (sets GATEWAY_CONFIG)',
    },
    port: {
      type: 'string',
      short: 'p',
      arg: 'PORT',
      description: 'listen port (sets PORT, overrides the file)',
    },
    host: { type: 'string', arg: 'HOST', description: 'listen address (sets HOST, overrides the file)' },
  },
  positionals: { min: 0, max: 0, names: [] },
  env: {
    GATEWAY_CONFIG: 'configuration file (default config/gateway.yaml when it exists)',
    'PORT, HOST': 'listener, overriding the file',
    REDIS_URL: 'Redis for shared state (none: in-memory single instance)',
    ADMIN_API_KEY: 'enables the admin API',
    OPENAI_API_KEY: 'with no file: serve gpt-4.1-mini through OpenAI (also OPENAI_BASE_URL)',
    AZURE_OPENAI_ENDPOINT:
      'with no file: ... and Azure (AZURE_OPENAI_API_KEY, _DEPLOYMENT, OPENAI_API_VERSION)',
    LOG_LEVEL: 'fatal, error, warn, info (default), debug, trace or silent',
  },
  examples: [
    'tollgate serve --config config/gateway.yaml',
    'OPENAI_API_KEY=sk-... tollgate serve --port 8080',
  ],
  async run({ values, io }) {
    const config = str(values, 'config');
    const port = str(values, 'port');
    const host = str(values, 'host');
    // The gateway reads process.env; io.env mirrors it for anything else in this process.
    const set = (name: string, value: string): void => {
      process.env[name] = value;
      io.env[name] = value;
    };
    if (config !== undefined) set('GATEWAY_CONFIG', config);
    if (port !== undefined) set('PORT', String(parseNonNegativeInt('port', port)));
    if (host !== undefined) set('HOST', host);
    const { main } = await import('../main.js');
    try {
      await main();
    } catch (err) {
      const { ConfigError } = await import('../config/load.js');
      if (!(err instanceof ConfigError)) throw err;
      io.err('invalid configuration:');
      for (const issue of err.issues) io.err(`error: ${issue}`);
      return 2;
    }
    return 0;
  },
};
