// `npm run bench` (SPEC section 11): the gateway with every feature on against a minimal pass-through
// proxy, both in front of the same mock upstream, loaded in turn by wrk on this machine.
//
// Environment:
//   BENCH_DURATION   seconds per measured wrk run (default 10; "10s" works too)
//   BENCH_WARMUP     seconds of warm-up per target (default 3)
//   BENCH_STREAMS    streamed requests per target for time-to-first-token (default 200)
//   BENCH_REDIS_URL / TEST_REDIS_URL   an existing Redis (keys go under a random prefix and are removed);
//                    otherwise a throw-away `redis-server` is started on a free port
//   BENCH_STRICT=1   exit 1 when a target is missed (default: only harness failures exit 1)
//   BENCH_TIMEOUT    overall limit in seconds (default 600)
//
// Everything listens on 127.0.0.1; every child process is stopped at the end, on error and on SIGINT.
// Results: a table on stdout and `.bench/results.json`.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  accessSync,
  constants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import ts from 'typescript';
import { Pool, request } from 'undici';
import { stringify as toYaml } from 'yaml';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const OUT_DIR = join(ROOT, '.bench');
const BUILD_DIR = join(OUT_DIR, 'build');
const LUA = join(ROOT, 'bench', 'chat.lua');
const MOCK_KEY = 'sk-mock-upstream';
const CHAT_PATH = '/v1/chat/completions';

// ---------------------------------------------------------------------------------------------
// Preconditions

function onPath(cmd: string): boolean {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    if (!dir) continue;
    try {
      accessSync(join(dir, cmd), constants.X_OK);
      return true;
    } catch {
      // keep looking
    }
  }
  return false;
}

if (!onPath('wrk')) {
  process.stderr.write('npm run bench needs wrk: apt-get install -y wrk\n');
  process.exit(1);
}

function seconds(name: string, def: number): number {
  const raw = process.env[name];
  if (!raw) return def;
  const n = Number(raw.replace(/s$/, ''));
  if (!Number.isFinite(n) || n <= 0) {
    process.stderr.write(`${name} must be a positive number of seconds (got '${raw}')\n`);
    process.exit(1);
  }
  return n;
}

const DURATION = Math.max(1, Math.round(seconds('BENCH_DURATION', 10)));
const WARMUP = Math.max(1, Math.round(seconds('BENCH_WARMUP', 3)));
const STREAMS = Math.max(10, Math.round(seconds('BENCH_STREAMS', 200)));
const TIMEOUT = seconds('BENCH_TIMEOUT', 600);
const STRICT = process.env['BENCH_STRICT'] === '1' || process.env['BENCH_STRICT'] === 'true';
const RUN_ID = randomBytes(4).toString('hex');

const log = (msg: string): void => {
  process.stderr.write(`bench: ${msg}\n`);
};

// ---------------------------------------------------------------------------------------------
// Child processes

interface Child {
  name: string;
  proc: ChildProcess;
  output: string[];
  exitCode: number | null | undefined;
  exited: Promise<void>;
  lineWaiters: ((line: string) => void)[];
}

const children: Child[] = [];
let tmp: string | null = null;
let cleanupRedis: (() => Promise<void>) | null = null;

function launch(
  name: string,
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
  stdinPipe = false,
): Child {
  const proc = spawn(cmd, args, { cwd: ROOT, env, stdio: [stdinPipe ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
  const child: Child = {
    name,
    proc,
    output: [],
    exitCode: undefined,
    exited: Promise.resolve(),
    lineWaiters: [],
  };
  child.exited = new Promise((done) => {
    proc.on('exit', (code, signal) => {
      child.exitCode = code ?? (signal ? -1 : null);
      done();
    });
    proc.on('error', (err) => {
      child.output.push(`spawn error: ${err.message}`);
      child.exitCode = -1;
      done();
    });
  });
  let partial = '';
  const push = (line: string): void => {
    child.output.push(line);
    if (child.output.length > 200) child.output.shift();
  };
  proc.stdout?.on('data', (d: Buffer) => {
    partial += d.toString('utf8');
    let nl = partial.indexOf('\n');
    while (nl >= 0) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      push(line);
      for (const w of child.lineWaiters) w(line);
      nl = partial.indexOf('\n');
    }
  });
  proc.stderr?.on('data', (d: Buffer) => {
    for (const line of d.toString('utf8').split('\n')) if (line) push(line);
  });
  children.push(child);
  return child;
}

function tail(child: Child, n = 40): string {
  const lines = child.output.slice(-n);
  return lines.length ? lines.map((l) => `    | ${l}`).join('\n') : '    | (no output)';
}

/** Waits for a stdout line matching `match`; fails when the child exits or the time is up. */
function waitForLine(child: Child, match: (line: string) => boolean, ms: number): Promise<string> {
  return new Promise((resolveLine, reject) => {
    const existing = child.output.find(match);
    if (existing !== undefined) return resolveLine(existing);
    const timer = setTimeout(() => {
      reject(new Error(`${child.name} did not start within ${ms / 1000}s\n${tail(child)}`));
    }, ms);
    child.lineWaiters.push((line) => {
      if (match(line)) {
        clearTimeout(timer);
        resolveLine(line);
      }
    });
    void child.exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`${child.name} exited (code ${child.exitCode}) before it was ready\n${tail(child)}`));
    });
  });
}

async function stopChild(child: Child): Promise<void> {
  if (child.exitCode !== undefined) return;
  child.proc.kill('SIGTERM');
  const killed = await Promise.race([
    child.exited.then(() => false),
    new Promise<boolean>((r) => setTimeout(() => r(true), 4000)),
  ]);
  if (killed && child.exitCode === undefined) {
    child.proc.kill('SIGKILL');
    await Promise.race([child.exited, new Promise((r) => setTimeout(r, 1000))]);
  }
}

let cleaning: Promise<void> | null = null;
let interrupted = false;
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    if (cleanupRedis) {
      try {
        await cleanupRedis();
      } catch (err) {
        log(`could not remove the benchmark's Redis keys: ${(err as Error).message}`);
      }
    }
    // Stop in reverse start order: load sources before their upstreams.
    await Promise.all(children.slice().reverse().map(stopChild));
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  })();
  return cleaning;
}

process.on('exit', () => {
  for (const c of children) if (c.exitCode === undefined) c.proc.kill('SIGKILL');
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    interrupted = true;
    log(`${sig}: stopping`);
    void cleanup().finally(() => process.exit(130));
  });
}
const deadline = setTimeout(() => {
  log(`took longer than BENCH_TIMEOUT=${TIMEOUT}s: stopping`);
  void cleanup().finally(() => process.exit(1));
}, TIMEOUT * 1000);
deadline.unref();

// ---------------------------------------------------------------------------------------------
// Helpers

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => res(port));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Transpiles the TypeScript helpers to plain JS (so the measured processes run without a loader). */
function buildHelpers(): { mockMain: string; minimalProxy: string } {
  const files: [string, string][] = [
    ['test/mock-upstream/index.ts', 'mock-upstream/index.js'],
    ['test/mock-upstream/main.ts', 'mock-upstream/main.js'],
    ['bench/minimal-proxy.ts', 'minimal-proxy.js'],
  ];
  mkdirSync(join(BUILD_DIR, 'mock-upstream'), { recursive: true });
  writeFileSync(join(BUILD_DIR, 'package.json'), '{ "type": "module", "private": true }\n');
  for (const [src, out] of files) {
    const source = readFileSync(join(ROOT, src), 'utf8');
    const js = ts.transpileModule(source, {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, sourceMap: false },
      fileName: src,
    }).outputText;
    writeFileSync(join(BUILD_DIR, out), js);
  }
  return {
    mockMain: join(BUILD_DIR, 'mock-upstream/main.js'),
    minimalProxy: join(BUILD_DIR, 'minimal-proxy.js'),
  };
}

function chatBody(text: string, stream = false): string {
  return JSON.stringify({
    model: 'gpt-4.1-mini',
    messages: [
      { role: 'system', content: 'You are a helpful assistant.' },
      { role: 'user', content: text },
    ],
    max_tokens: 64,
    temperature: 0,
    ...(stream ? { stream: true } : {}),
  });
}

interface Probe {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

async function post(url: string, auth: string, body: string): Promise<Probe> {
  const res = await request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: auth },
    body,
    headersTimeout: 10_000,
    bodyTimeout: 10_000,
  });
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
}

/** One real request through a target, so a broken target fails loudly instead of producing numbers. */
async function sanityCheck(name: string, base: string, auth: string): Promise<Probe> {
  const r = await post(base + CHAT_PATH, auth, chatBody(`sanity ${RUN_ID} ${name}`));
  let content: unknown;
  try {
    content = (JSON.parse(r.text) as { choices?: { message?: { content?: unknown } }[] }).choices?.[0]
      ?.message?.content;
  } catch {
    content = undefined;
  }
  if (r.status !== 200 || typeof content !== 'string' || !content.startsWith('echo: ')) {
    throw new Error(`${name}: a test request answered ${r.status}: ${r.text.slice(0, 500)}`);
  }
  return r;
}

// /proc accounting (Linux). Sums a process and all its descendants.

const CLK_TCK = (() => {
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

function cpuTicks(pid: number): number {
  let sum = 0;
  for (const p of processTree(pid)) sum += readStat(p)?.ticks ?? 0;
  return sum;
}

function rssKb(pid: number): number {
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

// ---------------------------------------------------------------------------------------------
// Load

interface WrkResult {
  requests: number;
  duration_us: number;
  bytes: number;
  errors: { connect: number; read: number; write: number; status: number; timeout: number };
  latency_us: { min: number; max: number; mean: number; p50: number; p90: number; p99: number; p999: number };
  rps: number;
  runId: string;
  cpuMsPerRequest?: number;
}

async function wrk(opts: {
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
      `-t${opts.threads}`,
      `-c${opts.connections}`,
      `-d${opts.seconds}s`,
      '--timeout',
      '5s',
      '--latency',
      '-s',
      LUA,
      opts.base + CHAT_PATH,
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
  const errs = r.errors.connect + r.errors.read + r.errors.write + r.errors.status + r.errors.timeout;
  if (errs > 0) log(`  ${opts.label}: ${errs} errors ${JSON.stringify(r.errors)} in ${r.requests} requests`);
  return r;
}

interface TtftResult {
  p50: number;
  p90: number;
  p99: number;
  errors: number;
  samples: number;
}

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/** Time to the first `data:` bytes of a streamed request, interleaving the targets request by request. */
async function measureTtft(
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

// ---------------------------------------------------------------------------------------------
// Redis and the gateway

async function pingRedis(url: string, ms: number): Promise<void> {
  const client = new Redis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    connectTimeout: ms,
    retryStrategy: () => null,
  });
  let lastError: Error | null = null;
  client.on('error', (err: Error) => {
    lastError = err;
  });
  try {
    await client.connect();
    await client.ping();
  } catch (err) {
    throw lastError ?? err;
  } finally {
    client.disconnect();
  }
}

async function startRedis(): Promise<{ url: string; source: string }> {
  const external = process.env['BENCH_REDIS_URL'] || process.env['TEST_REDIS_URL'];
  if (external) {
    await pingRedis(external, 3000).catch((err: Error) => {
      throw new Error(`the Redis at BENCH_REDIS_URL/TEST_REDIS_URL does not answer: ${err.message}`);
    });
    return { url: external, source: process.env['BENCH_REDIS_URL'] ? 'BENCH_REDIS_URL' : 'TEST_REDIS_URL' };
  }
  if (!onPath('redis-server')) {
    throw new Error(
      'npm run bench needs Redis: set BENCH_REDIS_URL (or TEST_REDIS_URL), or install redis-server (apt-get install -y redis-server)',
    );
  }
  const port = await freePort();
  const redis = launch('redis-server', 'redis-server', [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--save',
    '',
    '--appendonly',
    'no',
    '--dir',
    tmp ?? tmpdir(),
  ]);
  await waitForLine(redis, (l) => l.includes('Ready to accept connections'), 10_000);
  return { url: `redis://127.0.0.1:${port}/0`, source: 'spawned redis-server' };
}

async function removeKeys(url: string, prefix: string): Promise<void> {
  const client = new Redis(url, { maxRetriesPerRequest: 1, connectTimeout: 3000 });
  client.on('error', () => {});
  try {
    let cursor = '0';
    do {
      const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length) await client.unlink(...keys);
    } while (cursor !== '0');
  } finally {
    client.disconnect();
  }
}

async function startGateway(
  mockUrl: string,
  redisUrl: string,
  prefix: string,
): Promise<{ base: string; key: string; pid: number }> {
  const distMain = join(ROOT, 'dist', 'main.js');
  if (!existsSync(distMain)) {
    log('dist/main.js is missing: building (tsc -p tsconfig.build.json)');
    const r = spawnSync(
      process.execPath,
      [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'],
      {
        cwd: ROOT,
        encoding: 'utf8',
      },
    );
    if (r.status !== 0 || !existsSync(distMain)) {
      const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().slice(0, 4000);
      throw new Error(
        r.status === 0
          ? 'tsc -p tsconfig.build.json succeeded but wrote no dist/main.js (is src/main.ts there?)'
          : `the gateway does not build (tsc -p tsconfig.build.json):\n${out}`,
      );
    }
  }
  const port = await freePort();
  const adminKey = `bench-admin-${randomBytes(16).toString('hex')}`;
  const config = {
    server: { host: '127.0.0.1', port, drainDelaySeconds: 0, shutdownGraceSeconds: 2 },
    redis: { url: redisUrl, keyPrefix: prefix },
    admin: { apiKey: adminKey },
    upstreams: [{ name: 'mock', type: 'openai', baseURL: `${mockUrl}/v1`, apiKey: MOCK_KEY }],
    models: [
      {
        id: 'gpt-4.1-mini',
        aliases: ['gpt-4.1-mini-2025-04-14'],
        pricing: { inputPerMTok: 0.4, cachedInputPerMTok: 0.1, outputPerMTok: 1.6 },
        routes: [{ upstream: 'mock' }],
      },
    ],
    cache: { enabled: true },
    limits: { defaults: { rpm: 100_000_000, tpm: 100_000_000_000, maxConcurrent: 10_000 } },
    metrics: { enabled: true },
  };
  const file = join(tmp!, 'gateway.yaml');
  writeFileSync(file, toYaml(config));
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    GATEWAY_CONFIG: file,
    ADMIN_API_KEY: adminKey,
    LOG_LEVEL: 'warn',
    NODE_ENV: 'production',
  };
  // These would override the file (SPEC section 1).
  for (const k of ['PORT', 'HOST', 'REDIS_URL']) delete env[k];
  const gw = launch('gateway', process.execPath, [distMain], env);
  const base = `http://127.0.0.1:${port}`;
  const until = Date.now() + 30_000;
  for (;;) {
    if (gw.exitCode !== undefined) {
      throw new Error(
        `the gateway exited (code ${gw.exitCode}) before it was ready; its output:\n${tail(gw)}`,
      );
    }
    const ok = await request(`${base}/readyz`, { headersTimeout: 1000, bodyTimeout: 1000 })
      .then(async (r) => {
        await r.body.dump();
        return r.statusCode === 200;
      })
      .catch(() => false);
    if (ok) break;
    if (Date.now() > until)
      throw new Error(`the gateway was not ready within 30s (GET /readyz); its output:\n${tail(gw)}`);
    await sleep(100);
  }
  const res = await request(`${base}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: `bench-${RUN_ID}`, team: 'bench' }),
  });
  const text = await res.body.text();
  let key: unknown;
  try {
    key = (JSON.parse(text) as { key?: unknown }).key;
  } catch {
    key = undefined;
  }
  if (res.statusCode !== 201 || typeof key !== 'string') {
    throw new Error(`POST /admin/keys answered ${res.statusCode}: ${text.slice(0, 500)}\n${tail(gw)}`);
  }
  return { base, key, pid: gw.proc.pid! };
}

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
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join(' | ')
      .trimEnd();
  process.stdout.write(`\n${line(head)}\n${widths.map((w) => '-'.repeat(w)).join('-|-')}\n`);
  for (const row of body) process.stdout.write(`${line(row)}\n`);
}

const errorsOf = (r: WrkResult | null): number =>
  r ? r.errors.connect + r.errors.read + r.errors.write + r.errors.status + r.errors.timeout : 0;

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  tmp = mkdtempSync(join(tmpdir(), 'tollgate-bench-'));
  mkdirSync(OUT_DIR, { recursive: true });
  const started = Date.now();
  log(`duration ${DURATION}s per run, warm-up ${WARMUP}s, ${STREAMS} streams; ${cpus().length} CPUs`);
  const { mockMain, minimalProxy } = buildHelpers();
  const plainEnv: NodeJS.ProcessEnv = { ...process.env, NODE_ENV: 'production' };

  // Mock upstream and minimal proxy (plain node, no loader).
  const mockChild = launch(
    'mock upstream',
    process.execPath,
    [mockMain, '--port', '0', '--exit-on-stdin-close'],
    plainEnv,
    true,
  );
  const mockUrl = (
    JSON.parse(await waitForLine(mockChild, (l) => l.startsWith('{"url"'), 15_000)) as { url: string }
  ).url;
  const mockPid = mockChild.proc.pid!;
  const mockAuth = `Bearer ${MOCK_KEY}`;
  await sanityCheck('direct-to-mock', mockUrl, mockAuth);

  const minChild = launch(
    'minimal proxy',
    process.execPath,
    [minimalProxy, '--upstream', mockUrl, '--port', '0', '--exit-on-stdin-close'],
    plainEnv,
    true,
  );
  const minUrl = (
    JSON.parse(await waitForLine(minChild, (l) => l.startsWith('{"url"'), 15_000)) as { url: string }
  ).url;
  const minPid = minChild.proc.pid!;
  await sanityCheck('minimal proxy', minUrl, mockAuth);

  // Redis and the gateway. A gateway that cannot start still leaves the baselines measured.
  let gateway: { base: string; key: string; pid: number } | null = null;
  let gatewayError: string | null = null;
  let redisSource = '';
  try {
    const redis = await startRedis();
    redisSource = redis.source;
    const prefix = `bench:${RUN_ID}:`;
    if (redis.source !== 'spawned redis-server') cleanupRedis = () => removeKeys(redis.url, prefix);
    gateway = await startGateway(mockUrl, redis.url, prefix);
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

  // (1) Latency at concurrency 1, every request a cache miss.
  const c1 = { threads: 1, connections: 1, seconds: DURATION, mode: 'miss' as const };
  const directC1 = await wrk({ label: 'c1 direct-to-mock', base: mockUrl, auth: mockAuth, ...c1 });
  const minC1 = await wrk({ label: 'c1 minimal proxy', base: minUrl, auth: mockAuth, ...c1 });
  const gwC1 = gateway ? await wrk({ label: 'c1 gateway', base: gateway.base, auth: gwAuth, ...c1 }) : null;

  // (2)+(3) Throughput and CPU per request at concurrency 32 (the mock's own CPU is noted too).
  const c32 = { threads: 2, connections: 32, seconds: DURATION, mode: 'miss' as const };
  const mockTicks0 = cpuTicks(mockPid);
  const minC32 = await wrk({ label: 'c32 minimal proxy', base: minUrl, auth: mockAuth, pid: minPid, ...c32 });
  const mockTicks1 = cpuTicks(mockPid);
  const gwC32 = gateway
    ? await wrk({ label: 'c32 gateway', base: gateway.base, auth: gwAuth, pid: gateway.pid, ...c32 })
    : null;
  const mockCpuMs = (((mockTicks1 - mockTicks0) / CLK_TCK) * 1000) / Math.max(1, minC32.requests);

  // (5) Cache hits at concurrency 1: the same body every time, so all but the first are hits.
  let gwHit: WrkResult | null = null;
  let hitConfirmed: boolean | null = null;
  if (gateway) {
    gwHit = await wrk({
      label: 'c1 gateway cache hit',
      base: gateway.base,
      auth: gwAuth,
      ...c1,
      mode: 'same',
    });
    const probe = await post(
      gateway.base + CHAT_PATH,
      gwAuth,
      chatBody(`Benchmark cache question ${gwHit.runId}: what is the capital of France?`),
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

  // (4) RSS after the load.
  const minRss = rssKb(minPid) / 1024;
  const gwRss = gateway ? rssKb(gateway.pid) / 1024 : null;

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
    `Redis: ${redisSource || 'not started'}; ${cpus().length} CPUs shared by wrk, mock, Redis and the proxies`,
  );
  for (const n of notes) process.stdout.write(`  ${n}\n`);

  const results = {
    date: new Date().toISOString(),
    node: process.version,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? null,
    durationSeconds: DURATION,
    warmupSeconds: WARMUP,
    streams: STREAMS,
    redis: redisSource || null,
    gatewayError,
    measures: rows,
    notes,
    runs: {
      c1: { direct: directC1, minimal: minC1, gateway: gwC1 },
      c32: { minimal: minC32, gateway: gwC32 },
      cacheHit: gwHit ? { ...gwHit, hitConfirmed } : null,
      ttftMs: Object.fromEntries(ttft),
      rssMB: { minimal: minRss, gateway: gwRss },
      mockCpuMsPerRequest: mockCpuMs,
    },
    elapsedSeconds: Math.round((Date.now() - started) / 1000),
  };
  writeFileSync(join(OUT_DIR, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  process.stdout.write(`  results: .bench/results.json (${results.elapsedSeconds}s)\n`);

  if (gatewayError) return 1;
  if (STRICT && rows.some((r) => r.pass === false)) return 1;
  return 0;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  if (!interrupted) process.stderr.write(`bench failed: ${(err as Error).message}\n`);
  code = 1;
} finally {
  await cleanup();
}
process.exit(interrupted ? 130 : code);
