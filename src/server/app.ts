import { randomUUID } from 'node:crypto';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';
import { type Context, Hono } from 'hono';
import { cors } from 'hono/cors';
import { type AdminEnv, adminAuth } from '../admin/admin-auth.js';
import { keyRoutes } from '../admin/keys-routes.js';
import { teamRoutes } from '../admin/teams-routes.js';
import { usageRoutes } from '../admin/usage-routes.js';
import { clientAuth } from '../auth/client-auth.js';
import { safeEqual } from '../auth/key-format.js';
import type { ResponseCache } from '../cache/response-cache.js';
import type { Config } from '../config/schema.js';
import { GatewayError } from '../errors/gateway-error.js';
import type { KeyAdmin } from '../keys/key-admin.js';
import type { KeyService } from '../keys/key-service.js';
import type { KeyStore } from '../keys/store.js';
import type { Limiter } from '../limits/limiter.js';
import { RequestTrace } from '../metering/record.js';
import type { UsageStore } from '../metering/usage-store.js';
import type { Metrics } from '../metrics/metrics.js';
import { chatCompletions } from '../proxy/chat-completions.js';
import type { ModelIndex } from '../proxy/model-index.js';
import { modelRoutes } from '../proxy/models-routes.js';
import { isStoreUnavailable } from '../store/redis.js';
import type { Router } from '../upstream/router.js';
import type { AppEnv } from './env.js';
import type { Logger } from './logger.js';
import type { Observer } from './observer.js';

/** Everything long-lived the app needs, built once at start-up (see deps.ts). */
export interface AppDeps {
  config: Config;
  logger: Logger;
  keys: KeyService;
  keyStore: KeyStore;
  keyAdmin: KeyAdmin;
  models: ModelIndex;
  router: Router;
  metrics: Metrics | null;
  observer: Observer;
  health: Health;
  usageStore: UsageStore;
  limiter: Limiter;
  cache: ResponseCache | null;
  /** Test hook: keep-alive interval for streams waiting on their first byte. */
  keepAliveMs?: number;
}

export interface Health {
  draining: boolean;
  /** False when a store the gateway cannot work without is down (failMode: closed). */
  ready(): boolean;
}

const SANE_REQUEST_ID = /^[\x21-\x7e]{1,128}$/;
/** Anything shaped like a tollgate client key (well-formed or not). */
const KEY_LIKE = /sk-tg-[0-9A-Za-z]{16}/;

/** Builds the HTTP app. Pure: no I/O happens until a request arrives. */
export function createApp(deps: AppDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  const { config, logger } = deps;

  // A request id that carries a credential is not adopted: it would be logged and echoed.
  const secrets = [
    config.admin.apiKey,
    config.metrics.bearerToken,
    ...config.upstreams.map((u) => u.apiKey),
  ].filter((s): s is string => typeof s === 'string' && s.length >= 8);
  const adoptable = (id: string): boolean =>
    SANE_REQUEST_ID.test(id) && !KEY_LIKE.test(id) && !secrets.some((s) => id.includes(s));
  app.use('*', async function requestId(c, next) {
    const given = c.req.header('x-request-id');
    const id = given !== undefined && adoptable(given) ? given : `req_${randomUUID().replaceAll('-', '')}`;
    c.set('requestId', id);
    c.set('startedAt', performance.now());
    c.set('responseHeaders', {});
    await next();
    // A proxied answer written straight to the socket carries it already (relay.ts); Hono's own
    // answers get it here (setting it before would build a web Headers object for every request).
    if (c.res !== RESPONSE_ALREADY_SENT) c.res.headers.set('x-request-id', id);
  });

  if (config.server.cors !== false) {
    app.use(
      '*',
      cors({
        origin: config.server.cors === true ? '*' : config.server.cors,
        exposeHeaders: ['x-request-id'],
      }),
    );
  }

  app.onError((err, c) => errorResponse(err, c, logger));
  app.notFound((c) =>
    errorResponse(
      new GatewayError('not_found', `Unknown path: ${c.req.method} ${c.req.path.slice(0, 200)}`),
      c,
      logger,
    ),
  );

  app.get('/healthz', (c) => c.json({ status: 'ok' }));
  app.get('/readyz', (c) => {
    if (deps.health.draining) return c.json({ status: 'draining' }, 503);
    if (!deps.health.ready()) return c.json({ status: 'store unavailable' }, 503);
    return c.json({ status: 'ready' });
  });

  if (deps.metrics && config.metrics.enabled && config.metrics.port === null) {
    app.get(config.metrics.path, metricsHandler(deps.metrics, config.metrics.bearerToken));
  }

  // Client API: authenticated, traced and observed (logs, metrics, metering) once per request.
  const observed = async (c: Context<AppEnv>, next: () => Promise<void>, route: string): Promise<void> => {
    const trace = new RequestTrace(route, c.get('startedAt'));
    c.set('trace', trace);
    deps.observer.begin(route);
    try {
      await next();
    } finally {
      if (!trace.status) trace.status = c.res.status;
      const p = c.get('principal') as AppEnv['Variables']['principal'] | undefined;
      deps.observer.finish(
        trace,
        p?.key ?? null,
        c.get('requestId'),
        c.req.header('x-stainless-retry-count'),
      );
    }
  };
  const auth = clientAuth(deps.keys);
  const chat = chatCompletions({
    bodyLimitBytes: config.server.bodyLimitBytes,
    models: deps.models,
    router: deps.router,
    limiter: deps.limiter,
    cache: deps.cache,
    defaultOutputReservation: config.metering.defaultOutputReservation,
    ...(deps.keepAliveMs !== undefined && { keepAliveMs: deps.keepAliveMs }),
  });
  for (const path of [
    '/v1/chat/completions',
    '/openai/deployments/:deployment/chat/completions',
    '/openai/v1/chat/completions',
  ]) {
    app.post(path, (c, next) => observed(c, next, 'chat_completions'), auth, chat);
    app.all(path, () => {
      throw new GatewayError('method_not_allowed', 'Use POST for chat completions.');
    });
  }
  // Model lists are authenticated /v1 answers too: they carry the key's rate-limit state.
  const limitHeaders = async (c: Context<AppEnv>, next: () => Promise<void>): Promise<void> => {
    const headers = await deps.limiter.peekHeaders(c.get('principal'));
    await next();
    for (const [k, v] of Object.entries(headers)) c.res.headers.set(k, v);
  };
  for (const path of ['/v1/models', '/v1/models/*']) app.use(path, auth, limitHeaders);
  app.route('/v1/models', modelRoutes(deps.models));
  app.get('/me', auth, async (c) => {
    const { key } = c.get('principal');
    const { limits, spend, remaining, team } = await deps.limiter.status(c.get('principal'));
    return c.json({
      id: key.id,
      name: key.name,
      team: key.team,
      role: key.role,
      limits,
      budget: key.budget,
      spend,
      remaining,
      teamLimits: team,
    });
  });

  // Admin API.
  const admin = new Hono<AdminEnv>();
  admin.use('*', adminAuth({ rootKey: config.admin.apiKey, keys: deps.keys }));
  admin.route(
    '/keys',
    keyRoutes({
      admin: deps.keyAdmin,
      // The route has loaded the key already; only its team is looked up here.
      status: async (key) => {
        const team = key.team === null ? null : await deps.keys.team(key.team);
        const { limits, spend, remaining, team: teamStatus } = await deps.limiter.status({ key, team });
        return { effectiveLimits: limits, spend, remaining, teamLimits: teamStatus };
      },
      onRevoked: (k) => deps.metrics?.forgetKey(k.name, k.team),
    }),
  );
  admin.route('/usage', usageRoutes(deps.usageStore));
  admin.route('/', teamRoutes({ admin: deps.keyAdmin, store: deps.keyStore }));
  app.route('/admin', admin as unknown as Hono<AppEnv>);

  return app;
}

function metricsHandler(metrics: Metrics, token: string | null) {
  return async function metricsRoute(c: Context): Promise<Response> {
    if (token !== null) {
      const got = c.req.header('authorization')?.replace(/^Bearer\s+/i, '') ?? '';
      if (!safeEqual(got, token))
        throw new GatewayError('invalid_api_key', 'The metrics endpoint needs its bearer token.');
    }
    return c.body(await metrics.registry.metrics(), 200, { 'content-type': metrics.registry.contentType });
  };
}

/** The one place that turns a thrown error into OpenAI's envelope. */
export function errorResponse(err: unknown, c: Context, logger: Logger): Response {
  const headers = (c.get('responseHeaders') as Record<string, string> | undefined) ?? {};
  if (err instanceof GatewayError) {
    return c.json(err.toJSON(), err.status as 400, { ...headers, ...err.headers });
  }
  if (isStoreUnavailable(err)) {
    logger.warn({ err: (err as Error).message, requestId: c.get('requestId') }, 'store unavailable');
    const e = new GatewayError(
      'service_unavailable',
      'A store the gateway needs is unavailable; please retry.',
    );
    return c.json(e.toJSON(), 503, headers);
  }
  logger.error({ err, requestId: c.get('requestId') }, 'unhandled error');
  const e = new GatewayError(
    'internal_error',
    `Internal error. Request id: ${String(c.get('requestId') ?? '')}`,
  );
  return c.json(e.toJSON(), 500, headers);
}
