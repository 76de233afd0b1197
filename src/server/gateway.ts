import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { setFlagsFromString } from 'node:v8';
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

/**
 * While allocation runs fast V8 lets the old generation grow to up to 4× what survived the last
 * full collection before collecting it: in the 5-minute soak at ~2,500 req/s RSS once climbed from
 * 220 to 330 MB over four minutes with ~60 MB live. The gateway caps that growth at 30 %. Full
 * collections used to be expensive here (a full collection every 300 ms at 30 %, ~15 % more CPU,
 * while every young collection promoted ~1 MB: see ChurnMap); with ~0.06 MB promoted per young
 * collection they run every few seconds under load, ~35 ms of incremental marking in 11 s at c32,
 * and keep the old generation within ~30 % of what is live. V8 reads the flag at every
 * collection, so setting it at start-up takes effect; a `node --heap-growing-percent=N` flag of
 * the operator's wins (see README, Memory).
 */
function boundHeapGrowth(): void {
  if (
    !process.execArgv.some(
      (a) => a.startsWith('--heap-growing-percent') || a.startsWith('--heap_growing_percent'),
    )
  ) {
    setFlagsFromString('--heap-growing-percent=30');
  }
}

/** Builds the runtime and app and starts listening; resolves once the port is bound. */
export async function startGateway(
  config: Config,
  logger: Logger,
  opts: StartOptions = {},
): Promise<RunningGateway> {
  boundHeapGrowth();
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
  // Closed after a poll phase of the event loop, not straight from the timer: connections the
  // kernel has completed meanwhile (the loop may have been busy) are accepted first, where a
  // close would have reset them with their request already sent.
  await new Promise((resolve) => setImmediate(resolve));
  // From here on every answer says `Connection: close`, so clients stop reusing connections and
  // their next request finds the listener closed (refused at connect: safe to retry elsewhere).
  sockets.stopKeepAlive();
  // http.Server's close() also destroys every idle keep-alive connection at once, racing a
  // client that is sending its next request on one right then: that step is skipped here, and
  // idle connections are closed below once they have stayed idle.
  server.closeIdleConnections = () => {};
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  delete (server as Partial<Server>).closeIdleConnections;
  logger.info('listener closed');
  // Connections with no request in progress are closed once they have stayed idle for a moment
  // (a busy client's next request arrives well within it, and is answered); sockets that never
  // sent a request too, which Node's own closeIdleConnections would miss.
  const idle = setInterval(() => sockets.destroyIdle(IDLE_CLOSE_MS), 50);
  sockets.destroyIdle(IDLE_CLOSE_MS);
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

/** How long a connection must have been idle before the drain closes it. */
const IDLE_CLOSE_MS = 250;

interface SocketTracker {
  /** Destroys connections with no request in progress for at least `minIdleMs`. */
  destroyIdle(minIdleMs: number): void;
  /** `Connection: close` on every answer not yet started, now and from now on. */
  stopKeepAlive(): void;
}

/** Follows the requests in progress on each connection, so idle ones can be closed on drain. */
function trackSockets(server: Server): SocketTracker {
  // The answer in progress is kept on its connection's entry rather than in a set of its own:
  // a set that gains and loses an entry per request links its successive hash tables (see
  // ChurnMap), which kept finished requests alive across young-generation collections.
  // Pipelined requests on one connection: the latest is the one marked; its `close` ends the
  // connection after the earlier answers have gone out.
  const sockets = new Map<Socket, { active: number; idleSince: number; current: ServerResponse | null }>();
  let keepAlive = true;
  server.on('connection', (socket: Socket) => {
    sockets.set(socket, { active: 0, idleSince: performance.now(), current: null });
    socket.once('close', () => sockets.delete(socket));
  });
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const state = sockets.get(req.socket);
    if (!keepAlive) res.setHeader('connection', 'close');
    if (!state) return;
    state.active++;
    state.current = res;
    res.once('close', () => {
      if (state.current === res) state.current = null;
      if (--state.active <= 0) {
        state.active = 0;
        state.idleSince = performance.now();
      }
    });
  });
  return {
    destroyIdle(minIdleMs) {
      const now = performance.now();
      const idle: [Socket, number][] = [];
      for (const [socket, state] of sockets) {
        if (state.active === 0 && now - state.idleSince >= minIdleMs) idle.push([socket, state.idleSince]);
      }
      if (idle.length === 0) return;
      // Destroyed only after the next poll phase: a request already received by the kernel but
      // not read yet (the loop was busy) is read and started first, and its socket spared.
      setImmediate(() => {
        for (const [socket, since] of idle) {
          const state = sockets.get(socket);
          if (state && state.active === 0 && state.idleSince === since) socket.destroy();
        }
      });
    },
    stopKeepAlive() {
      keepAlive = false;
      for (const state of sockets.values()) {
        if (state.current && !state.current.headersSent) state.current.setHeader('connection', 'close');
      }
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
