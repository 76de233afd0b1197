import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, twoUpstreams } from '../support/gateway.js';

// A team-admin key manages its own team's member keys, and nothing else (SPEC section 5).

let gw: TestGateway;
let alpha: string;
let beta: string;
let teamAdmin: { key: string; id: string };
let otherAdmin: { key: string; id: string };
let betaKey: { key: string; id: string };
let alphaMember: { key: string; id: string };

beforeAll(async () => {
  gw = await startTestGateway(twoUpstreams('http://127.0.0.1:9'));
  // Unique team names: the Redis prefix is per gateway, but keep the names telling.
  const tag = randomBytes(3).toString('hex');
  alpha = `alpha-${tag}`;
  beta = `beta-${tag}`;
  teamAdmin = await gw.issueKey({ name: 'alpha-admin', team: alpha, role: 'team-admin' });
  otherAdmin = await gw.issueKey({ name: 'alpha-admin-2', team: alpha, role: 'team-admin' });
  betaKey = await gw.issueKey({ name: 'beta-member', team: beta });
  alphaMember = await gw.issueKey({ name: 'alpha-member', team: alpha });
});
afterAll(async () => {
  await gw?.close();
});

const as = (method: string, path: string, body?: unknown) => gw.admin(method, path, body, teamAdmin.key);

function expectError(res: { status: number; body: any; headers: Headers }, status: number, code: string) {
  expect(res.status, JSON.stringify(res.body)).toBe(status);
  expect(res.headers.get('x-request-id')).toBeTruthy();
  expect(Object.keys(res.body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(res.body.error.code).toBe(code);
}

async function clientStatus(key: string): Promise<number> {
  const res = await fetch(`${gw.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
  await res.arrayBuffer();
  return res.status;
}

describe('a team-admin key', () => {
  it('creates member keys in its own team', async () => {
    const res = await as('POST', '/admin/keys', { name: 'made-by-team-admin', limits: { rpm: 10 } });
    expect(res.status).toBe(201);
    expect(res.body).toMatchObject({ team: alpha, role: 'member', limits: { rpm: 10 } });
    expect(res.body.key).toMatch(/^sk-tg-/);
    expect(await clientStatus(res.body.key)).toBe(200);
    // Naming its own team explicitly is fine too.
    const named = await as('POST', '/admin/keys', { name: 'named-team', team: alpha });
    expect(named.status).toBe(201);
    expect(named.body.team).toBe(alpha);
  });

  it('cannot create keys in another team', async () => {
    expectError(await as('POST', '/admin/keys', { name: 'sneaky', team: beta }), 404, 'not_found');
    const list = await gw.admin('GET', `/admin/keys?team=${beta}`);
    expect(list.body.data.map((k: { name: string }) => k.name)).toEqual(['beta-member']);
  });

  it('cannot create team-admin keys', async () => {
    expectError(
      await as('POST', '/admin/keys', { name: 'admin-by-admin', role: 'team-admin' }),
      403,
      'forbidden',
    );
    expectError(
      await as('POST', '/admin/keys', { name: 'admin-by-admin', role: 'team-admin', team: alpha }),
      403,
      'forbidden',
    );
  });

  it('lists only its own team, even when asking for another', async () => {
    const mine = await as('GET', '/admin/keys?limit=100');
    expect(mine.status).toBe(200);
    const teams = new Set(mine.body.data.map((k: { team: string }) => k.team));
    expect([...teams]).toEqual([alpha]);
    expect(mine.body.data.map((k: { id: string }) => k.id)).toEqual(
      expect.arrayContaining([alphaMember.id, teamAdmin.id]),
    );
    const other = await as('GET', `/admin/keys?team=${beta}&limit=100`);
    expect(other.status).toBe(200);
    for (const k of other.body.data) expect(k.team).toBe(alpha);
    expect(JSON.stringify(other.body)).not.toContain(betaKey.id);
    // Pagination stays within the team.
    let cursor: string | null = null;
    const paged: string[] = [];
    do {
      const res = await as('GET', `/admin/keys?limit=1${cursor ? `&cursor=${cursor}` : ''}`);
      for (const k of res.body.data) {
        expect(k.team).toBe(alpha);
        paged.push(k.id);
      }
      cursor = res.body.nextCursor;
    } while (cursor !== null && paged.length < 100);
    expect(paged.sort()).toEqual(mine.body.data.map((k: { id: string }) => k.id).sort());
  });

  it('shows, updates, rotates and revokes its team members', async () => {
    const m = await as('POST', '/admin/keys', { name: 'lifecycle' });
    const id = m.body.id;
    const shown = await as('GET', `/admin/keys/${id}`);
    expect(shown.status).toBe(200);
    expect(shown.body).toMatchObject({ id, name: 'lifecycle', team: alpha });
    const patched = await as('PATCH', `/admin/keys/${id}`, {
      limits: { tpm: 500 },
      metadata: { by: 'alpha' },
    });
    expect(patched.status).toBe(200);
    expect(patched.body).toMatchObject({ limits: { tpm: 500 }, metadata: { by: 'alpha' } });
    const rotated = await as('POST', `/admin/keys/${id}/rotate`, { graceSeconds: 0 });
    expect(rotated.status).toBe(200);
    expect(await clientStatus(m.body.key)).toBe(401);
    expect(await clientStatus(rotated.body.key)).toBe(200);
    expect((await as('DELETE', `/admin/keys/${id}`)).status).toBe(204);
    expect(await clientStatus(rotated.body.key)).toBe(401);
    expectError(await as('GET', `/admin/keys/${id}`), 404, 'not_found');
  });

  it("answers 404 for another team's key, and leaves it alone", async () => {
    expectError(await as('GET', `/admin/keys/${betaKey.id}`), 404, 'not_found');
    expectError(await as('PATCH', `/admin/keys/${betaKey.id}`, { disabled: true }), 404, 'not_found');
    expectError(await as('POST', `/admin/keys/${betaKey.id}/rotate`, {}), 404, 'not_found');
    expectError(await as('DELETE', `/admin/keys/${betaKey.id}`), 404, 'not_found');
    const still = await gw.admin('GET', `/admin/keys/${betaKey.id}`);
    expect(still.body).toMatchObject({ disabled: false, prefix: betaKey.key.slice(0, 12) });
    expect(await clientStatus(betaKey.key)).toBe(200);
  });

  it('cannot manage another team-admin key of its team', async () => {
    expectError(await as('PATCH', `/admin/keys/${otherAdmin.id}`, { disabled: true }), 403, 'forbidden');
    expectError(await as('POST', `/admin/keys/${otherAdmin.id}/rotate`, {}), 403, 'forbidden');
    expectError(await as('DELETE', `/admin/keys/${otherAdmin.id}`), 403, 'forbidden');
    expect(await clientStatus(otherAdmin.key)).toBe(200);
  });

  it('cannot move a key to another team', async () => {
    const m = await as('POST', '/admin/keys', { name: 'stay-home' });
    expectError(await as('PATCH', `/admin/keys/${m.body.id}`, { team: beta }), 403, 'forbidden');
    expectError(await as('PATCH', `/admin/keys/${m.body.id}`, { team: null }), 403, 'forbidden');
    expect((await gw.admin('GET', `/admin/keys/${m.body.id}`)).body.team).toBe(alpha);
  });

  it('answers 403 on teams and audit routes', async () => {
    expectError(await as('GET', '/admin/teams'), 403, 'forbidden');
    expectError(await as('GET', `/admin/teams/${alpha}`), 403, 'forbidden');
    expectError(await as('PUT', `/admin/teams/${alpha}`, { limits: { rpm: 100000 } }), 403, 'forbidden');
    expectError(await as('GET', '/admin/audit'), 403, 'forbidden');
  });

  it("cannot hand out limits above the team's own", async () => {
    const put = await gw.admin('PUT', `/admin/teams/${alpha}`, { limits: { rpm: 100 } });
    expect(put.status).toBe(200);
    expectError(
      await as('POST', '/admin/keys', { name: 'too-fast', limits: { rpm: 1000 } }),
      403,
      'forbidden',
    );
    // Unlimited is above any limit.
    expectError(
      await as('POST', '/admin/keys', { name: 'unlimited', limits: { rpm: null } }),
      403,
      'forbidden',
    );
    const ok = await as('POST', '/admin/keys', { name: 'within', limits: { rpm: 100 } });
    expect(ok.status).toBe(201);
    expectError(await as('PATCH', `/admin/keys/${ok.body.id}`, { limits: { rpm: 101 } }), 403, 'forbidden');
    expect((await as('PATCH', `/admin/keys/${ok.body.id}`, { limits: { rpm: 50 } })).body.limits).toEqual({
      rpm: 50,
    });
    // The root admin is not bound by it.
    const root = await gw.admin('POST', '/admin/keys', {
      name: 'root-made',
      team: alpha,
      limits: { rpm: 1000 },
    });
    expect(root.status).toBe(201);
  });

  it('is audited under its own id', async () => {
    const m = await as('POST', '/admin/keys', { name: 'audited-by-team-admin' });
    const audit = await gw.admin('GET', '/admin/audit?limit=50');
    const entry = audit.body.data.find((e: { target: string }) => e.target === m.body.id);
    expect(entry).toMatchObject({ action: 'key.created', actor: teamAdmin.id });
  });

  it('still works as a client key', async () => {
    expect(await clientStatus(teamAdmin.key)).toBe(200);
  });
});

describe('a member key', () => {
  it('answers 403 forbidden on the admin API', async () => {
    for (const [method, path, body] of [
      ['GET', '/admin/keys', undefined],
      ['POST', '/admin/keys', { name: 'x' }],
      ['GET', `/admin/keys/${alphaMember.id}`, undefined],
      ['DELETE', `/admin/keys/${alphaMember.id}`, undefined],
      ['GET', '/admin/teams', undefined],
    ] as const) {
      const res = await gw.admin(method, path, body, alphaMember.key);
      expectError(res, 403, 'forbidden');
      expect(res.body.error.type).toBe('permission_error');
    }
    expect(await clientStatus(alphaMember.key)).toBe(200);
  });

  it('a revoked team-admin key loses admin access at once', async () => {
    const ta = await gw.issueKey({ name: 'short-lived-admin', team: alpha, role: 'team-admin' });
    expect((await gw.admin('GET', '/admin/keys', undefined, ta.key)).status).toBe(200);
    expect((await gw.admin('DELETE', `/admin/keys/${ta.id}`)).status).toBe(204);
    expectError(await gw.admin('GET', '/admin/keys', undefined, ta.key), 401, 'invalid_api_key');
  });
});
