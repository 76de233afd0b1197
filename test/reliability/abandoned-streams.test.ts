// Issue 9, item 7: 200 abandoned streams (first chunk read, then the client leaves), in batches,
// for a key allowed 10 at a time. Afterwards: no concurrency slot leaked (10 concurrent requests
// pass and /me shows all 10 free), no upstream request left running (every one aborted), no
// request still counted in flight, and no memory growth (heap after a forced GC).

import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { eventually } from '../support/eventually.js';
import { startTestGateway, type TestGateway, twoUpstreams } from '../support/gateway.js';
import { chat, metricSum, report } from './helpers.js';

const SLOTS = 10;
const STREAMS = 200;
const WARMUP = 40;
// A leak of a few kilobytes per stream (a listener, a lease, a buffered chunk) would show.
const MAX_HEAP_GROWTH_BYTES = 4 * 1024 * 1024;

// Exposes the collector without --expose-gc on the command line (vitest starts the worker).
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

let mock: MockUpstream;
let gw: TestGateway;
let key: string;
// Its own pool: aborted connections are not reused by the checks afterwards.
const agent = new Agent();

beforeAll(async () => {
  mock = await startMockUpstream();
  gw = await startTestGateway({
    ...twoUpstreams(mock.url),
    limits: { defaults: { rpm: null, tpm: 10_000_000, maxConcurrent: null } },
  });
  ({ key } = await gw.issueKey({ team: 'abandon', limits: { maxConcurrent: SLOTS } }));
});
afterAll(async () => {
  await agent.destroy();
  await gw?.close();
  await mock?.close();
});

/** Opens a slow stream, reads its first chunk, and leaves. */
async function abandon(n: number): Promise<void> {
  const ac = new AbortController();
  const res = await undiciFetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: n % 2 ? 'gpt-4.1-mini' : 'via-azure',
      stream: true,
      // Unique per stream (so each leads its own cache miss), with the same words: new words
      // would fill the tokenizer's bounded merge cache, which is no leak but looks like one.
      seed: n,
      messages: [{ role: 'user', content: 'abandoned [[mock:chunks=40,chunkdelay=25]]' }],
    }),
    signal: ac.signal,
    dispatcher: agent,
  });
  expect(res.status).toBe(200);
  const reader = res.body!.getReader();
  const first = await reader.read();
  expect(new TextDecoder().decode(first.value)).toContain('data: ');
  ac.abort();
  await reader.cancel().catch(() => {});
}

/** Runs `count` abandoned streams in batches of SLOTS, each batch once the last one's slots are free. */
async function abandonMany(from: number, count: number): Promise<void> {
  for (let at = from; at < from + count; at += SLOTS) {
    await eventually(() => expect(mock.stats.inflight).toBe(0), 3000);
    await Promise.all(Array.from({ length: SLOTS }, (_, i) => abandon(at + i)));
  }
}

async function settledHeap(): Promise<number> {
  await gw.gateway.runtime.usage.flush(5000);
  // What the test harness itself keeps (the mock's request log, the gateway's log lines) is dropped.
  mock.requests.length = 0;
  gw.logs.length = 0;
  for (let i = 0; i < 3; i++) {
    await new Promise((r) => setImmediate(r));
    gc();
  }
  return process.memoryUsage().heapUsed;
}

describe(`${STREAMS} abandoned streams`, () => {
  it('leak no concurrency slot, no upstream request, no in-flight count and no memory', async () => {
    const started = Date.now();
    // Warm-up (JIT, pools, metric series), then the baseline.
    await abandonMany(0, WARMUP);
    await eventually(() => expect(mock.stats.inflight).toBe(0), 3000);
    mock.reset();
    const heapBefore = await settledHeap();
    const rssBefore = process.memoryUsage().rss;

    await abandonMany(WARMUP, STREAMS);

    // Every upstream request was aborted when its client left; none ran on.
    await eventually(() => {
      expect(mock.stats.inflight).toBe(0);
      expect(mock.stats.aborts).toBe(STREAMS);
    }, 3000);
    expect(mock.stats.requests).toBe(STREAMS);
    expect(mock.stats.completed).toBe(0);
    // Memory: the heap after a full collection is where it was before the streams.
    const heapAfter = await settledHeap();
    const growth = heapAfter - heapBefore;
    expect(growth, `heap grew by ${(growth / 1024).toFixed(0)} KiB`).toBeLessThan(MAX_HEAP_GROWTH_BYTES);
    const rssGrowth = process.memoryUsage().rss - rssBefore;
    const registry = gw.gateway.runtime.metrics!.registry;
    await eventually(
      async () => expect(await metricSum(registry, 'tollgate_inflight_requests')).toBe(0),
      3000,
    );

    // No slot leaked: /me shows every slot free, and SLOTS slow requests at once all pass.
    const me = await fetch(`${gw.url}/me`, { headers: { authorization: `Bearer ${key}` } });
    expect(((await me.json()) as any).remaining.concurrent).toBe(SLOTS);
    const together = await Promise.all(
      Array.from({ length: SLOTS }, (_, i) => chat(gw.url, key, `together ${i} [[mock:delay=300]]`)),
    );
    expect(together.map((a) => a.status)).toEqual(Array(SLOTS).fill(200));
    // ...and one more than SLOTS is refused for concurrency, so the limit is still in force.
    const over = await Promise.all(
      Array.from({ length: SLOTS + 1 }, (_, i) => chat(gw.url, key, `over ${i} [[mock:delay=300]]`)),
    );
    expect(over.filter((a) => a.status === 429)).toHaveLength(1);

    // Usage: every abandoned stream was metered (estimated), once.
    await gw.gateway.runtime.usage.flush(5000);
    const usage = await gw.admin('GET', '/admin/usage?groupBy=key');
    expect(usage.body.data[0].requests).toBe(WARMUP + STREAMS + 2 * SLOTS + 1);
    await report('abandoned-streams', {
      streams: STREAMS,
      upstreamAborts: mock.stats.aborts,
      slotsFreeAfter: SLOTS,
      heapGrowthKiB: Math.round(growth / 1024),
      rssGrowthKiB: Math.round(rssGrowth / 1024),
      ms: Date.now() - started,
    });
  }, 60_000);
});
