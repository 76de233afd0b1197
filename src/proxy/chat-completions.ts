import type { Context } from 'hono';
import type { CacheEntry } from '../cache/cache-store.js';
import { parseCacheControl, type ResponseCache } from '../cache/response-cache.js';
import { type GatewayError, invalidRequest } from '../errors/gateway-error.js';
import type { Limiter } from '../limits/limiter.js';
import { countPromptTokens } from '../metering/tokens.js';
import type { AppEnv } from '../server/env.js';
import { readBody } from '../server/read-body.js';
import type { Router, UpstreamResponse } from '../upstream/router.js';
import type { Upstream } from '../upstream/upstream.js';
import { type ChatRequest, checkOutputLimit, parseChatRequest, requestedOutput } from './chat-request.js';
import type { ModelIndex } from './model-index.js';
import { clientGone, type Exchange, relayJson, relayStream, sseHeaders, streamError } from './relay.js';
import { serveHit } from './serve-hit.js';
import { sinkFor } from './sink.js';
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

/** `POST /v1/chat/completions` and the Azure dialect's chat completions routes. */
export function chatCompletions(deps: ChatDeps) {
  const keepAliveMs = deps.keepAliveMs ?? 15_000;

  return async function chatCompletionsHandler(c: Context<AppEnv>): Promise<Response> {
    const trace = c.get('trace');
    const principal = c.get('principal');
    const req = parseChatRequest(await readBody(c, deps.bodyLimitBytes), c.req.header('content-type'));
    const name = c.req.param('deployment') ?? req.model;
    if (typeof name !== 'string' || name === '')
      throw invalidRequest('You must provide a model parameter.', 'model');
    const model = deps.models.resolveFor(name, principal.key);
    trace.model = model;
    checkOutputLimit(req, model);
    const stream = req.stream === true;
    trace.stream = stream;
    const promptTokens = memo(() => countPromptTokens(req.messages));
    if (stream) trace.promptEstimate = promptTokens;
    const x: Exchange = {
      c,
      sink: sinkFor(c),
      trace,
      req,
      capture: null,
      maxEntryBytes: deps.cache?.maxEntryBytes ?? 0,
    };
    const admit = async (hit: boolean): Promise<void> => {
      const admission = await deps.limiter.admit(principal, {
        model,
        promptTokens,
        outputTokens: (req.n ?? 1) * (requestedOutput(req) ?? deps.defaultOutputReservation),
        hit,
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
      return forward(deps, x, keepAliveMs);
    }
    const opened = await cache.open(cache.idFor(principal.key, model.id, req), control);
    if (opened.entry) return hit(x, opened.entry, admit);
    const flight = opened.flight;
    if (!flight.leader) {
      const entry = await flight.result;
      if (entry) return hit(x, entry, admit);
    }
    c.get('responseHeaders')['x-cache'] = 'MISS';
    let produced: CacheEntry | null = null;
    x.capture = (e) => {
      produced = e;
    };
    try {
      await admit(false);
      return await forward(deps, x, keepAliveMs);
    } finally {
      if (flight.leader) flight.finish(produced);
    }
  };
}

async function hit(
  x: Exchange,
  entry: CacheEntry,
  admit: (hit: boolean) => Promise<void>,
): Promise<Response> {
  x.trace.cacheHit = true;
  x.trace.usage = entry.usage;
  x.c.get('responseHeaders')['x-cache'] = 'HIT';
  await admit(true);
  return serveHit(x, entry);
}

/** Sends the request upstream (with retries) and relays the answer. */
async function forward(deps: ChatDeps, x: Exchange, keepAliveMs: number): Promise<Response> {
  const { sink, trace, req } = x;
  const stream = trace.stream;
  const abort = new AbortController();
  sink.onClientGone(() => abort.abort());
  // While a stream waits for its first byte, comments keep load balancers from cutting it.
  const keepAlive = stream
    ? setInterval(() => {
        if (!sink.headersSent) sink.writeHead(200, sseHeaders(x, null));
        sink.write(KEEP_ALIVE);
      }, keepAliveMs)
    : undefined;
  let res: UpstreamResponse;
  try {
    res = await deps.router.send(trace.model!, upstreamBody(req, trace.model!.id, stream), {
      stream,
      signal: abort.signal,
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

/** The body for one upstream: the client's fields, with that upstream's model and usage asked for. */
function upstreamBody(req: ChatRequest, modelId: string, stream: boolean): (u: Upstream) => string {
  const streamOptions = stream ? { ...req.stream_options, include_usage: true } : undefined;
  return (u) =>
    JSON.stringify(
      stream
        ? { ...req, model: u.modelFor(modelId), stream_options: streamOptions }
        : { ...req, model: u.modelFor(modelId) },
    );
}

function upstreamErrorOf(res: UpstreamResponse): Promise<GatewayError> {
  return upstreamClientError(res.status, res.body as AsyncIterable<Buffer>);
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
