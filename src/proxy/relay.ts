import type { IncomingHttpHeaders } from 'node:http';
import type { Context } from 'hono';
import { StreamAssembler } from '../cache/assemble.js';
import type { CacheEntry } from '../cache/cache-store.js';
import type { LiveFeed } from '../cache/live-feed.js';
import { GatewayError } from '../errors/gateway-error.js';
import type { RequestTrace } from '../metering/record.js';
import type { AppEnv } from '../server/env.js';
import type { UpstreamResponse } from '../upstream/router.js';
import { readStream } from '../util/read-stream.js';
import type { ChatRequest } from './chat-request.js';
import type { Sink } from './sink.js';
import { SseRelay } from './sse-relay.js';
import { extractUsage } from './usage.js';

/** One client exchange being answered: where to write and what to record. */
export interface Exchange {
  c: Context<AppEnv>;
  sink: Sink;
  trace: RequestTrace;
  req: ChatRequest;
  /** The request body as the client sent it. */
  raw: Buffer;
  /** Whether the complete answer is wanted for the cache (a leader's miss). */
  capture: boolean;
  /**
   * The complete answer, when captured and cacheable (200, whole, small enough). A field rather
   * than a callback: a per-request closure here kept whole requests alive across young-generation
   * collections, promoting ~8 KB a request to the old generation.
   */
  produced: CacheEntry | null;
  maxEntryBytes: number;
  /** A cache leader's live feed: waiters of the same miss follow the stream through it. */
  feed?: LiveFeed;
}

// Upstream headers never passed to clients: hop-by-hop, upstream rate limits and routing details.
const DROP = new Set([
  'connection',
  'keep-alive',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'proxy-authenticate',
  'proxy-connection',
  'content-length',
  'date',
  'server',
  'set-cookie',
  'x-request-id',
  'apim-request-id',
  'x-ms-region',
  'x-ms-client-request-id',
  'azureml-model-session',
  'strict-transport-security',
  'alt-svc',
]);
const DONE = Buffer.from('data: [DONE]\n\n');

/** The gateway's own headers: request id, timing, upstream name; records the overhead. */
export function gatewayHeaders(x: Exchange, upstream: IncomingHttpHeaders | null): Record<string, string> {
  const { trace } = x;
  const gateway = Math.max(0, performance.now() - trace.startedAt - trace.upstreamMs);
  trace.overheadMs = gateway;
  const h: Record<string, string> = {
    'x-request-id': x.c.get('requestId'),
    'server-timing': trace.cacheHit
      ? `gateway;dur=${gateway.toFixed(3)}, cache;desc=hit`
      : `gateway;dur=${gateway.toFixed(3)}, upstream;dur=${trace.upstreamMs.toFixed(3)}`,
  };
  if (trace.upstream) h['x-tollgate-upstream'] = trace.upstream;
  const upstreamId = upstream?.['x-request-id'] ?? upstream?.['apim-request-id'];
  if (typeof upstreamId === 'string') h['x-upstream-request-id'] = upstreamId;
  return Object.assign(h, x.c.get('responseHeaders'));
}

function passHeaders(upstream: IncomingHttpHeaders, into: Record<string, string | string[]>): void {
  for (const name in upstream) {
    if (DROP.has(name) || name.startsWith('x-ratelimit-')) continue;
    const v = upstream[name];
    if (v !== undefined) into[name] = v;
  }
}

export function sseHeaders(
  x: Exchange,
  upstream: IncomingHttpHeaders | null,
): Record<string, string | string[]> {
  const h: Record<string, string | string[]> = {};
  if (upstream) passHeaders(upstream, h);
  Object.assign(h, gatewayHeaders(x, upstream));
  h['content-type'] = 'text/event-stream; charset=utf-8';
  h['cache-control'] = 'no-cache';
  h['x-accel-buffering'] = 'no';
  return h;
}

export function jsonHeaders(
  x: Exchange,
  upstream: IncomingHttpHeaders | null,
  length: number,
): Record<string, string | string[]> {
  const h: Record<string, string | string[]> = {};
  if (upstream) passHeaders(upstream, h);
  else h['content-type'] = 'application/json';
  Object.assign(h, gatewayHeaders(x, upstream));
  h['content-length'] = String(length);
  return h;
}

/** Relays a non-streamed answer: read whole (it is small), check, write in one go. */
export async function relayJson(x: Exchange, res: UpstreamResponse): Promise<Response> {
  const { sink, trace } = x;
  let body: Buffer;
  try {
    body = await readStream(res.body);
  } catch (err) {
    // A client that left says nothing about the upstream's health: no verdict for the breaker.
    if (sink.clientGone) {
      res.settle(null);
      return clientGone(x);
    }
    res.settle(false);
    throw isTimeoutError(err)
      ? new GatewayError('upstream_timeout', 'The upstream did not finish the response in time.')
      : new GatewayError('upstream_error', 'The upstream connection failed during the response.');
  }
  trace.usage = extractUsage(body);
  // A valid completion has usage; only when it is missing is the body parsed, to vet it.
  if (trace.usage === null && !isJson(body)) {
    res.settle(false);
    throw new GatewayError('upstream_error', 'The upstream sent an invalid response.');
  }
  res.settle(true);
  trace.status = res.status;
  trace.ttftMs = performance.now() - trace.startedAt;
  sink.writeHead(res.status, jsonHeaders(x, res.headers, body.length));
  sink.end(body);
  if (x.capture && res.status === 200 && body.length <= x.maxEntryBytes) {
    x.produced = { createdAt: Date.now(), body, usage: trace.usage };
  }
  return sink.response();
}

/** Relays a stream event by event as it arrives; reads usage on the way; ends cleanly on any failure. */
export async function relayStream(x: Exchange, res: UpstreamResponse): Promise<Response> {
  const { sink, trace } = x;
  const relay = new SseRelay(x.req.stream_options?.include_usage === true);
  const assembler = x.capture ? new StreamAssembler() : null;
  const feed = x.feed;
  if (assembler || feed) {
    relay.onEvents = (part) => {
      assembler?.push(part.toString('utf8'));
      feed?.push(part);
    };
  }
  if (!sink.headersSent) sink.writeHead(200, sseHeaders(x, res.headers));
  trace.status = 200;
  try {
    for await (const chunk of res.body) {
      const out = relay.push(chunk as Buffer);
      if (relay.malformed) break;
      if (out.length > 0) {
        trace.ttftMs ??= performance.now() - trace.startedAt;
        sink.write(out);
      }
    }
    if (!relay.malformed) {
      const rest = relay.flush();
      if (rest.length) sink.write(rest);
    }
  } catch (err) {
    finish(trace, relay);
    if (sink.clientGone) {
      res.settle(null);
      return clientGone(x);
    }
    res.settle(false);
    return streamError(
      x,
      isTimeoutError(err)
        ? new GatewayError('upstream_timeout', 'The upstream stopped sending in time; the stream was cut.')
        : new GatewayError('upstream_error', 'The upstream connection broke during the stream.'),
    );
  }
  finish(trace, relay);
  if (relay.malformed || !relay.done) {
    // The client must not mistake a cut or garbled stream for a complete answer.
    res.settle(false);
    res.body.destroy();
    const why = relay.malformed
      ? 'The upstream sent an invalid stream event.'
      : 'The upstream ended the stream early.';
    return streamError(x, new GatewayError('upstream_error', why));
  }
  res.settle(true);
  sink.end();
  if (assembler?.ok && !relay.errorEvent && x.capture) {
    const body = Buffer.from(assembler.completion());
    if (body.length <= x.maxEntryBytes) x.produced = { createdAt: Date.now(), body, usage: trace.usage };
  }
  return sink.response();
}

function finish(trace: RequestTrace, relay: SseRelay): void {
  trace.usage = relay.usage;
  trace.relayedEvents = relay.events;
  if (relay.errorEvent) trace.status = 502;
}

/** An error after the stream started: an error event, then [DONE]. */
export function streamError(x: Exchange, err: unknown): Response {
  const e = err instanceof GatewayError ? err : new GatewayError('upstream_error', 'The upstream failed.');
  x.trace.status = e.status;
  x.sink.write(`data: ${JSON.stringify(e.toJSON())}\n\n`);
  x.sink.end(DONE);
  return x.sink.response();
}

export function clientGone(x: Exchange): Response {
  // 499: the client closed the request (nginx's convention), for logs and metrics only.
  x.trace.status = 499;
  return x.sink.response();
}

function isTimeoutError(err: unknown): boolean {
  const code = (err as { code?: string } | null)?.code;
  return code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_HEADERS_TIMEOUT';
}

function isJson(body: Buffer): boolean {
  try {
    JSON.parse(body.toString('utf8'));
    return true;
  } catch {
    return false;
  }
}
