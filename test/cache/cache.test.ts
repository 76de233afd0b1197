import { randomBytes } from 'node:crypto';
import OpenAI from 'openai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { eventually } from '../support/eventually.js';
import { startTestGateway, type TestGateway, twoUpstreams } from '../support/gateway.js';
import { startOwnRedis } from '../support/redis-server.js';

const sdk = (gw: TestGateway, key: string) =>
  new OpenAI({ apiKey: key, baseURL: `${gw.url}/v1`, maxRetries: 0 });
const unique = () => randomBytes(4).toString('hex');

function post(
  gw: TestGateway,
  key: string,
  body: Record<string, unknown>,
  headers: Record<string, string> = {},
) {
  return fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'gpt-4.1-mini', ...body }),
  });
}

async function streamText(client: OpenAI, content: string, extra: Record<string, unknown> = {}) {
  const { data, response } = await client.chat.completions
    .create({ model: 'gpt-4.1-mini', stream: true, messages: [{ role: 'user', content }], ...extra })
    .withResponse();
  let text = '';
  const chunks = [];
  for await (const chunk of data) {
    chunks.push(chunk);
    text += chunk.choices[0]?.delta.content ?? '';
  }
  return { text, chunks, cache: response.headers.get('x-cache'), age: response.headers.get('age') };
}

describe('response cache', () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    mock = await startMockUpstream();
    // The broken-stream test fails on purpose; keep the breaker from opening on it.
    gw = await startTestGateway({
      ...twoUpstreams(mock.url),
      routing: { circuitBreaker: { failureThreshold: 100 } },
    });
  });
  afterAll(async () => {
    await gw?.close();
    await mock?.close();
  });
  beforeEach(() => mock.reset());

  it('answers a stream from a cached JSON response with identical content', async () => {
    const { key } = await gw.issueKey({ team: 'x1' });
    const client = sdk(gw, key);
    const content = `json first ${unique()} [[mock:chunks=4]]`;
    const { data: json, response } = await client.chat.completions
      .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content }] })
      .withResponse();
    expect(response.headers.get('x-cache')).toBe('MISS');
    const s = await streamText(client, content, { stream_options: { include_usage: true } });
    expect(s.cache).toBe('HIT');
    expect(Number(s.age)).toBeGreaterThanOrEqual(0);
    expect(s.text).toBe(json.choices[0]?.message.content);
    expect(s.chunks.at(-1)?.usage).toEqual(json.usage);
    expect(mock.stats.requests).toBe(1);
    // Without include_usage the replay has no usage chunk.
    const plain = await streamText(client, content);
    expect(plain.chunks.some((c) => c.usage)).toBe(false);
  });

  it('answers JSON from a cached stream, tool calls included', async () => {
    const { key } = await gw.issueKey({ team: 'x2' });
    const client = sdk(gw, key);
    const content = `stream first ${unique()} [[mock:chunks=5]]`;
    const s = await streamText(client, content);
    expect(s.cache).toBe('MISS');
    const { data: json, response } = await client.chat.completions
      .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content }] })
      .withResponse();
    expect(response.headers.get('x-cache')).toBe('HIT');
    expect(response.headers.get('server-timing')).toContain('cache;desc=hit');
    expect(json.choices[0]?.message.content).toBe(s.text);
    expect(json.usage?.completion_tokens).toBeGreaterThan(0);
    const tools = [
      {
        type: 'function' as const,
        function: { name: 'lookup', parameters: { type: 'object', properties: {} } },
      },
    ];
    const toolMsg = `tool ${unique()}`;
    const first = await client.chat.completions.create({
      model: 'gpt-4.1-mini',
      stream: true,
      tools,
      messages: [{ role: 'user', content: toolMsg }],
    });
    for await (const _ of first);
    const again = await client.chat.completions.create({
      model: 'gpt-4.1-mini',
      tools,
      messages: [{ role: 'user', content: toolMsg }],
    });
    expect(again.choices[0]?.message.tool_calls?.[0]).toMatchObject({
      type: 'function',
      function: { name: 'lookup' },
    });
    expect(mock.stats.requests).toBe(2);
  });

  it('ignores key order and the fields that cannot change the output, but not max_tokens', async () => {
    const { key } = await gw.issueKey({ team: 'x3' });
    const content = `order ${unique()}`;
    await post(gw, key, { messages: [{ role: 'user', content }], temperature: 0, user: 'a' });
    const reordered = await post(gw, key, {
      temperature: 0,
      user: 'b',
      metadata: { x: '1' },
      messages: [{ content, role: 'user' }],
    });
    expect(reordered.headers.get('x-cache')).toBe('HIT');
    const other = await post(gw, key, {
      messages: [{ role: 'user', content }],
      temperature: 0,
      max_tokens: 5,
    });
    expect(other.headers.get('x-cache')).toBe('MISS');
  });

  it('never shares entries between teams under team scope', async () => {
    const a = await gw.issueKey({ team: 'red' });
    const a2 = await gw.issueKey({ team: 'red' });
    const b = await gw.issueKey({ team: 'blue' });
    const content = `scoped ${unique()}`;
    expect((await post(gw, a.key, { messages: [{ role: 'user', content }] })).headers.get('x-cache')).toBe(
      'MISS',
    );
    expect((await post(gw, a2.key, { messages: [{ role: 'user', content }] })).headers.get('x-cache')).toBe(
      'HIT',
    );
    expect((await post(gw, b.key, { messages: [{ role: 'user', content }] })).headers.get('x-cache')).toBe(
      'MISS',
    );
  });

  it('honours no-store, no-cache and max-age', async () => {
    const { key } = await gw.issueKey({ team: 'ctl' });
    const content = `controls ${unique()}`;
    const body = { messages: [{ role: 'user', content }] };
    const noStore = await post(gw, key, body, { 'cache-control': 'no-store' });
    expect(noStore.headers.get('x-cache')).toBe('BYPASS');
    expect((await post(gw, key, body)).headers.get('x-cache')).toBe('MISS');
    expect((await post(gw, key, body)).headers.get('x-cache')).toBe('HIT');
    expect((await post(gw, key, body, { 'cache-control': 'no-store' })).headers.get('x-cache')).toBe(
      'BYPASS',
    );
    const refreshed = await post(gw, key, body, { 'cache-control': 'no-cache' });
    expect(refreshed.headers.get('x-cache')).toBe('MISS');
    // Upstream calls: the two no-store requests, the first miss and the no-cache refresh.
    expect(mock.stats.requests).toBe(4);
    await new Promise((r) => setTimeout(r, 1100));
    expect((await post(gw, key, body, { 'cache-control': 'max-age=0' })).headers.get('x-cache')).toBe('MISS');
    expect((await post(gw, key, body, { 'cache-control': 'max-age=60' })).headers.get('x-cache')).toBe('HIT');
  });

  it('never stores a failed, truncated or error-event stream', async () => {
    const { key } = await gw.issueKey({ team: 'bad' });
    for (const directive of ['status=500', 'drop=2', 'malformed=sse']) {
      const content = `broken ${unique()} [[mock:${directive}]]`;
      const first = await post(gw, key, { stream: true, messages: [{ role: 'user', content }] });
      await first.text();
      const second = await post(gw, key, { stream: true, messages: [{ role: 'user', content }] });
      await second.text();
      expect(second.headers.get('x-cache')).toBe('MISS');
    }
    const json = `broken json ${unique()} [[mock:status=500]]`;
    await post(gw, key, { messages: [{ role: 'user', content: json }] });
    expect(
      (await post(gw, key, { messages: [{ role: 'user', content: json }] })).headers.get('x-cache'),
    ).toBe('MISS');
  });

  it('spends no tokens or budget on hits, meters them with savedUsd', async () => {
    const { key, id } = await gw.issueKey({
      team: 'hits',
      limits: { tpm: 3000 },
      budget: { usd: 0.00001, period: 'day' },
    });
    const content = `saving ${unique()}`;
    const first = await post(gw, key, { max_tokens: 2500, messages: [{ role: 'user', content }] });
    expect(first.status).toBe(200);
    const u = ((await first.json()) as any).usage;
    const firstCost =
      ((u.prompt_tokens - u.prompt_tokens_details.cached_tokens) * 0.4 + u.completion_tokens * 1.6) / 1e6;
    // The budget is now spent and the tokens bucket nearly empty, yet hits still pass.
    await eventually(async () => {
      const miss = await post(gw, key, {
        max_tokens: 2500,
        messages: [{ role: 'user', content: `other ${unique()}` }],
      });
      expect(miss.status).toBe(429);
    });
    const upstreamCalls = mock.stats.requests;
    for (let i = 0; i < 3; i++) {
      const hit = await post(gw, key, { max_tokens: 2500, messages: [{ role: 'user', content }] });
      expect(hit.status).toBe(200);
      expect(hit.headers.get('x-cache')).toBe('HIT');
    }
    await gw.gateway.runtime.usage.flush();
    const today = new Date().toISOString().slice(0, 10);
    const usage = await gw.admin('GET', `/admin/usage?from=${today}&to=${today}&key=${id}`);
    const row = usage.body.data[0];
    expect(row.cacheHits).toBe(3);
    expect(row.savedUsd).toBeGreaterThan(0);
    expect(row.savedUsd).toBeCloseTo(3 * firstCost, 12);
    expect(mock.stats.requests).toBe(upstreamCalls);
  });
});

describe('single flight and outages', () => {
  it('makes one upstream call for 50 concurrent identical misses over two instances', async () => {
    const mock = await startMockUpstream();
    const prefix = `test:sf:${unique()}:`;
    const a = await startTestGateway(twoUpstreams(mock.url), { prefix });
    const b = await startTestGateway(twoUpstreams(mock.url), { prefix });
    try {
      const { key } = await a.issueKey({ team: 'sf' });
      const content = `together ${unique()} [[mock:delay=300]]`;
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          post(i % 2 ? a : b, key, { stream: i % 3 === 0, messages: [{ role: 'user', content }] }).then(
            async (r) => ({
              status: r.status,
              cache: r.headers.get('x-cache'),
              text: sseText(await r.text()),
            }),
          ),
        ),
      );
      expect(results.every((r) => r.status === 200)).toBe(true);
      expect(mock.stats.requests).toBe(1);
      expect(results.filter((r) => r.cache === 'MISS')).toHaveLength(1);
      expect(results.filter((r) => r.text.includes('echo: together'))).toHaveLength(50);
    } finally {
      await a.close();
      await b.close();
      await mock.close();
    }
  });

  it('writes an answer held back for batching even when nothing else goes to Redis', async () => {
    const redis = await startOwnRedis();
    const mock = await startMockUpstream();
    const config = { ...twoUpstreams(mock.url), redis: { url: redis.url, keyPrefix: `t${unique()}:` } };
    const a = await startTestGateway(config);
    const b = await startTestGateway(config);
    try {
      const { key } = await a.issueKey({ team: 'batch' });
      const quiet = { messages: [{ role: 'user', content: `quiet ${unique()}` }] };
      expect((await post(a, key, quiet)).headers.get('x-cache')).toBe('MISS');
      // Instance a sends nothing more: its timer writes the entry, and instance b reads it.
      await eventually(async () => expect((await post(b, key, quiet)).headers.get('x-cache')).toBe('HIT'));
      expect(mock.requests.filter((r) => JSON.stringify(r.body).includes('quiet '))).toHaveLength(1);
    } finally {
      await a.close();
      await b.close();
      await mock.close();
      await redis.stop();
    }
  });

  it('treats Redis being down as a miss, never an error', async () => {
    const redis = await startOwnRedis();
    const mock = await startMockUpstream();
    const gw = await startTestGateway({ ...twoUpstreams(mock.url), redis: { url: redis.url } });
    try {
      const { key } = await gw.issueKey({ team: 'down' });
      const body = { messages: [{ role: 'user', content: `outage ${unique()}` }] };
      expect((await post(gw, key, body)).headers.get('x-cache')).toBe('MISS');
      expect((await post(gw, key, body)).headers.get('x-cache')).toBe('HIT');
      await redis.stop();
      // The in-process tier still answers what this instance has seen...
      const known = await post(gw, key, body);
      expect(known.status).toBe(200);
      expect(known.headers.get('x-cache')).toBe('HIT');
      // ...and anything else is a plain miss, answered by the upstream.
      const res = await post(gw, key, { messages: [{ role: 'user', content: `outage new ${unique()}` }] });
      expect(res.status).toBe(200);
      expect(res.headers.get('x-cache')).toBe('MISS');
    } finally {
      await gw.close();
      await mock.close();
      await redis.stop();
    }
  });
});

/** The content of an answer, whether JSON or SSE. */
function sseText(raw: string): string {
  if (!raw.startsWith('data:')) return JSON.parse(raw).choices[0].message.content;
  let text = '';
  for (const line of raw.split('\n')) {
    if (!line.startsWith('data: {')) continue;
    text += JSON.parse(line.slice(6)).choices?.[0]?.delta?.content ?? '';
  }
  return text;
}

describe('single flight within an instance, live', () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  let key: string;
  beforeAll(async () => {
    mock = await startMockUpstream();
    gw = await startTestGateway(twoUpstreams(mock.url));
    ({ key } = await gw.issueKey({ team: 'live' }));
  });
  afterAll(async () => {
    await gw?.close();
    await mock?.close();
  });
  beforeEach(() => mock.reset());

  const open = async (content: string) => {
    const res = await post(gw, key, { stream: true, messages: [{ role: 'user', content }] });
    return { res, reader: res.body!.getReader(), decoder: new TextDecoder() };
  };

  it('lets a waiter follow the leader stream chunk by chunk', async () => {
    const content = `live ${unique()} [[mock:chunks=8,chunkdelay=80]]`;
    const leader = await open(content);
    await leader.reader.read();
    const joined = Date.now();
    const follower = await open(content);
    expect(follower.res.headers.get('x-cache')).toBe('HIT');
    // The follower gets what was already sent at once, then each chunk as the leader's arrives.
    const first = await follower.reader.read();
    expect(Date.now() - joined).toBeLessThan(300);
    let followerText = follower.decoder.decode(first.value);
    let leaderText = '';
    const drain = async (s: typeof leader, into: (t: string) => void) => {
      for (;;) {
        const { done, value } = await s.reader.read();
        if (done) return;
        into(s.decoder.decode(value));
      }
    };
    await Promise.all([drain(leader, (t) => (leaderText += t)), drain(follower, (t) => (followerText += t))]);
    expect(sseText(followerText)).toBe(sseText(leaderText));
    expect(sseText(leaderText)).toMatch(/^echo: live /);
    expect(followerText.trim().endsWith('data: [DONE]')).toBe(true);
    expect(leaderText.trim().endsWith('data: [DONE]')).toBe(true);
    expect(mock.stats.requests).toBe(1);
  });

  it('keeps the upstream running while anyone follows, and aborts it when the last one leaves', async () => {
    const content = `leave ${unique()} [[mock:chunks=30,chunkdelay=50]]`;
    const leader = await open(content);
    await leader.reader.read();
    const follower = await open(content);
    await follower.reader.read();
    await leader.reader.cancel();
    await new Promise((r) => setTimeout(r, 300));
    expect(mock.stats.aborts).toBe(0);
    expect((await follower.reader.read()).done).toBe(false);
    await follower.reader.cancel();
    await eventually(() => expect(mock.stats.aborts).toBe(1), 2000);
  });
});
