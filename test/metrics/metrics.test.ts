import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { eventually } from '../support/eventually.js';
import { MOCK_KEY, model, startTestGateway, type TestGateway, twoUpstreams } from '../support/gateway.js';
import { freePort } from '../support/global-setup.js';
import { matching, parseSamples, type Sample, sampleValue, sumOf } from './prom-text.js';

// Metric values equal what happened (SPEC section 9). Every request carries unique content so
// that no response cache answers it: cache metrics are covered with the cache itself.

const MODEL = 'gpt-4.1-mini';
const today = new Date().toISOString().slice(0, 10);
let seq = 0;

interface ChatOpts {
  stream?: boolean;
  model?: string;
  path?: string;
  /** Mock directive, e.g. `cached=3`. */
  mock?: string;
  extra?: Record<string, unknown>;
}

/** One chat completion; reads the whole body so the request is finished when it resolves. */
async function chat(
  gw: TestGateway,
  key: string | null,
  opts: ChatOpts = {},
): Promise<Response & { text: string }> {
  const content = `metrics test ${++seq} ${Date.now()}${opts.mock ? ` [[mock:${opts.mock}]]` : ''}`;
  const res = await fetch(gw.url + (opts.path ?? '/v1/chat/completions'), {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(key !== null && { authorization: `Bearer ${key}` }),
    },
    body: JSON.stringify({
      model: opts.model ?? MODEL,
      messages: [{ role: 'user', content }],
      ...(opts.stream && { stream: true }),
      ...opts.extra,
    }),
  });
  const text = await res.text();
  return Object.assign(res, { text });
}

async function scrape(url: string, headers: Record<string, string> = {}): Promise<Sample[]> {
  const res = await fetch(`${url}/metrics`, { headers });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
  return parseSamples(await res.text());
}

describe('metrics: values equal what happened', () => {
  let mock: MockUpstream;
  const gateways: TestGateway[] = [];
  const start = async (...args: Parameters<typeof startTestGateway>): Promise<TestGateway> => {
    const gw = await startTestGateway(...args);
    gateways.push(gw);
    return gw;
  };

  beforeAll(async () => {
    mock = await startMockUpstream();
  });
  afterEach(async () => {
    await Promise.all(gateways.splice(0).map((g) => g.close()));
    mock.reset();
  });
  afterAll(async () => {
    await mock?.close();
  });

  it('counts every request once, with route, model, status, cache, team and key', async () => {
    const gw = await start(twoUpstreams(mock.url));
    const red = await gw.issueKey({ name: 'red-bot', team: 'red' });
    const solo = await gw.issueKey({ name: 'solo' });

    for (let i = 0; i < 3; i++) expect((await chat(gw, red.key)).status).toBe(200);
    for (let i = 0; i < 2; i++) expect((await chat(gw, red.key, { stream: true })).status).toBe(200);
    expect((await chat(gw, solo.key)).status).toBe(200);
    // The Azure dialect is the same route.
    const azure = await chat(gw, solo.key, {
      path: '/openai/deployments/via-azure/chat/completions?api-version=2024-10-21',
    });
    expect(azure.status).toBe(200);
    expect((await chat(gw, red.key, { model: 'no-such-model' })).status).toBe(404);
    expect((await chat(gw, null)).status).toBe(401);
    expect((await chat(gw, 'sk-tg-not-a-real-key')).status).toBe(401);

    const s = await scrape(gw.url);
    const req = (labels: Record<string, string>) =>
      sampleValue(s, 'tollgate_requests_total', { route: 'chat_completions', cache: 'miss', ...labels });
    expect(req({ model: MODEL, status: '200', team: 'red', key: 'red-bot' })).toBe(5);
    expect(req({ model: MODEL, status: '200', team: '', key: 'solo' })).toBe(1);
    expect(req({ model: 'via-azure', status: '200', team: '', key: 'solo' })).toBe(1);
    expect(req({ model: '', status: '404', team: 'red', key: 'red-bot' })).toBe(1);
    expect(req({ model: '', status: '401', team: '', key: '' })).toBe(2);
    expect(sumOf(s, 'tollgate_requests_total')).toBe(10);

    const durations = (labels: Record<string, string>) =>
      sampleValue(s, 'tollgate_request_duration_seconds_count', {
        route: 'chat_completions',
        cache: 'miss',
        ...labels,
      });
    expect(durations({ model: MODEL, stream: 'true' })).toBe(2);
    expect(durations({ model: MODEL, stream: 'false' })).toBe(4);
    expect(durations({ model: 'via-azure', stream: 'false' })).toBe(1);
    expect(sumOf(s, 'tollgate_request_duration_seconds_count')).toBe(10);
    // Histogram buckets are cumulative: +Inf equals the count.
    expect(
      sampleValue(s, 'tollgate_request_duration_seconds_bucket', {
        route: 'chat_completions',
        model: MODEL,
        stream: 'true',
        cache: 'miss',
        le: '+Inf',
      }),
    ).toBe(2);

    expect(
      sampleValue(s, 'tollgate_time_to_first_token_seconds_count', { model: MODEL, upstream: 'openai' }),
    ).toBe(2);
    expect(sumOf(s, 'tollgate_time_to_first_token_seconds_count')).toBe(2);
    expect(sampleValue(s, 'tollgate_upstream_requests_total', { upstream: 'openai', status: '200' })).toBe(6);
    expect(sampleValue(s, 'tollgate_upstream_requests_total', { upstream: 'azure', status: '200' })).toBe(1);
    expect(
      sumOf(s, 'tollgate_upstream_duration_seconds_count', {
        upstream: 'openai',
        model: MODEL,
        status: '200',
      }),
    ).toBe(6);
    expect(
      sumOf(s, 'tollgate_overhead_duration_seconds_count', { route: 'chat_completions' }),
    ).toBeGreaterThanOrEqual(7);
    expect(sampleValue(s, 'tollgate_inflight_requests', { route: 'chat_completions' })).toBe(0);
    for (const u of ['openai', 'azure', 'azure-v1']) {
      expect(sampleValue(s, 'tollgate_circuit_state', { upstream: u })).toBe(0);
    }
    expect(sumOf(s, 'tollgate_upstream_retries_total')).toBe(0);
    expect(sumOf(s, 'tollgate_rate_limited_total')).toBe(0);
    // Default process metrics carry the prefix too.
    expect(matching(s, 'tollgate_process_cpu_seconds_total')).toHaveLength(1);
    expect(s.every((x) => x.name.startsWith('tollgate_'))).toBe(true);
  });

  it('tokens_total and cost_usd_total equal the metered usage', async () => {
    const gw = await start(twoUpstreams(mock.url));
    const a = await gw.issueKey({ name: 'alpha', team: 'red' });
    const b = await gw.issueKey({ name: 'beta', team: 'blue' });
    const c = await gw.issueKey({ name: 'gamma' });
    mock.reset();
    for (const k of [a, b, c]) {
      await chat(gw, k.key);
      await chat(gw, k.key, { stream: true });
      await chat(gw, k.key, { mock: 'cached=5' });
      await chat(gw, k.key, { stream: true, mock: 'cached=7' });
    }
    await chat(gw, a.key, { model: 'via-azure' });
    await chat(gw, b.key, { mock: 'status=400' }); // a client error: no usage
    await gw.gateway.runtime.usage.flush();

    const res = await gw.admin('GET', `/admin/usage?from=${today}&to=${today}&groupBy=key,team,model`);
    expect(res.status).toBe(200);
    const rows: any[] = res.body.data;
    expect(rows.length).toBe(4);
    const s = await scrape(gw.url);
    for (const row of rows) {
      const labels = { model: row.model, team: row.team ?? '', key: row.keyName };
      const tokens = (type: string) => sampleValue(s, 'tollgate_tokens_total', { ...labels, type });
      expect(tokens('prompt')).toBe(row.promptTokens);
      expect(tokens('cached')).toBe(row.cachedTokens);
      expect(tokens('completion')).toBe(row.completionTokens);
      expect(sampleValue(s, 'tollgate_cost_usd_total', labels)).toBeCloseTo(row.costUsd, 9);
      expect(row.promptTokens).toBeGreaterThan(0);
    }
    // And both equal what the upstream reported.
    expect(sumOf(s, 'tollgate_tokens_total', { type: 'prompt' })).toBe(mock.usageTotals.prompt);
    expect(sumOf(s, 'tollgate_tokens_total', { type: 'cached' })).toBe(mock.usageTotals.cached);
    expect(sumOf(s, 'tollgate_tokens_total', { type: 'completion' })).toBe(mock.usageTotals.completion);
    expect(mock.usageTotals.cached).toBe(3 * (5 + 7));
    const spent = rows.reduce((t, r) => t + r.costUsd, 0);
    expect(sumOf(s, 'tollgate_cost_usd_total')).toBeCloseTo(spent, 9);
    // The failed request has no token series of its own beyond the ones above.
    expect(matching(s, 'tollgate_cost_usd_total')).toHaveLength(4);
  });

  it('counts refused requests by limit: rpm, tpm, concurrency, budget', async () => {
    const gw = await start(twoUpstreams(mock.url));
    const rpm = await gw.issueKey({ name: 'one-per-minute', team: 'lim', limits: { rpm: 1 } });
    const tpm = await gw.issueKey({ name: 'tiny-tpm', team: 'lim', limits: { tpm: 50 } });
    const conc = await gw.issueKey({ name: 'single', team: 'lim', limits: { maxConcurrent: 1 } });
    const budget = await gw.issueKey({ name: 'broke', budget: { usd: 0.000001, period: 'total' } });

    expect((await chat(gw, rpm.key)).status).toBe(200);
    for (let i = 0; i < 3; i++) expect((await chat(gw, rpm.key)).status).toBe(429);

    // More tokens requested than the bucket holds: never admitted.
    expect((await chat(gw, tpm.key, { extra: { max_tokens: 100 } })).status).toBe(429);

    const slow = chat(gw, conc.key, { mock: 'delay=400' });
    await eventually(() => expect(mock.stats.inflight).toBe(1));
    expect((await chat(gw, conc.key)).status).toBe(429);
    expect((await slow).status).toBe(200);

    expect((await chat(gw, budget.key)).status).toBe(200);
    await eventually(async () => expect((await chat(gw, budget.key)).status).toBe(429));

    const s = await scrape(gw.url);
    const limited = (team: string, key: string, limit: string) =>
      sampleValue(s, 'tollgate_rate_limited_total', { team, key, limit });
    expect(limited('lim', 'one-per-minute', 'rpm')).toBe(3);
    expect(limited('lim', 'tiny-tpm', 'tpm')).toBe(1);
    expect(limited('lim', 'single', 'concurrency')).toBe(1);
    const budgetRefusals = limited('', 'broke', 'budget')!;
    expect(budgetRefusals).toBeGreaterThanOrEqual(1);
    expect(sumOf(s, 'tollgate_rate_limited_total')).toBe(5 + budgetRefusals);
    // Each refusal is also a 429 in requests_total, with the same team and key.
    expect(
      sampleValue(s, 'tollgate_requests_total', {
        route: 'chat_completions',
        model: MODEL,
        status: '429',
        cache: 'miss',
        team: 'lim',
        key: 'one-per-minute',
      }),
    ).toBe(3);
    expect(sumOf(s, 'tollgate_requests_total', { status: '429' })).toBe(5 + budgetRefusals);
    // The budget is spent: its gauge says 0 left (updated once the settlement is written, which
    // rides along with the key's next admission: a moment after that request's answer).
    await eventually(async () => {
      const remaining = matching(await scrape(gw.url), 'tollgate_budget_remaining_usd', { key: 'broke' });
      expect(remaining).toHaveLength(1);
      expect(remaining[0]!.value).toBe(0);
    });
  });

  it('counts upstream retries, upstream statuses and circuit state', async () => {
    const gw = await start({
      upstreams: [
        { name: 'first', type: 'openai', baseURL: `${mock.url}/v1`, apiKey: MOCK_KEY },
        { name: 'second', type: 'openai', baseURL: `${mock.url}/v1`, apiKey: MOCK_KEY },
      ],
      models: [
        {
          ...model(MODEL, 'first'),
          routes: [
            { upstream: 'first', priority: 1 },
            { upstream: 'second', priority: 2 },
          ],
        },
      ],
      routing: { retries: 2, circuitBreaker: { failureThreshold: 2, cooldownSeconds: 60 } },
    });
    const k = await gw.issueKey({ name: 'retrier', team: 'ops' });
    mock.enqueue({ status: 503 });
    const first = await chat(gw, k.key);
    expect(first.status).toBe(200);
    expect(first.headers.get('x-tollgate-upstream')).toBe('second');
    let s = await scrape(gw.url);
    expect(
      sampleValue(s, 'tollgate_upstream_retries_total', { upstream: 'first', reason: 'status_5xx' }),
    ).toBe(1);
    expect(sumOf(s, 'tollgate_upstream_retries_total')).toBe(1);
    expect(sampleValue(s, 'tollgate_upstream_requests_total', { upstream: 'first', status: '503' })).toBe(1);
    expect(sampleValue(s, 'tollgate_upstream_requests_total', { upstream: 'second', status: '200' })).toBe(1);
    expect(
      sampleValue(s, 'tollgate_upstream_duration_seconds_count', {
        upstream: 'first',
        model: MODEL,
        status: '503',
      }),
    ).toBe(1);
    // The client saw one successful request.
    expect(sumOf(s, 'tollgate_requests_total')).toBe(1);
    expect(sampleValue(s, 'tollgate_circuit_state', { upstream: 'first' })).toBe(0);

    // A second consecutive failure opens first's circuit.
    mock.enqueue({ status: 502 });
    expect((await chat(gw, k.key)).status).toBe(200);
    s = await scrape(gw.url);
    expect(
      sampleValue(s, 'tollgate_upstream_retries_total', { upstream: 'first', reason: 'status_5xx' }),
    ).toBe(2);
    expect(sampleValue(s, 'tollgate_circuit_state', { upstream: 'first' })).toBe(2);
    expect(sampleValue(s, 'tollgate_circuit_state', { upstream: 'second' })).toBe(0);

    // Every route failing: the retries are counted and the client gets 502.
    mock.enqueue({ status: 500 });
    const failed = await chat(gw, k.key);
    expect(failed.status).toBe(502);
    s = await scrape(gw.url);
    expect(sampleValue(s, 'tollgate_upstream_requests_total', { upstream: 'second', status: '500' })).toBe(1);
    expect(
      sampleValue(s, 'tollgate_upstream_retries_total', { upstream: 'second', reason: 'status_5xx' }),
    ).toBe(1);
    expect(
      sampleValue(s, 'tollgate_requests_total', {
        route: 'chat_completions',
        model: MODEL,
        status: '502',
        cache: 'miss',
        team: 'ops',
        key: 'retrier',
      }),
    ).toBe(1);
  });

  it('keyLabels: false drops key names from every series', async () => {
    const gw = await start({ ...twoUpstreams(mock.url), metrics: { keyLabels: false } });
    const k = await gw.issueKey({ name: 'very-secret-key-name', team: 'red', limits: { rpm: 1 } });
    const teamless = await gw.issueKey({ name: 'another-hidden-name', budget: { usd: 10, period: 'day' } });
    expect((await chat(gw, k.key)).status).toBe(200);
    expect((await chat(gw, k.key, { stream: true })).status).toBe(429);
    expect((await chat(gw, teamless.key)).status).toBe(200);
    await eventually(async () =>
      expect(matching(await scrape(gw.url), 'tollgate_budget_remaining_usd').length).toBeGreaterThan(0),
    );
    const text = await (await fetch(`${gw.url}/metrics`)).text();
    expect(text).not.toContain('very-secret-key-name');
    expect(text).not.toContain('another-hidden-name');
    const s = parseSamples(text);
    for (const x of s) if ('key' in x.labels) expect(x.labels['key']).toBe('');
    expect(
      sampleValue(s, 'tollgate_requests_total', {
        route: 'chat_completions',
        model: MODEL,
        status: '200',
        cache: 'miss',
        team: 'red',
        key: '',
      }),
    ).toBe(1);
    expect(sampleValue(s, 'tollgate_rate_limited_total', { team: 'red', key: '', limit: 'rpm' })).toBe(1);
    expect(sumOf(s, 'tollgate_tokens_total', { team: 'red', key: '' })).toBeGreaterThan(0);
  });

  it('with metrics.bearerToken, /metrics needs the token (401 envelope without)', async () => {
    const token = 'metrics-token-0123456789';
    const gw = await start({ ...twoUpstreams(mock.url), metrics: { bearerToken: token } });
    for (const headers of [{}, { authorization: 'Bearer wrong' }, { 'api-key': token }] as Record<
      string,
      string
    >[]) {
      const res = await fetch(`${gw.url}/metrics`, { headers });
      expect(res.status).toBe(401);
      expect(res.headers.get('x-request-id')).toBeTruthy();
      const body = await res.json();
      expect(body).toEqual({
        error: {
          message: expect.any(String),
          type: 'invalid_request_error',
          param: null,
          code: 'invalid_api_key',
        },
      });
      expect(JSON.stringify(body)).not.toContain(token);
    }
    const s = await scrape(gw.url, { authorization: `Bearer ${token}` });
    expect(matching(s, 'tollgate_circuit_state').length).toBeGreaterThan(0);
  });

  it("removes a revoked key's series", async () => {
    const gw = await start(twoUpstreams(mock.url));
    const gone = await gw.issueKey({ name: 'soon-gone', team: 'red', limits: { rpm: 1 } });
    const stays = await gw.issueKey({ name: 'stays', team: 'red', budget: { usd: 5, period: 'month' } });
    const gone2 = await gw.issueKey({ name: 'gone-with-budget', budget: { usd: 5, period: 'day' } });
    for (const k of [gone, stays, gone2]) expect((await chat(gw, k.key)).status).toBe(200);
    expect((await chat(gw, gone.key)).status).toBe(429);
    await eventually(async () =>
      expect(matching(await scrape(gw.url), 'tollgate_budget_remaining_usd')).toHaveLength(2),
    );
    let s = await scrape(gw.url);
    const keys = (x: Sample[]) => new Set(x.map((y) => y.labels['key']).filter((v) => v !== undefined));
    expect(keys(s)).toEqual(new Set(['soon-gone', 'stays', 'gone-with-budget']));

    for (const k of [gone, gone2]) expect((await gw.admin('DELETE', `/admin/keys/${k.id}`)).status).toBe(204);
    s = await scrape(gw.url);
    expect(keys(s)).toEqual(new Set(['stays']));
    const text = await (await fetch(`${gw.url}/metrics`)).text();
    expect(text).not.toContain('soon-gone');
    expect(text).not.toContain('gone-with-budget');
    // The remaining key's series are intact.
    expect(
      sampleValue(s, 'tollgate_requests_total', {
        route: 'chat_completions',
        model: MODEL,
        status: '200',
        cache: 'miss',
        team: 'red',
        key: 'stays',
      }),
    ).toBe(1);
    expect(matching(s, 'tollgate_budget_remaining_usd', { key: 'stays' })).toHaveLength(1);
  });

  it('metrics.port serves metrics only on that port', async () => {
    const port = await freePort();
    const gw = await start({ ...twoUpstreams(mock.url), metrics: { port } });
    const k = await gw.issueKey({ name: 'ported', team: 'red' });
    expect((await chat(gw, k.key)).status).toBe(200);

    const onMain = await fetch(`${gw.url}/metrics`);
    expect(onMain.status).toBe(404);
    expect(((await onMain.json()) as any).error.code).toBe('not_found');

    const own = `http://127.0.0.1:${port}`;
    const s = await scrape(own);
    expect(
      sampleValue(s, 'tollgate_requests_total', {
        route: 'chat_completions',
        model: MODEL,
        status: '200',
        cache: 'miss',
        team: 'red',
        key: 'ported',
      }),
    ).toBe(1);
    // Only metrics there: the API is not served on the metrics port.
    expect((await fetch(`${own}/healthz`)).status).toBe(404);
    expect((await fetch(`${own}/v1/models`, { headers: { authorization: `Bearer ${k.key}` } })).status).toBe(
      404,
    );

    // The metrics listener closes with the gateway.
    await gw.close();
    gateways.splice(gateways.indexOf(gw), 1);
    await eventually(async () => {
      const err = await fetch(`${own}/metrics`).then(
        () => null,
        (e: Error) => e,
      );
      expect(err).not.toBeNull();
    });
  });
});

describe('Metrics.forgetKey', () => {
  it("removes only that team's key of a name when the team is given", async () => {
    const { Metrics } = await import('../../src/metrics/metrics.js');
    const m = new Metrics(true);
    const base = { route: 'chat_completions', model: MODEL, status: '200', cache: 'miss' };
    m.requests.inc({ ...base, team: 'a', key: 'bot' });
    m.requests.inc({ ...base, team: 'b', key: 'bot' });
    m.requests.inc({ ...base, team: '', key: 'bot' });
    m.rateLimited.inc({ team: 'a', key: 'bot', limit: 'rpm' });
    m.budgetRemaining.set({ team: '', key: 'bot' }, 1);
    m.forgetKey('bot', 'a');
    let s = parseSamples(await m.registry.metrics());
    expect(matching(s, 'tollgate_requests_total').map((x) => x.labels['team'])).toEqual(['b', '']);
    expect(matching(s, 'tollgate_rate_limited_total')).toEqual([]);
    expect(matching(s, 'tollgate_budget_remaining_usd')).toEqual([]);
    // Without a team: every series of that key name.
    m.forgetKey('bot');
    s = parseSamples(await m.registry.metrics());
    expect(matching(s, 'tollgate_requests_total')).toEqual([]);
  });
});
