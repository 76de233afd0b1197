import { pathToFileURL } from 'node:url';
import { ConfigError, loadConfig } from './config/load.js';
import { startGateway } from './server/gateway.js';
import { createLogger } from './server/logger.js';
import { onStopSignals } from './server/signals.js';

/** The process entry: configuration, start-up, signals and exit codes. */
export async function main(): Promise<void> {
  let loaded: ReturnType<typeof loadConfig>;
  try {
    loaded = loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const { config } = loaded;
  const logger = createLogger(config.logging.level);
  for (const w of loaded.warnings) logger.warn(w);
  if (!config.redis?.url && !config.redis?.cluster && !config.redis?.sentinel) {
    logger.warn(
      'no Redis configured: single-instance mode, keys, limits, cache and usage live in memory and nothing persists',
    );
  }
  if (!config.admin.apiKey) logger.warn('no admin API key configured: the admin API is disabled');
  const gateway = await startGateway(config, logger);
  logger.info({ url: gateway.url, source: loaded.source }, 'tollgate listening');

  onStopSignals(
    (signal) => {
      logger.info({ signal }, 'shutting down');
      gateway.shutdown().then(
        () => process.exit(0),
        (err: unknown) => {
          logger.error({ err }, 'shutdown failed');
          process.exit(1);
        },
      );
    },
    (signal) => {
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    },
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`tollgate failed to start: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
