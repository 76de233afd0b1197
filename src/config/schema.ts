import { z } from 'zod';

// The configuration contract (SPEC section 2). Every field has its default here, so the rest of
// the code reads a fully resolved `Config` and never checks for undefined.

const positiveInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();
const limitValue = nonNegInt.nullable();

export const limitsSchema = z
  .object({ rpm: limitValue.optional(), tpm: limitValue.optional(), maxConcurrent: limitValue.optional() })
  .strict();

export const budgetSchema = z
  .object({ usd: z.number().nonnegative(), period: z.enum(['day', 'month', 'total']) })
  .strict();

const redisSchema = z
  .object({
    url: z
      .string()
      .regex(/^rediss?:\/\//, 'must start with redis:// or rediss://')
      .optional(),
    keyPrefix: z.string().default('tollgate:'),
    cluster: z
      .object({ nodes: z.array(z.string()).min(1) })
      .strict()
      .optional(),
    sentinel: z
      .object({ sentinels: z.array(z.string()).min(1), name: z.string().min(1) })
      .strict()
      .optional(),
    commandTimeoutMs: positiveInt.default(100),
    adminTimeoutMs: positiveInt.default(5000),
  })
  .strict();

const upstreamSchema = z.discriminatedUnion('type', [
  z
    .object({
      name: z.string().min(1),
      type: z.literal('openai'),
      baseURL: z.string().url().default('https://api.openai.com/v1'),
      apiKey: z.string().optional(),
      model: z.string().optional(),
      connections: positiveInt.default(128),
    })
    .strict(),
  z
    .object({
      name: z.string().min(1),
      type: z.literal('azure'),
      endpoint: z.string().url().optional(),
      apiKey: z.string().optional(),
      deployment: z.string().min(1),
      apiVersion: z.string().optional(),
      connections: positiveInt.default(128),
    })
    .strict(),
]);

const routeSchema = z
  .object({
    upstream: z.string().min(1),
    priority: nonNegInt.default(1),
    weight: z.number().positive().default(1),
  })
  .strict();

const modelSchema = z
  .object({
    id: z.string().min(1),
    aliases: z.array(z.string().min(1)).default([]),
    contextWindow: positiveInt.default(1047576),
    maxOutputTokens: positiveInt.default(32768),
    pricing: z
      .object({
        inputPerMTok: z.number().nonnegative(),
        cachedInputPerMTok: z.number().nonnegative(),
        outputPerMTok: z.number().nonnegative(),
      })
      .strict(),
    routes: z.array(routeSchema).default([]),
  })
  .strict();

const fileKeySchema = z
  .object({
    name: z.string().min(1),
    team: z.string().min(1).nullable().default(null),
    sha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex characters'),
    role: z.enum(['member', 'team-admin']).default('member'),
    limits: limitsSchema.optional(),
    budget: budgetSchema.nullable().optional(),
    models: z.array(z.string()).optional(),
  })
  .strict();

export const configSchema = z
  .object({
    server: z
      .object({
        host: z.string().default('0.0.0.0'),
        port: z.number().int().min(0).max(65535).default(8080),
        bodyLimitBytes: positiveInt.default(8 * 1024 * 1024),
        keepAliveTimeoutSeconds: positiveInt.default(65),
        drainDelaySeconds: nonNegInt.default(5),
        shutdownGraceSeconds: nonNegInt.default(30),
        cors: z.union([z.boolean(), z.array(z.string())]).default(false),
      })
      .strict()
      .prefault({}),
    redis: redisSchema.optional(),
    admin: z.object({ apiKey: z.string().optional() }).strict().prefault({}),
    upstreams: z.array(upstreamSchema).default([]),
    models: z.array(modelSchema).default([]),
    routing: z
      .object({
        retries: nonNegInt.default(2),
        timeouts: z
          .object({
            connectMs: positiveInt.default(5000),
            firstByteMs: positiveInt.default(60000),
            idleMs: positiveInt.default(60000),
            requestMs: positiveInt.default(600000),
          })
          .strict()
          .prefault({}),
        circuitBreaker: z
          .object({
            failureThreshold: positiveInt.default(5),
            cooldownSeconds: z.number().positive().default(30),
          })
          .strict()
          .prefault({}),
        maxRetryAfterMs: positiveInt.default(10000),
      })
      .strict()
      .prefault({}),
    cache: z
      .object({
        enabled: z.boolean().default(true),
        ttlSeconds: positiveInt.default(3600),
        scope: z.enum(['key', 'team', 'global']).default('team'),
        maxEntryBytes: positiveInt.default(1048576),
        lockWaitMs: nonNegInt.default(10000),
        redis: redisSchema.optional(),
      })
      .strict()
      .prefault({}),
    limits: z
      .object({
        defaults: z
          .object({
            rpm: limitValue.default(600),
            tpm: limitValue.default(1000000),
            maxConcurrent: limitValue.default(50),
          })
          .strict()
          .prefault({}),
        failMode: z.enum(['open', 'closed']).default('open'),
      })
      .strict()
      .prefault({}),
    metering: z
      .object({
        /** Off only for benchmarking: no usage records at all. */
        enabled: z.boolean().default(true),
        defaultOutputReservation: positiveInt.default(1024),
        bufferSize: positiveInt.default(100000),
        flushIntervalMs: positiveInt.default(250),
      })
      .strict()
      .prefault({}),
    metrics: z
      .object({
        enabled: z.boolean().default(true),
        path: z.string().startsWith('/').default('/metrics'),
        bearerToken: z.string().nullable().default(null),
        keyLabels: z.boolean().default(true),
        port: z.number().int().min(0).max(65535).nullable().default(null),
      })
      .strict()
      .prefault({}),
    logging: z
      .object({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
      })
      .strict()
      .prefault({}),
    keys: z.array(fileKeySchema).default([]),
  })
  .strict();

export type Config = z.output<typeof configSchema>;
export type UpstreamConfig = Config['upstreams'][number];
export type ModelConfig = Config['models'][number];
export type RedisConfig = z.output<typeof redisSchema>;
export type LimitsInput = z.infer<typeof limitsSchema>;
export type Budget = z.infer<typeof budgetSchema>;
