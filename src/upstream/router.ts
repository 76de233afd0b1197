import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import { errors as undiciErrors } from 'undici';
import type { Config, ModelConfig } from '../config/schema.js';
import { GatewayError } from '../errors/gateway-error.js';
import { Cancel } from './cancel.js';
import { CircuitBreaker, type CircuitStateValue, type Permit } from './circuit-breaker.js';
import type { Upstream } from './upstream.js';

export interface UpstreamResponse {
  upstream: Upstream;
  status: number;
  headers: IncomingHttpHeaders;
  body: Dispatcher.ResponseData['body'];
  /** Milliseconds from sending to the response headers. */
  upstreamMs: number;
  /**
   * Reports the attempt's final outcome to the breaker: true (success), false (a failure after
   * the first byte) or null (no verdict, e.g. the client left). Only the first report counts.
   */
  settle(ok: boolean | null): void;
}

export interface RouterEvents {
  retry(upstream: string, reason: string): void;
  upstreamResult(upstream: string, model: string, status: string, seconds: number): void;
  circuit(upstream: string, state: CircuitStateValue): void;
}

export type RetryReason =
  | 'connect_error'
  | 'timeout'
  | 'status_429'
  | 'status_5xx'
  | 'status_auth'
  | 'circuit_open'
  | 'empty_stream';

interface Candidate {
  upstream: Upstream;
  priority: number;
  weight: number;
}

/** Picks upstreams for a model by priority and weight, and sends with retries and circuit breakers. */
export class Router {
  private readonly breakers = new Map<string, CircuitBreaker>();
  private readonly coolUntil = new Map<string, number>();
  private readonly routes = new Map<string, Candidate[]>();

  constructor(
    upstreams: Map<string, Upstream>,
    models: ModelConfig[],
    private readonly routing: Config['routing'],
    private readonly events: RouterEvents,
    private readonly random: () => number = Math.random,
  ) {
    for (const u of upstreams.values()) {
      const cb = routing.circuitBreaker;
      this.breakers.set(
        u.name,
        new CircuitBreaker(cb.failureThreshold, cb.cooldownSeconds * 1000, (s) => events.circuit(u.name, s)),
      );
    }
    for (const m of models) {
      this.routes.set(
        m.id,
        m.routes.map((r) => ({
          upstream: upstreams.get(r.upstream)!,
          priority: r.priority,
          weight: r.weight,
        })),
      );
    }
  }

  circuitStates(): [string, CircuitStateValue][] {
    return [...this.breakers].map(([name, b]) => [name, b.state]);
  }

  /** Candidates in the order to try: by priority, weighted shuffle within a priority; cooling ones last. */
  order(modelId: string): Upstream[] {
    const list = this.routes.get(modelId) ?? [];
    const byPriority = new Map<number, Candidate[]>();
    for (const c of list) byPriority.set(c.priority, [...(byPriority.get(c.priority) ?? []), c]);
    const now = Date.now();
    const ready: Upstream[] = [];
    const later: Upstream[] = [];
    for (const p of [...byPriority.keys()].sort((a, b) => a - b)) {
      for (const u of this.weightedShuffle(byPriority.get(p)!)) {
        const cooling = (this.coolUntil.get(u.name) ?? 0) > now || !this.breakers.get(u.name)!.available();
        (cooling ? later : ready).push(u);
      }
    }
    return ready.concat(later);
  }

  private weightedShuffle(group: Candidate[]): Upstream[] {
    if (group.length === 1) return [group[0]!.upstream];
    const pool = [...group];
    const out: Upstream[] = [];
    while (pool.length) {
      const total = pool.reduce((s, c) => s + c.weight, 0);
      let r = this.random() * total;
      let i = 0;
      while (i < pool.length - 1 && r >= pool[i]!.weight) r -= pool[i++]!.weight;
      out.push(pool.splice(i, 1)[0]!.upstream);
    }
    return out;
  }

  /**
   * Sends to the first upstream that answers; moves on (at most 1 + retries attempts) on
   * connection errors, timeouts, 429, 5xx and upstream 401/403/404. A 2xx or a client error
   * (400, 422, ...) is returned for the caller to relay.
   */
  async send(
    model: ModelConfig,
    bodyFor: (u: Upstream) => string | Buffer,
    opts: { stream: boolean; signal: Cancel },
  ): Promise<UpstreamResponse> {
    const maxAttempts = 1 + this.routing.retries;
    let attempts = 0;
    let last: GatewayError | null = null;
    /** The shortest wait announced by the 429s of this request. */
    let retryAfterMs: number | null = null;
    let previous: RetryReason | null = null;
    for (const u of this.order(model.id)) {
      if (attempts >= maxAttempts) break;
      const breaker = this.breakers.get(u.name)!;
      const permit = breaker.tryAcquire();
      if (!permit) {
        if (attempts > 0 || last) this.events.retry(u.name, 'circuit_open');
        last ??= new GatewayError('upstream_error', 'The upstream service is temporarily unavailable.');
        continue;
      }
      // Another upstream is tried at once after a 429: the gateway does not sleep while a route is free.
      if (attempts > 0 && previous !== 'status_429') await this.backoff(attempts, opts.signal);
      attempts++;
      const outcome = await this.attempt(u, breaker, permit, model.id, bodyFor(u), opts);
      if ('response' in outcome) return outcome.response;
      last = outcome.error;
      previous = outcome.reason;
      if (outcome.retryAfterMs !== undefined)
        retryAfterMs = Math.min(retryAfterMs ?? Number.POSITIVE_INFINITY, outcome.retryAfterMs);
      this.events.retry(u.name, outcome.reason);
    }
    if (last?.code === 'rate_limit_exceeded') {
      const ms = Math.ceil(Math.min(retryAfterMs ?? 1000, this.routing.maxRetryAfterMs));
      throw new GatewayError('rate_limit_exceeded', last.message, {
        type: 'requests',
        headers: { 'retry-after': String(Math.max(1, Math.ceil(ms / 1000))), 'retry-after-ms': String(ms) },
      });
    }
    throw last ?? new GatewayError('upstream_error', 'No upstream is available for this model.');
  }

  /**
   * One attempt on one upstream. Timeouts run on the gateway's own timers (undici checks its
   * header and body timeouts only every half second or so): `firstByteMs` up to the first
   * chunk of a stream, then `idleMs` between chunks; `requestMs` for the whole of a
   * non-streamed answer, body included. The undici timeouts stay as a backstop.
   */
  private async attempt(
    u: Upstream,
    breaker: CircuitBreaker,
    permit: Permit,
    modelId: string,
    body: string | Buffer,
    opts: { stream: boolean; signal: Cancel },
  ): Promise<Attempt> {
    const t = this.routing.timeouts;
    const { stream, signal } = opts;
    const limit = stream ? t.firstByteMs : t.requestMs;
    // The request's own signal: the client leaving, or a deadline of the gateway's.
    const ctrl = new Cancel();
    const forward = (): void => ctrl.abort(signal.reason);
    if (signal.aborted) forward();
    else signal.once('abort', forward);
    let response: Dispatcher.ResponseData['body'] | null = null;
    let timedOut = false;
    const deadline = setTimeout(() => {
      timedOut = true;
      if (response) response.destroy(new undiciErrors.BodyTimeoutError());
      else ctrl.abort(new undiciErrors.HeadersTimeoutError());
    }, limit);
    const cleanup = (): void => {
      clearTimeout(deadline);
      signal.removeListener('abort', forward);
    };
    const started = performance.now();
    let res: Dispatcher.ResponseData;
    try {
      res = await u.pool.request({
        method: 'POST',
        path: u.path,
        headers: u.headers,
        body,
        // undici's types name AbortSignal or EventEmitter; it uses only what Cancel has.
        signal: ctrl as unknown as AbortSignal,
        headersTimeout: limit,
        // For a stream the body timeout must not cut the wait for the first chunk.
        bodyTimeout: stream ? Math.max(t.idleMs, t.firstByteMs) : t.requestMs,
      });
    } catch (err) {
      cleanup();
      const seconds = (performance.now() - started) / 1000;
      if (signal.aborted) {
        breaker.release(permit);
        throw err;
      }
      breaker.failure(permit);
      const connect = isConnectError(err);
      const timeout = timedOut || connect === 'timeout' || isTimeout(err);
      this.events.upstreamResult(u.name, modelId, timeout ? 'timeout' : 'error', seconds);
      if (timeout && !stream && !connect) {
        // A non-streamed request gets its first byte only at the end; the client has waited enough.
        // (A connect timeout is different: nothing reached the upstream, so the next route is tried.)
        throw new GatewayError('upstream_timeout', 'The upstream did not answer in time.');
      }
      return {
        error: timeout
          ? new GatewayError('upstream_timeout', 'The upstream did not answer in time.')
          : new GatewayError('upstream_error', 'The upstream could not be reached.'),
        reason: connect ? 'connect_error' : timeout ? 'timeout' : 'connect_error',
      };
    }
    response = res.body;
    // Until the caller reads the body, a failure on it must not become an uncaught 'error'
    // event (undici also emits one when a body is destroyed unread); readers still see it.
    res.body.on('error', noop);
    res.body.once('close', cleanup);
    let upstreamMs = performance.now() - started;
    const status = res.statusCode;
    this.events.upstreamResult(u.name, modelId, String(status), upstreamMs / 1000);
    if (status < 400 && stream) {
      // firstByteMs is the time to the first chunk, not to the headers: until a chunk has
      // arrived nothing was sent to the client, so another route can still be tried.
      clearTimeout(deadline);
      const first = await firstChunk(res.body, limit - upstreamMs, signal);
      if (first !== 'data' || signal.aborted) {
        res.body.destroy();
        if (first === 'aborted' || signal.aborted) {
          breaker.release(permit);
          throw signal.reason ?? new Error('aborted');
        }
        breaker.failure(permit);
        const timeout = first === 'timeout';
        return {
          error: timeout
            ? new GatewayError('upstream_timeout', 'The upstream sent no data in time.')
            : new GatewayError('upstream_error', 'The upstream ended the stream before sending anything.'),
          reason: timeout ? 'timeout' : 'empty_stream',
        };
      }
      upstreamMs = performance.now() - started;
      watchIdle(res.body, t.idleMs);
    }
    if (status < 400) {
      let settled = false;
      const settle = (ok: boolean | null): void => {
        if (settled) return;
        settled = true;
        if (ok === null) breaker.release(permit);
        else if (ok) breaker.success(permit);
        else breaker.failure(permit);
      };
      // A caller that never reports (a bug) must not hold a half-open circuit's probe slot for good.
      res.body.once('close', () => setImmediate(settle, null));
      return { response: { upstream: u, status, headers: res.headers, body: res.body, upstreamMs, settle } };
    }
    if (!isRetryable(status)) {
      breaker.success(permit);
      return {
        response: { upstream: u, status, headers: res.headers, body: res.body, upstreamMs, settle: () => {} },
      };
    }
    res.body.dump().catch(() => {});
    if (status === 429) {
      breaker.release(permit);
      const wait = retryAfter(res.headers);
      this.coolUntil.set(u.name, Date.now() + wait);
      return {
        error: new GatewayError(
          'rate_limit_exceeded',
          'The upstream is rate limiting requests; please retry.',
          {
            type: 'requests',
          },
        ),
        reason: 'status_429',
        retryAfterMs: wait,
      };
    }
    if (status >= 500 || status === 408) {
      breaker.failure(permit);
      return {
        error: new GatewayError('upstream_error', `The upstream answered ${status}.`),
        reason: status === 408 ? 'timeout' : 'status_5xx',
      };
    }
    breaker.release(permit);
    return {
      error: new GatewayError('upstream_error', 'The upstream refused the gateway\u2019s credentials.'),
      reason: 'status_auth',
    };
  }

  /** Jittered exponential backoff between attempts, cut short when the client leaves. */
  private backoff(attempt: number, signal: Cancel): Promise<void> {
    const ms = Math.min(1000, 50 * 2 ** (attempt - 1)) * (0.5 + this.random() / 2);
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        signal.removeListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.once('abort', done);
    });
  }
}

type Attempt =
  | { response: UpstreamResponse }
  | { error: GatewayError; reason: RetryReason; retryAfterMs?: number };

const noop = (): void => {};

const isRetryable = (status: number): boolean =>
  status === 401 || status === 403 || status === 404 || status === 408 || status === 429 || status >= 500;

function isTimeout(err: unknown): boolean {
  return (
    err instanceof undiciErrors.HeadersTimeoutError ||
    err instanceof undiciErrors.ConnectTimeoutError ||
    err instanceof undiciErrors.BodyTimeoutError
  );
}

const CONNECT_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
  'UND_ERR_SOCKET',
]);

/**
 * 'timeout' for a connect timeout, true for another connection failure (refused, reset, DNS),
 * false for anything else (a response timeout, say).
 */
function isConnectError(err: unknown): 'timeout' | boolean {
  if (err instanceof undiciErrors.ConnectTimeoutError) return 'timeout';
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && CONNECT_CODES.has(code);
}

/**
 * Ends a stream whose upstream sends nothing for `ms` with a BodyTimeoutError, on a native
 * timer (undici's own body timeout is checked only about every half second). Data the reader
 * has not taken yet means the reader is behind, not the upstream: the wait starts again.
 */
function watchIdle(body: Readable, ms: number): void {
  const timer = setTimeout(() => {
    if (body.destroyed || body.readableEnded) return;
    if (body.readableLength > 0) timer.refresh();
    else body.destroy(new undiciErrors.BodyTimeoutError());
  }, ms);
  // Every chunk from the connection goes through push (undici's onData); null ends the body.
  const push = body.push;
  body.push = function watchedPush(this: Readable, chunk: unknown, encoding?: BufferEncoding): boolean {
    if (chunk === null) clearTimeout(timer);
    else timer.refresh();
    return push.call(this, chunk, encoding);
  };
  body.once('close', () => clearTimeout(timer));
}

/**
 * Waits until the body has a chunk to read (without consuming it), ends, fails, the client
 * leaves, or `ms` pass.
 */
function firstChunk(
  body: Readable,
  ms: number,
  signal: Cancel,
): Promise<'data' | 'end' | 'error' | 'timeout' | 'aborted'> {
  if (body.readableLength > 0) return Promise.resolve('data');
  if (signal.aborted) return Promise.resolve('aborted');
  return new Promise((resolve) => {
    const done = (r: 'data' | 'end' | 'error' | 'timeout' | 'aborted'): void => {
      clearTimeout(timer);
      body.off('readable', onReadable);
      body.off('end', onEnd);
      body.off('error', onError);
      body.off('close', onClose);
      signal.removeListener('abort', onAbort);
      resolve(r);
    };
    // 'readable' fires when data is buffered, or at the end of the stream with nothing buffered.
    const onReadable = (): void => done(body.readableLength > 0 ? 'data' : 'end');
    const onEnd = (): void => done('end');
    const onError = (err: unknown): void =>
      done(err instanceof undiciErrors.BodyTimeoutError ? 'timeout' : 'error');
    const onClose = (): void => done(body.readableLength > 0 ? 'data' : 'error');
    const onAbort = (): void => done('aborted');
    const timer = setTimeout(() => done('timeout'), Math.max(0, ms));
    body.on('readable', onReadable);
    body.on('end', onEnd);
    body.on('error', onError);
    body.on('close', onClose);
    signal.once('abort', onAbort);
  });
}

/**
 * The upstream's requested wait: retry-after-ms, else retry-after in seconds or as an HTTP
 * date; 1 s when absent or unreadable.
 */
function retryAfter(h: IncomingHttpHeaders): number {
  const msHeader = h['retry-after-ms'];
  if (typeof msHeader === 'string' && msHeader.trim() !== '') {
    const ms = Number(msHeader);
    if (Number.isFinite(ms) && ms >= 0) return ms;
  }
  const header = h['retry-after'];
  if (typeof header === 'string' && header.trim() !== '') {
    const s = Number(header);
    if (Number.isFinite(s) && s >= 0) return s * 1000;
    const at = Date.parse(header);
    if (Number.isFinite(at)) return Math.max(0, at - Date.now());
  }
  return 1000;
}
