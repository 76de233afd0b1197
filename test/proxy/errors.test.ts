import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import { type AddressInfo, createServer } from 'node:net';
import { Readable } from 'node:stream';
import OpenAI from 'openai';
import { errors as undiciErrors } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { generateKey } from '../../src/auth/key-format.js';
import type { ModelConfig } from '../../src/config/schema.js';
import { Cancel } from '../../src/upstream/cancel.js';
import { Router } from '../../src/upstream/router.js';
import type { Upstream } from '../../src/upstream/upstream.js';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { MOCK_KEY, model, startTestGateway, type TestGateway } from '../support/gateway.js';

// Every refusal and failure answers OpenAI's envelope with all four keys and an x-request-id;
// never a 500, never the upstream's credential or address.

let mock: MockUpstream;
let gw: TestGateway;
let key: string;
let keyId: string;
let client: OpenAI;
let closedPort: number;
let stall: { url: string; close(): Promise<void> };

/** An upstream that answers 200 with SSE headers at once, then never sends a byte. */
function startStallingUpstream(): Promise<{ url: string; close(): Promise<void> }> {
  const server = createHttpServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.flushHeaders();
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address() as AddressInfo;
      resolve({
        url: `http://127.0.0.1:${addr.port}`,
        close: () =>
          new Promise<void>((done) => {
            server.closeAllConnections();
            server.close(() => done());
          }),
      });
    });
  });
}

const BODY_LIMIT = 2048;

function closedPortNow(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 0));
    });
  });
}

beforeAll(async () => {
  mock = await startMockUpstream();
  closedPort = await closedPortNow();
  stall = await startStallingUpstream();
  gw = await startTestGateway({
    server: { bodyLimitBytes: BODY_LIMIT },
    upstreams: [
      { name: 'openai', type: 'openai', baseURL: `${mock.url}/v1`, apiKey: MOCK_KEY },
      { name: 'openai-b', type: 'openai', baseURL: `${mock.url}/v1`, apiKey: MOCK_KEY },
      {
        name: 'azure',
        type: 'azure',
        endpoint: mock.url,
        apiKey: MOCK_KEY,
        deployment: 'gpt-4.1-mini',
        apiVersion: '2024-10-21',
      },
      { name: 'dead', type: 'openai', baseURL: `http://127.0.0.1:${closedPort}/v1`, apiKey: MOCK_KEY },
      { name: 'stall', type: 'openai', baseURL: `${stall.url}/v1`, apiKey: MOCK_KEY },
    ],
    models: [
      model('gpt-4.1-mini', 'openai'),
      model('via-azure', 'azure'),
      { ...model('small-out', 'openai'), maxOutputTokens: 100 },
      model('dead-model', 'dead'),
      model('stall-only', 'stall'),
      {
        ...model('stall-first', 'stall'),
        routes: [
          { upstream: 'stall', priority: 1 },
          { upstream: 'openai', priority: 2 },
        ],
      },
      {
        ...model('fallback', 'openai'),
        routes: [
          { upstream: 'openai', priority: 1 },
          { upstream: 'openai-b', priority: 2 },
        ],
      },
    ],
    routing: {
      retries: 2,
      timeouts: { requestMs: 400, firstByteMs: 400, idleMs: 2000 },
      // Many deliberate failures below: the breaker must not change the answers.
      circuitBreaker: { failureThreshold: 100000, cooldownSeconds: 1 },
    },
    // Deliberate upstream 429s would otherwise be cached or limited; keep the gateway's own out of the way.
    cache: { enabled: false },
    limits: { defaults: { rpm: null, tpm: null, maxConcurrent: null } },
  });
  ({ key, id: keyId } = await gw.issueKey({ team: 'errors' }));
  client = new OpenAI({ apiKey: key, baseURL: `${gw.url}/v1`, maxRetries: 0 });
});
afterAll(async () => {
  await gw?.close();
  await mock?.close();
  await stall?.close();
});
beforeEach(() => mock.reset());

// Everything the gateway said, checked after each test for leaks.
const seen: string[] = [];
afterEach(() => {
  const all = seen.join('\n');
  seen.length = 0;
  expect(all).not.toContain(MOCK_KEY);
  expect(all).not.toContain(`127.0.0.1:${mock.port}`);
  expect(all).not.toContain(`127.0.0.1:${closedPort}`);
  expect(all).not.toMatch(/\n\s+at .*\.(ts|js):\d+/); // no stack trace
});

interface RawResponse {
  status: number;
  headers: Headers;
  text: string;
  json: any;
}

async function raw(
  path: string,
  init: {
    method?: string;
    body?: string | object;
    headers?: Record<string, string>;
    key?: string | null;
  } = {},
): Promise<RawResponse> {
  const headers: Record<string, string> = { 'content-type': 'application/json', ...init.headers };
  if (init.key !== null) headers['authorization'] = `Bearer ${init.key ?? key}`;
  const res = await fetch(gw.url + path, {
    method: init.method ?? 'POST',
    headers,
    ...(init.body !== undefined && {
      body: typeof init.body === 'string' ? init.body : JSON.stringify(init.body),
    }),
  });
  const text = await res.text();
  seen.push(text, JSON.stringify([...res.headers]));
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, headers: res.headers, text, json };
}

/** Asserts OpenAI's error envelope: all four keys, strings or null, and an x-request-id. */
function expectEnvelope(
  res: RawResponse,
  status: number,
  expected: { code?: string | null; type?: string; param?: string | null } = {},
): void {
  expect(res.status, res.text).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/application\/json/);
  expect(res.headers.get('x-request-id')).toBeTruthy();
  expect(Object.keys(res.json)).toEqual(['error']);
  const e = res.json.error;
  expect(Object.keys(e).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(typeof e.message).toBe('string');
  expect(e.message.length).toBeGreaterThan(0);
  expect(typeof e.type).toBe('string');
  expect(e.param === null || typeof e.param === 'string').toBe(true);
  expect(e.code === null || typeof e.code === 'string').toBe(true);
  if (expected.code !== undefined) expect(e.code).toBe(expected.code);
  if (expected.type !== undefined) expect(e.type).toBe(expected.type);
  if (expected.param !== undefined) expect(e.param).toBe(expected.param);
}

/** Runs an SDK call that must fail and returns the error, remembering it for the leak checks. */
async function sdkError(p: Promise<unknown>): Promise<any> {
  const err = await p.then(
    () => {
      throw new Error('expected the call to fail');
    },
    (e: unknown) => e,
  );
  seen.push(String((err as Error).message), JSON.stringify((err as { error?: unknown }).error ?? null));
  return err;
}

const chat = (content: string, extra: Record<string, unknown> = {}): any => ({
  model: 'gpt-4.1-mini',
  messages: [{ role: 'user', content }],
  ...extra,
});

const streamChat = (
  content: string,
  extra: Record<string, unknown> = {},
): OpenAI.ChatCompletionCreateParamsStreaming => ({ ...chat(content, extra), stream: true });

describe('bad requests', () => {
  it('refuses malformed JSON', async () => {
    const res = await raw('/v1/chat/completions', { body: '{"model": "gpt-4.1-mini", "messages": [' });
    expectEnvelope(res, 400, { code: 'invalid_request_error', type: 'invalid_request_error' });
    expect(mock.stats.requests).toBe(0);
  });

  it.each([
    ['messages not an array', { model: 'gpt-4.1-mini', messages: 'hi' }, 'messages'],
    ['model not a string', { model: 42, messages: [{ role: 'user', content: 'x' }] }, 'model'],
    ['stream not a boolean', { ...chat('x'), stream: 'yes' }, 'stream'],
    ['max_tokens not an integer', { ...chat('x'), max_tokens: 1.5 }, 'max_tokens'],
    ['max_tokens a string', { ...chat('x'), max_tokens: '10' }, 'max_tokens'],
    ['max_completion_tokens zero', { ...chat('x'), max_completion_tokens: 0 }, 'max_completion_tokens'],
    ['missing messages', { model: 'gpt-4.1-mini' }, 'messages'],
    ['empty messages', { model: 'gpt-4.1-mini', messages: [] }, 'messages'],
    ['a message without a role', { model: 'gpt-4.1-mini', messages: [{ content: 'x' }] }, 'messages[0]'],
    [
      'stream_options without stream',
      { ...chat('x'), stream_options: { include_usage: true } },
      'stream_options',
    ],
  ])('refuses %s', async (_name, body, param) => {
    const res = await raw('/v1/chat/completions', { body });
    expectEnvelope(res, 400, { code: 'invalid_request_error', type: 'invalid_request_error', param });
    expect(mock.stats.requests).toBe(0);
  });

  it('refuses a body that is not an object', async () => {
    for (const body of ['[]', '"text"', 'null', '42']) {
      expectEnvelope(await raw('/v1/chat/completions', { body }), 400, { code: 'invalid_request_error' });
    }
  });

  it('refuses a wrong content type', async () => {
    const res = await raw('/v1/chat/completions', {
      body: JSON.stringify(chat('x')),
      headers: { 'content-type': 'text/plain' },
    });
    expectEnvelope(res, 400, { code: 'invalid_request_error', type: 'invalid_request_error' });
    expect(res.json.error.message).toMatch(/content type/i);
  });

  it('refuses a missing model', async () => {
    const res = await raw('/v1/chat/completions', { body: { messages: [{ role: 'user', content: 'x' }] } });
    expectEnvelope(res, 400, { code: 'invalid_request_error', param: 'model' });
  });

  it('refuses an oversize body announced by content-length with 413', async () => {
    const res = await raw('/v1/chat/completions', { body: chat('x'.repeat(BODY_LIMIT * 2)) });
    expectEnvelope(res, 413, { code: 'request_too_large', type: 'invalid_request_error' });
    expect(mock.stats.requests).toBe(0);
  });

  it('refuses an oversize chunked body with 413 as soon as the limit is passed', async () => {
    const { status, text, headers } = await new Promise<{ status: number; text: string; headers: any }>(
      (resolve, reject) => {
        const url = new URL(`${gw.url}/v1/chat/completions`);
        const req = httpRequest(
          {
            host: url.hostname,
            port: url.port,
            path: url.pathname,
            method: 'POST',
            headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          },
          (res) => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (s: string) => {
              body += s;
            });
            res.on('end', () => {
              clearInterval(timer);
              req.destroy();
              resolve({ status: res.statusCode ?? 0, text: body, headers: res.headers });
            });
          },
        );
        req.on('error', (e) => {
          clearInterval(timer);
          reject(e);
        });
        expect(req.getHeader('content-length')).toBeUndefined();
        req.write(`{"model":"gpt-4.1-mini","messages":[{"role":"user","content":"`);
        // Keep writing: the answer must come while the body is still arriving (never ended).
        let sent = 0;
        const timer = setInterval(() => {
          if (sent > 200) {
            clearInterval(timer);
            return;
          }
          sent++;
          req.write('y'.repeat(512));
        }, 5);
      },
    );
    seen.push(text);
    expect(headers['transfer-encoding'] === 'chunked' || headers['content-length'] !== undefined).toBe(true);
    expectEnvelope({ status, text, json: JSON.parse(text), headers: new Headers(headers) }, 413, {
      code: 'request_too_large',
    });
    expect(mock.stats.requests).toBe(0);
    // The gateway still serves the next request.
    expect((await client.chat.completions.create(chat('after 413'))).choices[0]?.message.content).toBe(
      'echo: after 413',
    );
  });

  it('accepts a chunked body under the limit', async () => {
    const res = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const url = new URL(`${gw.url}/v1/chat/completions`);
      const req = httpRequest(
        {
          host: url.hostname,
          port: url.port,
          path: url.pathname,
          method: 'POST',
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        },
        (r) => {
          let body = '';
          r.setEncoding('utf8');
          r.on('data', (s: string) => {
            body += s;
          });
          r.on('end', () => resolve({ status: r.statusCode ?? 0, text: body }));
        },
      );
      req.on('error', reject);
      req.write('{"model":"gpt-4.1-mini",');
      req.write('"messages":[{"role":"user","content":"chunked"}]}');
      req.end();
    });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text).choices[0].message.content).toBe('echo: chunked');
  });

  it('answers an unknown model with 404 model_not_found', async () => {
    const err = await sdkError(client.chat.completions.create({ ...chat('x'), model: 'gpt-9-ultra' }));
    expect(err).toBeInstanceOf(OpenAI.NotFoundError);
    expect(err.code).toBe('model_not_found');
    expect(err.type).toBe('invalid_request_error');
    expect(err.param).toBe('model');
    expect(err.requestID).toBeTruthy();
    expect(mock.stats.requests).toBe(0);
  });

  it('refuses max_tokens above the model maximum', async () => {
    for (const field of ['max_tokens', 'max_completion_tokens']) {
      const err = await sdkError(
        client.chat.completions.create({ ...chat('x'), model: 'small-out', [field]: 101 }),
      );
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      expect(err.code).toBe('invalid_request_error');
      expect(err.type).toBe('invalid_request_error');
      expect(err.param).toBe(field);
      expect(err.message).toMatch(/100/);
    }
    expect(mock.stats.requests).toBe(0);
    const ok = await client.chat.completions.create({
      ...chat('max ok'),
      model: 'small-out',
      max_tokens: 100,
    });
    expect(ok.choices[0]?.message.content).toBe('echo: max ok');
  });

  it('answers an unknown path with a 404 not_found envelope', async () => {
    for (const [method, path] of [
      ['GET', '/v1/nothing-here'],
      ['POST', '/v1/completions'],
      ['GET', '/'],
    ] as const) {
      const res = await raw(path, { method, ...(method === 'POST' && { body: chat('x') }) });
      expectEnvelope(res, 404, { code: 'not_found' });
    }
  });

  it('answers GET on the chat completions route with a 405 envelope', async () => {
    for (const path of ['/v1/chat/completions', '/openai/v1/chat/completions']) {
      const res = await raw(path, { method: 'GET' });
      expectEnvelope(res, 405, { code: 'method_not_allowed', type: 'invalid_request_error' });
    }
  });
});

describe('client keys', () => {
  const unauthorized = (res: RawResponse) =>
    expectEnvelope(res, 401, { code: 'invalid_api_key', type: 'invalid_request_error' });

  it('refuses a missing key', async () => {
    unauthorized(await raw('/v1/chat/completions', { body: chat('x'), key: null }));
    unauthorized(await raw('/v1/models', { method: 'GET', key: null }));
    unauthorized(
      await raw('/v1/chat/completions', {
        body: chat('x'),
        key: null,
        headers: { authorization: 'Basic abc' },
      }),
    );
  });

  it.each([
    ['an unknown key', () => generateKey()],
    ['a malformed key', () => 'sk-not-a-tollgate-key'],
    ['a key with a bad checksum', () => key.slice(0, -1) + (key.endsWith('A') ? 'B' : 'A')],
    ['the upstream key', () => MOCK_KEY],
  ])('refuses %s', async (_name, make) => {
    const bad = make();
    const c = new OpenAI({ apiKey: bad, baseURL: `${gw.url}/v1`, maxRetries: 0 });
    const err = await sdkError(c.chat.completions.create(chat('x')));
    expect(err).toBeInstanceOf(OpenAI.AuthenticationError);
    expect(err.code).toBe('invalid_api_key');
    expect(err.type).toBe('invalid_request_error');
    expect(err.requestID).toBeTruthy();
    // The same through the Azure-style header.
    unauthorized(
      await raw('/openai/v1/chat/completions', { body: chat('x'), key: null, headers: { 'api-key': bad } }),
    );
    expect(mock.stats.requests).toBe(0);
  });

  it('refuses an expired key', async () => {
    const k = await gw.issueKey({ team: 'errors', expiresAt: new Date(Date.now() + 60_000).toISOString() });
    const c = new OpenAI({ apiKey: k.key, baseURL: `${gw.url}/v1`, maxRetries: 0 });
    expect((await c.chat.completions.create(chat('before expiry'))).choices[0]?.message.content).toBe(
      'echo: before expiry',
    );
    const patched = await gw.admin('PATCH', `/admin/keys/${k.id}`, {
      expiresAt: new Date(Date.now() - 1000).toISOString(),
    });
    expect(patched.status).toBe(200);
    const err = await sdkError(c.chat.completions.create(chat('x')));
    expect(err).toBeInstanceOf(OpenAI.AuthenticationError);
    expect(err.code).toBe('invalid_api_key');
    expect(err.message).toMatch(/expired/);
    // Created already expired: refused from the start.
    const old = await gw.issueKey({ expiresAt: '2020-01-01T00:00:00Z' });
    unauthorized(await raw('/v1/chat/completions', { body: chat('x'), key: old.key }));
  });

  it('refuses a disabled key, and accepts it again once enabled', async () => {
    const k = await gw.issueKey({ team: 'errors' });
    const c = new OpenAI({ apiKey: k.key, baseURL: `${gw.url}/v1`, maxRetries: 0 });
    await c.chat.completions.create(chat('warm the cache'));
    expect((await gw.admin('PATCH', `/admin/keys/${k.id}`, { disabled: true })).status).toBe(200);
    const err = await sdkError(c.chat.completions.create(chat('x')));
    expect(err).toBeInstanceOf(OpenAI.AuthenticationError);
    expect(err.code).toBe('invalid_api_key');
    expect(err.message).toMatch(/disabled/);
    unauthorized(await raw('/v1/models', { method: 'GET', key: k.key }));
    expect((await gw.admin('PATCH', `/admin/keys/${k.id}`, { disabled: false })).status).toBe(200);
    expect((await c.chat.completions.create(chat('enabled'))).choices[0]?.message.content).toBe(
      'echo: enabled',
    );
  });

  it('never reaches the upstream with a refused key', async () => {
    expect(mock.stats.requests).toBe(0);
    expect(keyId).toMatch(/^key_/);
  });
});

describe('upstream failures', () => {
  it('answers 502 upstream_error when the upstream is unreachable', async () => {
    const err = await sdkError(client.chat.completions.create({ ...chat('x'), model: 'dead-model' }));
    expect(err).toBeInstanceOf(OpenAI.InternalServerError);
    expect(err.status).toBe(502);
    expect(err.code).toBe('upstream_error');
    expect(err.type).toBe('server_error');
    expect(err.requestID).toBeTruthy();
    const res = await raw('/v1/chat/completions', {
      body: { ...chat('x'), model: 'dead-model', stream: true },
    });
    expectEnvelope(res, 502, { code: 'upstream_error', type: 'server_error' });
  });

  it('answers 504 upstream_timeout when a non-streamed request outlasts requestMs, without retrying', async () => {
    const started = Date.now();
    const err = await sdkError(
      client.chat.completions.create({ ...chat('[[mock:hang=1]]'), model: 'fallback' }),
    );
    expect(err).toBeInstanceOf(OpenAI.InternalServerError);
    expect(err.status).toBe(504);
    expect(err.code).toBe('upstream_timeout');
    expect(err.type).toBe('server_error');
    expect(Date.now() - started).toBeLessThan(3000);
    // Not retried on the second route: the upstream may bill it.
    expect(mock.stats.requests).toBe(1);
  });

  it('answers 504 upstream_timeout when a stream gets no first byte within firstByteMs', async () => {
    const started = Date.now();
    const err = await sdkError(
      (async () => {
        const stream = await client.chat.completions.create(streamChat('[[mock:hang=1]]'));
        for await (const _ of stream) {
        }
      })(),
    );
    expect(err).toBeInstanceOf(OpenAI.InternalServerError);
    expect(err.status).toBe(504);
    expect(err.code).toBe('upstream_timeout');
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it('moves a stream with no first byte on to the next route', async () => {
    mock.enqueue({ hang: true });
    const stream = await client.chat.completions.create(streamChat('second route', { model: 'fallback' }));
    let text = '';
    for await (const c of stream) text += c.choices[0]?.delta.content ?? '';
    expect(text).toBe('echo: second route');
    expect(mock.stats.requests).toBe(2);
  });

  it('passes an upstream 400 through with its status and message', async () => {
    const { response } = await client.chat.completions
      .create(chat('[[mock:status=400,code=context_length_exceeded]]'))
      .withResponse()
      .catch((e) => ({ response: e }));
    const err = response as any;
    seen.push(String(err.message));
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(err.code).toBe('context_length_exceeded');
    expect(err.param).toBe('messages');
    expect(err.type).toBe('invalid_request_error');
    expect(err.message).toMatch(/maximum context length is 1047576 tokens/);
    expect(err.requestID).toBeTruthy();
    // A client error is not retried.
    expect(mock.stats.requests).toBe(1);
    const res = await raw('/v1/chat/completions', { body: chat('[[mock:status=422]]') });
    expectEnvelope(res, 422, { type: 'invalid_request_error' });
  });

  it("normalises Azure's content_filter error (type null) to the envelope", async () => {
    const err = await sdkError(
      client.chat.completions.create({ ...chat('[[mock:status=400]]'), model: 'via-azure' }),
    );
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(err.code).toBe('content_filter');
    expect(typeof err.type).toBe('string');
    expect(err.type).toBe('invalid_request_error');
    expect(err.param).toBe('prompt');
    expect(err.message).toMatch(/content management policy/);
    expect(Object.keys(err.error).sort()).toEqual(['code', 'message', 'param', 'type']);
    const res = await raw('/v1/chat/completions', {
      body: { ...chat('[[mock:status=400]]'), model: 'via-azure' },
    });
    expectEnvelope(res, 400, { code: 'content_filter', type: 'invalid_request_error' });
  });

  it.each([401, 403, 404])('turns an upstream %i into 502 upstream_error', async (status) => {
    const err = await sdkError(client.chat.completions.create(chat(`[[mock:status=${status}]]`)));
    expect(err).toBeInstanceOf(OpenAI.InternalServerError);
    expect(err.status).toBe(502);
    expect(err.code).toBe('upstream_error');
    expect(err.type).toBe('server_error');
    // The upstream's own words (which name its key or model) stay inside.
    expect(err.message).not.toMatch(/Incorrect API key|does not exist|not allowed to sample/);
  });

  it('tries the next route after an upstream 401', async () => {
    mock.enqueue({ status: 401 });
    const { data, response } = await client.chat.completions
      .create({ ...chat('after 401'), model: 'fallback' })
      .withResponse();
    expect(data.choices[0]?.message.content).toBe('echo: after 401');
    expect(response.headers.get('x-tollgate-upstream')).toBe('openai-b');
    expect(mock.stats.requests).toBe(2);
  });

  it('answers 429 rate_limit_exceeded with its own retry-after when upstream 429s outlast the retries', async () => {
    const err = await sdkError(
      client.chat.completions.create({ ...chat('[[mock:status=429,retryms=2500]]'), model: 'fallback' }),
    );
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    expect(err.status).toBe(429);
    expect(err.code).toBe('rate_limit_exceeded');
    expect(typeof err.type).toBe('string');
    expect(err.headers.get('retry-after')).toBe('3');
    expect(Number(err.headers.get('retry-after-ms'))).toBe(2500);
    // The upstream's own message (its organisation, its limits) is not shown.
    expect(err.message).not.toMatch(/org-mock/);
    // Both routes were tried.
    expect(mock.stats.requests).toBe(2);
    const res = await raw('/v1/chat/completions', { body: chat('[[mock:status=429]]') });
    expectEnvelope(res, 429, { code: 'rate_limit_exceeded' });
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
  });

  it('answers 502 when every route fails with 5xx', async () => {
    const err = await sdkError(
      client.chat.completions.create({ ...chat('[[mock:status=503]]'), model: 'fallback' }),
    );
    expect(err).toBeInstanceOf(OpenAI.InternalServerError);
    expect(err.status).toBe(502);
    expect(err.code).toBe('upstream_error');
    expect(mock.stats.requests).toBe(2);
  });

  it('answers 502 when the upstream resets the connection', async () => {
    const res = await raw('/v1/chat/completions', { body: chat('[[mock:reset=1]]') });
    expectEnvelope(res, 502, { code: 'upstream_error', type: 'server_error' });
  });
});

describe('streams without a first chunk', () => {
  it('move on to the next route when the headers came but no chunk within firstByteMs', async () => {
    const started = Date.now();
    const stream = await client.chat.completions.create(streamChat('headers only', { model: 'stall-first' }));
    let text = '';
    for await (const c of stream) text += c.choices[0]?.delta.content ?? '';
    expect(text).toBe('echo: headers only');
    expect(Date.now() - started).toBeGreaterThanOrEqual(350);
    expect(Date.now() - started).toBeLessThan(3000);
    expect(mock.stats.requests).toBe(1);
  });

  it('answer 504 upstream_timeout when no route sends a chunk', async () => {
    const res = await raw('/v1/chat/completions', {
      body: { ...chat('stalled'), model: 'stall-only', stream: true },
    });
    expectEnvelope(res, 504, { code: 'upstream_timeout', type: 'server_error' });
  });
});

describe('the router', () => {
  const routing = {
    retries: 2,
    timeouts: { connectMs: 100, firstByteMs: 100, idleMs: 100, requestMs: 100 },
    circuitBreaker: { failureThreshold: 5, cooldownSeconds: 30 },
    maxRetryAfterMs: 10000,
  };
  const events = { retry: () => {}, upstreamResult: () => {}, circuit: () => {} };
  const fake = (name: string, request: () => Promise<unknown>): Upstream =>
    ({
      name,
      type: 'openai',
      pool: { request },
      path: '/v1/chat/completions',
      headers: {},
      modelFor: (id: string) => id,
    }) as unknown as Upstream;
  const dumpable = () => Object.assign(Readable.from([Buffer.from('{}')]), { dump: async () => {} });
  const ok = async () => ({ statusCode: 200, headers: {}, body: Readable.from([Buffer.from('{}')]) });
  const twoRoutes = (first: Upstream, second: Upstream) => {
    const m = {
      ...(model('m', 'first') as ModelConfig),
      routes: [
        { upstream: 'first', priority: 1, weight: 1 },
        { upstream: 'second', priority: 2, weight: 1 },
      ],
    } as ModelConfig;
    const router = new Router(
      new Map([
        ['first', first],
        ['second', second],
      ]),
      [m],
      routing,
      events,
    );
    return { router, m };
  };

  it('tries the next route after a connect timeout, even for a non-streamed request', async () => {
    const { router, m } = twoRoutes(
      fake('first', async () => {
        throw new undiciErrors.ConnectTimeoutError();
      }),
      fake('second', ok),
    );
    const res = await router.send(m, () => '{}', { stream: false, signal: new Cancel() });
    expect(res.upstream.name).toBe('second');
  });

  it('does not retry a non-streamed request whose answer timed out', async () => {
    let calls = 0;
    const { router, m } = twoRoutes(
      fake('first', async () => {
        calls++;
        throw new undiciErrors.HeadersTimeoutError();
      }),
      fake('second', async () => {
        calls++;
        return ok();
      }),
    );
    const err = await router
      .send(m, () => '{}', { stream: false, signal: new Cancel() })
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'upstream_timeout', status: 504 });
    expect(calls).toBe(1);
  });

  it('treats an upstream 408 as a timeout, not a credentials problem', async () => {
    const { router, m } = twoRoutes(
      fake('first', async () => ({ statusCode: 408, headers: {}, body: dumpable() })),
      fake('second', async () => ({ statusCode: 408, headers: {}, body: dumpable() })),
    );
    const err = await router
      .send(m, () => '{}', { stream: false, signal: new Cancel() })
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'upstream_error', status: 502 });
    expect((err as Error).message).not.toMatch(/credentials/);
  });

  it('moves a stream whose upstream ends before any chunk to the next route', async () => {
    const { router, m } = twoRoutes(
      fake('first', async () => ({ statusCode: 200, headers: {}, body: Readable.from([]) })),
      fake('second', async () => ({
        statusCode: 200,
        headers: {},
        body: Readable.from([Buffer.from('data: {}\n\n')]),
      })),
    );
    const res = await router.send(m, () => '{}', { stream: true, signal: new Cancel() });
    expect(res.upstream.name).toBe('second');
    const chunks: Buffer[] = [];
    for await (const c of res.body) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe('data: {}\n\n');
  });
});

describe('errors after a stream started', () => {
  it('throws an APIError from the SDK stream when the upstream drops mid-stream', async () => {
    const stream = await client.chat.completions.create(
      streamChat('drop me please [[mock:drop=2,chunks=5]]'),
    );
    let text = '';
    const err = await sdkError(
      (async () => {
        for await (const c of stream) text += c.choices[0]?.delta.content ?? '';
      })(),
    );
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect(err.status).toBeUndefined();
    expect(err.error).toMatchObject({ code: 'upstream_error', type: 'server_error' });
    expect(text.length).toBeGreaterThan(0);
  });

  it('ends the raw stream with an error event and [DONE]', async () => {
    const res = await raw('/v1/chat/completions', {
      body: { ...chat('drop me please [[mock:drop=2,chunks=5]]'), stream: true },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
    expect(res.headers.get('x-request-id')).toBeTruthy();
    const events = res.text.split('\n\n').filter((e) => e.length > 0);
    expect(events.at(-1)).toBe('data: [DONE]');
    const errorEvent = events.at(-2)!;
    expect(errorEvent.startsWith('data: {"error":')).toBe(true);
    const payload = JSON.parse(errorEvent.slice('data: '.length));
    expect(Object.keys(payload.error).sort()).toEqual(['code', 'message', 'param', 'type']);
    expect(payload.error.code).toBe('upstream_error');
    // Content came before the error.
    expect(events.slice(0, -2).some((e) => e.includes('"content"'))).toBe(true);
  });

  it('sends an error event when the upstream stops sending for idleMs', async () => {
    const res = await raw('/v1/chat/completions', {
      body: { ...chat('idle [[mock:chunkdelay=2500,chunks=3]]'), stream: true },
    });
    const events = res.text.split('\n\n').filter((e) => e.length > 0);
    expect(events.at(-1)).toBe('data: [DONE]');
    expect(JSON.parse(events.at(-2)!.slice(6)).error.code).toBe('upstream_timeout');
  });
});

describe('malformed upstream answers', () => {
  it('answers malformed upstream JSON with a clean 502, never a broken 200 or a 500', async () => {
    const res = await raw('/v1/chat/completions', { body: chat('[[mock:malformed=json]]') });
    expect(res.status).not.toBe(500);
    expectEnvelope(res, 502, { code: 'upstream_error', type: 'server_error' });
  });

  it('answers a malformed upstream SSE event with an error event, never a 500', async () => {
    const res = await raw('/v1/chat/completions', {
      body: { ...chat('[[mock:malformed=sse]]'), stream: true },
    });
    expect(res.status).toBe(200);
    const events = res.text.split('\n\n').filter((e) => e.length > 0);
    expect(events.at(-1)).toBe('data: [DONE]');
    // Every data event the client gets is valid JSON: the broken one became an error event.
    for (const e of events.slice(0, -1)) {
      expect(e.startsWith('data: ')).toBe(true);
      expect(() => JSON.parse(e.slice(6)), e).not.toThrow();
    }
    expect(JSON.parse(events.at(-2)!.slice(6)).error.code).toBe('upstream_error');
  });

  it('answers an upstream stream that ends without [DONE] with an error event', async () => {
    mock.enqueue({ dropAfterChunks: 3, chunks: 3 });
    const res = await raw('/v1/chat/completions', { body: { ...chat('cut at the end'), stream: true } });
    const events = res.text.split('\n\n').filter((e) => e.length > 0);
    expect(events.at(-1)).toBe('data: [DONE]');
    expect(JSON.parse(events.at(-2)!.slice(6)).error.code).toBe('upstream_error');
  });

  it('answers a JSON body cut halfway with 502', async () => {
    const res = await raw('/v1/chat/completions', { body: chat('[[mock:drop=1]]') });
    expectEnvelope(res, 502, { code: 'upstream_error' });
  });
});
