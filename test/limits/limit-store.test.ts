import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { MemoryLimitStore } from '../../src/limits/memory-limit-store.js';
import { RedisLimitStore } from '../../src/limits/redis-limit-store.js';
import type { AdmitInput, Dimension, LimitStore } from '../../src/limits/types.js';

const redis = new Redis(inject('redisUrl'));
afterAll(() => redis.quit());

const dim = (over: Partial<Dimension> = {}): Dimension => ({
  id: `key:${randomBytes(4).toString('hex')}`,
  kind: 'key',
  name: 'k',
  tag: 't:x',
  rpm: null,
  tpm: null,
  maxConcurrent: null,
  budgetNano: null,
  period: 'total',
  ...over,
});

let n = 0;
const input = (dims: Dimension[], over: Partial<AdmitInput> = {}): AdmitInput => ({
  dims,
  now: 1_000_000,
  day: '2026-11-25',
  month: '2026-11',
  leaseId: `lease-${n++}`,
  leaseTtlMs: 60_000,
  tokens: 0,
  costNano: 0,
  hit: false,
  lease: true,
  ...over,
});

/** Admits a request on `dims` and settles it at once, `costNano` spent. */
async function admitAndSettle(s: LimitStore, dims: Dimension[], costNano: number): Promise<void> {
  const a = await s.admit(input(dims, { costNano: 1 }));
  await s.settle({
    dims,
    now: 1_000_000,
    day: '2026-11-25',
    month: '2026-11',
    lease: a.ok ? a.lease : '',
    tokenDelta: 0,
    costNano,
  });
}

// The same algorithm runs in Lua (shared) and in memory (single instance, fallback): both must agree.
describe.each([
  ['redis', () => new RedisLimitStore(redis, `test:lim:${randomBytes(4).toString('hex')}:`) as LimitStore],
  ['memory', () => new MemoryLimitStore() as LimitStore],
])('%s limit store', (_name, make) => {
  it('token bucket: capacity = limit, continuous refill, never a double burst', async () => {
    const s = make();
    const d = dim({ rpm: 60 });
    let ok = 0;
    for (let i = 0; i < 100; i++) if ((await s.admit(input([d]))).ok) ok++;
    expect(ok).toBe(60);
    // 1 s later exactly one more token has dripped in.
    expect((await s.admit(input([d], { now: 1_001_000 }))).ok).toBe(true);
    expect((await s.admit(input([d], { now: 1_001_000 }))).ok).toBe(false);
    // A full minute refills to capacity, not beyond it.
    let later = 0;
    for (let i = 0; i < 200; i++) if ((await s.admit(input([d], { now: 1_200_000 }))).ok) later++;
    expect(later).toBe(60);
  });

  it('all or nothing: a refusal by one dimension consumes nothing from the others', async () => {
    const s = make();
    const key = dim({ rpm: 10 });
    const team = dim({ kind: 'team', rpm: 1 });
    expect((await s.admit(input([key, team]))).ok).toBe(true);
    for (let i = 0; i < 5; i++) {
      const r = await s.admit(input([key, team]));
      expect(r).toMatchObject({ ok: false, dim: 1, limit: 'rpm' });
    }
    // The key bucket still has 9 left: the team refusals took nothing from it.
    let ok = 0;
    for (let i = 0; i < 20; i++) if (await s.admit(input([key])).then((r) => r.ok)) ok++;
    expect(ok).toBe(9);
  });

  it('reserves tokens, settles them against real usage, refuses what can never fit', async () => {
    const s = make();
    const d = dim({ tpm: 1000 });
    const a = await s.admit(input([d], { tokens: 600 }));
    expect(a.ok && a.views[0]?.tokens?.remaining).toBe(400);
    expect((await s.admit(input([d], { tokens: 600 }))).ok).toBe(false);
    // The first request used only 100: 500 come back.
    await s.settle({
      dims: [d],
      now: 1_000_000,
      day: '2026-11-25',
      month: '2026-11',
      lease: a.ok ? a.lease : '',
      tokenDelta: -500,
      costNano: 0,
    });
    const b = await s.admit(input([d], { tokens: 600 }));
    expect(b.ok && b.views[0]?.tokens?.remaining).toBe(300);
    expect(await s.admit(input([d], { tokens: 1001 }))).toMatchObject({ ok: false, limit: 'tpm_never' });
    // A cache hit takes no tokens.
    expect((await s.admit(input([d], { tokens: 0, hit: true }))).ok).toBe(true);
  });

  it('concurrency slots are leases: released on settle, expired after their TTL', async () => {
    const s = make();
    const d = dim({ maxConcurrent: 2 });
    const a = await s.admit(input([d]));
    await s.admit(input([d]));
    expect(await s.admit(input([d]))).toMatchObject({ ok: false, limit: 'concurrency', level: 2 });
    await s.settle({
      dims: [d],
      now: 1_000_000,
      day: '',
      month: '',
      lease: a.ok ? a.lease : '',
      tokenDelta: 0,
      costNano: 0,
    });
    expect((await s.admit(input([d]))).ok).toBe(true);
    // A crashed instance's leases run out after 60 s.
    expect((await s.admit(input([d], { now: 1_060_001 }))).ok).toBe(true);
  });

  it('a hit served at once counts one request and is checked against the slots, but takes none', async () => {
    const s = make();
    const d = dim({ rpm: 3, maxConcurrent: 1 });
    const instant = { hit: true, lease: false, tokens: 0 };
    // Two instant hits in a row, never settled: neither holds the only slot.
    expect((await s.admit(input([d], instant))).ok).toBe(true);
    expect((await s.admit(input([d], instant))).ok).toBe(true);
    // A miss takes the slot (and the third request of the minute)...
    expect((await s.admit(input([d]))).ok).toBe(true);
    // ...and while it runs an instant hit is refused for concurrency (30 s later: rpm has refilled),
    // and straight away for rpm.
    expect(await s.admit(input([d], { ...instant, now: 1_030_000 }))).toMatchObject({
      ok: false,
      limit: 'concurrency',
    });
    expect(await s.admit(input([d], instant))).toMatchObject({ ok: false, limit: 'rpm' });
  });

  it('the next admission finds the last settlement applied, without waiting for it', async () => {
    const s = make();
    const d = dim({ tpm: 1000, maxConcurrent: 1, budgetNano: 10_000, period: 'day' });
    const team = dim({ kind: 'team', tpm: 5000 });
    const settleOf = (lease: string, costNano: number) => ({
      dims: [d, team],
      now: 1_000_000,
      day: '2026-11-25',
      month: '2026-11',
      lease,
      tokenDelta: -500,
      costNano,
    });
    const settled: Promise<void>[] = [];
    // One request at a time on a key with one slot: each admission follows the previous
    // request's settlement at once (it is carried by the admission itself in Redis).
    for (let i = 0; i < 5; i++) {
      const a = await s.admit(input([d, team], { tokens: 600, costNano: 100 }));
      expect(a.ok, `request ${i}`).toBe(true);
      if (a.ok) settled.push(s.settle(settleOf(a.lease, 1000)));
    }
    await Promise.all(settled);
    // Five settlements of 1000 nano-USD each, summed on the key and on the team.
    expect(await s.spend(d, '2026-11-25', '2026-11')).toMatchObject({ day: 5000, total: 5000 });
    expect(await s.spend(team, '2026-11-25', '2026-11')).toMatchObject({ day: 5000, total: 5000 });
    // Each request reserved 600 and gave 500 back: 500 tokens used of 1000 on the key.
    const b = await s.admit(input([d, team], { tokens: 0 }));
    expect(b.ok && b.views[0]?.tokens?.remaining).toBe(500);
    expect(b.ok && b.views[1]?.tokens?.remaining).toBe(4500);
  });

  it('budgets count spend plus in-flight reservations, per period', async () => {
    const s = make();
    const d = dim({ budgetNano: 1000, period: 'day' });
    const a = await s.admit(input([d], { costNano: 600 }));
    // 600 in flight: still under 1000, so one more may start; then 1200 reserved refuses.
    const b = await s.admit(input([d], { costNano: 600 }));
    expect(b.ok).toBe(true);
    expect(await s.admit(input([d], { costNano: 1 }))).toMatchObject({ ok: false, limit: 'budget' });
    for (const x of [a, b]) {
      await s.settle({
        dims: [d],
        now: 1_000_000,
        day: '2026-11-25',
        month: '2026-11',
        lease: x.ok ? x.lease : '',
        tokenDelta: 0,
        costNano: 400,
      });
    }
    expect(await s.spend(d, '2026-11-25', '2026-11')).toEqual({ day: 800, month: 800, total: 800 });
    expect((await s.admit(input([d], { costNano: 100 }))).ok).toBe(true);
    // The next day starts fresh.
    expect((await s.admit(input([d], { day: '2026-11-26', costNano: 100 }))).ok).toBe(true);
  });

  it("a crashed instance's reservations stop counting against the budget when their leases expire", async () => {
    const s = make();
    const d = dim({ budgetNano: 1000, period: 'day' });
    expect((await s.admit(input([d], { costNano: 900 }))).ok).toBe(true);
    expect((await s.admit(input([d], { costNano: 200 }))).ok).toBe(true);
    expect(await s.admit(input([d], { costNano: 1 }))).toMatchObject({
      ok: false,
      limit: 'budget',
      level: 1100,
    });
    // Never settled: 60 s on, both leases have expired and nothing is in flight.
    expect((await s.admit(input([d], { now: 1_060_001, costNano: 1 }))).ok).toBe(true);
  });
});

it('keeps every key of one admission in one Redis Cluster slot', async () => {
  const prefix = `test:slot:${randomBytes(4).toString('hex')}:`;
  const s = new RedisLimitStore(redis, prefix);
  const key = dim({ tag: 't:team1', rpm: 5, budgetNano: 10, period: 'day' });
  const team = dim({ kind: 'team', tag: 't:team1', rpm: 5, maxConcurrent: 3 });
  await admitAndSettle(s, [key, team], 5);
  const keys = await redis.keys(`*${prefix}*`);
  expect(keys.length).toBeGreaterThanOrEqual(4);
  // Redis Cluster hashes only the part inside the first {...}: one tag, one slot.
  expect(new Set(keys.map((k) => /\{([^}]*)\}/.exec(k)?.[1]))).toEqual(new Set([`${prefix}lim:t:team1`]));
});

it('gives day and month spend counters their expiry once, when created, and keeps it', async () => {
  const prefix = `test:ttl:${randomBytes(4).toString('hex')}:`;
  const s = new RedisLimitStore(redis, prefix);
  const d = dim({ tag: 't:ttl', rpm: 100 });
  // A team without any limit: never checked, never leased, but its spend is still counted.
  const team = dim({ kind: 'team', tag: 't:ttl' });
  await admitAndSettle(s, [d, team], 7);
  const [dayKey] = await redis.keys(`*${prefix}*${d.id}:sd:2026-11-25`);
  const [monthKey] = await redis.keys(`*${prefix}*${d.id}:sm:2026-11`);
  const [teamLeases] = await redis.keys(`*${prefix}*${team.id}:l`);
  expect(await redis.ttl(dayKey!)).toBeGreaterThan(172_700);
  expect(await redis.ttl(monthKey!)).toBeGreaterThan(3_455_000);
  expect(teamLeases).toBeUndefined();
  await redis.expire(dayKey!, 1000);
  await admitAndSettle(s, [d, team], 7);
  // Set at creation only: a later settlement leaves the expiry alone and adds to the counter.
  expect(await redis.ttl(dayKey!)).toBeLessThanOrEqual(1000);
  expect(await redis.get(dayKey!)).toBe('14');
  expect(await s.spend(team, '2026-11-25', '2026-11')).toEqual({ day: 14, month: 14, total: 14 });
});

it('keeps expiries on the bucket and the lease set, and renewal extends the set with its leases', async () => {
  const prefix = `test:exp:${randomBytes(4).toString('hex')}:`;
  const s = new RedisLimitStore(redis, prefix);
  const d = dim({ tag: 't:exp', rpm: 100, maxConcurrent: 5 });
  const a = await s.admit(input([d], { now: Date.now() }));
  expect(a.ok).toBe(true);
  const bucketKey = (await redis.keys(`*${prefix}*${d.id}:b`))[0]!;
  const leaseKey = (await redis.keys(`*${prefix}*${d.id}:l`))[0]!;
  expect(await redis.pttl(bucketKey)).toBeGreaterThan(3_590_000);
  expect(await redis.pttl(leaseKey)).toBeGreaterThan(110_000);
  // The bucket's expiry is renewed once a lease TTL has passed, not by every admission.
  await redis.pexpire(bucketKey, 500_000);
  expect((await s.admit(input([d], { now: Date.now() }))).ok).toBe(true);
  expect(await redis.pttl(bucketKey)).toBeLessThanOrEqual(500_000);
  expect((await s.admit(input([d], { now: Date.now() + 60_000 }))).ok).toBe(true);
  expect(await redis.pttl(bucketKey)).toBeGreaterThan(3_590_000);
  // A request that runs on alone keeps its lease set alive through renewals.
  await redis.pexpire(leaseKey, 1000);
  await s.renew([d], a.ok ? a.lease : '', Date.now() + 60_000);
  expect(await redis.pttl(leaseKey)).toBeGreaterThan(110_000);
});

it('removes expired leases along with the renewal of the expiry, even while slots are free', async () => {
  const prefix = `test:gc:${randomBytes(4).toString('hex')}:`;
  const s = new RedisLimitStore(redis, prefix);
  const d = dim({ tag: 't:gc', rpm: 1000, maxConcurrent: 100 });
  for (let i = 0; i < 3; i++) expect((await s.admit(input([d]))).ok).toBe(true);
  const leaseKey = (await redis.keys(`*${prefix}*${d.id}:l`))[0]!;
  expect(await redis.zcard(leaseKey)).toBe(3);
  // Within the lease TTL nothing is removed; after it, the next admission clears the expired ones.
  expect((await s.admit(input([d], { now: 1_030_000 }))).ok).toBe(true);
  expect(await redis.zcard(leaseKey)).toBe(4);
  expect((await s.admit(input([d], { now: 1_060_001 }))).ok).toBe(true);
  expect(await redis.zcard(leaseKey)).toBe(2);
});
