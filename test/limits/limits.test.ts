import { randomBytes } from 'node:crypto';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { eventually } from '../support/eventually.js';
import { startTestGateway, type TestGateway, twoUpstreams } from '../support/gateway.js';
import { type GatewayProcess, startGatewayProcess } from '../support/process.js';
import { startOwnRedis } from '../support/redis-server.js';

const ask = (url: string, key: string, content = 'hi', extra: Record<string, unknown> = {}) =>
  fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content }], ...extra }),
  });

async function adminCall(
  url: string,
  adminKey: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<any> {
  const res = await fetch(url + path, {
    method,
    headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' },
    ...(body !== undefined && { body: JSON.stringify(body) }),
  });
  return res.status === 204 ? null : res.json();
}

describe('limits across three gateway processes on one Redis', () => {
  let mock: MockUpstream;
  let procs: GatewayProcess[];
  const adminKey = `admin-${randomBytes(8).toString('hex')}`;

  beforeAll(async () => {
    mock = await startMockUpstream();
    const prefix = `test:multi:${randomBytes(4).toString('hex')}:`;
    const config = {
      ...twoUpstreams(mock.url),
      server: { host: '127.0.0.1', port: 0, drainDelaySeconds: 0 },
      // A generous deadline: this test is about atomicity across processes, and the whole suite
      // shares two cores; a missed 100 ms deadline would (correctly) fall back to local limits.
      redis: { url: inject('redisUrl'), keyPrefix: prefix, commandTimeoutMs: 2000 },
      limits: { defaults: { rpm: 1000, tpm: 10_000_000, maxConcurrent: 500 } },
      logging: { level: 'info' },
    };
    procs = await Promise.all([0, 1, 2].map(() => startGatewayProcess(config, { adminKey })));
  }, 60_000);
  afterAll(async () => {
    await Promise.all((procs ?? []).map((p) => p.terminate()));
    await mock?.close();
  });

  const burst = async (keys: string[], total: number): Promise<number[]> =>
    Promise.all(
      Array.from({ length: total }, (_, i) =>
        ask(procs[i % 3]!.url, keys[i % keys.length]!, `b${i}`).then((r) => r.status),
      ),
    );

  it('admits exactly rpm of 100 concurrent requests for one key', async () => {
    const k = await adminCall(procs[0]!.url, adminKey, 'POST', '/admin/keys', {
      name: 'rpm30',
      team: 'solo',
      limits: { rpm: 30 },
    });
    const statuses = await burst([k.key], 100);
    expect(statuses.filter((s) => s === 200)).toHaveLength(30);
    expect(statuses.filter((s) => s === 429)).toHaveLength(70);
  });

  it('admits exactly rpm of 100 for a team limit shared by two keys, and no burst above capacity later', async () => {
    await adminCall(procs[1]!.url, adminKey, 'PUT', '/admin/teams/shared', { limits: { rpm: 30 } });
    const a = await adminCall(procs[0]!.url, adminKey, 'POST', '/admin/keys', { name: 'a', team: 'shared' });
    const b = await adminCall(procs[0]!.url, adminKey, 'POST', '/admin/keys', { name: 'b', team: 'shared' });
    const statuses = await burst([a.key, b.key], 100);
    expect(statuses.filter((s) => s === 200)).toHaveLength(30);
    // 30/min refills one request every 2 s: after 2.1 s at most one more gets in, never a new window's 30.
    await new Promise((r) => setTimeout(r, 2100));
    const again = await burst([a.key, b.key], 30);
    expect(again.filter((s) => s === 200).length).toBeLessThanOrEqual(2);
  });

  it('applies a limit changed through the admin API on every instance at once', async () => {
    const k = await adminCall(procs[0]!.url, adminKey, 'POST', '/admin/keys', { name: 'edit', team: 'solo' });
    for (const p of procs) expect((await ask(p.url, k.key)).status).toBe(200);
    await adminCall(procs[0]!.url, adminKey, 'PATCH', `/admin/keys/${k.id}`, { limits: { rpm: 0 } });
    await eventually(async () => {
      for (const p of procs) expect((await ask(p.url, k.key)).status).toBe(429);
    }, 1000);
  });
});

describe('limits on one gateway', () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    mock = await startMockUpstream();
    gw = await startTestGateway(twoUpstreams(mock.url));
  });
  afterAll(async () => {
    await gw?.close();
    await mock?.close();
  });

  it('sends x-ratelimit headers on answers, streams and errors', async () => {
    const { key } = await gw.issueKey({ team: 'hdr', limits: { rpm: 60, tpm: 100000 } });
    const ok = await ask(gw.url, key, 'h1', { max_tokens: 100 });
    expect(ok.headers.get('x-ratelimit-limit-requests')).toBe('60');
    expect(ok.headers.get('x-ratelimit-remaining-requests')).toBe('59');
    expect(ok.headers.get('x-ratelimit-reset-requests')).toMatch(/^\d+(\.\d+)?(ms|s)$/);
    expect(ok.headers.get('x-ratelimit-limit-tokens')).toBe('100000');
    expect(Number(ok.headers.get('x-ratelimit-remaining-tokens'))).toBeLessThan(100000 - 100);
    const stream = await ask(gw.url, key, 'h2', { stream: true });
    expect(stream.headers.get('x-ratelimit-remaining-requests')).toBe('58');
    await stream.text();
    const failed = await ask(gw.url, key, 'fail [[mock:status=500]]');
    expect(failed.status).toBe(502);
    expect(failed.headers.get('x-ratelimit-remaining-requests')).toBe('57');
  });

  it('reserves prompt + max_tokens and refunds the unused part at settlement', async () => {
    const { key } = await gw.issueKey({ team: 'tpm', limits: { tpm: 2000 } });
    const first = await ask(gw.url, key, 'tokens', { max_tokens: 1500 });
    expect(first.status).toBe(200);
    // While reserved, another 1500 does not fit; once settled (a few real tokens) it does.
    const reservedLeft = Number(first.headers.get('x-ratelimit-remaining-tokens'));
    expect(reservedLeft).toBeLessThan(500);
    await first.text();
    await eventually(
      async () => expect((await ask(gw.url, key, 'tokens', { max_tokens: 1500 })).status).toBe(200),
      2000,
    );
    const tooBig = await ask(gw.url, key, 'huge', { max_tokens: 5000 });
    expect(tooBig.status).toBe(429);
    expect(tooBig.headers.get('x-should-retry')).toBe('false');
    const body: any = await tooBig.json();
    expect(body.error).toMatchObject({ code: 'rate_limit_exceeded', type: 'tokens' });
    expect(body.error.message).toMatch(/^Request too large for key/);
  });

  it('counts a prompt that spells a special token as text (it used to fail with a 500)', async () => {
    const { key } = await gw.issueKey({ team: 'tpm-special', limits: { tpm: 100_000 } });
    const res = await ask(gw.url, key, 'what does <|endoftext|> mean?', { max_tokens: 10 });
    expect(res.status).toBe(200);
    // Reserved: the prompt's tokens (text, not one special token) plus max_tokens.
    expect(100_000 - Number(res.headers.get('x-ratelimit-remaining-tokens'))).toBeGreaterThan(10 + 8);
    await res.text();
  });

  it("gives the SDK a RateLimitError with OpenAI's wording and headers, and its retry waits as told", async () => {
    const { key } = await gw.issueKey({ name: 'ci-bot', team: 'sdk', limits: { rpm: 60 } });
    const client = new OpenAI({ apiKey: key, baseURL: `${gw.url}/v1`, maxRetries: 0 });
    // Sent until refused: the bucket refills one request per second meanwhile, so a slow machine
    // gets a few more than 60 through, never fewer.
    let err: any = null;
    let admitted = 0;
    while (err === null && admitted < 90) {
      err = await client.chat.completions
        .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: `r${admitted}` }] })
        .then(
          () => null,
          (e) => e,
        );
      if (err === null) admitted++;
    }
    expect(admitted).toBeGreaterThanOrEqual(60);
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    expect(err.code).toBe('rate_limit_exceeded');
    expect(err.type).toBe('requests');
    expect(err.message).toMatch(
      /Rate limit reached for key 'ci-bot' on requests per minute \(RPM\): Limit 60, Used \d+, Requested 1\. Please try again in [\d.]+m?s\./,
    );
    const waitMs = Number(err.headers.get('retry-after-ms'));
    expect(waitMs).toBeGreaterThan(0);
    expect(waitMs).toBeLessThanOrEqual(1000);
    expect(Number(err.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    // Exhaust again, then let the SDK retry on its own: it must wait as told and succeed.
    const retrying = new OpenAI({ apiKey: key, baseURL: `${gw.url}/v1`, maxRetries: 1 });
    const refusal = await client.chat.completions
      .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: 'x' }] })
      .catch((e) => e);
    const told = Number(refusal.headers.get('retry-after-ms'));
    const started = Date.now();
    const res = await retrying.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages: [{ role: 'user', content: 'retry' }],
    });
    expect(res.choices[0]?.message.content).toBe('echo: retry');
    // The bucket refills by itself in `told` ms; the SDK's retry came no earlier (less a little clock slack).
    expect(Date.now() - started).toBeGreaterThanOrEqual(told - 60);
  });

  it('frees concurrency slots after 100 abandoned streams', async () => {
    const { key } = await gw.issueKey({ team: 'conc', limits: { maxConcurrent: 5 } });
    for (let round = 0; round < 20; round++) {
      await Promise.all(
        Array.from({ length: 5 }, async (_, i) => {
          const res = await ask(gw.url, key, `slow ${round} ${i} [[mock:chunks=50,chunkdelay=20]]`, {
            stream: true,
          });
          expect(res.status).toBe(200);
          const reader = res.body!.getReader();
          await reader.read();
          await reader.cancel();
        }),
      );
      // Each disconnect lands asynchronously; the next five must find their slots free again.
      await eventually(() => expect(mock.stats.inflight).toBe(0), 3000);
    }
    await eventually(async () => {
      const results = await Promise.all(
        Array.from({ length: 5 }, (_, i) => ask(gw.url, key, `after ${i}`).then((r) => r.status)),
      );
      expect(results).toEqual([200, 200, 200, 200, 200]);
    }, 3000);
    await eventually(() => expect(mock.stats.inflight).toBe(0), 3000);
  });

  it('refuses with insufficient_quota once a budget is spent, without retry-after', async () => {
    const { key } = await gw.issueKey({ team: 'budget', budget: { usd: 0.00002, period: 'day' } });
    expect((await ask(gw.url, key, 'spend one')).status).toBe(200);
    expect((await ask(gw.url, key, 'spend two')).status).toBe(200);
    let attempt = 0;
    const refused = await eventually(async () => {
      // Distinct prompts: an identical one would be a cache hit, which spends nothing and passes.
      const r = await ask(gw.url, key, `spend three ${attempt++}`);
      expect(r.status).toBe(429);
      return r;
    }, 2000);
    expect(refused.headers.get('x-should-retry')).toBe('false');
    expect(refused.headers.get('retry-after')).toBeNull();
    expect(((await refused.json()) as any).error).toMatchObject({
      code: 'insufficient_quota',
      type: 'insufficient_quota',
    });
    const me: any = await fetch(`${gw.url}/me`, { headers: { authorization: `Bearer ${key}` } }).then((r) =>
      r.json(),
    );
    expect(me.team).toBe('budget');
    expect(me.spend.dayUsd).toBeGreaterThanOrEqual(0.00002);
    expect(me.remaining.budgetUsd).toBe(0);
    expect(me.limits).toEqual({ rpm: 600, tpm: 1000000, maxConcurrent: 50 });
  });
});

describe('Redis going away under load', () => {
  it.each(['open', 'closed'] as const)(
    'failMode %s: every request answered within the deadline; limits back after Redis returns',
    async (failMode) => {
      const redis = await startOwnRedis();
      const mock = await startMockUpstream();
      const gw = await startTestGateway({
        ...twoUpstreams(mock.url),
        // A 1 s deadline: a missed 100 ms one on a loaded CI machine would (rightly) fall back to
        // the local limiter and blur what this test checks. A stopped Redis fails at once anyway.
        redis: { url: redis.url, commandTimeoutMs: 1000 },
        limits: { failMode },
      });
      try {
        const { key } = await gw.issueKey({ team: 'outage', limits: { rpm: 5 } });
        expect((await ask(gw.url, key, 'warm')).status).toBe(200);
        await redis.stop();
        const started = Date.now();
        const statuses = await Promise.all(
          Array.from({ length: 10 }, (_, i) => ask(gw.url, key, `down ${i}`).then((r) => r.status)),
        );
        expect(Date.now() - started).toBeLessThan(2000);
        if (failMode === 'closed') expect(new Set(statuses)).toEqual(new Set([503]));
        // Open: the per-instance fallback limiter still holds the key to its 5 per minute.
        else expect(statuses.filter((s) => s === 200)).toHaveLength(5);
        expect(statuses.every((s) => s === 200 || s === 429 || s === 503)).toBe(true);
        const ready = await fetch(`${gw.url}/readyz`);
        expect(ready.status).toBe(failMode === 'closed' ? 503 : 200);
        await redis.start();
        // Back in force: the shared bucket (1 used before the outage) admits 4 more, then refuses.
        // Under failMode open /readyz never went down, so the sign of the gateway's Redis client
        // being back is the model list's rate-limit headers: read from Redis, absent without it.
        await eventually(async () => expect((await fetch(`${gw.url}/readyz`)).status).toBe(200), 5000);
        await eventually(async () => {
          const models = await fetch(`${gw.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
          expect(models.headers.get('x-ratelimit-remaining-requests')).not.toBeNull();
        }, 5000);
        const after = [];
        for (let i = 0; i < 6; i++) after.push((await ask(gw.url, key, `up ${i}`)).status);
        expect(after.filter((s) => s === 200).length, JSON.stringify(after)).toBeLessThanOrEqual(4);
        expect(after.at(-1), JSON.stringify(after)).toBe(429);
      } finally {
        await gw.close();
        await mock.close();
        await redis.stop();
      }
    },
  );
});

describe('rate-limit headers before admission', () => {
  it('are sent on validation errors and model lists, taking nothing', async () => {
    const mock = await startMockUpstream();
    const gw = await startTestGateway(twoUpstreams(mock.url));
    try {
      const { key } = await gw.issueKey({ team: 'peek', limits: { rpm: 10, tpm: 5000 } });
      expect((await ask(gw.url, key, 'one')).headers.get('x-ratelimit-remaining-requests')).toBe('9');
      const bad = await ask(gw.url, key, 'bad', { max_tokens: -1 });
      expect(bad.status).toBe(400);
      expect(bad.headers.get('x-ratelimit-limit-requests')).toBe('10');
      expect(bad.headers.get('x-ratelimit-remaining-requests')).toBe('9');
      expect(bad.headers.get('x-ratelimit-limit-tokens')).toBe('5000');
      const unknown = await ask(gw.url, key, 'x', { model: 'no-such-model' });
      expect(unknown.status).toBe(404);
      expect(unknown.headers.get('x-ratelimit-remaining-requests')).toBe('9');
      const models = await fetch(`${gw.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
      expect(models.headers.get('x-ratelimit-remaining-requests')).toBe('9');
      // None of those took a request from the bucket.
      expect((await ask(gw.url, key, 'two')).headers.get('x-ratelimit-remaining-requests')).toBe('8');
    } finally {
      await gw.close();
      await mock.close();
    }
  });
});
