import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import { RedisCacheStore } from '../../src/cache/cache-store.js';

// The Redis cache store on a single server: a leader's finish is held back and sent with the
// next lookup, in the same Lua call.
let redis: Redis;
const prefix = `t${randomBytes(4).toString('hex')}:`;
const entry = (text: string) => ({ createdAt: Date.now(), body: Buffer.from(text), usage: null });

beforeAll(async () => {
  redis = new Redis(inject('redisUrl'));
});

afterAll(async () => {
  const keys = await redis.keys(`${prefix}*`);
  if (keys.length > 0) await redis.del(...keys);
  redis.disconnect();
});

describe('RedisCacheStore on a single server', () => {
  it('sends held finishes with the next lookup: entries stored, locks released', async () => {
    const store = new RedisCacheStore(redis, prefix);
    expect((await store.getOrLock('a', 5000)).locked).toBe(true);
    expect((await store.getOrLock('b', 5000)).locked).toBe(true);
    // With its timer stopped, only a lookup can carry the finishes.
    vi.useFakeTimers({ toFake: ['setTimeout'] });
    try {
      const finished = Promise.all([
        store.finish('a', entry('answer a'), 60_000),
        store.finish('b', null, 60_000),
      ]);
      expect(await redis.exists(`${prefix}cache:{a}`)).toBe(0);
      expect((await store.getOrLock('c', 5000)).locked).toBe(true);
      await finished;
    } finally {
      vi.useRealTimers();
    }
    expect((await store.get('a'))?.body.toString()).toBe('answer a');
    expect(await store.locked('a')).toBe(false);
    // A leader without an answer releases its lock and stores nothing.
    expect(await store.get('b')).toBeNull();
    expect(await store.locked('b')).toBe(false);
    expect(await redis.pttl(`${prefix}cache:{a}`)).toBeGreaterThan(50_000);
  });

  it('writes held finishes by themselves when no lookup comes', async () => {
    const store = new RedisCacheStore(redis, prefix);
    expect((await store.getOrLock('quiet', 5000)).locked).toBe(true);
    await store.finish('quiet', entry('quiet answer'), 60_000);
    expect((await store.get('quiet'))?.body.toString()).toBe('quiet answer');
    expect(await store.locked('quiet')).toBe(false);
  });
});
