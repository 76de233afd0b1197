import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { sumUsage } from '../reliability/helpers.js';
import { eventually } from '../support/eventually.js';
import { startTestGateway, type TestGateway, twoUpstreams } from '../support/gateway.js';
import { startOwnRedis } from '../support/redis-server.js';

const today = new Date().toISOString().slice(0, 10);
const sdk = (gw: TestGateway, key: string) =>
  new OpenAI({ apiKey: key, baseURL: `${gw.url}/v1`, maxRetries: 0 });

async function usage(gw: TestGateway, query = ''): Promise<any[]> {
  const res = await gw.admin('GET', `/admin/usage?from=${today}&to=${today}${query}`);
  expect(res.status).toBe(200);
  return res.body.data;
}

/** Reads a stream's first few content chunks, then abandons it. */
async function abandon(client: OpenAI, model: string, after: number): Promise<number> {
  const stream = await client.chat.completions.create({
    model,
    stream: true,
    messages: [{ role: 'user', content: 'long story [[mock:chunks=20,chunkdelay=30]]' }],
  });
  let seen = 0;
  for await (const chunk of stream) {
    if (chunk.choices[0]?.delta.content) seen++;
    if (seen === after) break;
  }
  return seen;
}

describe('usage metering', () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  let keys: { key: string; id: string }[];

  beforeAll(async () => {
    mock = await startMockUpstream();
    gw = await startTestGateway(twoUpstreams(mock.url));
    keys = [
      await gw.issueKey({ team: 'red' }),
      await gw.issueKey({ team: 'red' }),
      await gw.issueKey({ team: 'blue' }),
    ];
  });
  afterAll(async () => {
    await gw?.close();
    await mock?.close();
  });

  it('meters plain, streamed, cached, refused, abandoned and failed requests exactly', async () => {
    mock.reset();
    let completed = 0;
    let hits = 0;
    for (const [i, k] of keys.entries()) {
      const c = sdk(gw, k.key);
      const model = i === 2 ? 'via-azure' : 'gpt-4.1-mini';
      for (let j = 0; j < 3; j++) {
        await c.chat.completions.create({
          model,
          messages: [{ role: 'user', content: `plain ${i} ${j} with some words` }],
        });
        completed++;
      }
      // The same question again: a cache hit, metered with no tokens and no cost.
      await c.chat.completions.create({
        model,
        messages: [{ role: 'user', content: `plain ${i} 0 with some words` }],
      });
      hits++;
      const s = await c.chat.completions.create({
        model,
        stream: true,
        messages: [{ role: 'user', content: `stream ${i}` }],
      });
      for await (const _ of s);
      completed++;
      const s2 = await c.chat.completions.create({
        model,
        stream: true,
        stream_options: { include_usage: true },
        messages: [{ role: 'user', content: `stream usage ${i} [[mock:cached=4]]` }],
      });
      for await (const _ of s2);
      completed++;
      await expect(
        c.chat.completions.create({
          model,
          messages: [{ role: 'user', content: 'fail [[mock:status=500]]' }],
        }),
      ).rejects.toBeInstanceOf(OpenAI.InternalServerError);
    }
    // A key limited to one request a minute: the second is refused (429) and still metered.
    const limited = await gw.issueKey({ team: 'blue', limits: { rpm: 1 } });
    await sdk(gw, limited.key).chat.completions.create({
      model: 'gpt-4.1-mini',
      messages: [{ role: 'user', content: 'once' }],
    });
    completed++;
    await expect(
      sdk(gw, limited.key).chat.completions.create({
        model: 'gpt-4.1-mini',
        messages: [{ role: 'user', content: 'twice' }],
      }),
    ).rejects.toBeInstanceOf(OpenAI.RateLimitError);
    const completedTotals = { ...mock.usageTotals };
    const abandonedChunks = await abandon(sdk(gw, keys[0]!.key), 'gpt-4.1-mini', 3);
    // The abandoned stream's record lands once the gateway has seen the client leave.
    const total = await eventually(async () => {
      await gw.gateway.runtime.usage.flush();
      const t = sumUsage(await usage(gw));
      // Three failures (one per key), one refusal and one abandoned stream on top of the rest.
      expect(t.requests).toBe(completed + hits + 3 + 1 + 1);
      return t;
    });
    expect(total.errors).toBe(3 + 1 + 1);
    const byKey = await usage(gw, '&groupBy=key');
    expect(byKey.reduce((n, r) => n + r.cacheHits, 0)).toBe(hits);
    expect(byKey.find((r) => r.keyId === limited.id)).toMatchObject({ requests: 2, errors: 1 });
    const abandonedPrompt = total.promptTokens - completedTotals.prompt;
    expect(abandonedPrompt).toBeGreaterThan(0);
    expect(total.cachedTokens).toBe(completedTotals.cached);
    const abandonedCompletion = total.completionTokens - completedTotals.completion;
    expect(Math.abs(abandonedCompletion - abandonedChunks)).toBeLessThanOrEqual(1);
    const expectedCost =
      ((completedTotals.prompt + abandonedPrompt - completedTotals.cached) * 0.4 +
        completedTotals.cached * 0.1 +
        (completedTotals.completion + abandonedCompletion) * 1.6) /
      1e6;
    expect(total.costUsd).toBeCloseTo(expectedCost, 12);

    // Every grouping sums to the same grand total.
    for (const groupBy of ['day', 'key', 'team', 'model', 'day,key,team,model', 'team,model']) {
      expect(sumUsage(await usage(gw, `&groupBy=${groupBy}`))).toEqual(total);
    }
    const byTeam = await usage(gw, '&groupBy=team');
    expect(byTeam.map((r) => r.team).sort()).toEqual(['blue', 'red']);
    const blue = await usage(gw, '&team=blue');
    expect(blue[0].requests).toBe(7 + 2);
    expect(byKey.find((r) => r.keyId === keys[2]!.id)?.keyName).toMatch(/^k-/);
  });

  it('exports CSV that parses to the JSON rows', async () => {
    const res = await fetch(`${gw.url}/admin/usage?from=${today}&to=${today}&groupBy=key,model&format=csv`, {
      headers: { authorization: `Bearer ${gw.adminKey}` },
    });
    expect(res.headers.get('content-type')).toMatch(/^text\/csv/);
    const lines = (await res.text()).trim().split('\r\n');
    const header = lines[0]!.split(',');
    expect(header).toEqual([
      'keyId',
      'keyName',
      'model',
      'requests',
      'cacheHits',
      'errors',
      'promptTokens',
      'cachedTokens',
      'completionTokens',
      'costUsd',
      'savedUsd',
    ]);
    const json = await usage(gw, '&groupBy=key,model');
    expect(lines.length - 1).toBe(json.length);
    const csvRequests = lines.slice(1).reduce((s, l) => s + Number(l.split(',')[3]), 0);
    expect(csvRequests).toBe(sumUsage(json).requests);
  });

  it('rejects a bad query with the envelope', async () => {
    const res = await gw.admin('GET', '/admin/usage?groupBy=week');
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('invalid_request_error');
    const bad = await gw.admin('GET', '/admin/usage?from=2026-02-01&to=2026-01-01');
    expect(bad.status).toBe(400);
  });

  it('gives the same answers with the in-memory store', async () => {
    const mem = await startTestGateway(twoUpstreams(mock.url), { redis: false });
    try {
      const k = await mem.issueKey({ team: 'solo' });
      mock.reset();
      for (let i = 0; i < 3; i++) {
        await sdk(mem, k.key).chat.completions.create({
          model: 'gpt-4.1-mini',
          messages: [{ role: 'user', content: `m${i}` }],
        });
      }
      await mem.gateway.runtime.usage.flush();
      const t = sumUsage(await usage(mem));
      expect(t.requests).toBe(3);
      expect(t.promptTokens).toBe(mock.usageTotals.prompt);
      expect(t.completionTokens).toBe(mock.usageTotals.completion);
    } finally {
      await mem.close();
    }
  });
});

describe('usage across instances and Redis outages', () => {
  it('two instances on one Redis report one total; a Redis restart loses and doubles nothing', async () => {
    const redis = await startOwnRedis();
    const mock = await startMockUpstream();
    const raw = { ...twoUpstreams(mock.url), redis: { url: redis.url } };
    const a = await startTestGateway(raw, { prefix: 'usage-ha:' });
    const b = await startTestGateway(raw, { prefix: 'usage-ha:' });
    try {
      const k = await a.issueKey({ team: 'ha' });
      const ca = sdk(a, k.key);
      const cb = sdk(b, k.key);
      const ask = (c: OpenAI, i: number) =>
        c.chat.completions.create({
          model: 'gpt-4.1-mini',
          messages: [{ role: 'user', content: `ha ${i}` }],
        });
      for (let i = 0; i < 10; i++) await ask(i % 2 ? ca : cb, i);
      // Redis goes away mid-load: requests keep working on known keys, usage waits in memory.
      await redis.stop();
      for (let i = 10; i < 20; i++) await ask(i % 2 ? ca : cb, i);
      await redis.start();
      for (let i = 20; i < 30; i++) await ask(i % 2 ? ca : cb, i);
      await Promise.all([a.gateway.runtime.usage.flush(15_000), b.gateway.runtime.usage.flush(15_000)]);
      const ta = sumUsage(await usage(a));
      const tb = sumUsage(await usage(b));
      expect(ta).toEqual(tb);
      expect(ta.requests).toBe(30);
      expect(ta.promptTokens).toBe(mock.usageTotals.prompt);
      expect(ta.completionTokens).toBe(mock.usageTotals.completion);
    } finally {
      await a.close();
      await b.close();
      await mock.close();
      await redis.stop();
    }
  });
});

describe('request ids chosen by clients', () => {
  it('meter every request, also when a client sends the same x-request-id each time', async () => {
    const mock = await startMockUpstream();
    const gws = [
      await startTestGateway(twoUpstreams(mock.url)),
      await startTestGateway(twoUpstreams(mock.url), { redis: false }),
    ];
    try {
      for (const gw of gws) {
        const { key } = await gw.issueKey({ team: 'same-id' });
        const c = new OpenAI({
          apiKey: key,
          baseURL: `${gw.url}/v1`,
          maxRetries: 0,
          defaultHeaders: { 'x-request-id': 'my-fixed-request-id' },
        });
        for (let i = 0; i < 3; i++) {
          const res = await c.chat.completions
            .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: `same id ${i}` }] })
            .withResponse();
          expect(res.response.headers.get('x-request-id')).toBe('my-fixed-request-id');
        }
        await gw.gateway.runtime.usage.flush();
        expect(sumUsage(await usage(gw, '&team=same-id')).requests).toBe(3);
      }
    } finally {
      for (const gw of gws) await gw.close();
      await mock.close();
    }
  });
});

describe('the Redis usage store', () => {
  it('counts a batch once however often it is written, and records by batch, not by request id', async () => {
    const { Redis } = await import('ioredis');
    const { RedisUsageStore } = await import('../../src/metering/redis-usage-store.js');
    const { inject } = await import('vitest');
    const redis = new Redis(inject('redisUrl'));
    const prefix = `test:idem:${Date.now()}:`;
    const store = new RedisUsageStore(redis, prefix);
    const rec = (i: number) => ({
      requestId: `req-${i}`,
      ts: Date.now(),
      keyId: 'key_1',
      keyName: 'one',
      team: 't',
      model: 'gpt-4.1-mini',
      upstream: 'openai',
      stream: false,
      status: 200,
      cacheHit: false,
      promptTokens: 10,
      cachedTokens: 2,
      completionTokens: 5,
      costUsd: 0.0000116,
      savedUsd: 0,
      latencyMs: 1,
      ttftMs: 1,
      estimated: false,
    });
    await store.write([rec(1), rec(2)], 'batch-a');
    // A retry of the same batch (its first write landed, the answer was lost) counts nothing.
    await store.write([rec(1), rec(2)], 'batch-a');
    // Another batch counts, even with a request id seen before: clients may choose request ids.
    await store.write([rec(1)], 'batch-b');
    const cells = await store.cells([today]);
    expect(cells).toHaveLength(1);
    expect(cells[0]).toMatchObject({
      requests: 3,
      promptTokens: 30,
      cachedTokens: 6,
      completionTokens: 15,
      costNanoUsd: 34800,
    });
    expect(await redis.xlen(`${prefix}usage`)).toBe(3);
    await redis.quit();
  });
});
