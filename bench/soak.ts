// `npm run soak` (issue 8): the gateway with every feature on under a bounded mixed load for
// SOAK_SECONDS. Its RSS is read every second; every 5 s a sample records the mean of the last five
// readings (so GC swings average out) and their peak. Passes when the sampled RSS grows at most 10%
// from the sample after the first minute (after 20% of the run when that is sooner) to the end, no
// request got a 500 or hung, and nothing is left in flight (the gateway's
// `tollgate_inflight_requests`, the mock's own count).
//
// Load: SOAK_WORKERS (default 16) loops on 127.0.0.1, each one request at a time, mixing cache
// misses, cache hits (a small pool of repeated prompts), streams with and without include_usage,
// abandoned streams (first chunk read, then aborted), a key with a low rpm (429s) and upstream 503s
// (on a model and upstream of their own, whose circuit breaker they open).
//
// Environment:
//   SOAK_SECONDS    length of the load (default 300)
//   SOAK_WORKERS    concurrent requests (default 16)
//   SOAK_TIMEOUT    overall limit in seconds (default SOAK_SECONDS + 300)
//   BENCH_REDIS_URL / TEST_REDIS_URL   an existing Redis (keys under a random prefix, removed after);
//                   otherwise a throw-away `redis-server`
// The mock upstream runs in this process (only the gateway's RSS is measured), so its in-flight
// count can be read at the end. Results: tables on stdout and `.bench/soak.json`; exit 1 on failure.

import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { Pool, request } from 'undici';
import { startMockUpstream } from '../test/mock-upstream/index.js';
import {
  CHAT_PATH,
  type ConfigObject,
  fullConfig,
  type Gateway,
  installCleanup,
  issueKey,
  log,
  OUT_DIR,
  positive,
  printTable,
  type RssSample,
  RUN_ID,
  rssSampler,
  runMain,
  sanityCheck,
  seconds,
  setLogTag,
  sleep,
  startGateway,
  startRedis,
  tail,
} from './harness.js';

setLogTag('soak');
const SOAK_SECONDS = seconds('SOAK_SECONDS', 300);
const WORKERS = Math.max(1, Math.round(positive('SOAK_WORKERS', 16, 'number')));
installCleanup(seconds('SOAK_TIMEOUT', SOAK_SECONDS + 300), 'SOAK_TIMEOUT');

const SAMPLE_EVERY = 5; // seconds; RSS is read every second
const REQUEST_TIMEOUT_MS = 30_000;
const MAX_GROWTH = 0.1;
const HIT_POOL = 8;
const LIMITED_RPM = 30;
const FAULTY_MODEL = 'soak-faulty';

type Kind = 'miss' | 'hit' | 'stream-usage' | 'stream' | 'abandoned' | 'limited' | 'upstream-error';
/** Share of each kind in the mix, in percent. */
const MIX: [Kind, number][] = [
  ['miss', 30],
  ['hit', 22],
  ['stream-usage', 14],
  ['stream', 10],
  ['abandoned', 8],
  ['limited', 12],
  ['upstream-error', 4],
];

/** What every response should be, per kind: anything else is counted as unexpected. */
const EXPECTED: Record<Kind, RegExp> = {
  miss: /^200 (MISS|-)$/,
  hit: /^200 (HIT|MISS)$/,
  'stream-usage': /^200 complete, usage$/,
  stream: /^200 complete$/,
  abandoned: /^abandoned$/,
  limited: /^(200|429)$/,
  'upstream-error': /^(502|503)$/,
};

/** A small seeded PRNG (mulberry32), so a worker's sequence of kinds is reproducible. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function pick(r: number): Kind {
  let acc = 0;
  for (const [kind, share] of MIX) {
    acc += share / 100;
    if (r < acc) return kind;
  }
  return 'miss';
}

let counter = 0;
function bodyFor(kind: Kind, r: number): string {
  const n = counter++;
  let text = `Soak question ${RUN_ID}-${n}: what is the capital of France?`;
  if (kind === 'hit')
    text = `Soak cached question ${RUN_ID}-${Math.floor(r * HIT_POOL)}: name a prime number`;
  if (kind === 'abandoned') text += ' [[mock:chunks=20,chunkdelay=20]]';
  if (kind === 'upstream-error') text += ' [[mock:status=503,retryms=1]]';
  const stream = kind === 'stream' || kind === 'stream-usage' || kind === 'abandoned';
  return JSON.stringify({
    model: kind === 'upstream-error' ? FAULTY_MODEL : 'gpt-4.1-mini',
    messages: [
      { role: 'system', content: 'You are a helpful assistant.' },
      { role: 'user', content: text },
    ],
    max_tokens: 64,
    temperature: 0,
    ...(stream ? { stream: true } : {}),
    ...(kind === 'stream-usage' || kind === 'abandoned' ? { stream_options: { include_usage: true } } : {}),
  });
}

type Failure = 'status 500' | 'hang' | 'transport error';
interface Outcome {
  kind: Kind;
  result: string;
  failure?: Failure;
}

/** One request of `kind`; never throws. */
async function runOne(pool: Pool, auth: string, kind: Kind, r: number): Promise<Outcome> {
  const ac = new AbortController();
  let timedOut = false;
  let abandoned = false;
  const timer = setTimeout(() => {
    timedOut = true;
    ac.abort();
  }, REQUEST_TIMEOUT_MS);
  try {
    const res = await pool.request({
      method: 'POST',
      path: CHAT_PATH,
      headers: { 'content-type': 'application/json', authorization: auth },
      body: bodyFor(kind, r),
      signal: ac.signal,
      headersTimeout: REQUEST_TIMEOUT_MS + 5000,
      bodyTimeout: REQUEST_TIMEOUT_MS + 5000,
    });
    let text = '';
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      text += chunk.toString('utf8');
      if (kind === 'abandoned' && res.statusCode === 200 && text.includes('data:')) {
        abandoned = true;
        ac.abort();
      }
    }
    const status = res.statusCode;
    if (status === 500) return { kind, result: '500', failure: 'status 500' };
    if (status !== 200 || kind === 'limited' || kind === 'upstream-error')
      return { kind, result: String(status) };
    if (kind === 'miss' || kind === 'hit')
      return { kind, result: `200 ${String(res.headers['x-cache'] ?? '-')}` };
    const complete = text.trimEnd().endsWith('data: [DONE]') ? 'complete' : 'incomplete';
    return { kind, result: `200 ${complete}${/"usage":\{/.test(text) ? ', usage' : ''}` };
  } catch (err) {
    if (abandoned) return { kind, result: 'abandoned' };
    if (timedOut) return { kind, result: 'no answer within 30 s', failure: 'hang' };
    return { kind, result: `error: ${(err as Error).message}`, failure: 'transport error' };
  } finally {
    clearTimeout(timer);
  }
}

async function inflightSeries(base: string): Promise<Record<string, number> | string> {
  try {
    const res = await request(`${base}/metrics`, { headersTimeout: 5000, bodyTimeout: 5000 });
    const text = await res.body.text();
    if (res.statusCode !== 200) return `GET /metrics answered ${res.statusCode}`;
    const out: Record<string, number> = {};
    for (const m of text.matchAll(/^tollgate_inflight_requests(\{[^}]*\})?\s+(\S+)$/gm)) {
      out[m[1] ?? '{}'] = Number(m[2]);
    }
    return Object.keys(out).length ? out : 'no tollgate_inflight_requests series in GET /metrics';
  } catch (err) {
    return `GET /metrics failed: ${(err as Error).message}`;
  }
}

const describeInflight = (v: Record<string, number> | string): string =>
  typeof v === 'string'
    ? v
    : Object.entries(v)
        .map(([labels, n]) => `${labels} ${n}`)
        .join(', ');

/** Polls `check` until it returns true or `ms` pass (work left over at the end may take a moment). */
async function settles(check: () => Promise<boolean> | boolean, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > until) return false;
    await sleep(250);
  }
}

interface LoadResult {
  /** Requests by `kind: result` (UNEXPECTED marks a result the kind should not get). */
  outcomes: Map<string, number>;
  failures: Map<Failure, number>;
  firstFailures: string[];
  requests: number;
  samples: RssSample[];
  end: RssSample;
}

/** WORKERS loops of one request at a time for SOAK_SECONDS (less if the gateway dies), RSS sampled. */
async function driveLoad(gw: Gateway, auth: string, limitedAuth: string): Promise<LoadResult> {
  const r: Omit<LoadResult, 'samples' | 'end'> = {
    outcomes: new Map(),
    failures: new Map(),
    firstFailures: [],
    requests: 0,
  };
  const sampler = rssSampler(gw.pid, SAMPLE_EVERY, () => r.requests);
  const deadline = Date.now() + SOAK_SECONDS * 1000;
  const pool = new Pool(gw.base, { connections: WORKERS, pipelining: 1 });
  const worker = async (id: number): Promise<void> => {
    const rand = prng(id + 1);
    // Stops early when the gateway dies: the rest would only be refused connections.
    while (Date.now() < deadline && gw.child.exitCode === undefined) {
      const kind = pick(rand());
      const o = await runOne(pool, kind === 'limited' ? limitedAuth : auth, kind, rand());
      r.requests++;
      const name = `${o.kind}: ${EXPECTED[o.kind].test(o.result) ? '' : 'UNEXPECTED '}${o.result}`;
      r.outcomes.set(name, (r.outcomes.get(name) ?? 0) + 1);
      if (o.failure) {
        r.failures.set(o.failure, (r.failures.get(o.failure) ?? 0) + 1);
        if (r.firstFailures.length < 10) r.firstFailures.push(name);
      }
    }
  };
  await Promise.all(Array.from({ length: WORKERS }, (_, i) => worker(i)));
  const end = sampler.stop();
  await pool.close();
  return { ...r, samples: sampler.samples, end };
}

async function main(): Promise<number> {
  mkdirSync(OUT_DIR, { recursive: true });
  const load0 = loadavg();
  log(
    `${SOAK_SECONDS}s with ${WORKERS} workers; ${cpus().length} CPUs, load average ${load0.map((l) => l.toFixed(2)).join(' ')}`,
  );
  const mock = await startMockUpstream({ port: 0 });
  let gw: Gateway | null = null;
  try {
    const prefix = `soak:${RUN_ID}:`;
    const redis = await startRedis(prefix);
    // Every feature on; cache entries expire after 60 s so the hit pool misses again now and then.
    // The injected 503s go to a model of their own on an upstream of its own (the same mock), so
    // that upstream's circuit breaker opens, as it should, without taking the main route with it.
    const full = fullConfig({ port: 0, mockUrl: mock.url, redisUrl: '', prefix: '', adminKey: '' });
    const [upstream] = full['upstreams'] as ConfigObject[];
    const [model] = full['models'] as ConfigObject[];
    gw = await startGateway({
      mockUrl: mock.url,
      redisUrl: redis.url,
      prefix,
      overrides: {
        cache: { ttlSeconds: 60 },
        upstreams: [upstream, { ...upstream, name: 'faulty' }],
        models: [model, { ...model, id: FAULTY_MODEL, aliases: [], routes: [{ upstream: 'faulty' }] }],
      },
    });
    const auth = `Bearer ${await issueKey(gw, { name: `soak-${RUN_ID}`, team: 'soak' })}`;
    const limitedAuth = `Bearer ${await issueKey(gw, { name: `soak-limited-${RUN_ID}`, team: 'soak', limits: { rpm: LIMITED_RPM } })}`;
    await sanityCheck('gateway', gw.base, auth);

    const started = Date.now();
    let exitedAt: number | null = null;
    void gw.child.exited.then(() => {
      exitedAt = Math.round((Date.now() - started) / 1000);
    });
    const { outcomes, failures, firstFailures, requests, samples, end } = await driveLoad(
      gw,
      auth,
      limitedAuth,
    );
    const elapsed = (Date.now() - started) / 1000;

    // End checks: nothing left in flight, the gateway still running.
    let inflight: Record<string, number> | string = {};
    const gatewayIdle = await settles(async () => {
      inflight = await inflightSeries(gw!.base);
      return typeof inflight !== 'string' && Object.values(inflight).every((v) => v === 0);
    }, 10_000);
    const mockIdle = await settles(() => mock.stats.inflight === 0, 10_000);
    const gatewayAlive = gw.child.exitCode === undefined;
    if (!gatewayAlive) log(`the gateway exited (code ${gw.child.exitCode}); its output:\n${tail(gw.child)}`);

    // RSS growth from the sample after the first minute (or 20% of the run) to the end.
    const from = Math.min(60, SOAK_SECONDS * 0.2);
    const base = samples.find((s) => s.t >= from) ?? samples[0]!;
    const growth = end.rssMB / base.rssMB - 1;

    printTable(
      ['time (s)', 'RSS (MB, 5 s mean)', 'RSS peak (MB)', 'requests', 'req/s'],
      samples.map((s, i) => {
        const prev = samples[i - 1];
        const rate = prev && s.t > prev.t ? (s.requests - prev.requests) / (s.t - prev.t) : Number.NaN;
        return [
          String(s.t),
          s.rssMB.toFixed(1),
          s.peakMB.toFixed(1),
          String(s.requests),
          Number.isFinite(rate) ? rate.toFixed(0) : '',
        ];
      }),
    );
    const sorted = [...outcomes].sort(([a], [b]) => a.localeCompare(b));
    printTable(
      ['outcome', 'requests'],
      sorted.map(([name, n]) => [name, String(n)]),
    );
    const count = (f: Failure) => failures.get(f) ?? 0;
    const pct = (growth * 100).toFixed(1);
    const checks: [string, boolean][] = [
      [
        `RSS ${base.rssMB.toFixed(1)} MB at ${base.t}s -> ${end.rssMB.toFixed(1)} MB at ${end.t}s: ${growth >= 0 ? '+' : ''}${pct}% (limit +${MAX_GROWTH * 100}%)`,
        gatewayAlive && growth <= MAX_GROWTH,
      ],
      [`HTTP 500 answers: ${count('status 500')}`, count('status 500') === 0],
      [`hangs (no answer within ${REQUEST_TIMEOUT_MS / 1000}s): ${count('hang')}`, count('hang') === 0],
      [`transport errors: ${count('transport error')}`, count('transport error') === 0],
      [`gateway tollgate_inflight_requests at the end: ${describeInflight(inflight)}`, gatewayIdle],
      [`mock upstream in flight at the end: ${mock.stats.inflight}`, mockIdle],
      [
        `gateway process still running: ${gatewayAlive ? 'yes' : `no, it exited (code ${gw.child.exitCode}) at ${exitedAt}s`}`,
        gatewayAlive,
      ],
    ];
    const unexpected = sorted.filter(([name]) => name.includes('UNEXPECTED')).reduce((a, [, n]) => a + n, 0);
    const load1 = loadavg();
    const notes = [
      `${requests} requests in ${elapsed.toFixed(0)}s (${(requests / elapsed).toFixed(0)} req/s) by ${WORKERS} workers; ${unexpected} with an unexpected status (not a failure by itself)`,
      `mock upstream: ${mock.stats.requests} requests, ${mock.stats.completed} completed, ${mock.stats.aborts} aborted by the gateway`,
      `load average before ${load0.map((l) => l.toFixed(2)).join(' ')}, after ${load1.map((l) => l.toFixed(2)).join(' ')}; ${cpus().length} CPUs; Redis: ${redis.source}`,
      ...firstFailures.map((f) => `failure: ${f}`),
    ];
    process.stdout.write('\n');
    for (const [text, ok] of checks) process.stdout.write(`  ${ok ? 'pass' : 'FAIL'}  ${text}\n`);
    for (const n of notes) process.stdout.write(`  ${n}\n`);
    const pass = checks.every(([, ok]) => ok);
    process.stdout.write(`  verdict: ${pass ? 'PASS' : 'FAIL'}\n`);

    const results = {
      date: new Date().toISOString(),
      node: process.version,
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model ?? null,
      seconds: SOAK_SECONDS,
      workers: WORKERS,
      mix: Object.fromEntries(MIX),
      redis: redis.source,
      loadAverage: { before: load0, after: load1 },
      samples,
      rssGrowth: {
        fromSeconds: base.t,
        fromMB: base.rssMB,
        toSeconds: end.t,
        toMB: end.rssMB,
        growth,
        limit: MAX_GROWTH,
      },
      outcomes: Object.fromEntries(sorted),
      failures: Object.fromEntries(failures),
      inflightAtEnd: inflight,
      mock: { ...mock.stats },
      checks: checks.map(([text, ok]) => ({ check: text, pass: ok })),
      pass,
    };
    writeFileSync(join(OUT_DIR, 'soak.json'), `${JSON.stringify(results, null, 2)}\n`);
    process.stdout.write('  results: .bench/soak.json\n');
    return pass ? 0 : 1;
  } finally {
    await gw?.stop();
    await mock.close();
  }
}

await runMain(main);
