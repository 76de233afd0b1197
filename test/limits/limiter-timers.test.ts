import { describe, expect, it, vi } from 'vitest';
import type { ModelConfig } from '../../src/config/schema.js';
import type { KeyRecord } from '../../src/keys/types.js';
import { Limiter } from '../../src/limits/limiter.js';
import { MemoryLimitStore } from '../../src/limits/memory-limit-store.js';
import { createLogger } from '../../src/server/logger.js';

const key: KeyRecord = {
  id: 'key_timers',
  name: 'timers',
  team: null,
  role: 'member',
  prefix: 'sk-tg-timers',
  limits: {},
  budget: null,
  models: null,
  expiresAt: null,
  createdAt: '2026-11-26T00:00:00.000Z',
  updatedAt: '2026-11-26T00:00:00.000Z',
  disabled: false,
  metadata: {},
  secrets: [],
};
const model = {
  id: 'gpt-4.1-mini',
  pricing: { inputPerMTok: 0.4, cachedInputPerMTok: 0.1, outputPerMTok: 1.6 },
} as unknown as ModelConfig;
const request = { model, promptTokens: () => 10, outputTokens: 10, hit: false };

describe('limiter lease renewal', () => {
  it('renews the leases of running requests, and runs no timer once none is running', async () => {
    vi.useFakeTimers();
    const store = new MemoryLimitStore();
    const renew = vi.spyOn(store, 'renew');
    const limiter = new Limiter(null, store, {
      defaults: { rpm: 1000, tpm: null, maxConcurrent: 5 },
      failMode: 'open',
      deadlineMs: 100,
      metrics: null,
      logger: createLogger('silent'),
    });
    try {
      expect(vi.getTimerCount()).toBe(0);
      const long = await limiter.admit({ key, team: null }, request);
      const short = await limiter.admit({ key, team: null }, request);
      expect(vi.getTimerCount()).toBe(1);
      short.settle(20, 0);
      // 20 s on, the request still running has its lease renewed; the settled one has none.
      await vi.advanceTimersByTimeAsync(20_000);
      expect(renew).toHaveBeenCalledTimes(1);
      long.settle(20, 0);
      await vi.advanceTimersByTimeAsync(20_000);
      expect(renew).toHaveBeenCalledTimes(1);
      expect(vi.getTimerCount()).toBe(0);
      // The next request starts it again.
      const next = await limiter.admit({ key, team: null }, request);
      expect(vi.getTimerCount()).toBe(1);
      next.settle(20, 0);
    } finally {
      await limiter.close();
      vi.useRealTimers();
    }
  });
});
