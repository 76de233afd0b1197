// Issue 9, item 1: Redis killed and restarted under concurrent load, for both fail modes, and
// Redis frozen (SIGSTOP: connections stay open, nothing answers). Every request is timed;
// statuses follow failMode; known keys keep working (open), an unknown one gets 503 within the
// deadline; afterwards the usage API counts every answered request exactly once and agrees with
// the upstream's usage.

import { describe, expect, it } from 'vitest';
import { startMockUpstream } from '../mock-upstream/index.js';
import { eventually } from '../support/eventually.js';
import { startTestGateway, twoUpstreams } from '../support/gateway.js';
import { startOwnRedis } from '../support/redis-server.js';
import {
  type Answer,
  chat,
  envelopeProblem,
  metricSum,
  report,
  sleep,
  tally,
  usageTotals,
} from './helpers.js';

const WORKERS = 8;
const RUN_MS = 4000;
const STOP_AT_MS = 1200;
const DOWN_MS = 1500;
const DEADLINE_MS = 100; // redis.commandTimeoutMs (the default, written out)
const UPSTREAM_MS = 20; // the mock's delay before each answer
// The hot path makes two store calls with a deadline (cache lookup, admission); the rest is
// scheduling slack on a shared two-core machine.
const BOUND_MS = 2 * DEADLINE_MS + UPSTREAM_MS + 600;

interface Timed extends Answer {
  start: number;
  end: number;
  worker: number;
}

describe.each(['open', 'closed'] as const)(
  'Redis killed and restarted under load, failMode %s',
  (failMode) => {
    it('answers every request in bounded time as failMode says, and loses or doubles no usage', async () => {
      const redis = await startOwnRedis();
      const mock = await startMockUpstream({ defaultDelayMs: UPSTREAM_MS });
      const gw = await startTestGateway({
        ...twoUpstreams(mock.url),
        redis: { url: redis.url, commandTimeoutMs: DEADLINE_MS },
        limits: { failMode, defaults: { rpm: 100_000, tpm: null, maxConcurrent: 100 } },
      });
      const t0 = Date.now();
      try {
        const keys = await Promise.all(
          Array.from({ length: WORKERS }, (_, i) => gw.issueKey({ team: `outage-${i % 2}` })),
        );
        const answers: Timed[] = [];
        // Warm every key into the instance's key cache, as a running gateway would have.
        for (const [i, k] of keys.entries()) {
          const a = await chat(gw.url, k.key, `warm ${i}`);
          expect(a.status, a.text).toBe(200);
          answers.push({ ...a, start: 0, end: 0, worker: i });
        }

        const begin = Date.now();
        let stoppedAt = 0;
        let startingAt = 0;
        let upAt = 0;
        const outage = (async () => {
          await sleep(STOP_AT_MS);
          await redis.stop();
          stoppedAt = Date.now();
          await sleep(DOWN_MS);
          startingAt = Date.now();
          await redis.start();
          upAt = Date.now();
        })();
        const worker = async (w: number): Promise<void> => {
          for (let n = 0; Date.now() - begin < RUN_MS; n++) {
            const start = Date.now();
            const a = await chat(gw.url, keys[w]!.key, `w${w} n${n} ${failMode}`, {}, { timeoutMs: 5000 });
            answers.push({ ...a, start, end: Date.now(), worker: w });
          }
        };
        await Promise.all([outage, ...Array.from({ length: WORKERS }, (_, w) => worker(w))]);

        const load = answers.slice(WORKERS);
        const statuses = tally(load, (a) => a.status);
        const slowest = Math.max(...load.map((a) => a.ms));
        // Every request answered (none failed or hung), none slower than the bound, never a 500.
        expect(load.filter((a) => a.status === 0).map((a) => a.error)).toEqual([]);
        expect(slowest, JSON.stringify(statuses)).toBeLessThan(BOUND_MS);
        for (const a of load) if (a.status !== 200) expect(envelopeProblem(a)).toBeNull();
        // Requests whose whole life lies inside the outage saw the fallback, not Redis.
        const during = load.filter((a) => a.start >= stoppedAt && a.end <= startingAt);
        expect(during.length).toBeGreaterThan(WORKERS);
        if (failMode === 'open') {
          // Known keys keep working: the per-instance limiter admits, the key cache authenticates.
          const refused = load.find((a) => a.status !== 200);
          expect(
            statuses,
            refused &&
              `${refused.start - stoppedAt} ms after the kill, ${refused.start - upAt} ms after the restart: ${refused.text}`,
          ).toEqual({ '200': load.length });
        } else {
          expect(Object.keys(statuses).sort()).toEqual(['200', '503']);
          expect(new Set(during.map((a) => a.status))).toEqual(new Set([503]));
          for (const a of load.filter((x) => x.status === 503)) {
            expect(JSON.parse(a.text).error.code).toBe('service_unavailable');
          }
          expect(load.some((a) => a.status === 200 && a.end < stoppedAt)).toBe(true);
        }
        // Redis's return is picked up without a restart: every key is served again.
        for (const [i, k] of keys.entries()) {
          await eventually(async () => {
            const start = Date.now();
            const a = await chat(gw.url, k.key, `after ${i} ${Date.now()}`);
            answers.push({ ...a, start, end: Date.now(), worker: i });
            expect(a.status).toBe(200);
          }, 5000);
        }
        expect(answers.at(-1)!.start - upAt).toBeLessThan(5000);
        const registry = gw.gateway.runtime.metrics!.registry;
        // Each fallback is counted in the metrics.
        expect(
          await metricSum(registry, 'tollgate_store_errors_total', { store: 'limits', op: 'admit' }),
        ).toBeGreaterThanOrEqual(during.length);

        // Usage: after recovery, every answered request is one record, none lost, none doubled.
        await gw.gateway.runtime.usage.flush(15_000);
        const totals = await usageTotals(gw.url, gw.adminKey, t0);
        const ok = answers.filter((a) => a.status === 200).length;
        expect(totals.requests).toBe(answers.length);
        expect(totals.requests - totals.errors).toBe(ok);
        expect(totals.promptTokens).toBe(mock.usageTotals.prompt);
        expect(totals.completionTokens).toBe(mock.usageTotals.completion);
        expect(mock.stats.completed).toBe(ok);
        expect(gw.gateway.runtime.usage.dropped).toBe(0);
        await report('redis-outage', {
          failMode,
          requests: load.length,
          during: during.length,
          statuses,
          failures: load.filter((a) => a.status === 0 || a.status === 500).length,
          slowestMs: Math.round(slowest),
          boundMs: BOUND_MS,
          recordsLost: answers.length - totals.requests,
          redisDownMs: startingAt - stoppedAt,
        });
      } finally {
        await gw.close();
        await mock.close();
        await redis.stop();
      }
    }, 45_000);
  },
);

describe('Redis frozen (SIGSTOP) under load, failMode open', () => {
  // A killed Redis refuses at once; a frozen one accepts and never answers, so only the
  // deadlines keep requests moving. Known keys keep working; a key this instance has never seen
  // gets 503 (its key may be fine) within the deadline, not a hang.
  it('answers every request within the deadlines, and picks Redis up again when it thaws', async () => {
    const redis = await startOwnRedis();
    const mock = await startMockUpstream({ defaultDelayMs: UPSTREAM_MS });
    const prefix = `test:frozen:${Date.now()}:`;
    const raw = {
      ...twoUpstreams(mock.url),
      redis: { url: redis.url, commandTimeoutMs: DEADLINE_MS },
      limits: { failMode: 'open', defaults: { rpm: 100_000, tpm: null, maxConcurrent: 100 } },
    };
    const gw = await startTestGateway(raw, { prefix });
    const other = await startTestGateway(raw, { prefix });
    const pid = Number(/process_id:(\d+)/.exec(await redisInfo(redis.port))?.[1]);
    expect(pid).toBeGreaterThan(0);
    let frozen = false;
    try {
      const keys = await Promise.all(Array.from({ length: WORKERS }, () => gw.issueKey({ team: 'frozen' })));
      for (const [i, k] of keys.entries()) expect((await chat(gw.url, k.key, `warm ${i}`)).status).toBe(200);
      // Created on another instance: this one has never seen it.
      const fresh = await other.issueKey({ team: 'frozen' });

      const answers: Timed[] = [];
      const begin = Date.now();
      let freshAnswer: Answer | undefined;
      const freeze = (async () => {
        await sleep(STOP_AT_MS);
        process.kill(pid, 'SIGSTOP');
        frozen = true;
        await sleep(200);
        const pending = chat(gw.url, fresh.key, 'fresh while frozen', {}, { timeoutMs: 5000 });
        await sleep(DOWN_MS - 200);
        process.kill(pid, 'SIGCONT');
        frozen = false;
        freshAnswer = await pending;
      })();
      const worker = async (w: number): Promise<void> => {
        for (let n = 0; Date.now() - begin < RUN_MS; n++) {
          const start = Date.now();
          const a = await chat(gw.url, keys[w]!.key, `frozen w${w} n${n}`, {}, { timeoutMs: 5000 });
          answers.push({ ...a, start, end: Date.now(), worker: w });
        }
      };
      await Promise.all([freeze, ...Array.from({ length: WORKERS }, (_, w) => worker(w))]);

      const slowest = Math.max(...answers.map((a) => a.ms));
      expect(tally(answers, (a) => a.status)).toEqual({ '200': answers.length });
      expect(slowest).toBeLessThan(BOUND_MS);
      expect(freshAnswer!.status, freshAnswer!.text).toBe(503);
      expect(freshAnswer!.ms).toBeLessThan(BOUND_MS);
      expect(envelopeProblem(freshAnswer!)).toBeNull();
      // Thawed: the fresh key works here too.
      await eventually(
        async () => expect((await chat(gw.url, fresh.key, 'fresh after')).status).toBe(200),
        5000,
      );
      await report('redis-outage', {
        failMode: 'open',
        redis: 'frozen',
        requests: answers.length,
        statuses: tally(answers, (a) => a.status),
        slowestMs: Math.round(slowest),
        unknownKeyWhileFrozen: `${freshAnswer!.status} in ${Math.round(freshAnswer!.ms)} ms`,
        boundMs: BOUND_MS,
      });
    } finally {
      if (frozen) process.kill(pid, 'SIGCONT');
      await gw.close();
      await other.close();
      await mock.close();
      await redis.stop();
    }
  }, 45_000);
});

async function redisInfo(port: number): Promise<string> {
  const { execFile } = await import('node:child_process');
  return new Promise((resolve, reject) =>
    execFile('redis-cli', ['-p', String(port), 'info', 'server'], (err, out) =>
      err ? reject(err) : resolve(out),
    ),
  );
}

describe('main Redis connection lost while change notifications still arrive', () => {
  // After a Redis restart the subscriber may be back before the main connection. A notification
  // then asks every instance to re-check its cached keys with the store, which cannot answer yet:
  // known keys must keep working (failMode open), not turn into 503s.
  it('keeps serving known keys when an invalidation arrives and the store cannot answer', async () => {
    const mock = await startMockUpstream();
    const prefix = `test:halfdown:${Date.now()}:`;
    const raw = { ...twoUpstreams(mock.url), limits: { failMode: 'open' } };
    const gw = await startTestGateway(raw, { prefix });
    const other = await startTestGateway(raw, { prefix });
    const main = gw.gateway.runtime.redis!;
    try {
      const keys = await Promise.all([gw.issueKey({ team: 'half' }), gw.issueKey({})]);
      for (const k of keys) expect((await chat(gw.url, k.key, 'warm')).status).toBe(200);
      main.disconnect();
      // A team change elsewhere: every instance is told to re-check what it has cached.
      expect((await other.admin('PUT', '/admin/teams/half', { limits: { rpm: 1000 } })).status).toBe(200);
      await sleep(300);
      for (const k of keys) {
        const a = await chat(gw.url, k.key, `while half down ${Date.now()}`);
        expect(a.status, a.text).toBe(200);
      }
      await main.connect();
      for (const k of keys) expect((await chat(gw.url, k.key, `after ${Date.now()}`)).status).toBe(200);
    } finally {
      if (main.status !== 'ready') await main.connect().catch(() => {});
      await gw.close();
      await other.close();
      await mock.close();
    }
  });
});
