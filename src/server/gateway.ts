import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { createAdaptorServer } from '@hono/node-server';
import type { Config } from '../config/schema.js';
import { waitReady } from '../store/redis.js';
import { createApp } from './app.js';
import { buildRuntime, type Runtime } from './deps.js';
import type { Logger } from './logger.js';

export interface RunningGateway {
  url: string;
  port: number;
  runtime: Runtime;
  /** Drains and stops (SPEC section 10): readiness off, drain delay, close, finish in-flight work. */
  shutdown(): Promise<void>;
}

export interface StartOptions {
  /** Overrides for tests: faster keep-alive comments, shorter drain. */
  keepAliveMs?: number;
}

/** Builds the runtime and app and starts listening; resolves once the port is bound. */
export async function startGateway(
  config: Config,
  logger: Logger,
  opts: StartOptions = {},
): Promise<RunningGateway> {
  const runtime = buildRuntime(config, logger);
  if (runtime.redis && !(await waitReady(runtime.redis, 5000))) {
    logger.warn('Redis is not reachable yet: starting anyway, it is picked up when it comes back');
  }
  const app = createApp({
    ...runtime,
    ...(opts.keepAliveMs !== undefined && { keepAliveMs: opts.keepAliveMs }),
  });
  const server = createAdaptorServer({ fetch: app.fetch, hostname: config.server.host }) as Server;
  server.keepAliveTimeout = config.server.keepAliveTimeoutSeconds * 1000;
  server.headersTimeout = config.server.keepAliveTimeoutSeconds * 1000 + 1000;
  // Streams may legitimately run for many minutes; the gateway's own timeouts govern them.
  server.requestTimeout = 0;
  const sockets = trackSockets(server);
  await listen(server, config.server.port, config.server.host);
  const metricsServer = await startMetricsListener(config, runtime);
  const port = (server.address() as AddressInfo).port;
  const host =
    config.server.host === '0.0.0.0' || config.server.host === '::' ? '127.0.0.1' : config.server.host;
  let stopping: Promise<void> | null = null;
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    runtime,
    shutdown: () => {
      stopping ??= drain(server, sockets, runtime, config, logger).then(() => {
        metricsServer?.close();
      });
      return stopping;
    },
  };
}

async function drain(
  server: Server,
  sockets: SocketTracker,
  runtime: Runtime,
  config: Config,
  logger: Logger,
): Promise<void> {
  runtime.health.draining = true;
  logger.info({ drainDelaySeconds: config.server.drainDelaySeconds }, 'draining: readiness is off');
  await sleep(config.server.drainDelaySeconds * 1000);
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  // Connections that finish their last request become idle; close them as they do. Node's own
  // closeIdleConnections misses sockets that never sent a request, so those are closed here too.
  const closeIdle = (): void => {
    server.closeIdleConnections();
    sockets.destroyIdle();
  };
  const idle = setInterval(closeIdle, 50);
  closeIdle();
  const grace = sleep(config.server.shutdownGraceSeconds * 1000).then(() => 'timeout' as const);
  const outcome = await Promise.race([closed.then(() => 'done' as const), grace]);
  clearInterval(idle);
  if (outcome === 'timeout') {
    logger.warn('shutdown grace period over: closing remaining connections');
    server.closeAllConnections();
    await closed;
  }
  await runtime.usage.flush().catch((err: Error) => logger.error({ err: err.message }, 'usage flush failed'));
  await runtime.close();
  logger.info('stopped');
}

async function startMetricsListener(config: Config, runtime: Runtime): Promise<Server | null> {
  if (!runtime.metrics || !config.metrics.enabled || config.metrics.port === null) return null;
  const { Hono } = await import('hono');
  const metrics = runtime.metrics;
  const app = new Hono();
  app.get(config.metrics.path, async (c) =>
    c.body(await metrics.registry.metrics(), 200, { 'content-type': metrics.registry.contentType }),
  );
  const server = createAdaptorServer({ fetch: app.fetch }) as Server;
  await listen(server, config.metrics.port, config.server.host);
  return server;
}

interface SocketTracker {
  destroyIdle(): void;
}

/** Counts the requests in progress on each connection, so idle ones can be closed on drain. */
function trackSockets(server: Server): SocketTracker {
  const active = new Map<Socket, number>();
  server.on('connection', (socket: Socket) => {
    active.set(socket, 0);
    socket.once('close', () => active.delete(socket));
  });
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    active.set(socket, (active.get(socket) ?? 0) + 1);
    res.once('close', () => {
      if (active.has(socket)) active.set(socket, Math.max(0, (active.get(socket) ?? 1) - 1));
    });
  });
  return {
    destroyIdle() {
      for (const [socket, n] of active) if (n === 0) socket.destroy();
    },
  };
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
