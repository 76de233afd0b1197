// Issue 9, item 2: concurrent storms of upstream faults. Every faulty request gets a clean error
// (the envelope, or an error event then [DONE] once a stream has started), never a 500 or a hang,
// and afterwards the gateway is healthy: /healthz, a normal request, no request left in flight.

import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { eventually } from '../support/eventually.js';
import { MOCK_KEY, startTestGateway, type TestGateway } from '../support/gateway.js';
import {
  type Answer,
  call,
  chat,
  envelopeProblem,
  metricSum,
  report,
  streamOutcome,
  tally,
} from './helpers.js';

// Each fault, sent as a directive in the last user message (see test/mock-upstream/index.ts).
const FAULTS: Record<string, string> = {
  '500 storm': 'status=500',
  '502 storm': 'status=502',
  '503 storm': 'status=503,retryms=200',
  '429 storm': 'status=429,retryms=200',
  hang: 'hang=1',
  reset: 'reset=1',
  'mid-stream drop': 'drop=2,chunks=5',
  'malformed JSON': 'malformed=json',
  'malformed SSE': 'malformed=sse',
};
const PER_FAULT = 8; // of each kind, JSON and stream each, per storm
const TIMEOUT_MS = 1500;

/** Where SPEC section 4 puts each fault once every attempt has met it (JSON, stream). */
const EXPECTED: Record<string, { json: number; stream: number }> = {
  '500 storm': { json: 502, stream: 502 },
  '502 storm': { json: 502, stream: 502 },
  '503 storm': { json: 502, stream: 502 },
  '429 storm': { json: 429, stream: 429 },
  hang: { json: 504, stream: 504 },
  reset: { json: 502, stream: 502 },
  // A stream that has started can only end with an error event (status 200).
  'mid-stream drop': { json: 502, stream: 200 },
  'malformed JSON': { json: 502, stream: 200 },
  'malformed SSE': { json: 502, stream: 200 },
};

let mock: MockUpstream;
const gateways: TestGateway[] = [];

beforeAll(async () => {
  mock = await startMockUpstream();
});
afterAll(async () => {
  for (const g of gateways) await g.close();
  await mock?.close();
});

/** A gateway with two routes on the mock (every fault is retried on the second) and small timeouts. */
async function faultGateway(failureThreshold: number): Promise<{ gw: TestGateway; key: string }> {
  const gw = await startTestGateway({
    upstreams: [
      { name: 'primary', type: 'openai', baseURL: `${mock.url}/v1`, apiKey: MOCK_KEY },
      {
        name: 'secondary',
        type: 'azure',
        endpoint: mock.url,
        apiKey: MOCK_KEY,
        deployment: 'gpt-4.1-mini',
        apiVersion: '2024-10-21',
      },
    ],
    models: [
      {
        id: 'gpt-4.1-mini',
        pricing: { inputPerMTok: 0.4, cachedInputPerMTok: 0.1, outputPerMTok: 1.6 },
        routes: [
          { upstream: 'primary', priority: 1 },
          { upstream: 'secondary', priority: 2 },
        ],
      },
    ],
    routing: {
      retries: 2,
      timeouts: { connectMs: 1000, firstByteMs: TIMEOUT_MS, idleMs: TIMEOUT_MS, requestMs: TIMEOUT_MS },
      circuitBreaker: { failureThreshold, cooldownSeconds: 1 },
    },
    limits: { defaults: { rpm: null, tpm: null, maxConcurrent: null } },
  });
  gateways.push(gw);
  const { key } = await gw.issueKey({ team: 'faults' });
  // Warm the process up: the first requests of a cold process are many times slower.
  for (let i = 0; i < 3; i++) {
    await Promise.all(Array.from({ length: 20 }, (_, j) => chat(gw.url, key, `warm ${i} ${j}`)));
  }
  return { gw, key };
}

interface Outcome {
  fault: string;
  stream: boolean;
  answer: Answer;
  /** null when the answer is a clean error; otherwise what is wrong with it. */
  problem: string | null;
}

/** Judges one answer to a faulty request: never a success, never a 500, always clean. */
function judge(fault: string, stream: boolean, a: Answer): Outcome {
  let problem: string | null = null;
  if (a.status === 0) problem = `no answer: ${a.error}`;
  else if (a.status === 500) problem = `500: ${a.text}`;
  else if (a.status === 200 && stream) {
    if (!/text\/event-stream/.test(a.headers.get('content-type') ?? '')) problem = 'stream without SSE type';
    else if (!a.headers.get('x-request-id')) problem = 'stream without x-request-id';
    else {
      const outcome = streamOutcome(a.text);
      if (outcome !== 'error') problem = `stream ended ${outcome}`;
    }
  } else if (a.status < 400) problem = `status ${a.status} for a fault`;
  else problem = envelopeProblem(a);
  return { fault, stream, answer: a, problem };
}

/** Every fault kind × PER_FAULT × JSON and stream, all at once. */
async function storm(gw: TestGateway, key: string, label: string): Promise<Outcome[]> {
  const jobs: Promise<Outcome>[] = [];
  for (const [fault, directive] of Object.entries(FAULTS)) {
    for (let i = 0; i < PER_FAULT; i++) {
      for (const stream of [false, true]) {
        const content = `${label} ${fault} ${i} ${stream} [[mock:${directive}]]`;
        jobs.push(
          chat(gw.url, key, content, stream ? { stream: true } : {}, { timeoutMs: 15_000 }).then((a) =>
            judge(fault, stream, a),
          ),
        );
      }
    }
  }
  const outcomes = await Promise.all(jobs);
  const bad = outcomes.filter((o) => o.problem !== null);
  expect(bad.map((o) => `${o.fault} ${o.stream ? 'stream' : 'json'}: ${o.problem}`)).toEqual([]);
  // No upstream credential, address or stack trace in anything a client saw.
  const seen = outcomes.map((o) => o.answer.text + JSON.stringify([...o.answer.headers])).join('\n');
  expect(seen).not.toContain(MOCK_KEY);
  expect(seen).not.toContain(`127.0.0.1:${mock.port}`);
  expect(seen).not.toMatch(/\n\s+at .*\.(ts|js):\d+/);
  return outcomes;
}

/** Statuses per fault kind and form, e.g. { 'reset json': { 502: 8 } }. */
function table(outcomes: Outcome[]): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  for (const o of outcomes) {
    const row = `${o.fault} ${o.stream ? 'stream' : 'json'}`;
    out[row] ??= {};
    out[row]![o.answer.status] = (out[row]![o.answer.status] ?? 0) + 1;
  }
  return out;
}

/** The storm's figures for the reliability report (RELIABILITY_REPORT). */
function reportStorm(storm: string, outcomes: Outcome[], started: number): Promise<void> {
  return report('upstream-faults', {
    storm,
    requests: outcomes.length,
    upstreamRequests: mock.stats.requests,
    statuses: tally(outcomes, (o) => o.answer.status),
    failures: outcomes.filter((o) => o.problem !== null).length,
    ms: Date.now() - started,
  });
}

async function expectHealthy(gw: TestGateway, key: string): Promise<void> {
  expect((await call(`${gw.url}/healthz`)).status).toBe(200);
  // A normal request succeeds (at once, or once a breaker's one-second cooldown has passed).
  await eventually(async () => {
    const a = await chat(gw.url, key, `normal ${Date.now()}`);
    expect(a.status, a.text).toBe(200);
    expect(JSON.parse(a.text).choices[0].message.content).toMatch(/^echo: normal/);
    const s = await chat(gw.url, key, `normal stream ${Date.now()}`, { stream: true });
    expect(s.status).toBe(200);
    expect(streamOutcome(s.text)).toBe('done');
  }, 5000);
  // Nothing is left running, in the gateway or upstream.
  await eventually(async () => {
    const registry = gw.gateway.runtime.metrics!.registry;
    expect(await metricSum(registry, 'tollgate_inflight_requests')).toBe(0);
    expect(mock.stats.inflight).toBe(0);
  }, 3000);
}

/** A raw upstream answering 200 text/event-stream with a garbled body, chosen by `variant=<name>`. */
const GARBLED: Record<string, string> = {
  // The last event is cut before its blank line and no [DONE] follows.
  unterminated: `${chunk('he')}${chunk('llo').trimEnd()}`,
  // A line that is no SSE field at all, after a good event.
  'stray line': `${chunk('one')}HTTP/1.1 200 OK\n\n${chunk('two')}data: [DONE]\n\n`,
  // Binary noise after a good event.
  binary: `${chunk('one')}\u0000\u00ff\u0001garbage\n\ndata: [DONE]\n\n`,
  // A JSON error body where events were expected.
  'json body': '{"error":{"message":"oops"}}',
  // A data line cut in the middle of its JSON, then the stream ends.
  'cut data line': `${chunk('one')}data: {"id":"x","choices":[{"delta":{"content":"t`,
};

function chunk(content: string): string {
  return `data: ${JSON.stringify({ id: 'chatcmpl-x', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content }, finish_reason: null }] })}\n\n`;
}

function startGarbledUpstream(): Promise<{ url: string; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      const variant = /variant=([\w ]+?)(?:\]|$)/.exec(Buffer.concat(parts).toString())?.[1] ?? '';
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(GARBLED[variant] ?? 'data: [DONE]\n\n');
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      resolve({
        url: `http://127.0.0.1:${port}`,
        close: () =>
          new Promise<void>((done) => {
            server.closeAllConnections();
            server.close(() => done());
          }),
      });
    });
  });
}

describe('upstream fault storms', () => {
  it('every attempt meets the fault (breaker out of the way): each kind ends as SPEC section 4 says', async () => {
    const { gw, key } = await faultGateway(1_000_000);
    mock.reset();
    const started = Date.now();
    const outcomes = await storm(gw, key, 'all');
    const expected: Record<string, Record<string, number>> = {};
    for (const [fault, e] of Object.entries(EXPECTED)) {
      expected[`${fault} json`] = { [e.json]: PER_FAULT };
      expected[`${fault} stream`] = { [e.stream]: PER_FAULT };
    }
    expect(table(outcomes)).toEqual(expected);
    // Every request met its fault upstream, many on both routes.
    expect(mock.stats.requests).toBeGreaterThan(outcomes.length * 1.5);
    expect(mock.stats.requests).toBeLessThanOrEqual(outcomes.length * 2);
    await expectHealthy(gw, key);
    await reportStorm('breaker off', outcomes, started);
  }, 30_000);

  it('with the shipped breaker (opens after 5 failures): two storms answered cleanly, healthy after each', async () => {
    const { gw, key } = await faultGateway(5);
    mock.reset();
    const started = Date.now();
    const all: Outcome[] = [];
    for (const wave of [1, 2]) {
      const outcomes = await storm(gw, key, `wave ${wave}`);
      all.push(...outcomes);
      // An open circuit answers 502 at once; everything else lands as above.
      for (const o of outcomes) {
        const want = EXPECTED[o.fault]![o.stream ? 'stream' : 'json'];
        expect([want, 502, 503], `${o.fault} ${o.stream}`).toContain(o.answer.status);
      }
      await expectHealthy(gw, key);
    }
    expect(
      await metricSum(gw.gateway.runtime.metrics!.registry, 'tollgate_upstream_retries_total', {
        reason: 'circuit_open',
      }),
    ).toBeGreaterThan(0);
    await reportStorm('shipped breaker', all, started);
  }, 40_000);

  it('ends garbled upstream streams (cut, stray lines, binary, a JSON body) with an error event, never a clean end', async () => {
    const garbled = await startGarbledUpstream();
    try {
      const gw = await startTestGateway({
        upstreams: [{ name: 'garbled', type: 'openai', baseURL: `${garbled.url}/v1`, apiKey: MOCK_KEY }],
        models: [
          {
            id: 'gpt-4.1-mini',
            pricing: { inputPerMTok: 0.4, cachedInputPerMTok: 0.1, outputPerMTok: 1.6 },
            routes: [{ upstream: 'garbled' }],
          },
        ],
        // Every variant must reach the upstream, not an open circuit.
        routing: { circuitBreaker: { failureThreshold: 1_000_000, cooldownSeconds: 1 } },
        cache: { enabled: false },
      });
      gateways.push(gw);
      const { key } = await gw.issueKey({});
      const answers = await Promise.all(
        Object.keys(GARBLED).flatMap((variant) =>
          Array.from({ length: 4 }, (_, i) =>
            chat(gw.url, key, `${i} [variant=${variant}]`, { stream: true }).then((a) => ({ variant, a })),
          ),
        ),
      );
      for (const { variant, a } of answers) {
        expect(a.status, `${variant} ${a.text}`).toBe(200);
        expect(streamOutcome(a.text), `${variant}: ${JSON.stringify(a.text)}`).toBe('error');
        // Whatever the client's SSE parser makes of it, every data line it gets is JSON or [DONE].
        for (const line of a.text.split('\n').filter((l) => l.startsWith('data: '))) {
          const data = line.slice('data: '.length);
          if (data !== '[DONE]') expect(() => JSON.parse(data), `${variant}: ${line}`).not.toThrow();
        }
      }
    } finally {
      await garbled.close();
    }
  });
});
