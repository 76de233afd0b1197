// `BENCH_VARIANTS=1 npm run bench`: what each feature costs. Every variant is a fresh gateway
// (the full config with one thing changed) measured the same way — warm-up, c1 p50 and c32
// throughput with the gateway's CPU time per request — against the minimal proxy's runs of the
// main benchmark. Prints a second table; the figures also go to `.bench/results.json`.

import {
  type ConfigObject,
  errorsOf,
  issueKey,
  log,
  printTable,
  rssKb,
  sanityCheck,
  startGateway,
  type WrkResult,
  wrk,
} from './harness.js';

interface Variant {
  name: string;
  /** Deep-merged into the full config. */
  overrides: ConfigObject;
  /** Without the `redis` section: every store in memory. */
  memory?: boolean;
}

export const VARIANTS: Variant[] = [
  { name: 'full', overrides: {} },
  { name: 'metrics-off', overrides: { metrics: { enabled: false } } },
  { name: 'metering-off', overrides: { metering: { enabled: false } } },
  { name: 'cache-off', overrides: { cache: { enabled: false } } },
  { name: 'limits-off', overrides: { limits: { defaults: { rpm: null, tpm: null, maxConcurrent: null } } } },
  { name: 'memory-mode', overrides: {}, memory: true },
];

export interface VariantResult {
  name: string;
  error: string | null;
  c1P50Ms: number | null;
  c32Rps: number | null;
  cpuMsPerRequest: number | null;
  rssMB: number | null;
  failedRequests: number;
  /** Relative to the minimal proxy's runs of the main benchmark. */
  vsMinimal: { p50AddedMs: number; rps: number; cpu: number } | null;
}

export interface VariantsResult {
  baseline: { c1P50Ms: number; c32Rps: number; cpuMsPerRequest: number | null };
  variants: VariantResult[];
}

async function measureVariant(
  v: Variant,
  opts: {
    mockUrl: string;
    redisUrl: string | null;
    prefix: string;
    durationSeconds: number;
    warmupSeconds: number;
  },
): Promise<Omit<VariantResult, 'vsMinimal'>> {
  if (!v.memory && opts.redisUrl === null) throw new Error('needs Redis, which did not start');
  const gw = await startGateway({
    mockUrl: opts.mockUrl,
    redisUrl: v.memory ? null : opts.redisUrl,
    prefix: `${opts.prefix}${v.name}:`,
    overrides: v.overrides,
    name: `gateway ${v.name}`,
  });
  try {
    const auth = `Bearer ${await issueKey(gw)}`;
    await sanityCheck(`gateway ${v.name}`, gw.base, auth);
    const target = { base: gw.base, auth, mode: 'miss' as const };
    await wrk({
      label: `warm-up ${v.name}`,
      ...target,
      threads: 2,
      connections: 8,
      seconds: opts.warmupSeconds,
    });
    const c1 = await wrk({
      label: `c1 ${v.name}`,
      ...target,
      threads: 1,
      connections: 1,
      seconds: opts.durationSeconds,
    });
    const c32 = await wrk({
      label: `c32 ${v.name}`,
      ...target,
      threads: 2,
      connections: 32,
      seconds: opts.durationSeconds,
      pid: gw.pid,
    });
    return {
      name: v.name,
      error: null,
      c1P50Ms: c1.latency_us.p50 / 1000,
      c32Rps: c32.rps,
      cpuMsPerRequest: c32.cpuMsPerRequest ?? null,
      rssMB: rssKb(gw.pid) / 1024,
      failedRequests: errorsOf(c1) + errorsOf(c32),
    };
  } finally {
    await gw.stop();
  }
}

const fixed = (v: number | null, digits: number): string =>
  v === null || !Number.isFinite(v) ? '—' : v.toFixed(digits);
const ratio = (a: number | null, b: number | null): string =>
  a === null || b === null || !Number.isFinite(a / b) ? '—' : `${(a / b).toFixed(2)}x`;

/** Measures every variant in turn (each gateway stopped before the next starts) and prints the table. */
export async function runVariants(opts: {
  mockUrl: string;
  redisUrl: string | null;
  prefix: string;
  durationSeconds: number;
  warmupSeconds: number;
  baseline: { c1: WrkResult; c32: WrkResult };
}): Promise<VariantsResult> {
  const baseline = {
    c1P50Ms: opts.baseline.c1.latency_us.p50 / 1000,
    c32Rps: opts.baseline.c32.rps,
    cpuMsPerRequest: opts.baseline.c32.cpuMsPerRequest ?? null,
  };
  const results: VariantResult[] = [];
  for (const v of VARIANTS) {
    log(`variant ${v.name}`);
    let r: Omit<VariantResult, 'vsMinimal'>;
    try {
      r = await measureVariant(v, opts);
    } catch (err) {
      const error = (err as Error).message;
      log(`VARIANT ${v.name} NOT MEASURED: ${error}`);
      r = {
        name: v.name,
        error,
        c1P50Ms: null,
        c32Rps: null,
        cpuMsPerRequest: null,
        rssMB: null,
        failedRequests: 0,
      };
    }
    const vsMinimal =
      r.c1P50Ms === null || r.c32Rps === null
        ? null
        : {
            p50AddedMs: r.c1P50Ms - baseline.c1P50Ms,
            rps: r.c32Rps / baseline.c32Rps,
            cpu: (r.cpuMsPerRequest ?? Number.NaN) / (baseline.cpuMsPerRequest ?? Number.NaN),
          };
    results.push({ ...r, vsMinimal });
  }

  const full = results.find((r) => r.name === 'full' && r.error === null) ?? null;
  const body = [
    [
      'minimal proxy (baseline)',
      fixed(baseline.c1P50Ms, 3),
      fixed(baseline.c32Rps, 0),
      fixed(baseline.cpuMsPerRequest, 3),
      '',
    ],
  ];
  for (const r of results) {
    let vsFull = '';
    if (r.error !== null) vsFull = `not measured: ${r.error.split('\n')[0]!.slice(0, 100)}`;
    else if (full && r !== full) {
      const p50 = r.c1P50Ms! - full.c1P50Ms!;
      vsFull = `p50 ${p50 >= 0 ? '+' : ''}${p50.toFixed(3)} ms, req/s ${ratio(r.c32Rps, full.c32Rps)}, CPU ${ratio(r.cpuMsPerRequest, full.cpuMsPerRequest)}`;
    }
    if (r.failedRequests > 0) vsFull += `${vsFull ? '; ' : ''}${r.failedRequests} failed requests`;
    body.push([r.name, fixed(r.c1P50Ms, 3), fixed(r.c32Rps, 0), fixed(r.cpuMsPerRequest, 3), vsFull]);
  }
  printTable(['variant', 'c1 p50 (ms)', 'c32 req/s', 'CPU ms/req', 'vs full'], body);
  process.stdout.write(
    '  variants: fresh gateway each (warm-up, then c1 and c32 cache misses); baseline: the minimal proxy runs above\n',
  );
  return { baseline, variants: results };
}
