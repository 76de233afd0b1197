import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import { errors as undiciErrors } from 'undici';
import type { Config, ModelConfig } from '../config/schema.js';
import { GatewayError } from '../errors/gateway-error.js';
import { CircuitBreaker, type CircuitStateValue } from './circuit-breaker.js';
import type { Upstream } from './upstream.js';

export interface UpstreamResponse {
  upstream: Upstream;
  status: number;
  headers: IncomingHttpHeaders;
  body: Dispatcher.ResponseData['body'];
  /** Milliseconds from sending to the response headers. */
  upstreamMs: number;
  /** Reports the attempt's final outcome to the breaker (success, or a failure after the first byte). */
  settle(ok: boolean): void;
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
    bodyFor: (u: Upstream) => string,
    opts: { stream: boolean; signal: AbortSignal },
  ): Promise<UpstreamResponse> {
    const t = this.routing.timeouts;
    const maxAttempts = 1 + this.routing.retries;
    let attempts = 0;
    let last: GatewayError | null = null;
    let retryAfterMs = 0;
    for (const u of this.order(model.id)) {
      if (attempts >= maxAttempts) break;
      const breaker = this.breakers.get(u.name)!;
      if (!breaker.tryAcquire()) {
        if (attempts > 0 || last) this.events.retry(u.name, 'circuit_open');
        last ??= new GatewayError('upstream_error', 'The upstream service is temporarily unavailable.');
        continue;
      }
      if (attempts > 0) await this.backoff(attempts, opts.signal);
      attempts++;
      const started = performance.now();
      let res: Dispatcher.ResponseData;
      try {
        res = await u.pool.request({
          method: 'POST',
          path: u.path,
          headers: u.headers,
          body: bodyFor(u),
          signal: opts.signal,
          headersTimeout: opts.stream ? t.firstByteMs : t.requestMs,
          bodyTimeout: opts.stream ? t.idleMs : t.requestMs,
        });
      } catch (err) {
        const seconds = (performance.now() - started) / 1000;
        if (opts.signal.aborted) {
          breaker.release();
          throw err;
        }
        breaker.failure();
        const timeout = isTimeout(err);
        this.events.upstreamResult(u.name, model.id, timeout ? 'timeout' : 'error', seconds);
        if (timeout && !opts.stream && !(err instanceof undiciErrors.ConnectTimeoutError)) {
          // A non-streamed request gets its first byte only at the end; the client has waited enough.
          // (A connect timeout is different: nothing reached the upstream, so the next route is tried.)
          throw new GatewayError('upstream_timeout', 'The upstream did not answer in time.');
        }
        last = timeout
          ? new GatewayError('upstream_timeout', 'The upstream did not answer in time.')
          : new GatewayError('upstream_error', 'The upstream could not be reached.');
        this.events.retry(u.name, timeout ? 'timeout' : 'connect_error');
        continue;
      }
      // Until the caller reads the body, a failure on it must not become an uncaught 'error'
      // event (undici also emits one when a body is destroyed unread); readers still see it.
      res.body.on('error', noop);
      let upstreamMs = performance.now() - started;
      const status = res.statusCode;
      this.events.upstreamResult(u.name, model.id, String(status), upstreamMs / 1000);
      if (status < 400 && opts.stream) {
        // firstByteMs is the time to the first chunk, not to the headers: until a chunk has
        // arrived nothing was sent to the client, so another route can still be tried.
        const first = await firstChunk(res.body, t.firstByteMs - upstreamMs, opts.signal);
        if (first !== 'data') {
          res.body.destroy();
          if (first === 'aborted') {
            breaker.release();
            throw opts.signal.reason ?? new Error('aborted');
          }
          breaker.failure();
          const timeout = first === 'timeout';
          last = timeout
            ? new GatewayError('upstream_timeout', 'The upstream sent no data in time.')
            : new GatewayError('upstream_error', 'The upstream ended the stream before sending anything.');
          this.events.retry(u.name, timeout ? 'timeout' : 'empty_stream');
          continue;
        }
        upstreamMs = performance.now() - started;
      }
      if (status < 400 || !isRetryable(status)) {
        if (status < 400) {
          return {
            upstream: u,
            status,
            headers: res.headers,
            body: res.body,
            upstreamMs,
            settle: (ok) => (ok ? breaker.success() : breaker.failure()),
          };
        }
        breaker.success();
        return { upstream: u, status, headers: res.headers, body: res.body, upstreamMs, settle: () => {} };
      }
      res.body.dump().catch(() => {});
      if (status === 429) {
        breaker.release();
        const wait = retryAfter(res.headers);
        retryAfterMs = Math.max(retryAfterMs, wait);
        this.coolUntil.set(u.name, Date.now() + wait);
        last = new GatewayError(
          'rate_limit_exceeded',
          'The upstream is rate limiting requests; please retry.',
          {
            type: 'requests',
          },
        );
        this.events.retry(u.name, 'status_429');
      } else if (status >= 500 || status === 408) {
        breaker.failure();
        last = new GatewayError('upstream_error', `The upstream answered ${status}.`);
        this.events.retry(u.name, status === 408 ? 'timeout' : 'status_5xx');
      } else {
        breaker.release();
        last = new GatewayError('upstream_error', 'The upstream refused the gateway\u2019s credentials.');
        this.events.retry(u.name, 'status_auth');
      }
    }
    if (last?.code === 'rate_limit_exceeded') {
      const ms = Math.max(1000, Math.min(retryAfterMs, this.routing.maxRetryAfterMs));
      throw new GatewayError('rate_limit_exceeded', last.message, {
        type: 'requests',
        headers: { 'retry-after': String(Math.ceil(ms / 1000)), 'retry-after-ms': String(ms) },
      });
    }
    throw last ?? new GatewayError('upstream_error', 'No upstream is available for this model.');
  }

  /** Jittered exponential backoff between attempts, cut short when the client leaves. */
  private backoff(attempt: number, signal: AbortSignal): Promise<void> {
    const ms = Math.min(1000, 50 * 2 ** (attempt - 1)) * (0.5 + this.random() / 2);
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      signal.addEventListener(
        'abort',
        () => {
          clearTimeout(timer);
          resolve();
        },
        { once: true },
      );
    });
  }
}

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

/**
 * Waits until the body has a chunk to read (without consuming it), ends, fails, the client
 * leaves, or `ms` pass.
 */
function firstChunk(
  body: Readable,
  ms: number,
  signal: AbortSignal,
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
      signal.removeEventListener('abort', onAbort);
      resolve(r);
    };
    // 'readable' fires when data is buffered, or at the end of the stream with nothing buffered.
    const onReadable = (): void => done(body.readableLength > 0 ? 'data' : 'end');
    const onEnd = (): void => done('end');
    const onError = (): void => done('error');
    const onClose = (): void => done(body.readableLength > 0 ? 'data' : 'error');
    const onAbort = (): void => done('aborted');
    const timer = setTimeout(() => done('timeout'), Math.max(0, ms));
    body.on('readable', onReadable);
    body.on('end', onEnd);
    body.on('error', onError);
    body.on('close', onClose);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** The upstream's requested wait: retry-after-ms, else retry-after seconds; 1 s when absent. */
function retryAfter(h: IncomingHttpHeaders): number {
  const ms = Number(h['retry-after-ms']);
  if (Number.isFinite(ms) && ms >= 0) return ms;
  const s = Number(h['retry-after']);
  if (Number.isFinite(s) && s >= 0) return s * 1000;
  return 1000;
}
