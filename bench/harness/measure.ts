// Measurements for the benchmark and the soak: /proc CPU time and RSS of a process tree, wrk runs
// (bench/chat.lua) and streaming time to first token.

import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';
import { CHAT_PATH, chatBody } from './gateway.js';
import { launch, log, onPath, ROOT, RUN_ID, tail } from './process.js';

const LUA = join(ROOT, 'bench', 'chat.lua');

/** Exits with a hint when wrk is not installed. */
export function requireWrk(): void {
  if (!onPath('wrk')) {
    process.stderr.write('npm run bench needs wrk: apt-get install -y wrk\n');
    process.exit(1);
  }
}

// ---------------------------------------------------------------------------------------------
// /proc accounting (Linux). Sums a process and all its descendants.

export const CLK_TCK = (() => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const n = Number(r.stdout?.trim());
  return Number.isFinite(n) && n > 0 ? n : 100;
})();

function readStat(pid: number): { ppid: number; ticks: number } | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) };
  } catch {
    return null;
  }
}

function processTree(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = readStat(Number(name));
    if (st) parent.set(Number(name), st.ppid);
  }
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) {
    for (const [p, pp] of parent) if (pp === tree[i]) tree.push(p);
  }
  return tree;
}

/** User + system CPU clock ticks of `pid` and its descendants (divide by CLK_TCK for seconds). */
export function cpuTicks(pid: number): number {
  let sum = 0;
  for (const p of processTree(pid)) sum += readStat(p)?.ticks ?? 0;
  return sum;
}

/** Resident set size of `pid` and its descendants, in kB. */
export function rssKb(pid: number): number {
  let sum = 0;
  for (const p of processTree(pid)) {
    try {
      const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${p}/status`, 'utf8'));
      sum += Number(m?.[1] ?? 0);
    } catch {
      // gone
    }
  }
  return sum;
}

export interface RssSample {
  t: number;
  /** Mean of the last `every` one-second readings: GC swings average out. */
  rssMB: number;
  peakMB: number;
  requests: number;
}

/** Reads `pid`'s RSS every second; records a sample every `every` seconds, at the start and at stop(). */
export function rssSampler(
  pid: number,
  every: number,
  requests: () => number,
): { samples: RssSample[]; stop(): RssSample } {
  const started = Date.now();
  const samples: RssSample[] = [];
  const readings: number[] = [];
  const read = (): void => {
    readings.push(rssKb(pid) / 1024);
    if (readings.length > every) readings.shift();
  };
  const sample = (): RssSample => {
    read();
    const last = readings;
    const s = {
      t: Math.round((Date.now() - started) / 1000),
      rssMB: last.reduce((a, b) => a + b, 0) / last.length,
      peakMB: Math.max(...last),
      requests: requests(),
    };
    samples.push(s);
    return s;
  };
  sample();
  let ticks = 0;
  const timer = setInterval(() => {
    if (++ticks % every === 0) sample();
    else read();
  }, 1000);
  return {
    samples,
    stop() {
      clearInterval(timer);
      return sample();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Load

export interface WrkResult {
  requests: number;
  duration_us: number;
  bytes: number;
  errors: { connect: number; read: number; write: number; status: number; timeout: number };
  latency_us: { min: number; max: number; mean: number; p50: number; p90: number; p99: number; p999: number };
  rps: number;
  runId: string;
  cpuMsPerRequest?: number;
}

export const errorsOf = (r: WrkResult | null): number =>
  r ? r.errors.connect + r.errors.read + r.errors.write + r.errors.status + r.errors.timeout : 0;

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

/**
 * Several runs of one target as one result: each latency percentile, the rate and the CPU time per
 * request are the median over the runs (a run disturbed by something else on the machine does
 * not decide the figure); requests, bytes and errors are summed.
 */
export function medianRun(runs: WrkResult[]): WrkResult {
  if (runs.length === 1) return runs[0]!;
  const pick = (f: (r: WrkResult) => number) => median(runs.map(f));
  const cpu = runs.map((r) => r.cpuMsPerRequest).filter((v): v is number => v !== undefined);
  const sum = (f: (r: WrkResult) => number) => runs.reduce((a, r) => a + f(r), 0);
  return {
    requests: sum((r) => r.requests),
    duration_us: sum((r) => r.duration_us),
    bytes: sum((r) => r.bytes),
    errors: {
      connect: sum((r) => r.errors.connect),
      read: sum((r) => r.errors.read),
      write: sum((r) => r.errors.write),
      status: sum((r) => r.errors.status),
      timeout: sum((r) => r.errors.timeout),
    },
    latency_us: {
      min: Math.min(...runs.map((r) => r.latency_us.min)),
      max: Math.max(...runs.map((r) => r.latency_us.max)),
      mean: pick((r) => r.latency_us.mean),
      p50: pick((r) => r.latency_us.p50),
      p90: pick((r) => r.latency_us.p90),
      p99: pick((r) => r.latency_us.p99),
      p999: pick((r) => r.latency_us.p999),
    },
    rps: pick((r) => r.rps),
    runId: runs.map((r) => r.runId).join(','),
    ...(cpu.length > 0 && { cpuMsPerRequest: median(cpu) }),
  };
}

/** One wrk run of chat.lua; with `pid`, also the CPU time per request of that process tree. */
export async function wrk(opts: {
  label: string;
  base: string;
  auth: string;
  threads: number;
  connections: number;
  seconds: number;
  mode: 'miss' | 'same';
  pid?: number;
}): Promise<WrkResult> {
  const runId = `${RUN_ID}-${opts.label.replace(/[^a-z0-9]+/gi, '_')}`;
  log(`${opts.label}: wrk -t${opts.threads} -c${opts.connections} -d${opts.seconds}s (${opts.mode})`);
  const before = opts.pid !== undefined ? cpuTicks(opts.pid) : 0;
  const child = launch(
    `wrk ${opts.label}`,
    'wrk',
    [
      ...[`-t${opts.threads}`, `-c${opts.connections}`, `-d${opts.seconds}s`, '--timeout', '5s', '--latency'],
      ...['-s', LUA, opts.base + CHAT_PATH],
    ],
    { ...process.env, BENCH_AUTH: opts.auth, BENCH_MODE: opts.mode, BENCH_RUN_ID: runId },
  );
  const timer = setTimeout(() => child.proc.kill('SIGKILL'), (opts.seconds + 30) * 1000);
  await child.exited;
  clearTimeout(timer);
  const after = opts.pid !== undefined ? cpuTicks(opts.pid) : 0;
  const line = child.output.find((l) => l.startsWith('BENCHJSON '));
  if (child.exitCode !== 0 || !line)
    throw new Error(`wrk failed for ${opts.label} (exit ${child.exitCode})\n${tail(child)}`);
  const r = JSON.parse(line.slice('BENCHJSON '.length)) as WrkResult;
  r.rps = r.requests / (r.duration_us / 1e6);
  r.runId = runId;
  if (opts.pid !== undefined && r.requests > 0)
    r.cpuMsPerRequest = (((after - before) / CLK_TCK) * 1000) / r.requests;
  const errs = errorsOf(r);
  if (errs > 0) log(`  ${opts.label}: ${errs} errors ${JSON.stringify(r.errors)} in ${r.requests} requests`);
  return r;
}

export interface TtftResult {
  p50: number;
  p90: number;
  p99: number;
  errors: number;
  samples: number;
}

export function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/** Time to the first `data:` bytes of a streamed request, interleaving the targets request by request. */
export async function measureTtft(
  targets: { name: string; base: string; auth: string }[],
  n: number,
): Promise<Map<string, TtftResult>> {
  const warm = Math.min(20, Math.floor(n / 10));
  const pools = targets.map((t) => new Pool(t.base, { connections: 1, pipelining: 1 }));
  const samples = targets.map(() => [] as number[]);
  const errors = targets.map(() => 0);
  let counter = 0;
  try {
    for (let i = 0; i < n + warm; i++) {
      for (let j = 0; j < targets.length; j++) {
        const t = targets[j]!;
        const body = chatBody(`Stream question ${RUN_ID}-${j}-${counter++}: count to three`, true);
        const t0 = performance.now();
        const res = await pools[j]!.request({
          method: 'POST',
          path: CHAT_PATH,
          headers: { 'content-type': 'application/json', authorization: t.auth },
          body,
          headersTimeout: 10_000,
          bodyTimeout: 10_000,
        });
        let first = -1;
        let text = '';
        for await (const chunk of res.body as AsyncIterable<Buffer>) {
          if (first < 0 && chunk.includes('data:')) first = performance.now() - t0;
          if (res.statusCode !== 200) text += chunk.toString('utf8');
        }
        if (res.statusCode !== 200 || first < 0) {
          errors[j]!++;
          if (errors[j] === 1) log(`  ${t.name}: stream answered ${res.statusCode}: ${text.slice(0, 300)}`);
          continue;
        }
        if (i >= warm) samples[j]!.push(first);
      }
    }
  } finally {
    await Promise.all(pools.map((p) => p.close()));
  }
  const out = new Map<string, TtftResult>();
  targets.forEach((t, j) => {
    const s = samples[j]!.sort((a, b) => a - b);
    out.set(t.name, {
      p50: pct(s, 50),
      p90: pct(s, 90),
      p99: pct(s, 99),
      errors: errors[j]!,
      samples: s.length,
    });
  });
  return out;
}
