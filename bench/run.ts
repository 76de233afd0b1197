// `npm run bench` (SPEC section 11): the gateway with every feature on against a minimal pass-through
// proxy, both in front of the same mock upstream, loaded in turn by wrk on this machine.
//
// Environment:
//   BENCH_DURATION   seconds per measured wrk run (default 10; "10s" works too)
//   BENCH_ROUNDS     rounds of the c1, c32 and cache-hit runs, the targets taking turns (default 3);
//                    each figure is the median over the rounds
//   BENCH_WARMUP     seconds of warm-up per target (default 3)
//   BENCH_STREAMS    streamed requests per target for time-to-first-token (default 200)
//   BENCH_REDIS_URL / TEST_REDIS_URL   an existing Redis (keys go under a random prefix and are removed);
//                    otherwise a throw-away `redis-server` is started on a free port
//   BENCH_STRICT=1   exit 1 when a target is missed (default: only harness failures exit 1)
//   BENCH_TIMEOUT    overall limit in seconds (default 600)
//   BENCH_VARIANTS=1 also measure gateway variants (one feature off each, memory mode; variants.ts)
//
// Everything listens on 127.0.0.1; every child process is stopped at the end, on error and on SIGINT.
// Results: a table on stdout and `.bench/results.json`. The harness: harness.ts.

import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import {
  buildHelpers,
  CHAT_PATH,
  CLK_TCK,
  chatBody,
  cpuTicks,
  errorsOf,
  type Gateway,
  installCleanup,
  issueKey,
  log,
  MOCK_KEY,
  measureTtft,
  median,
  medianRun,
  OUT_DIR,
  post,
  printTable as printRows,
  RUN_ID,
  requireWrk,
  rssKb,
  runMain,
  sanityCheck,
  seconds,
  startGateway,
  startHelper,
  startRedis,
  tempDir,
  type WrkResult,
  wrk,
} from './harness.js';
import { runVariants, type VariantsResult } from './variants.js';

requireWrk();

const DURATION = Math.max(1, Math.round(seconds('BENCH_DURATION', 10)));
const WARMUP = Math.max(1, Math.round(seconds('BENCH_WARMUP', 3)));
const STREAMS = Math.max(10, Math.round(seconds('BENCH_STREAMS', 200)));
const ROUNDS = Math.max(1, Math.round(seconds('BENCH_ROUNDS', 3)));
const TIMEOUT = seconds('BENCH_TIMEOUT', 600);
const STRICT = process.env['BENCH_STRICT'] === '1' || process.env['BENCH_STRICT'] === 'true';
const VARIANTS = process.env['BENCH_VARIANTS'] === '1' || process.env['BENCH_VARIANTS'] === 'true';

installCleanup(TIMEOUT, 'BENCH_TIMEOUT');

// ---------------------------------------------------------------------------------------------
// Report

interface Measure {
  measure: string;
  unit: string;
  gateway: number | null;
  baseline: number | null;
  baselineName: string;
  compare: string;
  target: string;
  pass: boolean | null;
  note?: string;
}

const fmt = (v: number | null | undefined, digits = 3): string =>
  v === null || v === undefined || !Number.isFinite(v) ? '—' : v.toFixed(digits);
const signed = (v: number, digits = 3): string => `${v >= 0 ? '+' : ''}${v.toFixed(digits)}`;
const digitsFor = (unit: string): number => (unit === 'req/s' ? 0 : unit === 'MB' ? 1 : 3);

function printTable(rows: Measure[]): void {
  const head = ['measure', 'gateway', 'baseline', 'ratio/diff', 'target', 'result'];
  const body = rows.map((r) => [
    `${r.measure} (${r.unit})`,
    fmt(r.gateway, digitsFor(r.unit)),
    `${fmt(r.baseline, digitsFor(r.unit))} ${r.baselineName}`,
    r.compare,
    r.target,
    r.pass === null ? 'n/a' : r.pass ? 'pass' : 'FAIL',
  ]);
  printRows(head, body);
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  tempDir();
  mkdirSync(OUT_DIR, { recursive: true });
  const started = Date.now();
  log(
    `duration ${DURATION}s per run, ${ROUNDS} rounds, warm-up ${WARMUP}s, ${STREAMS} streams; ${cpus().length} CPUs`,
  );
  const { mockMain, minimalProxy } = buildHelpers();

  // Mock upstream and minimal proxy (plain node, no loader).
  const { url: mockUrl, pid: mockPid } = await startHelper('mock upstream', mockMain, ['--port', '0']);
  const mockAuth = `Bearer ${MOCK_KEY}`;
  await sanityCheck('direct-to-mock', mockUrl, mockAuth);

  const minArgs = ['--upstream', mockUrl, '--port', '0'];
  const { url: minUrl, pid: minPid } = await startHelper('minimal proxy', minimalProxy, minArgs);
  await sanityCheck('minimal proxy', minUrl, mockAuth);

  // Redis and the gateway. A gateway that cannot start still leaves the baselines measured.
  let gateway: (Gateway & { key: string }) | null = null;
  let gatewayError: string | null = null;
  let redisSource = '';
  let redisUrl: string | null = null;
  const prefix = `bench:${RUN_ID}:`;
  try {
    const redis = await startRedis(prefix);
    redisSource = redis.source;
    redisUrl = redis.url;
    const gw = await startGateway({ mockUrl, redisUrl: redis.url, prefix });
    gateway = { ...gw, key: await issueKey(gw) };
    const probe = await sanityCheck('gateway', gateway.base, `Bearer ${gateway.key}`);
    if (probe.headers['x-cache'] !== 'MISS') {
      log(
        `warning: the gateway's first answer has x-cache: ${String(probe.headers['x-cache'])} (expected MISS)`,
      );
    }
  } catch (err) {
    gatewayError = (err as Error).message;
    gateway = null;
    log(`GATEWAY NOT MEASURED: ${gatewayError}`);
  }
  const gwAuth = gateway ? `Bearer ${gateway.key}` : '';

  // Warm-up (JIT, connection pools).
  const warm = { threads: 2, connections: 8, seconds: WARMUP, mode: 'miss' as const };
  await wrk({ label: 'warm-up direct', base: mockUrl, auth: mockAuth, ...warm });
  await wrk({ label: 'warm-up minimal', base: minUrl, auth: mockAuth, ...warm });
  if (gateway) await wrk({ label: 'warm-up gateway', base: gateway.base, auth: gwAuth, ...warm });

  // (1) Latency at concurrency 1, every request a cache miss, and (2)+(3) throughput and CPU per
  // request at concurrency 32 (the mock's own CPU is noted too): ROUNDS rounds in which the
  // targets take turns, so a disturbance of the shared machine hits them alike; medians count.
  const c1 = { threads: 1, connections: 1, seconds: DURATION, mode: 'miss' as const };
  const c32 = { threads: 2, connections: 32, seconds: DURATION, mode: 'miss' as const };
  const runs1 = { direct: [] as WrkResult[], min: [] as WrkResult[], gw: [] as WrkResult[] };
  const runs32 = { min: [] as WrkResult[], gw: [] as WrkResult[] };
  const runsHit: WrkResult[] = [];
  // (4) RSS right after each target's c32 run: the same load, read at the same moment after it.
  // (Read at the end of the benchmark instead, the minimal proxy would have been idle for the
  // gateway's runs, long enough for V8 to shrink its young generation, and the gateway not.)
  const rss = { min: [] as number[], gw: [] as number[] };
  let minIdleSince = 0;
  let mockCpuMs = 0;
  for (let round = 1; round <= ROUNDS; round++) {
    const r = ROUNDS > 1 ? ` (round ${round}/${ROUNDS})` : '';
    runs1.direct.push(await wrk({ label: `c1 direct-to-mock${r}`, base: mockUrl, auth: mockAuth, ...c1 }));
    runs1.min.push(await wrk({ label: `c1 minimal proxy${r}`, base: minUrl, auth: mockAuth, ...c1 }));
    if (gateway)
      runs1.gw.push(await wrk({ label: `c1 gateway${r}`, base: gateway.base, auth: gwAuth, ...c1 }));
    const mockTicks0 = cpuTicks(mockPid);
    const m32 = await wrk({
      label: `c32 minimal proxy${r}`,
      base: minUrl,
      auth: mockAuth,
      pid: minPid,
      ...c32,
    });
    const mockTicks1 = cpuTicks(mockPid);
    rss.min.push(rssKb(minPid) / 1024);
    minIdleSince = Date.now();
    runs32.min.push(m32);
    mockCpuMs += (((mockTicks1 - mockTicks0) / CLK_TCK) * 1000) / Math.max(1, m32.requests) / ROUNDS;
    if (gateway) {
      runs32.gw.push(
        await wrk({ label: `c32 gateway${r}`, base: gateway.base, auth: gwAuth, pid: gateway.pid, ...c32 }),
      );
      rss.gw.push(rssKb(gateway.pid) / 1024);
      // (5) Cache hits at concurrency 1: the same body every time, so all but the first are hits.
      runsHit.push(
        await wrk({
          label: `c1 gateway cache hit${r}`,
          base: gateway.base,
          auth: gwAuth,
          ...c1,
          mode: 'same',
        }),
      );
    }
  }
  const directC1 = medianRun(runs1.direct);
  const minC1 = medianRun(runs1.min);
  const gwC1 = gateway ? medianRun(runs1.gw) : null;
  const minC32 = medianRun(runs32.min);
  const gwC32 = gateway ? medianRun(runs32.gw) : null;

  // (5) Cache hits (run in the rounds above): the last round's body must be a hit by now.
  const gwHit: WrkResult | null = gateway ? medianRun(runsHit) : null;
  let hitConfirmed: boolean | null = null;
  if (gateway) {
    const lastHitRun = runsHit.at(-1)!;
    const probe = await post(
      gateway.base + CHAT_PATH,
      gwAuth,
      chatBody(`Benchmark cache question ${lastHitRun.runId}: what is the capital of France?`),
    ).catch(() => null);
    hitConfirmed = probe?.status === 200 && probe.headers['x-cache'] === 'HIT';
    if (!hitConfirmed) {
      log(
        `warning: the repeated request was not a cache hit (status ${probe?.status}, x-cache ${String(probe?.headers['x-cache'])})`,
      );
    }
  }

  // (6) Streaming time to first token, interleaving the targets request by request.
  log(`streams: ${STREAMS} per target, time to the first data chunk`);
  const ttftTargets = [{ name: 'minimal', base: minUrl, auth: mockAuth }];
  if (gateway) ttftTargets.push({ name: 'gateway', base: gateway.base, auth: gwAuth });
  const ttft = await measureTtft(ttftTargets, STREAMS);

  // (4) RSS after the load: the median over the rounds; at the end too, for the notes.
  const minRss = median(rss.min);
  const gwRss = gateway ? median(rss.gw) : null;
  const endRss = { minimal: rssKb(minPid) / 1024, gateway: gateway ? rssKb(gateway.pid) / 1024 : null };
  const minIdleSeconds = Math.round((Date.now() - minIdleSince) / 1000);

  // Measures.
  const ms = (us: number) => us / 1000;
  const directP50 = ms(directC1.latency_us.p50);
  const minP50 = ms(minC1.latency_us.p50);
  const minP99 = ms(minC1.latency_us.p99);
  const gwP50 = gwC1 ? ms(gwC1.latency_us.p50) : null;
  const gwP99 = gwC1 ? ms(gwC1.latency_us.p99) : null;
  const hitP50 = gwHit ? ms(gwHit.latency_us.p50) : null;
  const minCpu = minC32.cpuMsPerRequest ?? Number.NaN;
  const gwCpu = gwC32?.cpuMsPerRequest ?? null;
  const tMin = ttft.get('minimal')!;
  const tGw = ttft.get('gateway') ?? null;
  const okRun = (r: WrkResult | null) => r !== null && errorsOf(r) === 0;

  const rows: Measure[] = [
    {
      measure: 'latency p50 @c1, added over direct',
      unit: 'ms',
      gateway: gwP50 === null ? null : gwP50 - directP50,
      baseline: minP50 - directP50,
      baselineName: 'minimal',
      compare: gwP50 === null ? '—' : `${signed(gwP50 - minP50)} ms vs minimal`,
      target: '<= 0.4 ms',
      pass: gwP50 === null ? null : okRun(gwC1) && gwP50 - directP50 <= 0.4,
    },
    {
      measure: 'latency p99 @c1',
      unit: 'ms',
      gateway: gwP99,
      baseline: minP99,
      baselineName: 'minimal',
      compare: gwP99 === null ? '—' : `${signed(gwP99 - minP99)} ms`,
      target: '<= minimal + 1 ms',
      pass: gwP99 === null ? null : okRun(gwC1) && gwP99 <= minP99 + 1,
    },
    {
      measure: 'throughput @c32',
      unit: 'req/s',
      gateway: gwC32 ? gwC32.rps : null,
      baseline: minC32.rps,
      baselineName: 'minimal',
      compare: gwC32 ? `${(gwC32.rps / minC32.rps).toFixed(2)}x` : '—',
      target: '>= 0.7x',
      pass: gwC32 ? okRun(gwC32) && gwC32.rps >= 0.7 * minC32.rps : null,
    },
    {
      measure: 'CPU time per request @c32',
      unit: 'ms',
      gateway: gwCpu,
      baseline: minCpu,
      baselineName: 'minimal',
      compare: gwCpu === null ? '—' : `${(gwCpu / minCpu).toFixed(2)}x`,
      target: '<= 1.5x',
      pass: gwCpu === null ? null : okRun(gwC32) && gwCpu <= 1.5 * minCpu,
    },
    {
      measure: 'RSS after load',
      unit: 'MB',
      gateway: gwRss,
      baseline: minRss,
      baselineName: 'minimal',
      compare: gwRss === null ? '—' : `${(gwRss / minRss).toFixed(2)}x`,
      target: '<= 1.3x',
      pass: gwRss === null ? null : gwRss <= 1.3 * minRss,
    },
    {
      measure: 'cache hit p50 @c1',
      unit: 'ms',
      gateway: hitP50,
      baseline: minP50,
      baselineName: 'minimal',
      compare: hitP50 === null ? '—' : `${signed(hitP50 - minP50)} ms`,
      target: '< minimal p50',
      pass: hitP50 === null ? null : okRun(gwHit) && hitConfirmed === true && hitP50 < minP50,
    },
    {
      measure: 'stream TTFT p50 @c1',
      unit: 'ms',
      gateway: tGw ? tGw.p50 : null,
      baseline: tMin.p50,
      baselineName: 'minimal',
      compare: tGw ? `${signed(tGw.p50 - tMin.p50)} ms` : '—',
      target: 'added <= 1 ms',
      pass: tGw ? tGw.errors === 0 && tGw.p50 - tMin.p50 <= 1 : null,
    },
  ];

  printTable(rows);
  const notes: string[] = [
    `direct-to-mock @c1: p50 ${directP50.toFixed(3)} ms, p99 ${ms(directC1.latency_us.p99).toFixed(3)} ms; ` +
      `minimal proxy p50 ${minP50.toFixed(3)} ms${gwP50 === null ? '' : `, gateway p50 ${gwP50.toFixed(3)} ms`}`,
    `mock upstream CPU per request (c32 via minimal): ${mockCpuMs.toFixed(3)} ms`,
  ];
  if (gwHit)
    notes.push(
      `cache-hit run: ${gwHit.requests} requests at c1 (${gwHit.rps.toFixed(0)} req/s), hit confirmed: ${hitConfirmed}`,
    );
  const runs: [string, WrkResult | null][] = [
    ['c1 direct', directC1],
    ['c1 minimal', minC1],
    ['c1 gateway', gwC1],
    ['c32 minimal', minC32],
    ['c32 gateway', gwC32],
    ['c1 gateway cache hit', gwHit],
  ];
  for (const [name, r] of runs) {
    if (errorsOf(r) > 0)
      notes.push(`${name}: ${errorsOf(r)} failed requests ${JSON.stringify(r?.errors)} (rows using it fail)`);
  }
  for (const [name, t] of ttft) if (t.errors > 0) notes.push(`streams via ${name}: ${t.errors} failed`);
  if (gatewayError) notes.push(`gateway NOT measured: ${gatewayError.split('\n')[0]}`);
  notes.push(
    `RSS right after each c32 run (MB): minimal ${rss.min.map((v) => v.toFixed(1)).join(' / ')}, gateway ${rss.gw.map((v) => v.toFixed(1)).join(' / ')}; at the end: minimal ${endRss.minimal.toFixed(1)} (no c32 load for ${minIdleSeconds}s), gateway ${endRss.gateway?.toFixed(1) ?? '—'}`,
  );
  notes.push(
    `Redis: ${redisSource || 'not started'}; ${cpus().length} CPUs shared by wrk, mock, Redis and the proxies`,
  );
  for (const n of notes) process.stdout.write(`  ${n}\n`);

  // Variants: one feature off at a time (and memory mode), each a fresh gateway, same baseline.
  let variants: VariantsResult | null = null;
  if (VARIANTS) {
    await gateway?.stop();
    variants = await runVariants({
      mockUrl,
      redisUrl,
      prefix,
      durationSeconds: DURATION,
      warmupSeconds: WARMUP,
      baseline: { c1: minC1, c32: minC32 },
    });
  }

  const results = {
    date: new Date().toISOString(),
    node: process.version,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? null,
    durationSeconds: DURATION,
    rounds: ROUNDS,
    warmupSeconds: WARMUP,
    streams: STREAMS,
    redis: redisSource || null,
    gatewayError,
    measures: rows,
    notes,
    runs: {
      perRound: { c1: runs1, c32: runs32, cacheHit: runsHit },
      c1: { direct: directC1, minimal: minC1, gateway: gwC1 },
      c32: { minimal: minC32, gateway: gwC32 },
      cacheHit: gwHit ? { ...gwHit, hitConfirmed } : null,
      ttftMs: Object.fromEntries(ttft),
      rssMB: { minimal: minRss, gateway: gwRss, perRound: rss, atEnd: endRss },
      mockCpuMsPerRequest: mockCpuMs,
    },
    ...(variants ? { variants } : {}),
    elapsedSeconds: Math.round((Date.now() - started) / 1000),
  };
  writeFileSync(join(OUT_DIR, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  process.stdout.write(`  results: .bench/results.json (${results.elapsedSeconds}s)\n`);

  if (gatewayError) return 1;
  if (STRICT && rows.some((r) => r.pass === false)) return 1;
  return 0;
}

await runMain(main);
