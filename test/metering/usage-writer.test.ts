import { describe, expect, it, vi } from 'vitest';
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
  it('runs a timer only while records wait, so an idle gateway runs no JavaScript', async () => {
    vi.useFakeTimers();
    const store = new MemoryUsageStore();
    const writer = new UsageWriter(store, { bufferSize: 100, flushIntervalMs: 250 });
    try {
      expect(vi.getTimerCount()).toBe(0);
      writer.record(record(1));
      writer.record(record(2));
      expect(vi.getTimerCount()).toBe(1);
      await vi.advanceTimersByTimeAsync(250);
      expect(writer.pending).toBe(0);
      expect(vi.getTimerCount()).toBe(0);
      // The next record after a quiet spell is written one interval later, like the first.
      writer.record(record(3));
      await vi.advanceTimersByTimeAsync(250);
      const [cell] = await store.cells([new Date().toISOString().slice(0, 10)]);
      expect(cell?.requests).toBe(3);
      expect(vi.getTimerCount()).toBe(0);
    } finally {
      await writer.close();
      vi.useRealTimers();
    }
  });

  it('writes the whole backlog each interval, not one batch: it keeps up above batchSize per interval', async () => {
    const store = new MemoryUsageStore();
    const batches: number[] = [];
    const write = store.write.bind(store);
    store.write = (rs, id) => {
      batches.push(rs.length);
      return write(rs, id);
    };
    const writer = new UsageWriter(store, { bufferSize: 100_000, flushIntervalMs: 50, batchSize: 500 });
    try {
      for (let i = 0; i < 1600; i++) writer.record(record(i));
      // The first interval's tick writes everything, in batches of at most 500 (the store answers
      // at once, so the batches follow each other without waiting for the next tick).
      while (batches.length === 0) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setImmediate(r));
      expect(writer.pending).toBe(0);
      const [cell] = await store.cells([new Date().toISOString().slice(0, 10)]);
      expect(cell?.requests).toBe(1600);
      expect(batches).toEqual([500, 500, 500, 100]);
    } finally {
      await writer.close();
    }
  });

  it('retries a failed batch as the same batch, and it counts once even when its first write landed', async () => {
    const store = new MemoryUsageStore();
    const calls: { id: string; requestIds: string[] }[] = [];
    const write = store.write.bind(store);
    let fail = 1;
    store.write = async (rs, id) => {
      calls.push({ id, requestIds: rs.map((r) => r.requestId) });
      await write(rs, id);
      // The first attempt lands but its answer is lost, as with a Redis connection cut right then.
      if (fail-- > 0) throw new Error('connection lost');
    };
    const writer = new UsageWriter(store, { bufferSize: 1000, flushIntervalMs: 20, batchSize: 3 });
    try {
      writer.record(record(1));
      writer.record(record(2));
      while (calls.length === 0) await new Promise((r) => setTimeout(r, 5));
      // More records arrive while the failed batch waits; they do not join it.
      writer.record(record(3));
      writer.record(record(4));
      await writer.flush(5000);
      expect(calls[0]).toEqual({ id: calls[1]!.id, requestIds: ['req_1', 'req_2'] });
      expect(calls[1]!.requestIds).toEqual(['req_1', 'req_2']);
      expect(calls[2]!.id).not.toBe(calls[0]!.id);
      expect(calls[2]!.requestIds).toEqual(['req_3', 'req_4']);
      const [cell] = await store.cells([new Date().toISOString().slice(0, 10)]);
      expect(cell?.requests).toBe(4);
      expect(writer.pending).toBe(0);
    } finally {
      await writer.close();
    }
  });
});
