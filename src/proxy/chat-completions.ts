import type { IncomingHttpHeaders } from 'node:http';
import type { Context } from 'hono';
import { GatewayError, invalidRequest } from '../errors/gateway-error.js';
import type { Limiter } from '../limits/limiter.js';
import { countPromptTokens } from '../metering/tokens.js';
import type { AppEnv } from '../server/env.js';
import { readBody } from '../server/read-body.js';
import type { Router, UpstreamResponse } from '../upstream/router.js';
import type { Upstream } from '../upstream/upstream.js';
import { type ChatRequest, checkOutputLimit, parseChatRequest, requestedOutput } from './chat-request.js';
import type { ModelIndex } from './model-index.js';
import { type Sink, sinkFor } from './sink.js';
import { SseRelay } from './sse-relay.js';
import { upstreamClientError } from './upstream-error.js';
import { extractUsage } from './usage.js';

export interface ChatDeps {
  bodyLimitBytes: number;
  limiter: Limiter;
  defaultOutputReservation: number;
  models: ModelIndex;
  router: Router;
  /** Interval of `: keep-alive` comments while a stream waits for its first byte. */
  keepAliveMs?: number;
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
  'cf-ray',
  'cf-cache-status',
]);
const KEEP_ALIVE = Buffer.from(': keep-alive\n\n');
const DONE = Buffer.from('data: [DONE]\n\n');

/** `POST /v1/chat/completions` and the Azure dialect's chat completions routes. */
export function chatCompletions(deps: ChatDeps) {
  const keepAliveMs = deps.keepAliveMs ?? 15_000;

  return async function chatCompletionsHandler(c: Context<AppEnv>): Promise<Response> {
    const trace = c.var.trace;
    const { key } = c.var.principal;
    const raw = await readBody(c, deps.bodyLimitBytes);
    const req = parseChatRequest(raw, c.req.header('content-type'));
    const name = c.req.param('deployment') ?? req.model;
    if (typeof name !== 'string' || name === '')
      throw invalidRequest('You must provide a model parameter.', 'model');
    const model = deps.models.resolveFor(name, key);
    trace.model = model;
    checkOutputLimit(req, model);
    const stream = req.stream === true;
    trace.stream = stream;
    const promptTokens = memo(() => countPromptTokens(req.messages));
    if (stream) trace.promptEstimate = promptTokens;

    const admission = await deps.limiter.admit(c.var.principal, {
      model,
      promptTokens,
      outputTokens: (req.n ?? 1) * (requestedOutput(req) ?? deps.defaultOutputReservation),
      hit: false,
    });
    trace.admission = admission;
    Object.assign(c.var.responseHeaders, admission.headers);

    const sink = sinkFor(c);
    const abort = new AbortController();
    sink.onClientGone(() => abort.abort());
    const bodyFor = upstreamBody(req, model.id, stream);

    // While a stream waits for its first byte, comments keep load balancers from cutting it.
    let keepAlive: NodeJS.Timeout | undefined;
    if (stream) {
      keepAlive = setInterval(() => {
        if (!sink.headersSent) sink.writeHead(200, sseHeaders(c, trace, null, {}));
        sink.write(KEEP_ALIVE);
      }, keepAliveMs);
    }
    let res: UpstreamResponse;
    try {
      res = await deps.router.send(model, bodyFor, { stream, signal: abort.signal });
    } catch (err) {
      clearInterval(keepAlive);
      if (sink.clientGone) return clientGone(sink, trace);
      if (!sink.headersSent) throw err;
      return streamError(sink, trace, err);
    }
    clearInterval(keepAlive);
    trace.upstream = res.upstream.name;
    trace.upstreamMs = res.upstreamMs;
    if (res.status >= 400) throw await upstreamErrorOf(res);
    return stream ? relayStream(c, sink, trace, res, req) : relayJson(c, sink, trace, res);
  };
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

function gatewayHeaders(
  c: Context<AppEnv>,
  trace: { startedAt: number; upstreamMs: number; overheadMs: number | null; upstream: string | null },
  upstream: IncomingHttpHeaders | null,
): Record<string, string> {
  const total = performance.now() - trace.startedAt;
  const gateway = Math.max(0, total - trace.upstreamMs);
  trace.overheadMs = gateway;
  const h: Record<string, string> = {
    'x-request-id': c.var.requestId,
    'server-timing': `gateway;dur=${gateway.toFixed(3)}, upstream;dur=${trace.upstreamMs.toFixed(3)}`,
  };
  if (trace.upstream) h['x-tollgate-upstream'] = trace.upstream;
  const upstreamId = upstream?.['x-request-id'] ?? upstream?.['apim-request-id'];
  if (typeof upstreamId === 'string') h['x-upstream-request-id'] = upstreamId;
  return h;
}

function passHeaders(upstream: IncomingHttpHeaders, into: Record<string, string | string[]>): void {
  for (const name in upstream) {
    if (DROP.has(name) || name.startsWith('x-ratelimit-')) continue;
    const v = upstream[name];
    if (v !== undefined) into[name] = v;
  }
}

function sseHeaders(
  c: Context<AppEnv>,
  trace: AppEnv['Variables']['trace'],
  upstream: IncomingHttpHeaders | null,
  extra: Record<string, string>,
): Record<string, string | string[]> {
  const h: Record<string, string | string[]> = {};
  if (upstream) passHeaders(upstream, h);
  Object.assign(h, extra, gatewayHeaders(c, trace, upstream), c.var.responseHeaders);
  h['content-type'] = 'text/event-stream; charset=utf-8';
  h['cache-control'] = 'no-cache';
  h['x-accel-buffering'] = 'no';
  return h;
}

async function relayJson(
  c: Context<AppEnv>,
  sink: Sink,
  trace: AppEnv['Variables']['trace'],
  res: UpstreamResponse,
): Promise<Response> {
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of res.body) chunks.push(chunk as Buffer);
  } catch (err) {
    res.settle(false);
    if (sink.clientGone) return clientGone(sink, trace);
    throw isTimeoutError(err)
      ? new GatewayError('upstream_timeout', 'The upstream did not finish the response in time.')
      : new GatewayError('upstream_error', 'The upstream connection failed during the response.');
  }
  res.settle(true);
  const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
  trace.usage = extractUsage(body);
  trace.status = res.status;
  trace.ttftMs = performance.now() - trace.startedAt;
  const headers: Record<string, string | string[]> = {};
  passHeaders(res.headers, headers);
  Object.assign(headers, gatewayHeaders(c, trace, res.headers), c.var.responseHeaders);
  headers['content-length'] = String(body.length);
  sink.writeHead(res.status, headers);
  sink.end(body);
  return sink.response();
}

async function relayStream(
  c: Context<AppEnv>,
  sink: Sink,
  trace: AppEnv['Variables']['trace'],
  res: UpstreamResponse,
  req: ChatRequest,
): Promise<Response> {
  const relay = new SseRelay(req.stream_options?.include_usage === true);
  if (!sink.headersSent) sink.writeHead(200, sseHeaders(c, trace, res.headers, {}));
  trace.status = 200;
  try {
    for await (const chunk of res.body) {
      const out = relay.push(chunk as Buffer);
      if (out.length > 0) {
        trace.ttftMs ??= performance.now() - trace.startedAt;
        sink.write(out);
      }
    }
    const rest = relay.flush();
    if (rest.length) sink.write(rest);
  } catch (err) {
    finishRelay(trace, relay);
    if (sink.clientGone) {
      res.settle(true);
      return clientGone(sink, trace);
    }
    res.settle(false);
    return streamError(
      sink,
      trace,
      isTimeoutError(err)
        ? new GatewayError('upstream_timeout', 'The upstream stopped sending in time; the stream was cut.')
        : new GatewayError('upstream_error', 'The upstream connection broke during the stream.'),
    );
  }
  finishRelay(trace, relay);
  if (!relay.done) {
    // The upstream closed without [DONE]: the client must not mistake this for a complete answer.
    res.settle(false);
    return streamError(
      sink,
      trace,
      new GatewayError('upstream_error', 'The upstream ended the stream early.'),
    );
  }
  res.settle(true);
  sink.end();
  return sink.response();
}

function finishRelay(trace: AppEnv['Variables']['trace'], relay: SseRelay): void {
  trace.usage = relay.usage;
  trace.relayedEvents = relay.events;
  if (relay.errorEvent) trace.status = 502;
}

/** An error after the stream started: an error event, then [DONE]. */
function streamError(sink: Sink, trace: AppEnv['Variables']['trace'], err: unknown): Response {
  const e = err instanceof GatewayError ? err : new GatewayError('upstream_error', 'The upstream failed.');
  trace.status = e.status;
  sink.write(`data: ${JSON.stringify(e.toJSON())}\n\n`);
  sink.end(DONE);
  return sink.response();
}

function clientGone(sink: Sink, trace: AppEnv['Variables']['trace']): Response {
  // 499: the client closed the request (nginx's convention), for logs and metrics only.
  trace.status = 499;
  return sink.response();
}

function isTimeoutError(err: unknown): boolean {
  const code = (err as { code?: string } | null)?.code;
  return code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_HEADERS_TIMEOUT';
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
