// Issue 9, item 5: canary values for the upstream keys (one right, one wrong), the admin key and
// client keys never appear in logs (at trace level, every line), responses (bodies and headers),
// error messages or metrics, also when clients put them where they do not belong: as the bearer
// of the wrong API, in malformed Authorization headers, in bodies and in x-request-id.

import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { model, startTestGateway, type TestGateway, twoUpstreams } from '../support/gateway.js';
import { runGatewayToExit, startGatewayProcess } from '../support/process.js';
import { type Answer, call, chatBody, envelopeProblem, report } from './helpers.js';

const hex = (n: number): string => randomBytes(n).toString('hex');
const UPSTREAM_KEY = `sk-proj-CANARYupstream${hex(12)}`;
const WRONG_UPSTREAM_KEY = `sk-proj-CANARYwrong${hex(12)}`;
const ADMIN_KEY = `tg-admin-CANARY${hex(12)}`;

let mock: MockUpstream;
let gw: TestGateway;
let client: string;
let teamAdmin: string;
/** Every client key issued in this file (canaries too). */
const clientKeys: string[] = [];
/** Everything the gateway said: bodies and headers of every answer. */
const said: string[] = [];

/** The values that must never show, each also without its first 12 characters (listings show a key's prefix). */
function canaries(): string[] {
  const all = [UPSTREAM_KEY, WRONG_UPSTREAM_KEY, ADMIN_KEY, ...clientKeys];
  return [...all, ...all.map((s) => s.slice(12))];
}

function config(mockUrl: string): Record<string, any> {
  const base = twoUpstreams(mockUrl, UPSTREAM_KEY);
  return {
    ...base,
    upstreams: [
      ...base['upstreams'],
      // Misconfigured: the mock refuses this key (its 401 names the key, masked).
      { name: 'wrong', type: 'openai', baseURL: `${mockUrl}/v1`, apiKey: WRONG_UPSTREAM_KEY },
    ],
    models: [...base['models'], model('wrong-key', 'wrong')],
    admin: { apiKey: ADMIN_KEY },
  };
}

beforeAll(async () => {
  mock = await startMockUpstream({ apiKey: UPSTREAM_KEY });
  gw = await startTestGateway(config(mock.url));
  // The config's admin key wins over the helper's own (gw.adminKey): ADMIN_KEY is used below.
  ({ key: client } = await issue({ team: 'canary' }));
  ({ key: teamAdmin } = await issue({ team: 'canary', role: 'team-admin' }));
});
afterAll(async () => {
  await gw?.close();
  await mock?.close();
});

async function issue(body: Record<string, unknown>): Promise<{ key: string; id: string }> {
  const a = await send('POST', '/admin/keys', {
    bearer: ADMIN_KEY,
    body: JSON.stringify({ name: `canary-${hex(3)}`, ...body }),
  });
  expect(a.status, a.text).toBe(201);
  const { key, id } = JSON.parse(a.text) as { key: string; id: string };
  clientKeys.push(key);
  return { key, id };
}

/** One request; its answer (minus the secret a creation or rotation shows once) joins `said`. */
async function send(
  method: string,
  path: string,
  opts: { bearer?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { 'content-type': 'application/json', ...opts.headers };
  if (opts.bearer !== undefined) headers['authorization'] = `Bearer ${opts.bearer}`;
  const a = await call(gw.url + path, {
    method,
    headers,
    ...(opts.body !== undefined && { body: opts.body }),
  });
  let text = a.text;
  if (a.status === 201 || (a.status === 200 && path.endsWith('/rotate'))) {
    // The one place a secret is shown, by design: to its creator, once.
    text = text.replace(/"key":"sk-tg-[0-9A-Za-z]+"/, '"key":"<shown once>"');
  }
  said.push(`${a.status} ${text} ${JSON.stringify([...a.headers])}`);
  return a;
}

describe('secrets in the wrong places', () => {
  it('are used, refused or ignored without ever being repeated', async () => {
    const chatPaths = [
      '/v1/chat/completions',
      '/openai/deployments/gpt-4.1-mini/chat/completions?api-version=2024-10-21',
    ];
    // Normal use: JSON, stream, Azure dialect, models, /me, the admin API.
    for (const path of chatPaths) {
      expect((await send('POST', path, { bearer: client, body: chatBody('hello') })).status).toBe(200);
      const s = await send('POST', path, {
        bearer: client,
        body: chatBody('hello stream', { stream: true }),
      });
      expect(s.status).toBe(200);
    }
    expect(
      (await send('POST', '/v1/chat/completions', { headers: { 'api-key': client }, body: chatBody('az') }))
        .status,
    ).toBe(200);
    expect((await send('GET', '/v1/models', { bearer: client })).status).toBe(200);
    expect((await send('GET', '/me', { bearer: client })).status).toBe(200);
    const { id } = await issue({ team: 'canary' });
    for (const path of ['/admin/keys', `/admin/keys/${id}`, '/admin/usage', '/admin/audit', '/admin/teams']) {
      expect((await send('GET', path, { bearer: ADMIN_KEY })).status).toBe(200);
    }
    expect((await send('POST', `/admin/keys/${id}/rotate`, { bearer: ADMIN_KEY, body: '{}' })).status).toBe(
      200,
    );
    expect((await send('GET', '/admin/keys', { bearer: teamAdmin })).status).toBe(200);

    // The wrong credential for the API: refused, never named.
    const refusals: [string, string, string, number][] = [
      ['GET', '/admin/keys', client, 403],
      ['POST', '/admin/keys', client, 403],
      ['GET', '/admin/usage', UPSTREAM_KEY, 401],
      ['POST', '/v1/chat/completions', ADMIN_KEY, 401],
      ['POST', '/v1/chat/completions', UPSTREAM_KEY, 401],
      ['GET', '/me', ADMIN_KEY, 401],
      ['GET', '/v1/models', WRONG_UPSTREAM_KEY, 401],
    ];
    for (const [method, path, bearer, status] of refusals) {
      const a = await send(method, path, { bearer, ...(method === 'POST' && { body: chatBody('x') }) });
      expect(a.status, `${method} ${path}`).toBe(status);
      expect(envelopeProblem(a)).toBeNull();
    }

    // Malformed Authorization headers carrying a secret.
    const malformed = [
      `Token ${client}`,
      `Bearer${client}`,
      `Bearer ${client} ${client}`,
      `Bearer ${client}x`,
      `Basic ${Buffer.from(`user:${client}`).toString('base64')}`,
      client,
      ADMIN_KEY,
      `Bearer Bearer ${ADMIN_KEY}`,
      `Bearer ${ADMIN_KEY.slice(0, -1)}`,
      `${UPSTREAM_KEY} Bearer`,
      // Checksum wrong: the last character changed (to one it is not already).
      `Bearer ${client.slice(0, -1)}${client.endsWith('Z') ? 'Y' : 'Z'}`,
    ];
    for (const authorization of malformed) {
      for (const [method, path] of [
        ['POST', '/v1/chat/completions'],
        ['GET', '/admin/keys'],
        ['GET', '/me'],
      ] as const) {
        const a = await send(method, path, {
          headers: { authorization },
          ...(method === 'POST' && { body: chatBody('malformed auth') }),
        });
        expect([401, 403], `${authorization} ${path}`).toContain(a.status);
        expect(envelopeProblem(a)).toBeNull();
      }
    }
    // The upstream's key as the Azure api-key header.
    expect(
      (
        await send('POST', '/openai/v1/chat/completions', {
          headers: { 'api-key': UPSTREAM_KEY },
          body: chatBody('x'),
        })
      ).status,
    ).toBe(401);

    // Secrets inside bodies: unknown fields, wrong types, broken JSON, late in a prompt.
    const filler = 'f'.repeat(80);
    const bodies = [
      chatBody(`${filler} ${ADMIN_KEY} ${UPSTREAM_KEY}`, { user: client, metadata: { k: ADMIN_KEY } }),
      chatBody(`${filler} late ${client}`, { stream: true, stream_options: { include_usage: true } }),
      `{"model":"gpt-4.1-mini","messages":[{"role":"user","content":"${ADMIN_KEY}"}`, // cut
      JSON.stringify({ model: 'gpt-4.1-mini', messages: ADMIN_KEY }),
      JSON.stringify({
        model: 'gpt-4.1-mini',
        messages: [{ role: client, content: 1 }],
        max_tokens: ADMIN_KEY,
      }),
      JSON.stringify({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: 'x' }], n: client }),
      JSON.stringify({
        model: 'gpt-4.1-mini',
        messages: [{ role: 'user', content: 'x' }],
        stream: ADMIN_KEY,
      }),
      JSON.stringify({
        model: 'gpt-4.1-mini',
        messages: [{ role: 'user', content: 'x' }],
        stream_options: { a: client },
      }),
    ];
    for (const body of bodies) {
      const a = await send('POST', '/v1/chat/completions', { bearer: client, body });
      expect(a.status).not.toBe(500);
      if (a.status !== 200) expect(envelopeProblem(a)).toBeNull();
    }
    // Not tried: the values the API echoes by design (the model or deployment named in a 404,
    // an unknown path): repeating the client's own words to it reveals nothing it did not send.
    const adminBodies = [
      { name: 'x', team: `${ADMIN_KEY} ${client}` },
      { name: 'x', limits: client },
      { name: 'x', expiresAt: UPSTREAM_KEY },
      { name: 'x', role: ADMIN_KEY },
      { name: 'x', budget: { usd: client, period: 'day' } },
      { name: 'x', models: ADMIN_KEY },
    ];
    for (const b of adminBodies) {
      const a = await send('POST', '/admin/keys', { bearer: ADMIN_KEY, body: JSON.stringify(b) });
      expect(a.status).toBe(400);
      expect(envelopeProblem(a)).toBeNull();
    }
    expect(
      (await send('POST', '/admin/keys', { bearer: ADMIN_KEY, body: `{"name":"${client}` })).status,
    ).toBe(400);
    expect(
      (
        await send('PUT', `/admin/teams/canary`, {
          bearer: ADMIN_KEY,
          body: JSON.stringify({ limits: { rpm: ADMIN_KEY } }),
        })
      ).status,
    ).toBe(400);
    expect(
      (await send('GET', `/admin/usage?from=${encodeURIComponent(ADMIN_KEY)}`, { bearer: ADMIN_KEY })).status,
    ).toBe(400);
    expect(
      (await send('GET', `/admin/usage?bogus=${encodeURIComponent(UPSTREAM_KEY)}`, { bearer: ADMIN_KEY }))
        .status,
    ).toBe(400);

    // Secrets as the request id: not adopted (a fresh id is made), so never logged or echoed.
    for (const requestId of [client, ADMIN_KEY, UPSTREAM_KEY, `trace-${client}`, `${ADMIN_KEY}-1`]) {
      for (const bearer of [client, ADMIN_KEY, 'nope']) {
        const a = await send('POST', '/v1/chat/completions', {
          bearer,
          headers: { 'x-request-id': requestId },
          body: chatBody('request id'),
        });
        expect(a.headers.get('x-request-id')).toMatch(/^req_[0-9a-f]{32}$/);
        const b = await send('GET', '/admin/keys', { bearer, headers: { 'x-request-id': requestId } });
        expect(b.headers.get('x-request-id')).toMatch(/^req_[0-9a-f]{32}$/);
      }
    }
    // A sane id of the client's own is still adopted.
    const own = await send('GET', '/me', { bearer: client, headers: { 'x-request-id': 'my-trace-0001' } });
    expect(own.headers.get('x-request-id')).toBe('my-trace-0001');

    // Upstream trouble: a misconfigured upstream key (the mock's 401 names it, masked), failures.
    for (const content of ['x', 'y [[mock:status=500]]']) {
      const a = await send('POST', '/v1/chat/completions', {
        bearer: client,
        body: JSON.stringify({ model: 'wrong-key', messages: [{ role: 'user', content }] }),
      });
      expect(a.status).toBe(502);
      expect(a.text).not.toMatch(/Incorrect API key|\*\*\*/);
    }
    for (const directive of ['status=401', 'status=500', 'reset=1', 'malformed=json', 'drop=1']) {
      const a = await send('POST', '/v1/chat/completions', {
        bearer: client,
        body: chatBody(`[[mock:${directive}]]`),
      });
      expect(a.status).toBeGreaterThanOrEqual(400);
    }
    // The upstream did get its key (the answers above were real).
    expect(mock.requests.some((r) => r.headers['authorization'] === `Bearer ${UPSTREAM_KEY}`)).toBe(true);
  });

  it('appear nowhere: not in any answer, log line (trace level) or metric', async () => {
    await gw.gateway.runtime.usage.flush(5000);
    const metrics = await call(`${gw.url}/metrics`);
    expect(metrics.status).toBe(200);
    const places: [string, string][] = [
      ['answers', said.join('\n')],
      ['logs', gw.logs.join('')],
      ['metrics', metrics.text],
    ];
    // The logs cover the requests above (one line per client API request).
    expect(gw.logs.filter((l) => l.includes('"msg":"request"')).length).toBeGreaterThan(40);
    for (const [where, text] of places) {
      for (const secret of canaries()) {
        const at = text.indexOf(secret);
        expect(at, `${secret} in ${where}: ${text.slice(Math.max(0, at - 200), at + 300)}`).toBe(-1);
      }
    }
    await report('secrets', {
      requests: said.length,
      logLines: gw.logs.length,
      canaries: canaries().length / 2,
      leaks: 0,
    });
  });
});

describe('secrets in a gateway process', () => {
  it('never reach its stdout or stderr: start-up, requests at trace level, shutdown, a bad config', async () => {
    const m = await startMockUpstream({ apiKey: UPSTREAM_KEY });
    try {
      const proc = await startGatewayProcess(
        {
          ...config(m.url),
          server: { host: '127.0.0.1', port: 0, drainDelaySeconds: 0 },
          logging: { level: 'trace' },
        },
        { adminKey: ADMIN_KEY },
      );
      const created = await call(`${proc.url}/admin/keys`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'proc' }),
      });
      const key = (JSON.parse(created.text) as { key: string }).key;
      clientKeys.push(key);
      const answers: Answer[] = [];
      for (const bearer of [key, ADMIN_KEY, UPSTREAM_KEY]) {
        answers.push(
          await call(`${proc.url}/v1/chat/completions`, {
            method: 'POST',
            headers: {
              authorization: `Bearer ${bearer}`,
              'content-type': 'application/json',
              'x-request-id': key,
            },
            body: chatBody(`${'f'.repeat(60)} ${ADMIN_KEY}`, { user: key }),
          }),
        );
        answers.push(await call(`${proc.url}/admin/keys`, { headers: { authorization: `Token ${bearer}` } }));
      }
      answers.push(
        await call(`${proc.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'wrong-key', messages: [{ role: 'user', content: 'x' }] }),
        }),
      );
      expect(answers[0]!.status).toBe(200);
      const exit = await proc.terminate();
      expect(exit.code).toBe(0);
      // Invalid configs: the problems are listed, the secrets next to them are not.
      const bad = await runGatewayToExit({
        ...config(m.url),
        upstreams: [
          { name: 'openai', type: 'openai', baseURL: 'not a url', apiKey: UPSTREAM_KEY },
          { name: 'x', type: 'nope', apiKey: WRONG_UPSTREAM_KEY },
        ],
        admin: { apiKey: ADMIN_KEY, extra: ADMIN_KEY },
        redis: { url: `redis://:${ADMIN_KEY}@127.0.0.1:1`, keyPrefix: 1 },
      });
      expect(bad.code).toBe(2);
      expect(bad.stderr.length).toBeGreaterThan(0);
      const everything = [
        proc.stdout,
        proc.stderr,
        bad.stdout,
        bad.stderr,
        ...answers.map((a) => a.text + JSON.stringify([...a.headers])),
      ].join('\n');
      expect(
        proc
          .logLines()
          .some((l) => l['level'] === 'trace' || l['level'] === 'debug' || l['msg'] === 'request'),
      ).toBe(true);
      for (const secret of canaries()) expect(everything.includes(secret), secret).toBe(false);
    } finally {
      await m.close();
    }
  });
});
