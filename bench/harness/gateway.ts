// What the benchmark and the soak run: the mock upstream and the minimal proxy (transpiled to plain
// JS), Redis, and the gateway (`node dist/main.js`) started from a config object; key issuing and
// the chat request helpers.

import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import ts from 'typescript';
import { request } from 'undici';
import { stringify as toYaml } from 'yaml';
import {
  type Child,
  freePort,
  launch,
  log,
  logTag,
  OUT_DIR,
  onCleanup,
  onPath,
  ROOT,
  RUN_ID,
  sleep,
  stopChild,
  tail,
  tempDir,
  waitForLine,
} from './process.js';

const BUILD_DIR = join(OUT_DIR, 'build');
export const MOCK_KEY = 'sk-mock-upstream';
export const CHAT_PATH = '/v1/chat/completions';

// ---------------------------------------------------------------------------------------------
// Helpers

/** Transpiles the TypeScript helpers to plain JS (so the measured processes run without a loader). */
export function buildHelpers(): { mockMain: string; minimalProxy: string } {
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

/** Starts a helper built by `buildHelpers` (it prints `{"url":...}` when listening); returns its URL. */
export async function startHelper(
  name: string,
  script: string,
  args: string[],
): Promise<{ url: string; pid: number }> {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_ENV: 'production' };
  const child = launch(name, process.execPath, [script, ...args, '--exit-on-stdin-close'], env, true);
  const line = await waitForLine(child, (l) => l.startsWith('{"url"'), 15_000);
  return { url: (JSON.parse(line) as { url: string }).url, pid: child.proc.pid! };
}

export function chatBody(text: string, stream = false): string {
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

export interface Probe {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

export async function post(url: string, auth: string, body: string): Promise<Probe> {
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
export async function sanityCheck(name: string, base: string, auth: string): Promise<Probe> {
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

// ---------------------------------------------------------------------------------------------
// Redis

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

/**
 * BENCH_REDIS_URL / TEST_REDIS_URL when set (keys under `prefix` are removed at cleanup),
 * otherwise a throw-away `redis-server` on a free port.
 */
export async function startRedis(prefix: string): Promise<{ url: string; source: string; pid?: number }> {
  const external = process.env['BENCH_REDIS_URL'] || process.env['TEST_REDIS_URL'];
  if (external) {
    await pingRedis(external, 3000).catch((err: Error) => {
      throw new Error(`the Redis at BENCH_REDIS_URL/TEST_REDIS_URL does not answer: ${err.message}`);
    });
    onCleanup(() =>
      removeKeys(external, prefix).catch((err: Error) => {
        log(`could not remove the benchmark's Redis keys: ${err.message}`);
      }),
    );
    return { url: external, source: process.env['BENCH_REDIS_URL'] ? 'BENCH_REDIS_URL' : 'TEST_REDIS_URL' };
  }
  if (!onPath('redis-server')) {
    throw new Error(
      `npm run ${logTag()} needs Redis: set BENCH_REDIS_URL (or TEST_REDIS_URL), or install redis-server (apt-get install -y redis-server)`,
    );
  }
  const port = await freePort();
  const redis = launch('redis-server', 'redis-server', [
    ...['--port', String(port), '--bind', '127.0.0.1'],
    ...['--save', '', '--appendonly', 'no', '--dir', tempDir()],
  ]);
  await waitForLine(redis, (l) => l.includes('Ready to accept connections'), 10_000);
  return { url: `redis://127.0.0.1:${port}/0`, source: 'spawned redis-server', pid: redis.proc.pid! };
}

// ---------------------------------------------------------------------------------------------
// The gateway

export type ConfigObject = { [key: string]: unknown };

const isPlainObject = (v: unknown): v is ConfigObject =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** `base` with `override` merged in: objects recursively, anything else replaced, `undefined` removes. */
export function deepMerge(base: ConfigObject, override: ConfigObject): ConfigObject {
  const out: ConfigObject = { ...base };
  for (const [k, v] of Object.entries(override)) {
    if (v === undefined) delete out[k];
    else if (isPlainObject(v) && isPlainObject(out[k])) out[k] = deepMerge(out[k], v);
    else out[k] = v;
  }
  return out;
}

/** The gateway with every feature on: Redis, keys, limits (high enough never to refuse), metering, metrics, cache. */
export function fullConfig(opts: {
  port: number;
  mockUrl: string;
  redisUrl: string;
  prefix: string;
  adminKey: string;
}): ConfigObject {
  return {
    server: { host: '127.0.0.1', port: opts.port, drainDelaySeconds: 0, shutdownGraceSeconds: 2 },
    redis: { url: opts.redisUrl, keyPrefix: opts.prefix },
    admin: { apiKey: opts.adminKey },
    upstreams: [{ name: 'mock', type: 'openai', baseURL: `${opts.mockUrl}/v1`, apiKey: MOCK_KEY }],
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
}

/** Builds the gateway checked out in `dir` (tsc -p tsconfig.build.json); returns its dist/main.js. */
export function buildDist(dir: string): string {
  const main = join(dir, 'dist', 'main.js');
  const r = spawnSync(
    process.execPath,
    [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'],
    { cwd: dir, encoding: 'utf8' },
  );
  if (r.status !== 0 || !existsSync(main)) {
    const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().slice(0, 4000);
    throw new Error(
      r.status === 0
        ? `tsc -p tsconfig.build.json in ${dir} succeeded but wrote no dist/main.js (is src/main.ts there?)`
        : `the gateway in ${dir} does not build (tsc -p tsconfig.build.json):\n${out}`,
    );
  }
  return main;
}

/** This checkout's dist/main.js, built when missing. */
function distMain(): string {
  const main = join(ROOT, 'dist', 'main.js');
  if (existsSync(main)) return main;
  log('dist/main.js is missing: building (tsc -p tsconfig.build.json)');
  return buildDist(ROOT);
}

export interface Gateway {
  name: string;
  base: string;
  pid: number;
  adminKey: string;
  child: Child;
  stop(): Promise<void>;
}

/**
 * Starts `node dist/main.js` with `fullConfig` deep-merged with `overrides` (GATEWAY_CONFIG) and
 * waits for GET /readyz. `redisUrl` null starts it without Redis (in-memory stores).
 */
export async function startGateway(opts: {
  mockUrl: string;
  redisUrl: string | null;
  prefix: string;
  overrides?: ConfigObject;
  name?: string;
  /** The gateway's dist/main.js (default: this checkout's, built when missing). */
  main?: string;
}): Promise<Gateway> {
  const main = opts.main ?? distMain();
  const name = opts.name ?? 'gateway';
  const port = await freePort();
  const adminKey = `bench-admin-${randomBytes(16).toString('hex')}`;
  let config = fullConfig({
    port,
    mockUrl: opts.mockUrl,
    redisUrl: opts.redisUrl ?? '',
    prefix: opts.prefix,
    adminKey,
  });
  if (opts.redisUrl === null) config = deepMerge(config, { redis: undefined });
  if (opts.overrides) config = deepMerge(config, opts.overrides);
  const file = join(tempDir(), `${name.replace(/[^a-z0-9-]+/gi, '-')}.yaml`);
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
  // BENCH_NODE_ARGS: extra node flags for the gateway (e.g. `--cpu-prof --cpu-prof-dir=.bench/prof`).
  const nodeArgs = (process.env['BENCH_NODE_ARGS'] ?? '').split(/\s+/).filter(Boolean);
  const gw = launch(name, process.execPath, [...nodeArgs, main], env);
  const base = `http://127.0.0.1:${port}`;
  const until = Date.now() + 30_000;
  for (;;) {
    if (gw.exitCode !== undefined) {
      throw new Error(
        `the ${name} exited (code ${gw.exitCode}) before it was ready; its output:\n${tail(gw)}`,
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
      throw new Error(`the ${name} was not ready within 30s (GET /readyz); its output:\n${tail(gw)}`);
    await sleep(100);
  }
  return { name, base, pid: gw.proc.pid!, adminKey, child: gw, stop: () => stopChild(gw) };
}

/** Issues a client key through POST /admin/keys (default: name bench-<run>, team bench); returns the secret. */
export async function issueKey(
  gw: Gateway,
  body: ConfigObject = { name: `bench-${RUN_ID}`, team: 'bench' },
): Promise<string> {
  const res = await request(`${gw.base}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${gw.adminKey}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.body.text();
  let key: unknown;
  try {
    key = (JSON.parse(text) as { key?: unknown }).key;
  } catch {
    key = undefined;
  }
  if (res.statusCode !== 201 || typeof key !== 'string') {
    throw new Error(`POST /admin/keys answered ${res.statusCode}: ${text.slice(0, 500)}\n${tail(gw.child)}`);
  }
  return key;
}
