import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashKey } from '../../src/auth/key-format.js';
import { startTestGateway, type TestGateway, twoUpstreams } from '../support/gateway.js';

// The admin API (SPEC section 5) against a real Redis. The upstream is never contacted here.
const UPSTREAM = 'http://127.0.0.1:9';

let gw: TestGateway;
/** Every secret handed out, to check that none shows up where it must not. */
const secrets: string[] = [];

beforeAll(async () => {
  gw = await startTestGateway(twoUpstreams(UPSTREAM));
});
afterAll(async () => {
  await gw?.close();
});

const uniq = (p: string): string => `${p}-${randomBytes(4).toString('hex')}`;

async function create(body: Record<string, unknown>, g: TestGateway = gw): Promise<any> {
  const res = await g.admin('POST', '/admin/keys', body);
  expect(res.status, JSON.stringify(res.body)).toBe(201);
  secrets.push(res.body.key);
  return res.body;
}

/** Status of a client call with this key (GET /v1/models: authenticated, no upstream). */
async function keyStatus(url: string, key: string): Promise<number> {
  const res = await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
  await res.arrayBuffer();
  return res.status;
}

function expectEnvelope(res: { status: number; body: any; headers: Headers }, status: number, code?: string) {
  expect(res.status, JSON.stringify(res.body)).toBe(status);
  expect(res.headers.get('x-request-id')).toBeTruthy();
  expect(Object.keys(res.body)).toEqual(['error']);
  expect(Object.keys(res.body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  if (code !== undefined) expect(res.body.error.code).toBe(code);
}

function expectNoSecrets(json: unknown): void {
  const text = JSON.stringify(json);
  expect(text).not.toMatch(/sk-tg-[0-9A-Za-z]{38}/);
  expect(text).not.toMatch(/"secrets"|"sha256"|"hash"/);
  for (const s of secrets) {
    expect(text).not.toContain(s);
    expect(text).not.toContain(hashKey(s));
  }
}

async function pollUntil(fn: () => Promise<boolean>, timeoutMs: number, stepMs = 20): Promise<number> {
  const start = Date.now();
  for (;;) {
    if (await fn()) return Date.now() - start;
    if (Date.now() - start > timeoutMs) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

describe('keys', () => {
  it('creates a key and shows the secret once', async () => {
    const before = Date.now();
    const res = await gw.admin('POST', '/admin/keys', {
      name: 'ci-bot',
      team: uniq('platform'),
      limits: { rpm: 60, tpm: null },
      budget: { usd: 12.5, period: 'month' },
      models: ['gpt-4.1-mini'],
      expiresAt: '2099-01-01T00:00:00Z',
      metadata: { owner: 'ops', ticket: 42 },
    });
    expect(res.status).toBe(201);
    expect(res.headers.get('x-request-id')).toBeTruthy();
    const k = res.body;
    secrets.push(k.key);
    expect(k).toMatchObject({
      name: 'ci-bot',
      role: 'member',
      limits: { rpm: 60, tpm: null },
      budget: { usd: 12.5, period: 'month' },
      models: ['gpt-4.1-mini'],
      disabled: false,
      metadata: { owner: 'ops', ticket: 42 },
    });
    expect(k.id).toEqual(expect.any(String));
    expect(k.key).toMatch(/^sk-tg-[0-9A-Za-z]{38}$/);
    expect(k.prefix).toBe(k.key.slice(0, 12));
    expect(k.team).toMatch(/^platform-/);
    expect(Date.parse(k.expiresAt)).toBe(Date.parse('2099-01-01T00:00:00Z'));
    expect(Date.parse(k.createdAt)).toBeGreaterThanOrEqual(before - 1000);
    for (const f of [
      'id',
      'key',
      'name',
      'team',
      'role',
      'prefix',
      'limits',
      'budget',
      'models',
      'expiresAt',
      'createdAt',
      'disabled',
      'metadata',
    ]) {
      expect(k, f).toHaveProperty(f);
    }
    expect(k).not.toHaveProperty('secrets');
    expect(JSON.stringify(k)).not.toContain(hashKey(k.key));
    expect(await keyStatus(gw.url, k.key)).toBe(200);

    // The secret is never shown again.
    const shown = await gw.admin('GET', `/admin/keys/${k.id}`);
    expect(shown.status).toBe(200);
    expect(shown.body).toMatchObject({ id: k.id, name: 'ci-bot', prefix: k.prefix, team: k.team });
    expect(typeof shown.body.key).not.toBe('string');
    expectNoSecrets(shown.body);
  });

  it('fills defaults for a minimal key', async () => {
    const k = await create({ name: uniq('minimal') });
    expect(k).toMatchObject({
      team: null,
      role: 'member',
      limits: {},
      budget: null,
      models: null,
      expiresAt: null,
      disabled: false,
      metadata: {},
    });
  });

  it('lists keys page by page without secrets or hashes', async () => {
    const team = uniq('paging');
    const ids = new Set<string>();
    for (let i = 0; i < 5; i++) ids.add((await create({ name: `k${i}`, team })).id);
    await create({ name: 'elsewhere', team: uniq('other') });

    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const q: string = `/admin/keys?team=${team}&limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
      const res = await gw.admin('GET', q);
      expect(res.status).toBe(200);
      expect(Object.keys(res.body).sort()).toEqual(['data', 'nextCursor']);
      expect(res.body.data.length).toBeLessThanOrEqual(2);
      expectNoSecrets(res.body);
      for (const k of res.body.data) {
        expect(k.team).toBe(team);
        expect(k).not.toHaveProperty('key');
        seen.push(k.id);
      }
      cursor = res.body.nextCursor;
      pages++;
    } while (cursor !== null && pages < 10);
    expect(pages).toBe(3);
    expect(seen).toHaveLength(5);
    expect(new Set(seen)).toEqual(ids);

    // Without a team filter the whole set is walked, still each key once.
    const all: string[] = [];
    cursor = null;
    pages = 0;
    do {
      const res = await gw.admin(
        'GET',
        `/admin/keys?limit=3${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
      );
      expectNoSecrets(res.body);
      all.push(...res.body.data.map((k: { id: string }) => k.id));
      cursor = res.body.nextCursor;
      pages++;
    } while (cursor !== null && pages < 100);
    expect(new Set(all).size).toBe(all.length);
    for (const id of ids) expect(all).toContain(id);
  });

  it('updates a key, merging limits field by field', async () => {
    const k = await create({ name: uniq('upd'), team: uniq('t'), limits: { rpm: 10, tpm: 1000 } });
    let res = await gw.admin('PATCH', `/admin/keys/${k.id}`, { limits: { tpm: 2000 } });
    expect(res.status).toBe(200);
    expect(res.body.limits).toEqual({ rpm: 10, tpm: 2000 });
    res = await gw.admin('PATCH', `/admin/keys/${k.id}`, { limits: { rpm: null, maxConcurrent: 0 } });
    expect(res.body.limits).toEqual({ rpm: null, tpm: 2000, maxConcurrent: 0 });
    res = await gw.admin('PATCH', `/admin/keys/${k.id}`, {
      name: 'renamed',
      metadata: { a: 1 },
      models: [],
      budget: { usd: 1, period: 'day' },
    });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      id: k.id,
      name: 'renamed',
      metadata: { a: 1 },
      models: [],
      budget: { usd: 1, period: 'day' },
      limits: { rpm: null, tpm: 2000, maxConcurrent: 0 },
      prefix: k.prefix,
      createdAt: k.createdAt,
    });
    expectNoSecrets(res.body);
    const shown = await gw.admin('GET', `/admin/keys/${k.id}`);
    expect(shown.body).toMatchObject({ name: 'renamed', limits: { rpm: null, tpm: 2000, maxConcurrent: 0 } });
    // An empty patch changes nothing.
    res = await gw.admin('PATCH', `/admin/keys/${k.id}`, {});
    expect(res.status).toBe(200);
    expect(res.body.name).toBe('renamed');
    // The key still authenticates after all that.
    expect(await keyStatus(gw.url, k.key)).toBe(200);
  });

  it('rotates with a grace period: the old secret works until it ends', async () => {
    const k = await create({ name: uniq('rot') });
    expect(await keyStatus(gw.url, k.key)).toBe(200);
    const res = await gw.admin('POST', `/admin/keys/${k.id}/rotate`, { graceSeconds: 1 });
    expect(res.status).toBe(200);
    secrets.push(res.body.key);
    expect(res.body.id).toBe(k.id);
    expect(res.body.key).toMatch(/^sk-tg-[0-9A-Za-z]{38}$/);
    expect(res.body.key).not.toBe(k.key);
    expect(await keyStatus(gw.url, res.body.key)).toBe(200);
    expect(await keyStatus(gw.url, k.key)).toBe(200);
    const shown = await gw.admin('GET', `/admin/keys/${k.id}`);
    expect(shown.body.prefix).toBe(res.body.key.slice(0, 12));
    const waited = await pollUntil(async () => (await keyStatus(gw.url, k.key)) === 401, 3000);
    expect(waited).toBeGreaterThan(500);
    expect(await keyStatus(gw.url, res.body.key)).toBe(200);
  });

  it('rotates without grace: the old secret fails at once', async () => {
    const k = await create({ name: uniq('rot0') });
    expect(await keyStatus(gw.url, k.key)).toBe(200);
    const res = await gw.admin('POST', `/admin/keys/${k.id}/rotate`, { graceSeconds: 0 });
    expect(res.status).toBe(200);
    secrets.push(res.body.key);
    expect(await keyStatus(gw.url, k.key)).toBe(401);
    expect(await keyStatus(gw.url, res.body.key)).toBe(200);
    // No body at all means no grace either.
    const again = await gw.admin('POST', `/admin/keys/${k.id}/rotate`);
    expect(again.status).toBe(200);
    secrets.push(again.body.key);
    expect(await keyStatus(gw.url, res.body.key)).toBe(401);
    expect(await keyStatus(gw.url, again.body.key)).toBe(200);
  });

  it('revokes a key: 204, then 401 for the key and 404 for the id', async () => {
    const k = await create({ name: uniq('rev'), team: uniq('t') });
    expect(await keyStatus(gw.url, k.key)).toBe(200);
    const res = await gw.admin('DELETE', `/admin/keys/${k.id}`);
    expect(res.status).toBe(204);
    expect(res.body).toBeNull();
    expect(await keyStatus(gw.url, k.key)).toBe(401);
    expectEnvelope(await gw.admin('GET', `/admin/keys/${k.id}`), 404, 'not_found');
    expectEnvelope(await gw.admin('DELETE', `/admin/keys/${k.id}`), 404, 'not_found');
    // The name is free again.
    await create({ name: k.name, team: k.team });
  });

  it('refuses a duplicate name within a team with 409, allows it in another team', async () => {
    const team = uniq('dup');
    const name = uniq('same');
    await create({ name, team });
    expectEnvelope(await gw.admin('POST', '/admin/keys', { name, team }), 409, 'conflict');
    await create({ name, team: uniq('dup-other') });
    // Without a team the name is unique among team-less keys too.
    const loose = uniq('loose');
    await create({ name: loose });
    expectEnvelope(await gw.admin('POST', '/admin/keys', { name: loose }), 409, 'conflict');
    // Renaming onto a taken name is a conflict too, and changes nothing.
    const other = await create({ name: uniq('other'), team });
    expectEnvelope(await gw.admin('PATCH', `/admin/keys/${other.id}`, { name }), 409, 'conflict');
    expect((await gw.admin('GET', `/admin/keys/${other.id}`)).body.name).toBe(other.name);
  });

  it.each([
    ['no name', {}, 'name'],
    ['an empty name', { name: '  ' }, 'name'],
    ['a wrong role', { name: 'x', role: 'owner' }, 'role'],
    ['negative limits', { name: 'x', limits: { rpm: -1 } }, 'limits.rpm'],
    ['fractional limits', { name: 'x', limits: { tpm: 1.5 } }, 'limits.tpm'],
    ['an unknown limit', { name: 'x', limits: { rph: 1 } }, 'limits'],
    ['a bad budget period', { name: 'x', budget: { usd: 1, period: 'week' } }, 'budget.period'],
    ['a negative budget', { name: 'x', budget: { usd: -1, period: 'day' } }, 'budget.usd'],
    ['a bad expiry', { name: 'x', expiresAt: 'tomorrow' }, 'expiresAt'],
    ['models not a list', { name: 'x', models: 'gpt-4.1-mini' }, 'models'],
    ['an unknown field', { name: 'x', colour: 'blue' }, null],
    ['a bad team name', { name: 'x', team: 'a b/c' }, 'team'],
    ['a team admin without a team', { name: 'x', role: 'team-admin' }, 'team'],
  ])('refuses %s with a 400 envelope', async (_what, body, param) => {
    const res = await gw.admin('POST', '/admin/keys', body);
    expectEnvelope(res, 400, 'invalid_request_error');
    expect(res.body.error.type).toBe('invalid_request_error');
    if (param !== null) expect(res.body.error.param).toBe(param);
  });

  it('refuses invalid bodies and queries on the other routes', async () => {
    const k = await create({ name: uniq('val') });
    const bad = await fetch(`${gw.url}/admin/keys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${gw.adminKey}`, 'content-type': 'application/json' },
      body: '{"name": ',
    });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as any).error.code).toBe('invalid_request_error');
    expectEnvelope(await gw.admin('PATCH', `/admin/keys/${k.id}`, { disabled: 'yes' }), 400);
    expectEnvelope(await gw.admin('PATCH', `/admin/keys/${k.id}`, { role: 'team-admin' }), 400);
    expectEnvelope(await gw.admin('POST', `/admin/keys/${k.id}/rotate`, { graceSeconds: -1 }), 400);
    expectEnvelope(await gw.admin('GET', '/admin/keys?limit=0'), 400);
    expectEnvelope(await gw.admin('GET', '/admin/keys?limit=lots'), 400);
    expectEnvelope(await gw.admin('PUT', '/admin/teams/alpha', { limits: { rpm: 'many' } }), 400);
    expectEnvelope(await gw.admin('PUT', '/admin/teams/bad%20name', {}), 400);
  });

  it('answers unknown ids with 404', async () => {
    for (const [method, path] of [
      ['GET', '/admin/keys/key_nope'],
      ['PATCH', '/admin/keys/key_nope'],
      ['DELETE', '/admin/keys/key_nope'],
      ['POST', '/admin/keys/key_nope/rotate'],
      ['GET', '/admin/teams/no-such-team'],
      ['GET', '/admin/nothing'],
    ] as const) {
      expectEnvelope(await gw.admin(method, path, method === 'PATCH' ? { name: 'x' } : undefined), 404);
    }
  });
});

describe('teams', () => {
  it('sets, lists and shows teams, merging limits', async () => {
    const team = uniq('alpha');
    let res = await gw.admin('PUT', `/admin/teams/${team}`, {
      limits: { rpm: 100, tpm: 5000 },
      budget: { usd: 50, period: 'month' },
    });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      name: team,
      limits: { rpm: 100, tpm: 5000 },
      budget: { usd: 50, period: 'month' },
    });
    res = await gw.admin('PUT', `/admin/teams/${team}`, { limits: { tpm: null } });
    expect(res.body).toMatchObject({
      name: team,
      limits: { rpm: 100, tpm: null },
      budget: { usd: 50, period: 'month' },
    });
    res = await gw.admin('PUT', `/admin/teams/${team}`, { budget: null });
    expect(res.body.budget).toBeNull();
    expect(res.body.limits).toEqual({ rpm: 100, tpm: null });

    const shown = await gw.admin('GET', `/admin/teams/${team}`);
    expect(shown.status).toBe(200);
    expect(shown.body).toMatchObject({ name: team, limits: { rpm: 100, tpm: null }, budget: null });
    const list = await gw.admin('GET', '/admin/teams');
    expect(list.status).toBe(200);
    expect(list.body.data.find((t: { name: string }) => t.name === team)).toMatchObject({
      limits: { rpm: 100 },
    });
  });
});

describe('audit trail', () => {
  it('records every change with actor root, never a secret', async () => {
    const team = uniq('audited');
    const k = await create({ name: uniq('aud'), team });
    await gw.admin('PATCH', `/admin/keys/${k.id}`, { limits: { rpm: 5 } });
    const rotated = await gw.admin('POST', `/admin/keys/${k.id}/rotate`, { graceSeconds: 0 });
    secrets.push(rotated.body.key);
    await gw.admin('DELETE', `/admin/keys/${k.id}`);
    await gw.admin('PUT', `/admin/teams/${team}`, { limits: { rpm: 7 } });

    const entries: any[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const res = await gw.admin(
        'GET',
        `/admin/audit?limit=3${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
      );
      expect(res.status).toBe(200);
      expect(res.body.data.length).toBeLessThanOrEqual(3);
      expectNoSecrets(res.body);
      entries.push(...res.body.data);
      cursor = res.body.nextCursor;
      pages++;
    } while (cursor !== null && pages < 200);
    expect(new Set(entries.map((e) => e.id)).size).toBe(entries.length);

    const mine = entries.filter((e) => e.target === k.id).reverse();
    expect(mine.map((e) => e.action)).toEqual(['key.created', 'key.updated', 'key.rotated', 'key.revoked']);
    const teamEntry = entries.find((e) => e.target === team);
    expect(teamEntry).toMatchObject({ action: 'team.updated', actor: 'root' });
    for (const e of [...mine, teamEntry]) {
      expect(e.actor).toBe('root');
      expect(Number.isNaN(Date.parse(e.time))).toBe(false);
      expect(e.id).toBeTruthy();
    }
    // Newest first.
    const times = entries.map((e) => Date.parse(e.time));
    expect([...times].sort((a, b) => b - a)).toEqual(times);
  });
});

describe('admin authentication', () => {
  it('answers 401 without credentials or with a wrong admin key', async () => {
    const res = await fetch(`${gw.url}/admin/keys`);
    expect(res.status).toBe(401);
    const body = (await res.json()) as any;
    expect(body.error.code).toBe('invalid_api_key');
    expect(res.headers.get('x-request-id')).toBeTruthy();
    expectEnvelope(
      await gw.admin('GET', '/admin/keys', undefined, 'not-the-admin-key'),
      401,
      'invalid_api_key',
    );
    expectEnvelope(
      await gw.admin('GET', '/admin/keys', undefined, `${gw.adminKey}x`),
      401,
      'invalid_api_key',
    );
  });

  it('accepts the admin key in the api-key header too', async () => {
    const res = await fetch(`${gw.url}/admin/teams`, { headers: { 'api-key': gw.adminKey } });
    expect(res.status).toBe(200);
  });

  it('answers 403 forbidden to a member key', async () => {
    const k = await create({ name: uniq('member'), team: uniq('t') });
    for (const [method, path] of [
      ['GET', '/admin/keys'],
      ['POST', '/admin/keys'],
      ['GET', `/admin/keys/${k.id}`],
      ['GET', '/admin/teams'],
      ['GET', '/admin/audit'],
    ] as const) {
      const res = await gw.admin(method, path, method === 'POST' ? { name: 'x' } : undefined, k.key);
      expectEnvelope(res, 403, 'forbidden');
      expect(res.body.error.type).toBe('permission_error');
    }
  });

  it('leaves the admin API out entirely when no admin key is configured', async () => {
    const g = await startTestGateway({ ...twoUpstreams(UPSTREAM), admin: { apiKey: '' } });
    try {
      for (const key of [g.adminKey, '', 'anything']) {
        const res = await g.admin('GET', '/admin/keys', undefined, key);
        expectEnvelope(res, 404, 'not_found');
      }
      expectEnvelope(await g.admin('POST', '/admin/keys', { name: 'x' }, ''), 404, 'not_found');
      expectEnvelope(await g.admin('GET', '/admin/teams', undefined, ''), 404, 'not_found');
      // The rest of the gateway still works.
      expect((await fetch(`${g.url}/healthz`)).status).toBe(200);
    } finally {
      await g.close();
    }
  });
});

describe('GET /me', () => {
  it("shows the key's own settings without an admin", async () => {
    const k = await create({
      name: uniq('me'),
      team: uniq('t'),
      limits: { rpm: 30 },
      budget: { usd: 3, period: 'day' },
    });
    const res = await fetch(`${gw.url}/me`, { headers: { authorization: `Bearer ${k.key}` } });
    expect(res.status).toBe(200);
    const me = (await res.json()) as any;
    // Regression: limiter status details once replaced the key's team name with an object.
    expect(me.team, "GET /me must keep the key's team name").toBe(k.team);
    expect(me).toHaveProperty('spend');
    expect(me).toHaveProperty('remaining');
    expect(me).toMatchObject({
      id: k.id,
      name: k.name,
      team: k.team,
      role: 'member',
      limits: { rpm: 30 },
      budget: { usd: 3, period: 'day' },
    });
    expectNoSecrets(me);
    const anon = await fetch(`${gw.url}/me`);
    expect(anon.status).toBe(401);
    expect(((await anon.json()) as any).error.code).toBe('invalid_api_key');
  });
});

describe('two instances on one Redis', () => {
  it('a key revoked on one instance is refused by the other within 1 s', async () => {
    const a = await startTestGateway(twoUpstreams(UPSTREAM));
    const b = await startTestGateway(twoUpstreams(UPSTREAM), { prefix: a.prefix });
    try {
      // Both listen for changes (so what follows tests propagation, not a cache miss).
      await pollUntil(async () => a.gateway.runtime.keyStore.live && b.gateway.runtime.keyStore.live, 3000);
      const k = await a.issueKey({ team: 'shared' });
      secrets.push(k.key);
      // B learns the key (and caches it).
      expect(await keyStatus(b.url, k.key)).toBe(200);
      expect(await keyStatus(b.url, k.key)).toBe(200);
      // Keys created on A are visible on B's admin API too.
      expect((await b.admin('GET', `/admin/keys/${k.id}`)).body).toMatchObject({ id: k.id, team: 'shared' });
      expect((await a.admin('DELETE', `/admin/keys/${k.id}`)).status).toBe(204);
      const took = await pollUntil(async () => (await keyStatus(b.url, k.key)) === 401, 2000, 10);
      expect(took).toBeLessThan(1000);

      // A disable and a rotation propagate the same way.
      const d = await a.issueKey({ team: 'shared' });
      expect(await keyStatus(b.url, d.key)).toBe(200);
      await a.admin('PATCH', `/admin/keys/${d.id}`, { disabled: true });
      expect(await pollUntil(async () => (await keyStatus(b.url, d.key)) === 401, 2000, 10)).toBeLessThan(
        1000,
      );
      await a.admin('PATCH', `/admin/keys/${d.id}`, { disabled: false });
      expect(await pollUntil(async () => (await keyStatus(b.url, d.key)) === 200, 2000, 10)).toBeLessThan(
        1000,
      );
      const r = await a.admin('POST', `/admin/keys/${d.id}/rotate`, { graceSeconds: 0 });
      expect(await pollUntil(async () => (await keyStatus(b.url, d.key)) === 401, 2000, 10)).toBeLessThan(
        1000,
      );
      expect(await keyStatus(b.url, r.body.key)).toBe(200);
    } finally {
      await b.close();
      await a.close();
    }
  });
});

describe('memory store mode', () => {
  it('creates, lists, rotates and revokes keys without Redis', async () => {
    const g = await startTestGateway(twoUpstreams(UPSTREAM), { redis: false });
    try {
      const team = 'mem';
      const ids: string[] = [];
      const keys: string[] = [];
      for (let i = 0; i < 3; i++) {
        const k = await create({ name: `m${i}`, team }, g);
        expect(k.key).toMatch(/^sk-tg-/);
        ids.push(k.id);
        keys.push(k.key);
      }
      expectEnvelope(await g.admin('POST', '/admin/keys', { name: 'm0', team }), 409, 'conflict');
      const seen: string[] = [];
      let cursor: string | null = null;
      do {
        const res = await g.admin(
          'GET',
          `/admin/keys?team=${team}&limit=2${cursor ? `&cursor=${cursor}` : ''}`,
        );
        expect(res.status).toBe(200);
        expectNoSecrets(res.body);
        seen.push(...res.body.data.map((k: { id: string }) => k.id));
        cursor = res.body.nextCursor;
      } while (cursor !== null);
      expect(seen.sort()).toEqual([...ids].sort());
      expect(await keyStatus(g.url, keys[0]!)).toBe(200);
      const patched = await g.admin('PATCH', `/admin/keys/${ids[0]}`, { limits: { rpm: 5 } });
      expect(patched.body.limits).toEqual({ rpm: 5 });
      const rotated = await g.admin('POST', `/admin/keys/${ids[1]}/rotate`, {});
      secrets.push(rotated.body.key);
      expect(await keyStatus(g.url, keys[1]!)).toBe(401);
      expect(await keyStatus(g.url, rotated.body.key)).toBe(200);
      expect((await g.admin('DELETE', `/admin/keys/${ids[0]}`)).status).toBe(204);
      expect(await keyStatus(g.url, keys[0]!)).toBe(401);
      expect((await g.admin('GET', `/admin/keys/${ids[0]}`)).status).toBe(404);
      const audit = await g.admin('GET', '/admin/audit?limit=100');
      expect(audit.body.data.map((e: { action: string }) => e.action)).toEqual(
        expect.arrayContaining(['key.created', 'key.updated', 'key.rotated', 'key.revoked']),
      );
      expectNoSecrets(audit.body);
    } finally {
      await g.close();
    }
  });
});

describe('logs', () => {
  it('never contain a secret', () => {
    const text = gw.logs.join('');
    for (const s of secrets) {
      expect(text).not.toContain(s);
    }
    expect(text).not.toContain(gw.adminKey);
  });
});
