import type { Context } from 'hono';
import type { CacheEntry } from '../cache/cache-store.js';
import type { LiveFeed } from '../cache/live-feed.js';
import { type Flight, parseCacheControl, type ResponseCache } from '../cache/response-cache.js';
import type { ModelConfig } from '../config/schema.js';
import { GatewayError, invalidRequest } from '../errors/gateway-error.js';
import type { Limiter } from '../limits/limiter.js';
import { countPromptTokens } from '../metering/tokens.js';
import type { AppEnv } from '../server/env.js';
import { readBody } from '../server/read-body.js';
import { Cancel } from '../upstream/cancel.js';
import type { Router, UpstreamResponse } from '../upstream/router.js';
import type { Upstream } from '../upstream/upstream.js';
import { type ChatRequest, checkOutputLimit, parseChatRequest, requestedOutput } from './chat-request.js';
import type { ModelIndex } from './model-index.js';
import { clientGone, type Exchange, relayJson, relayStream, sseHeaders, streamError } from './relay.js';
import { serveHit } from './serve-hit.js';
import { sinkFor } from './sink.js';
import { SseRelay } from './sse-relay.js';
import { upstreamClientError } from './upstream-error.js';

export interface ChatDeps {
  bodyLimitBytes: number;
  models: ModelIndex;
  router: Router;
  limiter: Limiter;
  cache: ResponseCache | null;
  defaultOutputReservation: number;
  /** Interval of `: keep-alive` comments while a stream waits for its first byte. */
  keepAliveMs?: number;
}

const KEEP_ALIVE = Buffer.from(': keep-alive\n\n');

type LeaderFlight = Extract<Flight, { leader: true }>;

/** `POST /v1/chat/completions` and the Azure dialect's chat completions routes. */
export function chatCompletions(deps: ChatDeps) {
  const keepAliveMs = deps.keepAliveMs ?? 15_000;

  return async function chatCompletionsHandler(c: Context<AppEnv>): Promise<Response> {
    const trace = c.get('trace');
    const principal = c.get('principal');
    let req: ChatRequest;
    let model: ModelConfig;
    let raw: Buffer;
    try {
      raw = await readBody(c, deps.bodyLimitBytes);
      req = parseChatRequest(raw, c.req.header('content-type'));
      const name = c.req.param('deployment') ?? req.model;
      if (typeof name !== 'string' || name === '')
        throw invalidRequest('You must provide a model parameter.', 'model');
      model = deps.models.resolveFor(name, principal.key);
      trace.model = model;
      checkOutputLimit(req, model);
    } catch (err) {
      // Refused before admission: the answer still tells the client where its limits stand.
      Object.assign(c.get('responseHeaders'), await deps.limiter.peekHeaders(principal));
      throw err;
    }
    const stream = req.stream === true;
    trace.stream = stream;
    const promptTokens = memo(() => countPromptTokens(req.messages));
    if (stream) trace.promptEstimate = promptTokens;
    const x: Exchange = {
      c,
      sink: sinkFor(c),
      trace,
      req,
      raw,
      capture: false,
      produced: null,
      maxEntryBytes: deps.cache?.maxEntryBytes ?? 0,
    };
    const admit = async (hit: boolean, instant = false): Promise<void> => {
      const admission = await deps.limiter.admit(principal, {
        model,
        promptTokens,
        outputTokens: (req.n ?? 1) * (requestedOutput(req) ?? deps.defaultOutputReservation),
        hit,
        instant,
      });
      trace.admission = admission;
      Object.assign(c.get('responseHeaders'), admission.headers);
    };

    // Cache: looked up after authentication and before admission; a hit counts one request only.
    const cache = deps.cache;
    const control = parseCacheControl(c.req.header('cache-control'));
    if (!cache || control.noStore) {
      cache?.countBypass();
      c.get('responseHeaders')['x-cache'] = 'BYPASS';
      await admit(false);
      return forward(deps, x, keepAliveMs, null);
    }
    const id = cache.idFor(principal.key, model.id, req);
    const near = cache.nearHit(id, control);
    if (near) {
      // Served from memory at once: counted against the limits, holding no concurrency slot.
      await admit(true, true);
      return hit(x, near);
    }
    // The lookup and a miss's admission leave together, so they cost one round trip (on a
    // single Redis server one script call: the lookup rides along with the admission). Should
    // it be a hit after all, settlement refunds the tokens the admission reserved.
    const [opened, refusal] = await Promise.all([
      cache.open(id, control),
      admit(false).then(
        () => null,
        (err: unknown) => err,
      ),
    ]);
    // A hit needs no tokens and no budget: refused for those alone, it is admitted as a hit.
    const admitHit = async (): Promise<void> => {
      if (refusal === null) return;
      if (
        refusal instanceof GatewayError &&
        (refusal.type === 'tokens' || refusal.code === 'insufficient_quota')
      ) {
        return admit(true);
      }
      throw refusal;
    };
    if (opened.entry) {
      await admitHit();
      return hit(x, opened.entry);
    }
    const flight = opened.flight;
    if (!flight.leader) {
      const leave = once(flight.leave);
      try {
        // A stream may follow the leader's stream live; anything else waits for the entry.
        const feed = flight.feed;
        if (stream && feed) {
          const live = await Promise.race([feed.started.then(() => true), flight.result.then(() => false)]);
          if (live) {
            await admitHit();
            return await followLive(x, feed, flight.result, leave);
          }
        }
        const entry = await flight.result;
        if (entry) {
          await admitHit();
          return hit(x, entry);
        }
      } finally {
        leave();
      }
    }
    c.get('responseHeaders')['x-cache'] = 'MISS';
    // Only a leader's answer goes to the cache; the others that got here forward on their own.
    x.capture = flight.leader;
    try {
      if (refusal !== null) throw refusal;
      return await forward(deps, x, keepAliveMs, flight.leader ? flight : null);
    } finally {
      if (flight.leader) flight.finish(x.produced);
    }
  };
}

/** Serves an admitted request from a cache entry. */
function hit(x: Exchange, entry: CacheEntry): Response {
  x.trace.cacheHit = true;
  x.trace.usage = entry.usage;
  x.c.get('responseHeaders')['x-cache'] = 'HIT';
  return serveHit(x, entry);
}

/**
 * Sends the request upstream (with retries) and relays the answer. A cache leader's upstream
 * request outlives its own client while others follow it, and is aborted when the last leaves.
 */
async function forward(
  deps: ChatDeps,
  x: Exchange,
  keepAliveMs: number,
  flight: LeaderFlight | null,
): Promise<Response> {
  const { sink, trace, req, raw } = x;
  const stream = trace.stream;
  const abort = new Cancel();
  if (flight) {
    x.feed = flight.feed;
    flight.onAbandoned(() => abort.abort());
    sink.onClientGone(once(flight.leave));
  } else {
    sink.onClientGone(() => abort.abort());
  }
  // While a stream waits for its first byte, comments keep load balancers from cutting it.
  const keepAlive = stream
    ? setInterval(() => {
        if (!sink.headersSent) sink.writeHead(200, sseHeaders(x, null));
        sink.write(KEEP_ALIVE);
      }, keepAliveMs)
    : undefined;
  let res: UpstreamResponse;
  try {
    res = await deps.router.send(trace.model!, upstreamBody(req, raw, trace.model!.id, stream), {
      stream,
      signal: abort,
    });
  } catch (err) {
    if (sink.clientGone) return clientGone(x);
    if (!sink.headersSent) throw err;
    return streamError(x, err);
  } finally {
    clearInterval(keepAlive);
  }
  trace.upstream = res.upstream.name;
  trace.upstreamMs = res.upstreamMs;
  if (res.status >= 400) {
    const err = await upstreamErrorOf(res);
    if (!sink.headersSent) throw err;
    return streamError(x, err);
  }
  return stream ? relayStream(x, res) : relayJson(x, res);
}

/**
 * The body for one upstream: the client's fields, with that upstream's model and usage asked for.
 * A JSON request that already names the upstream's model goes out as the client's own bytes.
 */
function upstreamBody(
  req: ChatRequest,
  raw: Buffer,
  modelId: string,
  stream: boolean,
): (u: Upstream) => string | Buffer {
  const streamOptions = stream ? { ...req.stream_options, include_usage: true } : undefined;
  return (u) => {
    const model = u.modelFor(modelId);
    if (!stream && req.model === model) return raw;
    return JSON.stringify(stream ? { ...req, model, stream_options: streamOptions } : { ...req, model });
  };
}

function upstreamErrorOf(res: UpstreamResponse): Promise<GatewayError> {
  return upstreamClientError(res.status, res.body as AsyncIterable<Buffer>);
}

/** Serves a stream by following a leader's stream of the same miss as it arrives. */
async function followLive(
  x: Exchange,
  feed: LiveFeed,
  result: Promise<CacheEntry | null>,
  leave: () => void,
): Promise<Response> {
  const { sink, trace } = x;
  trace.cacheHit = true;
  x.c.get('responseHeaders')['x-cache'] = 'HIT';
  x.c.get('responseHeaders')['age'] = '0';
  trace.status = 200;
  sink.writeHead(200, sseHeaders(x, null));
  const relay = new SseRelay(x.req.stream_options?.include_usage === true);
  return new Promise<Response>((resolve) => {
    let unsubscribe = (): void => {};
    sink.onClientGone(() => {
      unsubscribe();
      leave();
      resolve(clientGone(x));
    });
    unsubscribe = feed.follow((part) => {
      if (part) {
        const out = relay.push(part);
        if (out.length > 0) {
          trace.ttftMs ??= performance.now() - trace.startedAt;
          sink.write(out);
        }
        return;
      }
      void result.then((entry) => {
        leave();
        trace.usage = entry?.usage ?? relay.usage;
        if (sink.clientGone) return;
        if (entry && relay.done) {
          sink.end();
          resolve(sink.response());
        } else {
          resolve(streamError(x, new GatewayError('upstream_error', 'The upstream stream broke.')));
        }
      });
    });
  });
}

function once(f: () => void): () => void {
  let called = false;
  return () => {
    if (!called) {
      called = true;
      f();
    }
  };
}

/** Computes once, on first use. */
function memo<T>(f: () => T): () => T {
  let done = false;
  let value: T;
  return () => {
    if (!done) {
      value = f();
      done = true;
    }
    return value;
  };
}
