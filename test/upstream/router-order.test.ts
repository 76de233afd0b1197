import { Readable } from 'node:stream';
import { errors as undiciErrors } from 'undici';
import { describe, expect, it } from 'vitest';
import type { Config, ModelConfig } from '../../src/config/schema.js';
import { Cancel } from '../../src/upstream/cancel.js';
import { Router, type RouterEvents } from '../../src/upstream/router.js';
import type { Upstream } from '../../src/upstream/upstream.js';

// The Router on its own: route order (priority, weights, cooling and open circuits last) with a
// seeded random source, and the details of send() on fake connection pools.

/** mulberry32: a small seeded PRNG, so the weight checks are reproducible. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const routing = (over: Partial<Config['routing']> = {}): Config['routing'] => ({
  retries: 2,
  timeouts: { connectMs: 1000, firstByteMs: 1000, idleMs: 1000, requestMs: 1000 },
  circuitBreaker: { failureThreshold: 3, cooldownSeconds: 30 },
  maxRetryAfterMs: 10000,
  ...over,
});

type Request = (opts: Record<string, unknown>) => Promise<unknown>;

function fake(name: string, request: Request = ok): Upstream {
  return {
    name,
    type: 'openai',
    pool: { request },
    path: '/v1/chat/completions',
    headers: {},
    modelFor: (id: string) => id,
  } as unknown as Upstream;
}

function body(chunks: string[] = ['{}']): Readable & { dump(): Promise<void> } {
  return Object.assign(Readable.from(chunks.map((c) => Buffer.from(c))), { dump: async () => {} });
}

async function ok(): Promise<unknown> {
  return { statusCode: 200, headers: {}, body: body() };
}

const status =
  (code: number, headers: Record<string, string> = {}): Request =>
  async () => ({ statusCode: code, headers, body: body() });

function modelWith(routes: { upstream: string; priority?: number; weight?: number }[]): ModelConfig {
  return {
    id: 'm',
    aliases: [],
    contextWindow: 1000,
    maxOutputTokens: 100,
    pricing: { inputPerMTok: 0, cachedInputPerMTok: 0, outputPerMTok: 0 },
    routes: routes.map((r) => ({ priority: 1, weight: 1, ...r })),
  };
}

interface Recorded {
  retries: [string, string][];
  circuits: [string, number][];
}

function makeRouter(
  upstreams: Upstream[],
  routes: { upstream: string; priority?: number; weight?: number }[],
  opts: { routing?: Partial<Config['routing']>; random?: () => number } = {},
) {
  const rec: Recorded = { retries: [], circuits: [] };
  const events: RouterEvents = {
    retry: (u, reason) => rec.retries.push([u, reason]),
    upstreamResult: () => {},
    circuit: (u, s) => rec.circuits.push([u, s]),
  };
  const m = modelWith(routes);
  const router = new Router(
    new Map(upstreams.map((u) => [u.name, u])),
    [m],
    routing(opts.routing),
    events,
    opts.random,
  );
  const send = (stream = false) => router.send(m, () => '{}', { stream, signal: new Cancel() });
  return { router, m, rec, send };
}

const names = (us: Upstream[]): string[] => us.map((u) => u.name);

describe('Router.order', () => {
  it('orders by priority, lowest first', () => {
    const { router } = makeRouter(
      [fake('a'), fake('b'), fake('c')],
      [
        { upstream: 'c', priority: 3 },
        { upstream: 'a', priority: 1 },
        { upstream: 'b', priority: 2 },
      ],
    );
    for (let i = 0; i < 20; i++) expect(names(router.order('m'))).toEqual(['a', 'b', 'c']);
    expect(router.order('unknown')).toEqual([]);
  });

  it('splits 2,000 picks 75/25 between weights 3 and 1 at the same priority (seeded)', () => {
    const { router } = makeRouter(
      [fake('heavy'), fake('light'), fake('backup')],
      [
        { upstream: 'heavy', priority: 1, weight: 3 },
        { upstream: 'light', priority: 1, weight: 1 },
        { upstream: 'backup', priority: 2, weight: 100 },
      ],
      { random: seeded(42) },
    );
    const first = { heavy: 0, light: 0 };
    for (let i = 0; i < 2000; i++) {
      const order = names(router.order('m'));
      // Both of priority 1 come before priority 2, whatever the weights.
      expect(order.slice(0, 2).sort()).toEqual(['heavy', 'light']);
      expect(order[2]).toBe('backup');
      first[order[0] as 'heavy' | 'light']++;
    }
    // ±5 points: 5 standard deviations (0.97 points) at this sample size.
    expect(Math.abs(first.heavy / 2000 - 0.75)).toBeLessThanOrEqual(0.05);
    expect(Math.abs(first.light / 2000 - 0.25)).toBeLessThanOrEqual(0.05);
    // And the split converges: 100,000 picks within half a point.
    let heavy = 0;
    for (let i = 0; i < 100_000; i++) if (router.order('m')[0]!.name === 'heavy') heavy++;
    expect(Math.abs(heavy / 100_000 - 0.75)).toBeLessThan(0.005);
  });

  it('gives the second place to the other route of the same priority', () => {
    const { router } = makeRouter(
      [fake('heavy'), fake('light')],
      [
        { upstream: 'heavy', weight: 3 },
        { upstream: 'light', weight: 1 },
      ],
      { random: seeded(7) },
    );
    for (let i = 0; i < 200; i++) expect(names(router.order('m')).sort()).toEqual(['heavy', 'light']);
  });

  it('splits by weight with Math.random too (2,000 picks, ±5%)', () => {
    const { router } = makeRouter(
      [fake('heavy'), fake('light')],
      [
        { upstream: 'heavy', weight: 3 },
        { upstream: 'light', weight: 1 },
      ],
    );
    let heavy = 0;
    for (let i = 0; i < 2000; i++) if (router.order('m')[0]!.name === 'heavy') heavy++;
    // ±5 points is more than 5 standard deviations (0.97 points) here.
    expect(heavy / 2000).toBeGreaterThan(0.7);
    expect(heavy / 2000).toBeLessThan(0.8);
  });

  it('puts an upstream cooling after a 429, or with an open circuit, after every free one', async () => {
    const calls = { a: 0, b: 0 };
    const { router, send } = makeRouter(
      [
        fake('a', async () => {
          calls.a++;
          return status(429, { 'retry-after-ms': '60000' })({});
        }),
        fake('b', async () => {
          calls.b++;
          return ok();
        }),
      ],
      [
        { upstream: 'a', priority: 1 },
        { upstream: 'b', priority: 2 },
      ],
    );
    expect(names(router.order('m'))).toEqual(['a', 'b']);
    expect((await send()).upstream.name).toBe('b');
    expect(names(router.order('m'))).toEqual(['b', 'a']);
    expect((await send()).upstream.name).toBe('b');
    expect(calls).toEqual({ a: 1, b: 2 });
  });
});

describe('Router.send', () => {
  it('answers 429 with the real wait in retry-after-ms (not rounded up to a second) and retry-after at least 1', async () => {
    const { send, rec } = makeRouter(
      [fake('a', status(429, { 'retry-after-ms': '300' }))],
      [{ upstream: 'a' }],
    );
    const err = await send().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'rate_limit_exceeded', status: 429 });
    expect((err as { headers: Record<string, string> }).headers).toEqual({
      'retry-after': '1',
      'retry-after-ms': '300',
    });
    expect(rec.retries).toEqual([['a', 'status_429']]);
  });

  it('reads retry-after in seconds or as an HTTP date, and caps the wait at maxRetryAfterMs', async () => {
    const date = new Date(Date.now() + 5000).toUTCString();
    const cases: [Record<string, string>, (ms: number) => boolean][] = [
      [{ 'retry-after': '2' }, (ms) => ms === 2000],
      [{ 'retry-after': date }, (ms) => ms > 3000 && ms <= 5000],
      [{ 'retry-after': '3600' }, (ms) => ms === 10000],
      [{}, (ms) => ms === 1000],
    ];
    for (const [headers, check] of cases) {
      const { send } = makeRouter([fake('a', status(429, headers))], [{ upstream: 'a' }]);
      const err = (await send().catch((e: unknown) => e)) as { headers: Record<string, string> };
      const ms = Number(err.headers['retry-after-ms']);
      expect(check(ms), `${JSON.stringify(headers)} -> ${ms}`).toBe(true);
      expect(err.headers['retry-after']).toBe(String(Math.max(1, Math.ceil(ms / 1000))));
    }
  });

  it('moves on at once after a 429 (no backoff sleep), but backs off after a 5xx', async () => {
    let draws = 0;
    const random = () => {
      draws++;
      return 0.5;
    };
    const first = makeRouter(
      [fake('a', status(429, { 'retry-after-ms': '100' })), fake('b')],
      [
        { upstream: 'a', priority: 1 },
        { upstream: 'b', priority: 2 },
      ],
      { random },
    );
    expect((await first.send()).upstream.name).toBe('b');
    // One priority per route: the only random draw would be the backoff's jitter.
    expect(draws).toBe(0);
    const second = makeRouter(
      [fake('a', status(503)), fake('b')],
      [
        { upstream: 'a', priority: 1 },
        { upstream: 'b', priority: 2 },
      ],
      { random },
    );
    expect((await second.send()).upstream.name).toBe('b');
    expect(draws).toBe(1);
  });

  it('counts a connect timeout as connect_error and tries the next route, even for JSON', async () => {
    const { send, rec } = makeRouter(
      [
        fake('a', async () => {
          throw new undiciErrors.ConnectTimeoutError();
        }),
        fake('b'),
      ],
      [
        { upstream: 'a', priority: 1 },
        { upstream: 'b', priority: 2 },
      ],
    );
    expect((await send(false)).upstream.name).toBe('b');
    expect(rec.retries).toEqual([['a', 'connect_error']]);
  });

  it('counts a refused connection as connect_error', async () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' });
    const { send, rec } = makeRouter(
      [
        fake('a', async () => {
          throw refused;
        }),
      ],
      [{ upstream: 'a' }],
    );
    const err = await send().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'upstream_error', status: 502 });
    expect((err as Error).message).not.toContain('127.0.0.1');
    expect(rec.retries).toEqual([['a', 'connect_error']]);
  });

  it('makes at most 1 + retries attempts', async () => {
    let calls = 0;
    const failing: Request = async () => {
      calls++;
      return status(500)({});
    };
    const { send } = makeRouter(
      ['a', 'b', 'c', 'd'].map((n) => fake(n, failing)),
      ['a', 'b', 'c', 'd'].map((upstream, i) => ({ upstream, priority: i })),
      { routing: { retries: 1 } },
    );
    await expect(send()).rejects.toMatchObject({ code: 'upstream_error' });
    expect(calls).toBe(2);
  });

  it('skips an open circuit and reports it, opens after threshold failures and closes on a good probe', async () => {
    let failing = true;
    const { send, rec, router } = makeRouter(
      [fake('a', async () => (failing ? status(500)({}) : ok())), fake('b')],
      [
        { upstream: 'a', priority: 1 },
        { upstream: 'b', priority: 2 },
      ],
      { routing: { circuitBreaker: { failureThreshold: 2, cooldownSeconds: 0.3 } } },
    );
    await send();
    await send();
    const opened = Date.now();
    expect(rec.circuits).toEqual([['a', 2]]);
    expect(router.circuitStates()).toContainEqual(['a', 2]);
    expect((await send()).upstream.name).toBe('b');
    expect(Date.now() - opened).toBeLessThan(300);
    await new Promise((r) => setTimeout(r, 310 - (Date.now() - opened)));
    failing = false;
    const probe = await send();
    expect(probe.upstream.name).toBe('a');
    expect(rec.circuits).toEqual([
      ['a', 2],
      ['a', 1],
    ]);
    probe.settle(true);
    probe.settle(false); // only the first verdict counts
    expect(rec.circuits.at(-1)).toEqual(['a', 0]);
  });

  it('frees the probe slot when the caller never reports, once the body is closed', async () => {
    let failing = true;
    const { send, rec } = makeRouter(
      [fake('a', async () => (failing ? status(500)({}) : ok())), fake('b')],
      [
        { upstream: 'a', priority: 1 },
        { upstream: 'b', priority: 2 },
      ],
      { routing: { retries: 0, circuitBreaker: { failureThreshold: 1, cooldownSeconds: 0.01 } } },
    );
    await send().catch(() => {});
    expect(rec.circuits).toEqual([['a', 2]]);
    await new Promise((r) => setTimeout(r, 20));
    failing = false;
    // The probe goes to 'a', but its caller reads the body and forgets to report.
    const probe = await send();
    expect(probe.upstream.name).toBe('a');
    expect((await send()).upstream.name).toBe('b');
    for await (const _ of probe.body) {
    }
    await new Promise((r) => setTimeout(r, 5));
    // No verdict: still half-open, and the next request is the new probe.
    const next = await send();
    expect(next.upstream.name).toBe('a');
    next.settle(true);
    expect(rec.circuits).toEqual([
      ['a', 2],
      ['a', 1],
      ['a', 1],
      ['a', 0],
    ]);
  });
});
