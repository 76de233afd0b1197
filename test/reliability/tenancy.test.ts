// Issue 9, item 6: tenancy. The cache never crosses scopes (team scope over two instances, so
// the in-process and the Redis tier both answer; key scope; global scope shares), single flight
// never merges two scopes, the usage API shows a team admin its own team only, and a member key
// opens no admin route with any method.

import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { startTestGateway, type TestGateway, twoUpstreams } from '../support/gateway.js';
import { type Answer, call, chat, envelopeProblem, report, sseEvents, usageTotals } from './helpers.js';

let mock: MockUpstream;
const gateways: TestGateway[] = [];
let checks = 0;

beforeAll(async () => {
  mock = await startMockUpstream();
});
afterAll(async () => {
  for (const g of gateways) await g.close();
  await mock?.close();
});

async function gateway(scope: 'team' | 'key' | 'global', prefix?: string): Promise<TestGateway> {
  const g = await startTestGateway(
    {
      ...twoUpstreams(mock.url),
      cache: { scope },
      limits: { defaults: { rpm: null, tpm: null, maxConcurrent: null } },
    },
    prefix === undefined ? {} : { prefix },
  );
  gateways.push(g);
  return g;
}

const unique = (): string => randomBytes(6).toString('hex');

/** Asks once, as JSON or as a stream; returns x-cache and the answer's content. */
async function ask(
  g: TestGateway,
  key: string,
  content: string,
  stream: boolean,
): Promise<{ cache: string; text: string }> {
  const a = await chat(g.url, key, content, stream ? { stream: true } : {});
  expect(a.status, a.text).toBe(200);
  checks++;
  return { cache: a.headers.get('x-cache') ?? '', text: contentOf(a, stream) };
}

function contentOf(a: Answer, stream: boolean): string {
  if (!stream) return JSON.parse(a.text).choices[0].message.content;
  return sseEvents(a.text)
    .filter((e) => e !== 'data: [DONE]')
    .map((e) => JSON.parse(e.slice('data: '.length)).choices[0]?.delta?.content ?? '')
    .join('');
}

describe('the cache never crosses scopes', () => {
  it('team scope, over two instances: a team shares, another team and team-less keys do not', async () => {
    const prefix = `test:tenancy:${unique()}:`;
    const g1 = await gateway('team', prefix);
    const g2 = await gateway('team', prefix);
    const red = `red-${unique()}`;
    const blue = `blue-${unique()}`;
    const [a1, a2, b1, b2, n1, n2] = await Promise.all([
      g1.issueKey({ team: red }),
      g1.issueKey({ team: red }),
      g1.issueKey({ team: blue }),
      g1.issueKey({ team: blue }),
      g1.issueKey({}),
      g1.issueKey({}),
    ]);
    for (const stream of [false, true]) {
      for (const [first, second] of [
        [g1, g2],
        [g2, g1],
      ] as const) {
        const content = `team scope ${stream} ${unique()}`;
        const before = mock.stats.requests;
        // The first of each scope misses, on whichever instance; the others of the scope hit.
        expect((await ask(first, a1!.key, content, stream)).cache).toBe('MISS');
        expect((await ask(first, b1!.key, content, stream)).cache).toBe('MISS');
        expect((await ask(second, b1!.key, content, stream)).cache).toBe('HIT');
        expect((await ask(second, n1!.key, content, stream)).cache).toBe('MISS');
        expect((await ask(first, n2!.key, content, stream)).cache).toBe('MISS');
        const hit = await ask(second, a2!.key, content, stream);
        expect(hit.cache).toBe('HIT');
        expect(hit.text).toBe(`echo: ${content}`);
        expect((await ask(first, b2!.key, content, stream)).cache).toBe('HIT');
        expect((await ask(first, n1!.key, content, stream)).cache).toBe('HIT');
        expect((await ask(second, n2!.key, content, stream)).cache).toBe('HIT');
        // Four scopes, four upstream calls.
        expect(mock.stats.requests - before).toBe(4);
      }
    }
  });

  it('single flight never merges concurrent identical misses of two teams', async () => {
    const g = await gateway('team');
    const [a, b] = await Promise.all([g.issueKey({ team: 'sf-a' }), g.issueKey({ team: 'sf-b' })]);
    const content = `single flight [[mock:delay=200]] ${unique()}`;
    const before = mock.stats.requests;
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        chat(g.url, i % 2 ? a.key : b.key, content, i % 4 < 2 ? {} : { stream: true }),
      ),
    );
    expect(answers.map((x) => x.status)).toEqual(Array(20).fill(200));
    // One upstream call per team, not one for both.
    expect(mock.stats.requests - before).toBe(2);
    checks += 20;
  });

  it('key scope: two keys of one team do not share; a rotated key keeps its entries', async () => {
    const g = await gateway('key');
    const [k1, k2] = await Promise.all([g.issueKey({ team: 'same' }), g.issueKey({ team: 'same' })]);
    for (const stream of [false, true]) {
      const content = `key scope ${stream} ${unique()}`;
      expect((await ask(g, k1.key, content, stream)).cache).toBe('MISS');
      expect((await ask(g, k2.key, content, stream)).cache).toBe('MISS');
      expect((await ask(g, k1.key, content, stream)).cache).toBe('HIT');
      const rotated = await g.admin('POST', `/admin/keys/${k1.id}/rotate`, { graceSeconds: 0 });
      expect(rotated.status).toBe(200);
      expect((await ask(g, rotated.body.key, content, stream)).cache).toBe('HIT');
      k1.key = rotated.body.key;
      expect((await ask(g, k2.key, content, stream)).cache).toBe('HIT');
    }
  });

  it('global scope: every key shares', async () => {
    const g = await gateway('global');
    const [x, y, z] = await Promise.all([
      g.issueKey({ team: 'gx' }),
      g.issueKey({ team: 'gy' }),
      g.issueKey({}),
    ]);
    const content = `global ${unique()}`;
    expect((await ask(g, x.key, content, false)).cache).toBe('MISS');
    expect((await ask(g, y.key, content, true)).cache).toBe('HIT');
    expect((await ask(g, z.key, content, false)).cache).toBe('HIT');
  });
});

describe('the usage API never crosses teams', () => {
  it("a team admin sees its own team's usage only, whatever it asks for", async () => {
    const g = await gateway('team');
    const t0 = Date.now();
    const ta = `ua-${unique()}`;
    const tb = `ub-${unique()}`;
    const [a, b, adminA, adminB] = await Promise.all([
      g.issueKey({ team: ta }),
      g.issueKey({ team: tb }),
      g.issueKey({ team: ta, role: 'team-admin' }),
      g.issueKey({ team: tb, role: 'team-admin' }),
    ]);
    for (let i = 0; i < 3; i++) await chat(g.url, a.key, `usage a ${i}`);
    for (let i = 0; i < 5; i++) await chat(g.url, b.key, `usage b ${i}`);
    await g.gateway.runtime.usage.flush(5000);
    const root = async (q: string) => usageTotals(g.url, g.adminKey, t0, q);
    expect((await root(`&team=${ta}`)).requests).toBe(3);
    expect((await root(`&team=${tb}`)).requests).toBe(5);

    for (const [admin, own, other, otherKey, n] of [
      [adminA, ta, tb, b, 3],
      [adminB, tb, ta, a, 5],
    ] as const) {
      const as = (q: string): Promise<Answer> =>
        call(`${g.url}/admin/usage?from=${new Date(t0).toISOString().slice(0, 10)}${q}`, {
          headers: { authorization: `Bearer ${admin.key}` },
        });
      // Another team: as if it did not exist.
      for (const q of [`&team=${other}`, `&team=${other}&groupBy=key`, `&team=${other}&format=csv`]) {
        const r = await as(q);
        expect(r.status, q).toBe(404);
        expect(envelopeProblem(r)).toBeNull();
        expect(r.text).not.toContain(otherKey.id);
      }
      // The default view and every grouping: its own team's rows only.
      for (const q of [
        '',
        '&groupBy=team',
        '&groupBy=key',
        '&groupBy=day,key,team,model',
        `&key=${otherKey.id}&groupBy=key`,
      ]) {
        const r = await as(q);
        expect(r.status, q).toBe(200);
        const rows = JSON.parse(r.text).data as any[];
        for (const row of rows) if ('team' in row) expect(row.team, q).toBe(own);
        expect(r.text).not.toContain(otherKey.id);
        expect(r.text).not.toContain(other);
        const total = rows.reduce((s, row) => s + row.requests, 0);
        expect(total, q).toBe(q.includes('key=') ? 0 : n);
      }
      const csv = await as('&groupBy=key,team&format=csv');
      expect(csv.status).toBe(200);
      expect(csv.text).not.toContain(other);
      // Nor can it reach the other team's keys.
      for (const [method, path] of [
        ['GET', `/admin/keys/${otherKey.id}`],
        ['PATCH', `/admin/keys/${otherKey.id}`],
        ['DELETE', `/admin/keys/${otherKey.id}`],
        ['POST', `/admin/keys/${otherKey.id}/rotate`],
      ] as const) {
        const r = await call(`${g.url}${path}`, {
          method,
          headers: { authorization: `Bearer ${admin.key}`, 'content-type': 'application/json' },
          ...(method !== 'GET' && method !== 'DELETE' && { body: '{}' }),
        });
        expect(r.status, `${method} ${path}`).toBe(404);
      }
      const listed = await call(`${g.url}/admin/keys?team=${other}`, {
        headers: { authorization: `Bearer ${admin.key}` },
      });
      expect(listed.text).not.toContain(otherKey.id);
      checks += 12;
    }
    // The other team's key still works: nothing above touched it.
    expect((await chat(g.url, b.key, 'still mine')).status).toBe(200);
  });
});

describe('a member key never opens the admin API', () => {
  it('is refused on every admin route with every method, and changes nothing', async () => {
    const g = await gateway('team');
    const member = await g.issueKey({ team: 'members' });
    const victim = await g.issueKey({ team: 'members' });
    const before = await g.admin('GET', `/admin/keys/${victim.id}`);
    const auditBefore = await g.admin('GET', '/admin/audit?limit=1000');
    const paths = [
      '/admin/keys',
      '/admin/keys?team=members',
      `/admin/keys/${victim.id}`,
      `/admin/keys/${member.id}`,
      `/admin/keys/${victim.id}/rotate`,
      `/admin/keys/${member.id}/rotate`,
      '/admin/teams',
      '/admin/teams/members',
      '/admin/usage',
      '/admin/usage?team=members&groupBy=key',
      '/admin/audit',
      '/admin/nope',
      '/admin/',
      '/admin',
    ];
    const bodies: Record<string, string> = {
      '/admin/keys': JSON.stringify({ name: 'escalate', team: 'members', role: 'team-admin' }),
      [`/admin/keys/${victim.id}`]: JSON.stringify({ disabled: true, limits: { rpm: 0 } }),
      [`/admin/keys/${member.id}`]: JSON.stringify({ limits: { rpm: null } }),
      '/admin/teams/members': JSON.stringify({ limits: { rpm: 1 } }),
    };
    let refused = 0;
    for (const path of paths) {
      for (const method of ['GET', 'POST', 'PUT', 'PATCH', 'DELETE']) {
        for (const auth of [{ authorization: `Bearer ${member.key}` }, { 'api-key': member.key }] as Record<
          string,
          string
        >[]) {
          const a = await call(g.url + path, {
            method,
            headers: { ...auth, 'content-type': 'application/json' },
            ...(method !== 'GET' && { body: bodies[path] ?? '{}' }),
          });
          expect([401, 403], `${method} ${path} ${Object.keys(auth)[0]}: ${a.status} ${a.text}`).toContain(
            a.status,
          );
          expect(envelopeProblem(a)).toBeNull();
          refused++;
        }
      }
    }
    // Nothing changed: the victim key, the member's own key, the teams, the audit trail.
    expect(await g.admin('GET', `/admin/keys/${victim.id}`)).toMatchObject({
      status: 200,
      body: before.body,
    });
    expect((await g.admin('GET', `/admin/keys/${member.id}`)).body.role).toBe('member');
    expect((await g.admin('GET', '/admin/teams')).body.data).toEqual([]);
    expect((await g.admin('GET', '/admin/audit?limit=1000')).body.data).toEqual(auditBefore.body.data);
    expect((await chat(g.url, victim.key, 'untouched')).status).toBe(200);
    checks += refused;
    await report('tenancy', { checks, memberAdminAttempts: refused, crossings: 0 });
  });
});
