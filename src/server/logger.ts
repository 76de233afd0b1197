import { type Logger, pino } from 'pino';

// Redaction lives in the logger itself, so no call site can leak a credential by accident.
const REDACT = [
  'authorization',
  'api-key',
  'apiKey',
  'key',
  'secret',
  'password',
  'token',
  'bearerToken',
  '*.authorization',
  '*["api-key"]',
  '*.apiKey',
  '*.key',
  '*.secret',
  '*.token',
  '*.bearerToken',
  'headers.authorization',
  'headers["api-key"]',
  'req.headers.authorization',
  'req.headers["api-key"]',
  'config.admin.apiKey',
  'config.upstreams[*].apiKey',
];

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    destination as pino.DestinationStream | undefined,
  );
}

export type { Logger };
