import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, posix, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { freePort } from '../support/global-setup.js';

// The files shipped for operators: config/gateway.yaml, Dockerfile, .dockerignore, compose.yaml
// and the Grafana provisioning. Docker itself cannot run here; what can be checked without it is.

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const read = (p: string): string => readFileSync(join(ROOT, p), 'utf8');
const MOCK_KEY = 'sk-mock-upstream';

/** Whether a .dockerignore pattern (`*`, `**`, plain paths) excludes `path` or one of its parents. */
function ignored(pattern: string, path: string): boolean {
  const re = new RegExp(
    `^${pattern
      .replace(/^\/|\/$/g, '')
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*\*/g, '\0')
      .replace(/\*/g, '[^/]*')
      .replace(/\0/g, '.*')}$`,
  );
  const parts = path.split('/');
  return parts.some((_p, i) => re.test(parts.slice(0, i + 1).join('/')));
}

describe('config/gateway.yaml', () => {
  const load = (env: Record<string, string>) => loadConfig(env, undefined, { cwd: ROOT });

  it('is the default configuration and runs in memory mode with OPENAI_API_KEY alone', () => {
    const { config, source, warnings } = load({ OPENAI_API_KEY: 'sk-x' });
    expect(source).toBe(join(ROOT, 'config/gateway.yaml'));
    expect(warnings).toEqual(["upstream 'azure-east' has no endpoint: disabled"]);
    expect(config.redis?.url).toBeUndefined();
    expect(config.redis?.keyPrefix).toBe('tollgate:');
    expect(config.admin.apiKey).toBeUndefined();
    expect(config.metrics).toEqual({
      enabled: true,
      path: '/metrics',
      bearerToken: null,
      keyLabels: true,
      port: null,
    });
    const openai = config.upstreams.find((u) => u.name === 'openai');
    expect(openai).toMatchObject({ type: 'openai', baseURL: 'https://api.openai.com/v1', apiKey: 'sk-x' });
    expect(config.models).toHaveLength(1);
    expect(config.models[0]).toMatchObject({
      id: 'gpt-4.1-mini',
      aliases: ['gpt-4.1-mini-2025-04-14'],
      pricing: { inputPerMTok: 0.4, cachedInputPerMTok: 0.1, outputPerMTok: 1.6 },
      routes: [{ upstream: 'openai', priority: 1, weight: 1 }],
    });
    expect(config.server).toMatchObject({
      host: '0.0.0.0',
      port: 8080,
      drainDelaySeconds: 5,
      shutdownGraceSeconds: 30,
    });
    expect(config.limits).toEqual({
      defaults: { rpm: 600, tpm: 1000000, maxConcurrent: 50 },
      failMode: 'open',
    });
    expect(config.keys).toEqual([]);
  });

  it('takes every credential and URL from the environment', () => {
    const { config, warnings } = load({
      OPENAI_API_KEY: 'sk-o',
      OPENAI_BASE_URL: 'https://proxy.example/v1',
      AZURE_OPENAI_ENDPOINT: 'https://res.openai.azure.com',
      AZURE_OPENAI_API_KEY: 'az-key',
      AZURE_OPENAI_DEPLOYMENT: 'mini-prod',
      REDIS_URL: 'rediss://cache.example:6380/1',
      ADMIN_API_KEY: 'adm',
      METRICS_BEARER_TOKEN: 'scrape-me',
    });
    expect(warnings).toEqual([]);
    expect(config.redis?.url).toBe('rediss://cache.example:6380/1');
    expect(config.admin.apiKey).toBe('adm');
    expect(config.metrics.bearerToken).toBe('scrape-me');
    expect(config.upstreams).toEqual([
      expect.objectContaining({ name: 'openai', baseURL: 'https://proxy.example/v1', apiKey: 'sk-o' }),
      expect.objectContaining({
        name: 'azure-east',
        type: 'azure',
        endpoint: 'https://res.openai.azure.com',
        apiKey: 'az-key',
        deployment: 'mini-prod',
        apiVersion: '2024-10-21',
      }),
    ]);
    expect(config.models[0]!.routes.map((r) => r.upstream)).toEqual(['openai', 'azure-east']);
  });

  it('serves through Azure alone, and refuses to start with no provider at all', () => {
    const { config, warnings } = load({
      AZURE_OPENAI_ENDPOINT: 'https://r.openai.azure.com',
      AZURE_OPENAI_API_KEY: 'k',
    });
    expect(warnings).toEqual(["upstream 'openai' has no apiKey: disabled"]);
    expect(config.models[0]!.routes.map((r) => r.upstream)).toEqual(['azure-east']);
    let err: unknown;
    try {
      load({});
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).issues.join('\n')).toMatch(/no usable route/);
  });

  it('is what the gateway starts with from the repository root', async () => {
    const mock: MockUpstream = await startMockUpstream({ apiKey: MOCK_KEY });
    const admin = 'admin-shipped-config-test';
    const env: Record<string, string | undefined> = { ...process.env };
    for (const k of [
      'GATEWAY_CONFIG',
      'REDIS_URL',
      'AZURE_OPENAI_ENDPOINT',
      'AZURE_OPENAI_API_KEY',
      'NODE_OPTIONS',
    ])
      delete env[k];
    Object.assign(env, {
      OPENAI_API_KEY: MOCK_KEY,
      OPENAI_BASE_URL: `${mock.url}/v1`,
      ADMIN_API_KEY: admin,
      PORT: '0',
      HOST: '127.0.0.1',
    });
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
      cwd: ROOT,
      env: env as NodeJS.ProcessEnv,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      out += s;
    });
    child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      out += s;
    });
    try {
      const lines = (): Record<string, any>[] =>
        out
          .split('\n')
          .filter((l) => l.startsWith('{'))
          .map((l) => JSON.parse(l));
      const deadline = Date.now() + 15_000;
      const listening = (): Record<string, any> | undefined =>
        lines().find((l) => l['msg'] === 'tollgate listening');
      while (!listening()) {
        if (child.exitCode !== null || Date.now() > deadline)
          throw new Error(`gateway did not start:\n${out}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const started = listening()!;
      expect(started['source']).toBe('config/gateway.yaml');
      const msgs = lines().map((l) => l['msg']);
      expect(msgs).toContain("upstream 'azure-east' has no endpoint: disabled");
      expect(msgs.some((m) => /no Redis configured/.test(m))).toBe(true);

      const url = started['url'] as string;
      const created = await fetch(`${url}/admin/keys`, {
        method: 'POST',
        headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'shipped', team: 'ops' }),
      });
      expect(created.status).toBe(201);
      const { key } = (await created.json()) as { key: string };
      const res = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'gpt-4.1-mini-2025-04-14',
          messages: [{ role: 'user', content: 'hi' }],
        }),
      });
      expect(res.status).toBe(200);
      expect(res.headers.get('x-tollgate-upstream')).toBe('openai');
      expect(((await res.json()) as any).choices[0].message.content).toBe('echo: hi');
      expect((await fetch(`${url}/metrics`)).status).toBe(200);
    } finally {
      // Only start-up is under test here; the drain is covered elsewhere.
      if (child.exitCode === null) {
        const gone = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await gone;
      }
      await mock.close();
    }
  });
});

describe('Dockerfile and .dockerignore', () => {
  const dockerfile = read('Dockerfile');
  // Instructions with their continuation lines joined, comments dropped.
  const instructions = dockerfile
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const stages: string[][] = [];
  for (const ins of instructions) {
    if (/^FROM\s/i.test(ins)) stages.push([]);
    stages.at(-1)?.push(ins);
  }
  const final = stages.at(-1) ?? [];
  const arg = (name: string) =>
    new RegExp(`^ARG ${name}=(\\S+)`).exec(
      instructions
        .join('\n')
        .split('\n')
        .find((l) => l.startsWith(`ARG ${name}=`)) ?? '',
    )?.[1];

  it('builds in one stage and runs production dependencies plus dist/ on node:20-slim', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const base = (from: string) =>
      from
        .replace(/^FROM\s+/, '')
        .split(/\s+/)[0]!
        .replace(/^\$\{(\w+)\}$/, (_m, n: string) => arg(n) ?? n);
    expect(base(final[0]!)).toBe('node:20-slim');
    const build = stages[0]!;
    expect(build[0]).toMatch(/\sAS build$/i);
    expect(build.some((l) => /^RUN npm ci\b/.test(l))).toBe(true);
    expect(build.some((l) => /^RUN npm run build\b/.test(l))).toBe(true);
    expect(final.some((l) => /^RUN npm ci\b.*--omit=dev\b.*--ignore-scripts\b/.test(l))).toBe(true);
    expect(final).toContain('COPY --from=build /app/dist ./dist');
    expect(final).toContain('COPY config/gateway.yaml ./config/gateway.yaml');
    expect(final.some((l) => /^EXPOSE 8080$/.test(l))).toBe(true);
    expect(final.at(-1)).toBe('CMD ["node", "dist/main.js"]');
    const user = final.filter((l) => l.startsWith('USER ')).at(-1);
    expect(user).toBeDefined();
    expect(user).not.toMatch(/^USER (root|0)(:|$)/);
    // What the image copies is there and not excluded by .dockerignore.
    const ignore = read('.dockerignore')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    for (const l of instructions.filter((i) => /^COPY (?!--from)/.test(i))) {
      const sources = l
        .replace(/^COPY\s+(--\S+\s+)*/, '')
        .split(/\s+/)
        .slice(0, -1);
      for (const src of sources) {
        expect(existsSync(join(ROOT, src)), src).toBe(true);
        const excluded = ignore.some((p) => !p.startsWith('!') && ignored(p, src));
        const reincluded = ignore.some((p) => p.startsWith('!') && ignored(p.slice(1), src));
        expect(!excluded || reincluded, `${src} excluded by .dockerignore`).toBe(true);
      }
    }
    for (const p of ['node_modules', 'dist', '.git', 'test']) expect(ignore).toContain(p);
  });

  it('has a HEALTHCHECK that node itself runs against /healthz (0 when up, 1 when down)', async () => {
    const hc = final.find((l) => l.startsWith('HEALTHCHECK '));
    expect(hc).toBeDefined();
    const cmd = JSON.parse(hc!.slice(hc!.indexOf('CMD ') + 4)) as string[];
    expect(cmd.slice(0, 2)).toEqual(['node', '-e']);
    expect(cmd[2]).toContain('/healthz');
    const mock = await startMockUpstream();
    const { startGateway } = await import('../../src/server/gateway.js');
    const { validateConfig } = await import('../../src/config/load.js');
    const { createLogger } = await import('../../src/server/logger.js');
    const { config } = validateConfig({
      server: { host: '127.0.0.1', port: 0, drainDelaySeconds: 0 },
      upstreams: [{ name: 'o', type: 'openai', baseURL: `${mock.url}/v1`, apiKey: MOCK_KEY }],
      models: [
        {
          id: 'm',
          pricing: { inputPerMTok: 1, cachedInputPerMTok: 1, outputPerMTok: 1 },
          routes: [{ upstream: 'o' }],
        },
      ],
    });
    const gw = await startGateway(config, createLogger('silent'));
    // Asynchronously: the gateway answering the probe runs in this process.
    const probe = (port: number) =>
      new Promise<number | null>((done) => {
        const child = spawn(process.execPath, ['-e', cmd[2]!], {
          env: { PATH: process.env['PATH'], PORT: String(port) },
          stdio: 'ignore',
        });
        child.once('exit', (code) => done(code));
      });
    try {
      expect(await probe(gw.port)).toBe(0);
      expect(await probe(await freePort())).toBe(1);
    } finally {
      await gw.shutdown();
      await mock.close();
    }
  });
});

describe('compose.yaml', () => {
  const compose = parseYaml(read('compose.yaml'));
  const services = compose.services as Record<string, any>;
  const envOf = (svc: any): Record<string, string | null> => {
    const e = svc.environment ?? {};
    if (!Array.isArray(e)) return e;
    return Object.fromEntries(
      (e as string[]).map((s) =>
        s.includes('=') ? [s.slice(0, s.indexOf('=')), s.slice(s.indexOf('=') + 1)] : [s, null],
      ),
    );
  };

  it('runs the gateway with Redis (volatile-lru), Prometheus and Grafana', () => {
    expect(Object.keys(services).sort()).toEqual(['gateway', 'grafana', 'prometheus', 'redis']);
    const gw = services['gateway'];
    expect(gw.build).toBe('.');
    const env = envOf(gw);
    expect(env['REDIS_URL']).toBe('redis://redis:6379/0');
    for (const k of [
      'OPENAI_API_KEY',
      'OPENAI_BASE_URL',
      'AZURE_OPENAI_ENDPOINT',
      'AZURE_OPENAI_API_KEY',
      'AZURE_OPENAI_DEPLOYMENT',
      'OPENAI_API_VERSION',
      'ADMIN_API_KEY',
    ]) {
      expect(env, k).toHaveProperty(k);
    }
    expect(String(gw.ports[0])).toMatch(/:8080$/);
    const redis = services['redis'];
    expect(redis.image).toMatch(/^redis:7/);
    const cmd = (redis.command as string[]).join(' ');
    expect(cmd).toMatch(/--maxmemory-policy volatile-lru/);
    expect(cmd).not.toMatch(/allkeys/);
  });

  it('mounts files that exist, wired to each other', () => {
    for (const [name, svc] of Object.entries(services)) {
      for (const v of (svc.volumes ?? []) as string[]) {
        const src = v.split(':')[0]!;
        if (src.startsWith('./')) expect(existsSync(join(ROOT, src)), `${name}: ${src}`).toBe(true);
      }
    }
    // Prometheus reads config/prometheus/ and scrapes the gateway service on its container port.
    const promMount = (services['prometheus'].volumes as string[]).find((v) =>
      v.startsWith('./config/prometheus:'),
    )!;
    expect(promMount.split(':')[1]).toBe('/etc/prometheus');
    expect(services['prometheus'].command).toContain('--config.file=/etc/prometheus/prometheus.yml');
    const prom = parseYaml(read('config/prometheus/prometheus.yml'));
    expect(prom.rule_files).toEqual(['alerts.yml']);
    expect(prom.scrape_configs[0].static_configs[0].targets).toEqual(['gateway:8080']);
    // Grafana: the provisioned data source is Prometheus, the dashboard provider reads the dir
    // where compose mounts tollgate.json.
    const vols = services['grafana'].volumes as string[];
    expect(vols).toContain('./config/grafana/provisioning:/etc/grafana/provisioning:ro');
    const dashMount = vols.find((v) => v.startsWith('./config/grafana/tollgate.json:'))!.split(':')[1]!;
    const ds = parseYaml(read('config/grafana/provisioning/datasources/prometheus.yml'));
    expect(ds.datasources[0]).toMatchObject({
      type: 'prometheus',
      url: 'http://prometheus:9090',
      isDefault: true,
    });
    const providers = parseYaml(read('config/grafana/provisioning/dashboards/tollgate.yml'));
    expect(providers.providers[0].options.path).toBe(posix.dirname(dashMount));
    expect(JSON.parse(read('config/grafana/tollgate.json')).uid).toBe('tollgate');
  });
});
