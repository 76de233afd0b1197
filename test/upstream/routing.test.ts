import { Agent, createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { eventually } from '../support/eventually.js';
import { MOCK_KEY, model, startTestGateway, type TestGateway } from '../support/gateway.js';

// Routing through the whole gateway, driven by the official SDK: failover by priority, 429
// cool-down, the circuit breaker, weights, the timeouts, streams cut halfway, and an OpenAI and
// an Azure upstream serving one model interchangeably.

let a: MockUpstream; // "primary"
let b: MockUpstream; // "secondary", and the Azure deployment
let closedPort: number;
let gw: TestGateway | null = null;

beforeAll(async () => {
  [a, b] = await Promise.all([startMockUpstream(), startMockUpstream()]);
  closedPort = await freePort();
});
afterAll(async () => {
  await Promise.all([a?.close(), b?.close()]);
});
beforeEach(() => {
  a.reset();
  b.reset();
});
afterEach(async () => {
  await gw?.close();
  gw = null;
});

/** A port nothing listens on (bound, then closed again). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

type Route = { upstream: string; priority?: number; weight?: number };

/** A model served by the given routes. */
const routed = (id: string, routes: Route[]): Record<string, unknown> => ({
  ...model(id, 'primary'),
  routes,
});

/**
 * Starts a gateway with every test upstream (primary → mock a, secondary → mock b, azure →
 * mock b's Azure paths, dead → a closed port) and the given models and routing; cache and
 * limits off, so every request reaches the router.
 */
async function start(
  models: Record<string, unknown>[],
  routing: Record<string, unknown> = {},
  extraUpstreams: Record<string, unknown>[] = [],
  opts: { redis?: boolean } = {},
): Promise<{ gw: TestGateway; client: OpenAI; key: string }> {
  gw = await startTestGateway(
    {
      upstreams: [
        { name: 'primary', type: 'openai', baseURL: `${a.url}/v1`, apiKey: MOCK_KEY },
        { name: 'secondary', type: 'openai', baseURL: `${b.url}/v1`, apiKey: MOCK_KEY },
        {
          name: 'azure',
          type: 'azure',
          endpoint: b.url,
          apiKey: MOCK_KEY,
          deployment: 'gpt-4.1-mini',
          apiVersion: '2024-10-21',
        },
        { name: 'dead', type: 'openai', baseURL: `http://127.0.0.1:${closedPort}/v1`, apiKey: MOCK_KEY },
        ...extraUpstreams,
      ],
      models,
      routing: { retries: 2, ...routing },
      cache: { enabled: false },
      limits: { defaults: { rpm: null, tpm: null, maxConcurrent: null } },
    },
    opts,
  );
  const { key } = await gw.issueKey({ team: 'routing' });
  return { gw, key, client: new OpenAI({ apiKey: key, baseURL: `${gw.url}/v1`, maxRetries: 0 }) };
}

/** One sample of a gateway metric, read from its registry (undefined when the series does not exist). */
async function metric(
  g: TestGateway,
  name: string,
  labels: Record<string, string>,
): Promise<number | undefined> {
  const all = await g.gateway.runtime.metrics!.registry.getMetricsAsJSON();
  const series = all.find((m) => m.name === name);
  return series?.values.find((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val))?.value;
}

const ask = (m: string, content: string) => ({
  model: m,
  messages: [{ role: 'user' as const, content }],
});

/** A JSON completion: the answer's text and the upstream that served it. */
async function complete(
  client: OpenAI,
  m: string,
  content: string,
): Promise<{ text: string; upstream: string }> {
  const { data, response } = await client.chat.completions.create(ask(m, content)).withResponse();
  return {
    text: data.choices[0]?.message.content ?? '',
    upstream: response.headers.get('x-tollgate-upstream')!,
  };
}

/** A streamed completion: the text put together and the upstream that served it. */
async function streamed(
  client: OpenAI,
  m: string,
  content: string,
): Promise<{ text: string; upstream: string }> {
  const { data, response } = await client.chat.completions
    .create({ ...ask(m, content), stream: true })
    .withResponse();
  let text = '';
  for await (const chunk of data) text += chunk.choices[0]?.delta.content ?? '';
  return { text, upstream: response.headers.get('x-tollgate-upstream')! };
}

/** Runs a call that must fail and returns the error. */
async function failure(p: Promise<unknown>): Promise<any> {
  return p.then(
    () => {
      throw new Error('expected the call to fail');
    },
    (e: unknown) => e,
  );
}

/** A raw streamed request: status, headers and the SSE events (without the blank lines). */
async function rawStream(g: TestGateway, key: string, m: string, content: string) {
  const res = await fetch(`${g.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ ...ask(m, content), stream: true }),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, events: text.split('\n\n').filter((e) => e.length > 0) };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A bare POST through a keep-alive agent: status and x-tollgate-upstream. */
function post(
  agent: Agent,
  url: string,
  key: string,
  body: string,
): Promise<{ status: number; upstream: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: 'POST',
        agent,
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      },
      (res) => {
        res.resume();
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, upstream: String(res.headers['x-tollgate-upstream']) }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** Runs `n` tasks with at most `width` at a time. */
async function pool<T>(n: number, width: number, task: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(n);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < n) {
        const i = next++;
        out[i] = await task(i);
      }
    }),
  );
  return out;
}

const FAILOVER = routed('failover', [
  { upstream: 'primary', priority: 1 },
  { upstream: 'secondary', priority: 2 },
]);

describe('failover by priority', () => {
  it('replaces a primary answering 503 by the secondary and counts the retry', async () => {
    const { gw, client } = await start([FAILOVER]);
    a.enqueue({ status: 503 });
    const { data, response } = await client.chat.completions
      .create(ask('failover', 'served by the secondary'))
      .withResponse();
    expect(response.status).toBe(200);
    expect(data.choices[0]?.message.content).toBe('echo: served by the secondary');
    expect(response.headers.get('x-tollgate-upstream')).toBe('secondary');
    expect(a.stats.requests).toBe(1);
    expect(b.stats.requests).toBe(1);
    expect(
      await metric(gw, 'tollgate_upstream_retries_total', { upstream: 'primary', reason: 'status_5xx' }),
    ).toBe(1);
    expect(await metric(gw, 'tollgate_upstream_requests_total', { upstream: 'primary', status: '503' })).toBe(
      1,
    );
    expect(
      await metric(gw, 'tollgate_upstream_requests_total', { upstream: 'secondary', status: '200' }),
    ).toBe(1);
    // The primary is used again for the next request (one failure is far from the threshold).
    expect((await complete(client, 'failover', 'back to primary')).upstream).toBe('primary');
  });

  it('replaces a primary answering 503 for a stream too, before anything reached the client', async () => {
    const { client } = await start([FAILOVER]);
    a.enqueue({ status: 503 });
    const { text, upstream } = await streamed(client, 'failover', 'streamed failover');
    expect(text).toBe('echo: streamed failover');
    expect(upstream).toBe('secondary');
  });
});

describe('429 cool-down', () => {
  it('skips an upstream that answered 429 until its retry-after-ms has passed, then uses it again', async () => {
    const { gw, client } = await start([FAILOVER]);
    a.enqueue({ status: 429, retryAfterMs: 700 });
    const started = Date.now();
    expect((await complete(client, 'failover', 'one')).upstream).toBe('secondary');
    expect(a.stats.requests).toBe(1);
    expect(
      await metric(gw, 'tollgate_upstream_retries_total', { upstream: 'primary', reason: 'status_429' }),
    ).toBe(1);
    // While it cools down the free route takes everything, and the 429 upstream is not called.
    for (let i = 0; i < 4; i++) {
      expect((await complete(client, 'failover', `cooling ${i}`)).upstream).toBe('secondary');
      expect((await streamed(client, 'failover', `cooling stream ${i}`)).upstream).toBe('secondary');
    }
    expect(Date.now() - started).toBeLessThan(650);
    expect(a.stats.requests).toBe(1);
    await sleep(750 - (Date.now() - started));
    expect((await complete(client, 'failover', 'cooled')).upstream).toBe('primary');
    expect(a.stats.requests).toBe(2);
  });

  it('with a single route, a 429 outlasting the retries answers 429 rate_limit_exceeded with its own retry-after', async () => {
    const { client } = await start([routed('solo', [{ upstream: 'primary' }])]);
    a.enqueue({ status: 429, retryAfterMs: 300 });
    const err = await failure(client.chat.completions.create(ask('solo', 'limited')));
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    expect(err.status).toBe(429);
    expect(err.code).toBe('rate_limit_exceeded');
    expect(err.type).toBe('requests');
    // The gateway's own headers: the real wait in ms, whole seconds (at least 1) in retry-after.
    expect(err.headers.get('retry-after-ms')).toBe('300');
    expect(err.headers.get('retry-after')).toBe('1');
    expect(err.message).not.toMatch(/org-mock/);
    expect(a.stats.requests).toBe(1);
  });

  it('answers 429 when every route answers 429, with the shortest wait announced', async () => {
    const { client } = await start([FAILOVER]);
    a.enqueue({ status: 429, retryAfterMs: 2500 });
    b.enqueue({ status: 429, retryAfterMs: 1200 });
    const started = Date.now();
    const err = await failure(client.chat.completions.create(ask('failover', 'both limited')));
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    expect(err.headers.get('retry-after-ms')).toBe('1200');
    expect(err.headers.get('retry-after')).toBe('2');
    expect(a.stats.requests + b.stats.requests).toBe(2);
    // No sleeping for the retry-after inside the gateway.
    expect(Date.now() - started).toBeLessThan(500);
  });
});

describe('circuit breaker', () => {
  const CB = { failureThreshold: 3, cooldownSeconds: 1 };
  const state = (g: TestGateway) => metric(g, 'tollgate_circuit_state', { upstream: 'primary' });

  it('opens after 3 failures, keeps traffic away during the cooldown, lets one probe through and closes on its success', async () => {
    const { gw, client } = await start([FAILOVER], { circuitBreaker: CB });
    a.setDefault({ status: 500 });
    for (let i = 0; i < 2; i++)
      expect((await complete(client, 'failover', `fail ${i}`)).upstream).toBe('secondary');
    expect(await state(gw)).toBe(0);
    expect((await complete(client, 'failover', 'fail 2')).upstream).toBe('secondary');
    const opened = Date.now();
    expect(await state(gw)).toBe(2);
    expect(a.stats.requests).toBe(3);

    // During the cooldown no request reaches the primary.
    const during = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        i % 2 ? streamed(client, 'failover', `open ${i}`) : complete(client, 'failover', `open ${i}`),
      ),
    );
    expect(during.every((r) => r.upstream === 'secondary')).toBe(true);
    expect(a.stats.requests).toBe(3);
    expect(await state(gw)).toBe(2);

    // After it, concurrent requests: exactly one (the probe) reaches the primary.
    a.setDefault({ delayMs: 300 });
    await sleep(1050 - (Date.now() - opened));
    const burst = Array.from({ length: 6 }, (_, i) => complete(client, 'failover', `probe ${i}`));
    await eventually(async () => expect(await state(gw)).toBe(1), 250, 10);
    const answers = await Promise.all(burst);
    expect(a.stats.requests).toBe(4);
    expect(answers.filter((r) => r.upstream === 'primary')).toHaveLength(1);
    expect(answers.filter((r) => r.upstream === 'secondary')).toHaveLength(5);
    expect(answers.every((r, i) => r.text === `echo: probe ${i}`)).toBe(true);
    expect(await state(gw)).toBe(0);

    // Closed: the primary takes the traffic again.
    a.setDefault(null);
    expect((await complete(client, 'failover', 'closed')).upstream).toBe('primary');
    // Every failure and every skip was counted.
    expect(
      await metric(gw, 'tollgate_upstream_retries_total', { upstream: 'primary', reason: 'status_5xx' }),
    ).toBe(3);
  });

  it('re-opens when the probe fails, for another cooldown', async () => {
    const { gw, client } = await start([FAILOVER], {
      circuitBreaker: { failureThreshold: 1, cooldownSeconds: 0.4 },
    });
    a.setDefault({ status: 502 });
    expect((await complete(client, 'failover', 'open it')).upstream).toBe('secondary');
    expect(await state(gw)).toBe(2);
    await sleep(450);
    // The probe fails: open again, and the request itself is still served by the secondary.
    expect((await complete(client, 'failover', 'failed probe')).upstream).toBe('secondary');
    expect(a.stats.requests).toBe(2);
    expect(await state(gw)).toBe(2);
    const reopened = Date.now();
    expect((await complete(client, 'failover', 'still open')).upstream).toBe('secondary');
    expect(a.stats.requests).toBe(2);
    a.setDefault(null);
    await sleep(450 - (Date.now() - reopened));
    expect((await streamed(client, 'failover', 'good probe')).upstream).toBe('primary');
    expect(await state(gw)).toBe(0);
  });

  it('with every route open, answers 502 at once without calling anyone', async () => {
    const { client } = await start([routed('solo', [{ upstream: 'primary' }])], {
      retries: 0,
      circuitBreaker: { failureThreshold: 1, cooldownSeconds: 30 },
    });
    a.enqueue({ status: 500 });
    await failure(client.chat.completions.create(ask('solo', 'open it')));
    const err = await failure(client.chat.completions.create(ask('solo', 'open')));
    expect(err.status).toBe(502);
    expect(err.code).toBe('upstream_error');
    expect(a.stats.requests).toBe(1);
  });
});

describe('weights', () => {
  it('splits 2,000 real requests 75/25 between weights 3 and 1 at the same priority (±5 points)', async () => {
    // Routing does not touch Redis: memory mode keeps 2,000 requests well within the time budget.
    const { gw, key } = await start(
      [
        routed('weighted', [
          { upstream: 'primary', priority: 1, weight: 3 },
          { upstream: 'secondary', priority: 1, weight: 1 },
        ]),
      ],
      {},
      [],
      { redis: false },
    );
    const started = Date.now();
    // A keep-alive node:http client keeps 2,000 requests quick; the SDK is exercised everywhere else.
    const agent = new Agent({ keepAlive: true, maxSockets: 16 });
    const body = JSON.stringify(ask('weighted', 'w'));
    const served = await pool(2000, 16, () =>
      post(agent, `${gw.url}/v1/chat/completions`, key, body).then((res) => {
        if (res.status !== 200) throw new Error(`status ${res.status}`);
        return res.upstream;
      }),
    );
    agent.destroy();
    const primary = served.filter((u) => u === 'primary').length;
    const secondary = served.filter((u) => u === 'secondary').length;
    expect(primary + secondary).toBe(2000);
    expect(a.stats.requests).toBe(primary);
    expect(b.stats.requests).toBe(secondary);
    // 5 points is 5 standard deviations (0.97 points) at this sample size.
    expect(Math.abs(primary / 2000 - 0.75)).toBeLessThanOrEqual(0.05);
    expect(Math.abs(secondary / 2000 - 0.25)).toBeLessThanOrEqual(0.05);
    console.info(`2,000 weighted requests: ${Date.now() - started} ms`);
  }, 20_000);

  it('splits 2,000 router.order() picks the same way, and the SDK sees both routes', async () => {
    const { gw, client } = await start([
      routed('weighted', [
        { upstream: 'primary', priority: 1, weight: 3 },
        { upstream: 'secondary', priority: 1, weight: 1 },
      ]),
    ]);
    let primary = 0;
    for (let i = 0; i < 2000; i++)
      if (gw.gateway.runtime.router.order('weighted')[0]!.name === 'primary') primary++;
    expect(Math.abs(primary / 2000 - 0.75)).toBeLessThanOrEqual(0.05);
    const sdk = await pool(40, 8, (i) => complete(client, 'weighted', `sdk ${i}`));
    expect(sdk.every((r, i) => r.text === `echo: sdk ${i}`)).toBe(true);
    expect(new Set(sdk.map((r) => r.upstream))).toEqual(new Set(['primary', 'secondary']));
  });
});

describe('timeouts', () => {
  const TIMEOUTS = { timeouts: { firstByteMs: 300, requestMs: 500 } };
  const SOLO = routed('solo', [{ upstream: 'primary' }]);

  it('answers a hanging stream with 504 upstream_timeout at firstByteMs', async () => {
    const { client } = await start([SOLO, FAILOVER], TIMEOUTS);
    a.setDefault({ hang: true });
    const started = performance.now();
    const err = await failure(
      (async () => {
        const stream = await client.chat.completions.create({ ...ask('solo', 'hang'), stream: true });
        for await (const _ of stream) {
        }
      })(),
    );
    const elapsed = performance.now() - started;
    expect(err).toBeInstanceOf(OpenAI.InternalServerError);
    expect(err.status).toBe(504);
    expect(err.code).toBe('upstream_timeout');
    expect(err.type).toBe('server_error');
    expect(elapsed).toBeGreaterThanOrEqual(295);
    expect(elapsed).toBeLessThan(550);
    // The gateway gave up on the upstream request.
    await eventually(() => expect(a.stats.aborts).toBe(1));
  });

  it('answers a hanging JSON request with 504 at requestMs, and does not retry it', async () => {
    const { client } = await start([SOLO, FAILOVER], TIMEOUTS);
    a.setDefault({ hang: true });
    for (const m of ['solo', 'failover']) {
      const started = performance.now();
      const err = await failure(client.chat.completions.create(ask(m, 'hang')));
      const elapsed = performance.now() - started;
      expect(err).toBeInstanceOf(OpenAI.InternalServerError);
      expect(err.status).toBe(504);
      expect(err.code).toBe('upstream_timeout');
      expect(elapsed).toBeGreaterThanOrEqual(495);
      expect(elapsed).toBeLessThan(750);
    }
    // Not retried on the secondary: the upstream may bill it.
    expect(a.stats.requests).toBe(2);
    expect(b.stats.requests).toBe(0);
  });

  it('moves a stream with no first chunk within firstByteMs to the next route', async () => {
    const { gw, client } = await start([SOLO, FAILOVER], TIMEOUTS);
    a.setDefault({ hang: true });
    const started = performance.now();
    const { text, upstream } = await streamed(client, 'failover', 'next route');
    const elapsed = performance.now() - started;
    expect(text).toBe('echo: next route');
    expect(upstream).toBe('secondary');
    expect(elapsed).toBeGreaterThanOrEqual(295);
    expect(elapsed).toBeLessThan(600);
    expect(
      await metric(gw, 'tollgate_upstream_retries_total', { upstream: 'primary', reason: 'timeout' }),
    ).toBe(1);
  });

  it('waits firstByteMs (not idleMs) for the first chunk after the headers', async () => {
    // Headers at once, the first chunk after 1.2 s: longer than idleMs and than undici's own
    // timer granularity, shorter than firstByteMs.
    const slow = await startSlowStart(1200);
    try {
      const { client } = await start(
        [routed('slow', [{ upstream: 'slow' }])],
        { timeouts: { firstByteMs: 3000, idleMs: 200 } },
        [{ name: 'slow', type: 'openai', baseURL: `${slow.url}/v1`, apiKey: MOCK_KEY }],
      );
      const started = performance.now();
      const { text } = await streamed(client, 'slow', 'slow start');
      expect(text).toBe('slow start');
      expect(performance.now() - started).toBeGreaterThanOrEqual(1150);
    } finally {
      await slow.close();
    }
  });
});

describe('streams cut after the first byte', () => {
  it('end with an error event and [DONE], and are not retried', async () => {
    const { key, gw } = await start([FAILOVER]);
    const res = await rawStream(gw, key, 'failover', 'cut me [[mock:drop=2,chunks=5]]');
    expect(res.status).toBe(200);
    expect(res.headers.get('x-tollgate-upstream')).toBe('primary');
    expect(res.events.at(-1)).toBe('data: [DONE]');
    const error = res.events.at(-2)!;
    expect(error.startsWith('data: {"error":')).toBe(true);
    const payload = JSON.parse(error.slice('data: '.length));
    expect(Object.keys(payload.error).sort()).toEqual(['code', 'message', 'param', 'type']);
    expect(payload.error.code).toBe('upstream_error');
    // Two content chunks came first.
    const content = res.events
      .slice(0, -2)
      .filter((e) => e.includes('"content":"') && !e.includes('"content":""'));
    expect(content).toHaveLength(2);
    expect(b.stats.requests).toBe(0);
    expect(a.stats.requests).toBe(1);
  });

  it('make the SDK iteration throw an APIError', async () => {
    const { client } = await start([FAILOVER]);
    const stream = await client.chat.completions.create({
      ...ask('failover', 'cut me too [[mock:drop=2,chunks=5]]'),
      stream: true,
    });
    let text = '';
    const err = await failure(
      (async () => {
        for await (const c of stream) text += c.choices[0]?.delta.content ?? '';
      })(),
    );
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect(err.error).toMatchObject({ code: 'upstream_error', type: 'server_error' });
    expect(text.length).toBeGreaterThan(0);
    expect(b.stats.requests).toBe(0);
  });

  it('end with an upstream_timeout error event when the upstream is idle for idleMs between chunks', async () => {
    const { key, gw, client } = await start([FAILOVER], { timeouts: { idleMs: 200 } });
    const started = performance.now();
    const res = await rawStream(gw, key, 'failover', 'idle [[mock:chunkdelay=600,chunks=3]]');
    const elapsed = performance.now() - started;
    expect(res.status).toBe(200);
    expect(res.events.at(-1)).toBe('data: [DONE]');
    const payload = JSON.parse(res.events.at(-2)!.slice('data: '.length));
    expect(payload.error.code).toBe('upstream_timeout');
    expect(payload.error.type).toBe('server_error');
    // The first chunk came at once, the second would have come at 600 ms: cut at about 200 ms.
    expect(elapsed).toBeGreaterThanOrEqual(195);
    expect(elapsed).toBeLessThan(500);
    expect(b.stats.requests).toBe(0);
    await eventually(() => expect(a.stats.aborts).toBe(1));

    const stream = await client.chat.completions.create({
      ...ask('failover', 'idle sdk [[mock:chunkdelay=600,chunks=3]]'),
      stream: true,
    });
    const err = await failure(
      (async () => {
        for await (const _ of stream) {
        }
      })(),
    );
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect(err.error).toMatchObject({ code: 'upstream_timeout' });
  });
});

describe('connection failures', () => {
  it('move a refused connection to the next route and count it as connect_error', async () => {
    const DEAD_FIRST = routed('dead-first', [
      { upstream: 'dead', priority: 1 },
      { upstream: 'secondary', priority: 2 },
    ]);
    const { gw, client } = await start([DEAD_FIRST, routed('dead-only', [{ upstream: 'dead' }])]);
    const json = await complete(client, 'dead-first', 'refused');
    expect(json).toEqual({ text: 'echo: refused', upstream: 'secondary' });
    const stream = await streamed(client, 'dead-first', 'refused stream');
    expect(stream).toEqual({ text: 'echo: refused stream', upstream: 'secondary' });
    expect(
      await metric(gw, 'tollgate_upstream_retries_total', { upstream: 'dead', reason: 'connect_error' }),
    ).toBe(2);
    // With no other route: 502 upstream_error, without the upstream's address.
    const err = await failure(client.chat.completions.create(ask('dead-only', 'nowhere')));
    expect(err.status).toBe(502);
    expect(err.code).toBe('upstream_error');
    expect(err.message).not.toContain(String(closedPort));
  });
});

describe('an OpenAI and an Azure upstream serving one model', () => {
  it('serve it interchangeably: both get traffic, every answer valid and identical, JSON and streams', async () => {
    const { client } = await start([
      routed('gpt-4.1-mini', [
        { upstream: 'primary', priority: 1, weight: 1 },
        { upstream: 'azure', priority: 1, weight: 1 },
      ]),
    ]);
    const PROMPT = 'the same question';
    const answers = await pool(40, 8, async (i) => {
      if (i % 2 === 0) {
        const { data, response } = await client.chat.completions
          .create({ ...ask('gpt-4.1-mini', PROMPT), max_tokens: 50 })
          .withResponse();
        expect(data.object).toBe('chat.completion');
        expect(data.choices).toHaveLength(1);
        expect(data.choices[0]?.finish_reason).toBe('stop');
        expect(data.usage?.total_tokens).toBeGreaterThan(0);
        return {
          kind: 'json',
          text: data.choices[0]?.message.content,
          upstream: response.headers.get('x-tollgate-upstream'),
        };
      }
      const { data, response } = await client.chat.completions
        .create({ ...ask('gpt-4.1-mini', PROMPT), stream: true, stream_options: { include_usage: true } })
        .withResponse();
      let text = '';
      let finish: string | null = null;
      let usage = 0;
      for await (const chunk of data) {
        expect(chunk.object === 'chat.completion.chunk' || chunk.choices.length === 0).toBe(true);
        text += chunk.choices[0]?.delta.content ?? '';
        finish = chunk.choices[0]?.finish_reason ?? finish;
        usage = chunk.usage?.total_tokens ?? usage;
      }
      expect(finish).toBe('stop');
      expect(usage).toBeGreaterThan(0);
      return { kind: 'stream', text, upstream: response.headers.get('x-tollgate-upstream') };
    });
    expect(answers.every((r) => r.text === `echo: ${PROMPT}`)).toBe(true);
    const by = (u: string, kind?: string) =>
      answers.filter((r) => r.upstream === u && (!kind || r.kind === kind));
    expect(by('primary').length + by('azure').length).toBe(40);
    expect(by('primary').length).toBeGreaterThan(0);
    expect(by('azure').length).toBeGreaterThan(0);
    expect(a.stats.requests).toBe(by('primary').length);
    expect(b.stats.requests).toBe(by('azure').length);
    // Each upstream got its own dialect: path, credential header and model.
    for (const r of a.requests) {
      expect(r.path).toBe('/v1/chat/completions');
      expect(r.headers['authorization']).toBe(`Bearer ${MOCK_KEY}`);
      expect(r.body.model).toBe('gpt-4.1-mini');
    }
    for (const r of b.requests) {
      expect(r.path).toBe('/openai/deployments/gpt-4.1-mini/chat/completions');
      expect(r.query['api-version']).toBe('2024-10-21');
      expect(r.headers['api-key']).toBe(MOCK_KEY);
      expect(r.headers['authorization']).toBeUndefined();
    }
  });
});

/** An upstream that sends its SSE headers at once and its first chunk only after `ms`. */
async function startSlowStart(ms: number): Promise<{ url: string; close(): Promise<void> }> {
  const chunk = (delta: Record<string, unknown>, finish: string | null) =>
    `data: ${JSON.stringify({
      id: 'chatcmpl-slow',
      object: 'chat.completion.chunk',
      created: 0,
      model: 'gpt-4.1-mini',
      choices: [{ index: 0, delta, finish_reason: finish }],
    })}\n\n`;
  const server: Server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.flushHeaders();
      const timer = setTimeout(() => {
        res.write(chunk({ role: 'assistant', content: 'slow' }, null));
        res.write(chunk({ content: ' start' }, null));
        res.write(chunk({}, 'stop'));
        res.write(
          `data: ${JSON.stringify({ id: 'chatcmpl-slow', object: 'chat.completion.chunk', created: 0, model: 'gpt-4.1-mini', choices: [], usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 } })}\n\n`,
        );
        res.end('data: [DONE]\n\n');
      }, ms);
      res.on('close', () => clearTimeout(timer));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((done) => {
        server.closeAllConnections();
        server.close(() => done());
      }),
  };
}
