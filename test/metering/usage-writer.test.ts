import { describe, expect, it } from 'vitest';
import type { UsageRecord } from '../../src/metering/record.js';
import { MemoryUsageStore } from '../../src/metering/usage-store.js';
import { UsageWriter } from '../../src/metering/usage-writer.js';

const record = (i: number): UsageRecord => ({
  requestId: `req_${i}`,
  ts: Date.now(),
  keyId: 'key_1',
  keyName: 'k',
  team: 't',
  model: 'gpt-4.1-mini',
  upstream: 'mock',
  stream: false,
  status: 200,
  cacheHit: false,
  promptTokens: 10,
  cachedTokens: 0,
  completionTokens: 5,
  costUsd: 0.000012,
  savedUsd: 0,
  latencyMs: 1,
  ttftMs: null,
  estimated: false,
});

describe('usage writer', () => {
  it('writes the whole backlog each interval, not one batch: it keeps up above batchSize per interval', async () => {
    const store = new MemoryUsageStore();
    const batches: number[] = [];
    const write = store.write.bind(store);
    store.write = (rs) => {
      batches.push(rs.length);
      return write(rs);
    };
    const writer = new UsageWriter(store, { bufferSize: 100_000, flushIntervalMs: 50, batchSize: 500 });
    try {
      for (let i = 0; i < 1600; i++) writer.record(record(i));
      // The first interval's tick writes everything, in batches of at most 500 (the store answers
      // at once, so the batches follow each other without waiting for the next tick).
      while (batches.length === 0) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setImmediate(r));
      expect(writer.pending).toBe(0);
      expect(store.log).toHaveLength(1600);
      expect(batches).toEqual([500, 500, 500, 100]);
    } finally {
      await writer.close();
    }
  });
});
