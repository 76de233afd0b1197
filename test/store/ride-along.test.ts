import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, expect, inject, it, vi } from 'vitest';
import { RedisCacheStore } from '../../src/cache/cache-store.js';
import { RedisLimitStore } from '../../src/limits/redis-limit-store.js';
import type { AdmitInput, Dimension } from '../../src/limits/types.js';

// On a single server a request's cache lookup rides along with its limit admission: one script
// call instead of two, each store getting its own answer.
const prefix = `test:ride:${randomBytes(4).toString('hex')}:`;
const clients: Redis[] = [];
const client = (opts: { enableOfflineQueue?: boolean } = {}): Redis => {
  const c = new Redis(inject('redisUrl'), opts);
  clients.push(c);
  return c;
};

afterAll(async () => {
  const admin = client();
  const keys = await admin.keys(`*${prefix}*`);
  if (keys.length > 0) await admin.del(...keys);
  for (const c of clients) c.disconnect();
});

const key: Dimension = {
  id: `key:${randomBytes(4).toString('hex')}`,
  kind: 'key',
  name: 'k',
  tag: 't:ride',
  rpm: 2,
  tpm: 1000,
  maxConcurrent: null,
  budgetNano: null,
  period: 'total',
};
let n = 0;
const input = (): AdmitInput => ({
  dims: [key],
  now: Date.now(),
  day: '2026-11-26',
  month: '2026-11',
  leaseId: `lease-${n++}`,
  leaseTtlMs: 60_000,
  tokens: 100,
  costNano: 0,
  hit: false,
  lease: true,
});
const entry = (text: string) => ({ createdAt: Date.now(), body: Buffer.from(text), usage: null });

it('carries the lookup and the finishes it holds in the admission call, answering both', async () => {
  const redis = client();
  const cache = new RedisCacheStore(redis, prefix);
  const limits = new RedisLimitStore(redis, prefix);
  // Alone (no admission in its turn): the lookup still goes, and takes the miss lock.
  expect(await cache.getOrLock('a', 5000)).toEqual({ entry: null, locked: true });
  const sent = vi.spyOn(redis, 'sendCommand');
  // The leader's finish is held back (its timer stopped) and goes with the next lookup.
  vi.useFakeTimers({ toFake: ['setTimeout'] });
  let finished: Promise<void>;
  let looked: Awaited<ReturnType<RedisCacheStore['getOrLock']>>;
  let admitted: Awaited<ReturnType<RedisLimitStore['admit']>>;
  try {
    finished = cache.finish('a', entry('answer \u00e9 a'), 60_000);
    [looked, admitted] = await Promise.all([cache.getOrLock('a', 5000), limits.admit(input())]);
  } finally {
    vi.useRealTimers();
  }
  await finished;
  // One script call for the two (EVAL the first time on a connection, EVALSHA after).
  const scriptCalls = (): number =>
    sent.mock.calls.filter(([c]) => c.name === 'evalsha' || c.name === 'eval').length;
  expect(sent.mock.calls.length).toBe(1);
  expect(scriptCalls()).toBe(1);
  expect(looked.entry?.body.toString()).toBe('answer \u00e9 a');
  expect(looked.locked).toBe(false);
  expect(admitted).toMatchObject({ ok: true, views: [{ requests: { limit: 2, remaining: 1 } }] });
  expect(admitted.ok && admitted.views[0]?.tokens?.remaining).toBeCloseTo(900, 0);
  expect(await cache.locked('a')).toBe(false);

  // A refused admission still answers the lookup riding with it.
  sent.mockClear();
  expect((await limits.admit(input())).ok).toBe(true);
  const [miss, refused] = await Promise.all([cache.getOrLock('b', 5000), limits.admit(input())]);
  expect(miss).toEqual({ entry: null, locked: true });
  expect(refused).toMatchObject({ ok: false, limit: 'rpm' });
  expect(scriptCalls()).toBe(2);
  sent.mockRestore();
});

it('fails the lookup with the admission that carried it', async () => {
  const redis = client({ enableOfflineQueue: false });
  const cache = new RedisCacheStore(redis, prefix);
  const limits = new RedisLimitStore(redis, prefix);
  await new Promise((ready) => redis.once('ready', ready));
  redis.disconnect();
  const [looked, admitted] = await Promise.allSettled([cache.getOrLock('c', 5000), limits.admit(input())]);
  expect(looked.status).toBe('rejected');
  expect(admitted.status).toBe('rejected');
});
