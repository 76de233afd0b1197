import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import OpenAI from 'openai';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { MOCK_KEY, startTestGateway, type TestGateway, twoUpstreams } from '../support/gateway.js';
import { type GatewayProcess, startGatewayProcess } from '../support/process.js';

let mock: MockUpstream;

beforeAll(async () => {
  mock = await startMockUpstream();
});
afterAll(async () => {
  await mock?.close();
});
beforeEach(() => mock.reset());

async function pollUntil(
  fn: () => boolean | Promise<boolean>,
  timeoutMs: number,
  stepMs = 10,
): Promise<number> {
  const start = Date.now();
  for (;;) {
    if (await fn()) return Date.now() - start;
    if (Date.now() - start > timeoutMs) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('client disconnects', () => {
  let gw: TestGateway;
  let key: string;
  // Its own connection pool: after an abort, undici opens a fresh idle connection that would
  // otherwise hold the gateway's shutdown until its grace period ends.
  const agent = new Agent();

  beforeAll(async () => {
    gw = await startTestGateway({ ...twoUpstreams(mock.url), cache: { enabled: false } });
    ({ key } = await gw.issueKey({ team: 'lifecycle' }));
  });
  afterAll(async () => {
    await agent.destroy();
    await gw?.close();
  });

  const post = (body: unknown, signal: AbortSignal) =>
    undiciFetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal,
      dispatcher: agent,
    });

  it('a client leaving mid-stream aborts the upstream request at once', async () => {
    const ac = new AbortController();
    const res = await post(
      {
        model: 'gpt-4.1-mini',
        stream: true,
        messages: [{ role: 'user', content: 'long story [[mock:chunkdelay=200,chunks=20]]' }],
      },
      ac.signal,
    );
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const first = await reader.read();
    expect(new TextDecoder().decode(first.value)).toContain('data: ');
    expect(mock.stats.inflight).toBe(1);
    ac.abort();
    await reader.cancel().catch(() => {});
    const took = await pollUntil(() => mock.stats.aborts === 1, 1000);
    expect(took).toBeLessThan(1000);
    expect(mock.stats.completed).toBe(0);
    expect(mock.stats.inflight).toBe(0);
  });

  it('a client leaving while a non-streamed request waits aborts the upstream request', async () => {
    const ac = new AbortController();
    const pending = post(
      { model: 'gpt-4.1-mini', messages: [{ role: 'user', content: 'slow [[mock:delay=3000]]' }] },
      ac.signal,
    ).catch((e: unknown) => e);
    await pollUntil(() => mock.stats.inflight === 1, 2000);
    ac.abort();
    expect(await pending).toBeInstanceOf(Error);
    const took = await pollUntil(() => mock.stats.aborts === 1, 1000);
    expect(took).toBeLessThan(1000);
    expect(mock.stats.completed).toBe(0);
  });

  it('a client leaving while a stream waits for its first byte aborts the upstream request', async () => {
    const ac = new AbortController();
    const pending = post(
      { model: 'gpt-4.1-mini', stream: true, messages: [{ role: 'user', content: 'x [[mock:delay=3000]]' }] },
      ac.signal,
    ).catch((e: unknown) => e);
    await pollUntil(() => mock.stats.inflight === 1, 2000);
    ac.abort();
    await pending;
    expect(await pollUntil(() => mock.stats.aborts === 1, 1000)).toBeLessThan(1000);
  });

  it('keeps serving after clients left', async () => {
    const client = new OpenAI({ apiKey: key, baseURL: `${gw.url}/v1`, maxRetries: 0 });
    const res = await client.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages: [{ role: 'user', content: 'still here' }],
    });
    expect(res.choices[0]?.message.content).toBe('echo: still here');
  });
});

describe('keep-alive comments', () => {
  let gw: TestGateway;
  let key: string;

  beforeAll(async () => {
    gw = await startTestGateway(
      { ...twoUpstreams(mock.url), cache: { enabled: false } },
      { keepAliveMs: 100 },
    );
    ({ key } = await gw.issueKey({ team: 'lifecycle' }));
  });
  afterAll(async () => {
    await gw?.close();
  });

  it('are sent while a stream waits for its first byte', async () => {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'gpt-4.1-mini',
        stream: true,
        messages: [{ role: 'user', content: 'wait for it [[mock:delay=350]]' }],
      }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
    expect(res.headers.get('x-request-id')).toBeTruthy();
    const text = await res.text();
    const firstData = text.indexOf('data: ');
    const firstPing = text.indexOf(': keep-alive\n\n');
    expect(firstPing).toBeGreaterThanOrEqual(0);
    expect(firstPing).toBeLessThan(firstData);
    // Only before the first byte: none after it.
    expect(text.slice(firstData)).not.toContain(': keep-alive');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });

  it('do not disturb the SDK', async () => {
    const client = new OpenAI({ apiKey: key, baseURL: `${gw.url}/v1`, maxRetries: 0 });
    const stream = await client.chat.completions.create({
      model: 'gpt-4.1-mini',
      stream: true,
      messages: [{ role: 'user', content: 'sdk waits [[mock:delay=350,chunks=4]]' }],
    });
    let text = '';
    let chunks = 0;
    for await (const c of stream) {
      chunks++;
      text += c.choices[0]?.delta.content ?? '';
    }
    expect(text).toBe('echo: sdk waits');
    expect(chunks).toBeGreaterThanOrEqual(4);
  });

  it('are not sent for a quick stream or a JSON answer', async () => {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'gpt-4.1-mini',
        stream: true,
        messages: [{ role: 'user', content: 'quick' }],
      }),
    });
    expect(await res.text()).not.toContain(': keep-alive');
    const json = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'gpt-4.1-mini',
        messages: [{ role: 'user', content: 'json [[mock:delay=350]]' }],
      }),
    });
    expect(json.status).toBe(200);
    expect(((await json.json()) as any).choices[0].message.content).toBe('echo: json');
  });
});

describe('SIGTERM', () => {
  let proc: GatewayProcess | undefined;
  afterAll(async () => {
    await proc?.terminate(1000);
  });

  it('drains: readiness off, in-flight stream completes, then the listener closes and the process exits 0', async () => {
    proc = await startGatewayProcess({
      server: { host: '127.0.0.1', port: 0, drainDelaySeconds: 1, shutdownGraceSeconds: 10 },
      upstreams: [{ name: 'openai', type: 'openai', baseURL: `${mock.url}/v1`, apiKey: MOCK_KEY }],
      models: [
        {
          id: 'gpt-4.1-mini',
          pricing: { inputPerMTok: 0.4, cachedInputPerMTok: 0.1, outputPerMTok: 1.6 },
          routes: [{ upstream: 'openai' }],
        },
      ],
      cache: { enabled: false },
    });
    const { url } = proc;
    const created = await fetch(`${url}/admin/keys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${proc.adminKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'drain' }),
    });
    expect(created.status).toBe(201);
    const { key } = (await created.json()) as { key: string };

    // A slow stream: 20 chunks, 100 ms apart.
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'gpt-4.1-mini',
        stream: true,
        messages: [{ role: 'user', content: 'drain me gently [[mock:chunkdelay=100,chunks=20]]' }],
      }),
    });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let body = decoder.decode((await reader.read()).value, { stream: true });
    const rest = (async () => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        body += decoder.decode(value, { stream: true });
      }
    })();

    // A JSON answer whose headers go out after the drain delay closes its connection behind it.
    const slow = new Promise<{ status: number; connection: string | undefined }>((resolve, reject) => {
      const r = httpRequest(
        `${url}/v1/chat/completions`,
        {
          method: 'POST',
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          agent: new HttpAgent({ keepAlive: true }),
        },
        (answer) => {
          answer.resume();
          answer.on('end', () =>
            resolve({ status: answer.statusCode ?? 0, connection: answer.headers.connection }),
          );
        },
      );
      r.on('error', reject);
      r.end(
        JSON.stringify({
          model: 'gpt-4.1-mini',
          messages: [{ role: 'user', content: 'slow [[mock:delay=1800]]' }],
        }),
      );
    });
    await pollUntil(() => mock.stats.inflight === 2, 2000);

    const signalledAt = Date.now();
    proc.kill('SIGTERM');

    // During the drain delay: not ready, but alive and still serving.
    await pollUntil(async () => (await fetch(`${url}/readyz`)).status === 503, 500);
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    const models = await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
    expect(models.status).toBe(200);
    expect(Date.now() - signalledAt).toBeLessThan(1000);

    // After the drain delay the listener is closed: new connections are refused.
    await sleep(Math.max(0, signalledAt + 1500 - Date.now()));
    const refused = await new Promise<string>((resolve) => {
      const s = connect(Number(new URL(url).port), '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve('connected');
      });
      s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    });
    expect(refused).toBe('ECONNREFUSED');
    expect(proc.child.exitCode).toBeNull();

    expect(await slow).toEqual({ status: 200, connection: 'close' });

    // The stream in flight runs to its end.
    await rest;
    const events = body.split('\n\n').filter((e) => e.length > 0);
    expect(events.at(-1)).toBe('data: [DONE]');
    const text = events
      .slice(0, -1)
      .map((e) => JSON.parse(e.slice('data: '.length)).choices[0]?.delta?.content ?? '')
      .join('');
    expect(text).toBe('echo: drain me gently');
    expect(body).not.toContain('"error"');
    expect(mock.stats.completed).toBe(2);

    const exit = await proc.exited;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(proc.stderr).toBe('');
    const msgs = proc.logLines().map((l) => l['msg']);
    expect(msgs).toContain('shutting down');
    expect(msgs).toContain('stopped');
    expect(proc.stdout).not.toContain(key);
    expect(proc.stdout).not.toContain(proc.adminKey);
    expect(proc.stdout).not.toContain(MOCK_KEY);
  }, 15_000);
});
