import { MemoryCacheStore, RedisCacheStore } from '../cache/cache-store.js';
import { ResponseCache } from '../cache/response-cache.js';
import type { Config } from '../config/schema.js';
import { KeyAdmin } from '../keys/key-admin.js';
import { KeyService } from '../keys/key-service.js';
import { MemoryKeyStore } from '../keys/memory-store.js';
import { RedisKeyStore } from '../keys/redis-store.js';
import type { KeyStore } from '../keys/store.js';
import type { KeyRecord } from '../keys/types.js';
import { Limiter } from '../limits/limiter.js';
import { MemoryLimitStore } from '../limits/memory-limit-store.js';
import { RedisLimitStore } from '../limits/redis-limit-store.js';
import { RedisUsageStore } from '../metering/redis-usage-store.js';
import { warmUpTokenizer } from '../metering/tokens.js';
import { noUsageSink } from '../metering/usage-sink.js';
import { MemoryUsageStore, type UsageStore } from '../metering/usage-store.js';
import { UsageWriter } from '../metering/usage-writer.js';
import { Metrics } from '../metrics/metrics.js';
import { ModelIndex } from '../proxy/model-index.js';
import { createRedis, type RedisClient } from '../store/redis.js';
import { Router } from '../upstream/router.js';
import { createUpstream, type Upstream } from '../upstream/upstream.js';
import type { AppDeps, Health } from './app.js';
import type { Logger } from './logger.js';
import { Observer } from './observer.js';

export interface Runtime extends AppDeps {
  redis: RedisClient | null;
  usage: UsageWriter;
  /** Releases connections and timers; call after the server has stopped. */
  close(): Promise<void>;
}

/** Builds every long-lived part of the gateway from its configuration, once. */
export function buildRuntime(config: Config, logger: Logger): Runtime {
  const redis =
    config.redis?.url || config.redis?.cluster || config.redis?.sentinel ? createRedis(config.redis) : null;
  const subscriber = redis && config.redis ? createRedis(config.redis) : null;
  const prefix = config.redis?.keyPrefix ?? 'tollgate:';
  for (const [name, client] of [
    ['redis', redis],
    ['redis-subscriber', subscriber],
  ] as const) {
    client?.on('error', (err: Error) => logger.warn({ client: name, err: err.message }, 'redis error'));
  }
  const keyStore: KeyStore =
    redis && subscriber ? new RedisKeyStore(redis, subscriber, prefix) : new MemoryKeyStore();
  const keys = new KeyService(
    keyStore,
    fileKeys(config),
    Date.now,
    redis ? (config.redis?.commandTimeoutMs ?? 100) : null,
  );
  const metrics = config.metrics.enabled ? new Metrics(config.metrics.keyLabels) : null;
  const upstreams = new Map<string, Upstream>();
  for (const u of config.upstreams) upstreams.set(u.name, createUpstream(u, config.routing.timeouts));
  const router = new Router(upstreams, config.models, config.routing, {
    retry: (upstream, reason) => metrics?.upstreamRetries.inc({ upstream, reason }),
    upstreamResult: (upstream, model, status, seconds) => {
      metrics?.upstreamRequestsOf.get(upstream, status).inc();
      metrics?.upstreamDurationOf.get(upstream, model, status).observe(seconds);
    },
    circuit: (upstream, state) => metrics?.circuitState.set({ upstream }, state),
  });
  for (const u of upstreams.keys()) metrics?.circuitState.set({ upstream: u }, 0);
  const usageStore: UsageStore = redis ? new RedisUsageStore(redis, prefix) : new MemoryUsageStore();
  const usage = new UsageWriter(usageStore, {
    bufferSize: config.metering.bufferSize,
    flushIntervalMs: config.metering.flushIntervalMs,
    onDropped: (n) => metrics?.usageDropped.inc(n),
    onError: (err) => {
      metrics?.storeErrors.inc({ store: 'usage', op: 'write' });
      logger.warn({ err: err.message }, 'usage write failed; will retry');
    },
  });
  const limiter = new Limiter(redis ? new RedisLimitStore(redis, prefix) : null, new MemoryLimitStore(), {
    defaults: config.limits.defaults,
    failMode: config.limits.failMode,
    deadlineMs: config.redis?.commandTimeoutMs ?? 100,
    metrics,
    logger,
  });
  const cacheRedis = config.cache.redis ? createRedis(config.cache.redis) : redis;
  const cache = config.cache.enabled
    ? new ResponseCache(
        cacheRedis
          ? new RedisCacheStore(cacheRedis, config.cache.redis?.keyPrefix ?? prefix)
          : new MemoryCacheStore(),
        config.cache,
        config.redis?.commandTimeoutMs ?? 100,
        metrics,
        cacheRedis !== null,
      )
    : null;
  warmUpTokenizer();
  const health: Health = {
    draining: false,
    ready: () => redis === null || config.limits.failMode === 'open' || redis.status === 'ready',
  };
  return {
    config,
    logger,
    keys,
    keyStore,
    keyAdmin: new KeyAdmin(keyStore),
    models: new ModelIndex(config.models),
    router,
    metrics,
    observer: new Observer(logger, metrics, config.metering.enabled ? usage : noUsageSink),
    health,
    redis,
    usage,
    usageStore,
    limiter,
    cache,
    async close() {
      await limiter.close();
      await cache?.flush();
      await usage.close();
      await Promise.allSettled([...upstreams.values()].map((u) => u.pool.close()));
      await keyStore.close();
      for (const c of [subscriber, redis, cacheRedis === redis ? null : cacheRedis]) {
        if (c) await c.quit().catch(() => c.disconnect());
      }
    },
  };
}

/** Keys declared in the config file: hash only, read-only through the admin API. */
function fileKeys(config: Config): KeyRecord[] {
  const at = new Date(0).toISOString();
  return config.keys.map((k) => ({
    id: `key_cfg_${k.name}`,
    name: k.name,
    team: k.team,
    role: k.role,
    prefix: 'sk-tg-',
    limits: k.limits ?? {},
    budget: k.budget ?? null,
    models: k.models ?? null,
    expiresAt: null,
    createdAt: at,
    updatedAt: at,
    disabled: false,
    metadata: {},
    secrets: [{ sha256: k.sha256, validUntil: null }],
    fromConfig: true,
  }));
}
