// biome-ignore-all lint/suspicious/noTemplateCurlyInString: these tests are about ${VAR} references
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { ConfigError, interpolate, loadConfig, validateConfig } from '../../src/config/load.js';
import { runGatewayToExit } from '../support/process.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'tollgate-config-'));
  dirs.push(d);
  return d;
}

/** Writes YAML text (or an object as YAML) to a fresh temp file. */
function file(content: string | Record<string, unknown>): string {
  const path = join(tempDir(), 'gateway.yaml');
  writeFileSync(path, typeof content === 'string' ? content : stringify(content));
  return path;
}

const pricing = { inputPerMTok: 0.4, cachedInputPerMTok: 0.1, outputPerMTok: 1.6 };

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('interpolation', () => {
  it('replaces ${VAR} and ${VAR:-default}, coercing numbers and booleans', () => {
    const path = file(`
server:
  port: \${TG_PORT}
  host: \${TG_HOST:-127.0.0.9}
  bodyLimitBytes: \${TG_LIMIT:-4096}
  cors: \${TG_CORS:-false}
upstreams:
  - name: openai
    type: openai
    baseURL: "\${TG_BASE:-http://127.0.0.1:9999}/v1"
    apiKey: \${TG_KEY}
models:
  - id: gpt-4.1-mini
    maxOutputTokens: \${TG_MAXOUT:-100}
    pricing: { inputPerMTok: 0.4, cachedInputPerMTok: 0.1, outputPerMTok: 1.6 }
    routes: [ { upstream: openai } ]
`);
    const { config, warnings, source } = loadConfig(
      { TG_PORT: '9090', TG_KEY: 'sk-abc', TG_MAXOUT: '' },
      path,
    );
    expect(source).toBe(path);
    expect(warnings).toEqual([]);
    expect(config.server.port).toBe(9090);
    expect(config.server.host).toBe('127.0.0.9');
    expect(config.server.bodyLimitBytes).toBe(4096);
    expect(config.server.cors).toBe(false);
    expect(config.upstreams[0]).toMatchObject({ baseURL: 'http://127.0.0.1:9999/v1', apiKey: 'sk-abc' });
    // An empty variable takes the default, like the shell's ${VAR:-default}.
    expect(config.models[0]?.maxOutputTokens).toBe(100);
  });

  it('keeps other text around a reference and uses the variable when set', () => {
    expect(interpolate({ a: 'x-${V}-y', b: ['${V}', '${NOPE}'], c: 3 }, { V: 'val' })).toEqual({
      a: 'x-val-y',
      b: ['val'],
      c: 3,
    });
  });

  it('drops a value whose variable is unset or empty', () => {
    expect(interpolate({ a: '${NOPE}', b: '${EMPTY}', c: 'keep' }, { EMPTY: '' })).toEqual({ c: 'keep' });
  });

  it('leaves out a value that embeds an unset variable instead of building a broken one', () => {
    expect(interpolate({ endpoint: 'https://${RESOURCE}.openai.azure.com', x: 1 }, {})).toEqual({ x: 1 });
  });

  it('disables an upstream whose credential variable is unset, with a warning', () => {
    const path = file({
      upstreams: [
        { name: 'openai', type: 'openai', baseURL: 'http://127.0.0.1:1/v1', apiKey: '${TG_OPENAI_KEY}' },
        {
          name: 'azure-east',
          type: 'azure',
          endpoint: '${TG_AZURE_ENDPOINT}',
          apiKey: '${TG_AZURE_KEY}',
          deployment: 'gpt-4.1-mini',
        },
      ],
      models: [
        {
          id: 'gpt-4.1-mini',
          pricing,
          routes: [
            { upstream: 'openai', priority: 1 },
            { upstream: 'azure-east', priority: 2 },
          ],
        },
      ],
    });
    const { config, warnings } = loadConfig(
      { TG_AZURE_ENDPOINT: 'https://x.example', TG_AZURE_KEY: 'k' },
      path,
    );
    expect(config.upstreams.find((u) => u.name === 'openai')?.apiKey).toBeUndefined();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/openai/);
    expect(warnings[0]).toMatch(/apiKey/);
    expect(warnings[0]).toMatch(/disabled/);
    expect(config.models[0]?.routes.map((r) => r.upstream)).toEqual(['azure-east']);
  });

  it('fails when a model is left with no usable route', () => {
    const path = file({
      upstreams: [{ name: 'openai', type: 'openai', apiKey: '${TG_UNSET_KEY}' }],
      models: [{ id: 'gpt-4.1-mini', pricing, routes: [{ upstream: 'openai' }] }],
    });
    const err = configError(() => loadConfig({}, path));
    expect(err.issues.some((i) => /gpt-4\.1-mini/.test(i) && /no usable route/.test(i))).toBe(true);
  });
});

describe('environment-only mode', () => {
  // A directory without config/gateway.yaml, so no file is found.
  const cwd = (): string => tempDir();

  it('serves gpt-4.1-mini through OpenAI first and Azure second', () => {
    const { config, source, warnings } = loadConfig(
      {
        OPENAI_API_KEY: 'sk-openai',
        OPENAI_BASE_URL: 'http://127.0.0.1:9999/v1',
        AZURE_OPENAI_ENDPOINT: 'https://res.openai.azure.com',
        AZURE_OPENAI_API_KEY: 'az-key',
        AZURE_OPENAI_DEPLOYMENT: 'my-mini',
        OPENAI_API_VERSION: '2024-10-21',
        PORT: '8181',
        HOST: '127.0.0.1',
        REDIS_URL: 'redis://127.0.0.1:6390/2',
        ADMIN_API_KEY: 'root-secret',
        LOG_LEVEL: 'warn',
      },
      undefined,
      { cwd: cwd() },
    );
    expect(source).toBe('environment');
    expect(warnings).toEqual([]);
    expect(config.upstreams).toEqual([
      expect.objectContaining({
        name: 'openai',
        type: 'openai',
        baseURL: 'http://127.0.0.1:9999/v1',
        apiKey: 'sk-openai',
      }),
      expect.objectContaining({
        type: 'azure',
        endpoint: 'https://res.openai.azure.com',
        apiKey: 'az-key',
        deployment: 'my-mini',
        apiVersion: '2024-10-21',
      }),
    ]);
    const m = config.models[0]!;
    expect(m.id).toBe('gpt-4.1-mini');
    expect(m.aliases).toContain('gpt-4.1-mini-2025-04-14');
    expect(m.maxOutputTokens).toBe(32768);
    expect(m.pricing).toEqual(pricing);
    expect(m.routes.map((r) => [r.upstream, r.priority])).toEqual([
      ['openai', 1],
      [config.upstreams[1]!.name, 2],
    ]);
    expect(config.server.port).toBe(8181);
    expect(config.server.host).toBe('127.0.0.1');
    expect(config.redis?.url).toBe('redis://127.0.0.1:6390/2');
    expect(config.admin.apiKey).toBe('root-secret');
    expect(config.logging.level).toBe('warn');
  });

  it('serves through Azure alone when only Azure is configured (default v1 path, no api version)', () => {
    const { config } = loadConfig(
      { AZURE_OPENAI_ENDPOINT: 'https://res.openai.azure.com', AZURE_OPENAI_API_KEY: 'az-key' },
      undefined,
      { cwd: cwd() },
    );
    expect(config.upstreams).toHaveLength(1);
    expect(config.upstreams[0]).toMatchObject({ type: 'azure', deployment: 'gpt-4.1-mini' });
    expect((config.upstreams[0] as { apiVersion?: string }).apiVersion).toBeUndefined();
    expect(config.models[0]?.routes).toHaveLength(1);
    expect(config.redis).toBeUndefined();
  });

  it('warns about half an Azure configuration and serves through OpenAI', () => {
    const { config, warnings } = loadConfig(
      { OPENAI_API_KEY: 'sk-openai', AZURE_OPENAI_ENDPOINT: 'https://res.openai.azure.com' },
      undefined,
      { cwd: cwd() },
    );
    expect(warnings).toEqual([expect.stringMatching(/'azure' has no apiKey: disabled/)]);
    expect(config.models[0]?.routes.map((r) => r.upstream)).toEqual(['openai']);
  });

  it('fails with a clear problem when no provider is configured', () => {
    const err = configError(() => loadConfig({}, undefined, { cwd: cwd() }));
    expect(err.issues.join('\n')).toMatch(/gpt-4\.1-mini/);
    expect(err.issues.join('\n')).toMatch(/OPENAI_API_KEY/);
  });

  it('uses config/gateway.yaml from the working directory when it exists', () => {
    const dir = tempDir();
    mkdirSync(join(dir, 'config'));
    writeFileSync(
      join(dir, 'config', 'gateway.yaml'),
      stringify({
        upstreams: [{ name: 'u', type: 'openai', apiKey: 'k' }],
        models: [{ id: 'from-file', pricing, routes: [{ upstream: 'u' }] }],
      }),
    );
    const { config, source } = loadConfig({ OPENAI_API_KEY: 'ignored' }, undefined, { cwd: dir });
    expect(source).toMatch(/config[/\\]gateway\.yaml$/);
    expect(config.models.map((m) => m.id)).toEqual(['from-file']);
  });
});

describe('overrides', () => {
  it('PORT, HOST, REDIS_URL, ADMIN_API_KEY and LOG_LEVEL beat the file', () => {
    const path = file({
      server: { port: 1234, host: '0.0.0.0' },
      redis: { url: 'redis://file-host:6379/0', keyPrefix: 'mine:' },
      admin: { apiKey: 'from-file' },
      logging: { level: 'debug' },
      upstreams: [{ name: 'u', type: 'openai', apiKey: 'k' }],
      models: [{ id: 'm', pricing, routes: [{ upstream: 'u' }] }],
    });
    const env = {
      PORT: '4321',
      HOST: '127.0.0.2',
      REDIS_URL: 'rediss://env-host:6380/1',
      ADMIN_API_KEY: 'from-env',
      LOG_LEVEL: 'error',
    };
    const { config } = loadConfig(env, path);
    expect(config.server.port).toBe(4321);
    expect(config.server.host).toBe('127.0.0.2');
    expect(config.redis?.url).toBe('rediss://env-host:6380/1');
    expect(config.redis?.keyPrefix).toBe('mine:');
    expect(config.admin.apiKey).toBe('from-env');
    expect(config.logging.level).toBe('error');
    // Without overrides the file's values stand.
    const plain = loadConfig({}, path).config;
    expect(plain.server.port).toBe(1234);
    expect(plain.admin.apiKey).toBe('from-file');
  });

  it('provider variables reach a file only through ${...}', () => {
    const path = file({
      upstreams: [{ name: 'u', type: 'openai', baseURL: 'http://127.0.0.1:1/v1', apiKey: 'file-key' }],
      models: [{ id: 'm', pricing, routes: [{ upstream: 'u' }] }],
    });
    const { config } = loadConfig({ OPENAI_API_KEY: 'env-key', OPENAI_BASE_URL: 'http://other/v1' }, path);
    expect(config.upstreams).toHaveLength(1);
    expect(config.upstreams[0]).toMatchObject({ apiKey: 'file-key', baseURL: 'http://127.0.0.1:1/v1' });
  });
});

describe('validation', () => {
  it('lists every problem with its path', () => {
    const path = file({
      server: { port: 'eighty', bodyLimitBytes: -1 },
      redis: { url: 'http://not-redis' },
      upstreams: [{ name: 'x', type: 'bedrock' }],
      models: [{ id: 'm', routes: [{ upstream: 'x' }] }],
      cache: { scope: 'planet' },
      bogus: true,
    });
    const err = configError(() => loadConfig({}, path));
    const text = err.issues.join('\n');
    expect(err.issues.length).toBeGreaterThanOrEqual(6);
    expect(text).toMatch(/server\.port/);
    expect(text).toMatch(/server\.bodyLimitBytes/);
    expect(text).toMatch(/redis\.url: must start with redis:\/\/ or rediss:\/\//);
    expect(text).toMatch(/upstreams\.0/);
    expect(text).toMatch(/models\.0\.pricing/);
    expect(text).toMatch(/cache\.scope/);
    expect(text).toMatch(/bogus/);
    // The message itself lists them too, one per line.
    for (const issue of err.issues) expect(err.message).toContain(issue);
  });

  it('reports reference problems together', () => {
    const err = configError(() =>
      validateConfig({
        upstreams: [
          { name: 'u', type: 'openai', apiKey: 'k' },
          { name: 'u', type: 'openai', apiKey: 'k' },
        ],
        models: [
          { id: 'a', pricing, routes: [{ upstream: 'nowhere' }] },
          { id: 'b', aliases: ['a'], pricing, routes: [{ upstream: 'u' }] },
        ],
      }),
    );
    const text = err.issues.join('\n');
    expect(text).toMatch(/duplicate upstream name 'u'/);
    expect(text).toMatch(/models\.0\.routes\.0\.upstream: no upstream named 'nowhere'/);
    expect(text).toMatch(/'a' is used twice/);
  });

  it('names an unreadable file and invalid YAML', () => {
    expect(configError(() => loadConfig({}, join(tempDir(), 'missing.yaml'))).issues[0]).toMatch(
      /missing\.yaml: cannot read \(ENOENT\)/,
    );
    expect(configError(() => loadConfig({}, file('server: [unclosed'))).issues[0]).toMatch(/not valid YAML/);
  });

  it('refuses a file that is not a mapping, even with overrides set', () => {
    const err = configError(() => loadConfig({ PORT: '8080' }, file('just a string')));
    expect(err.issues.length).toBeGreaterThan(0);
  });

  it('refuses an unknown LOG_LEVEL or a non-numeric PORT', () => {
    const path = file({
      upstreams: [{ name: 'u', type: 'openai', apiKey: 'k' }],
      models: [{ id: 'm', pricing, routes: [{ upstream: 'u' }] }],
    });
    const err = configError(() => loadConfig({ LOG_LEVEL: 'loud', PORT: 'http' }, path));
    expect(err.issues.join('\n')).toMatch(/logging\.level/);
    expect(err.issues.join('\n')).toMatch(/server\.port/);
  });
});

describe('the process', () => {
  it('exits with code 2 and prints every problem of an invalid config', async () => {
    const r = await runGatewayToExit({
      server: { port: 'eighty' },
      upstreams: [{ name: 'u', type: 'openai', apiKey: 'k' }],
      models: [{ id: 'm', routes: [{ upstream: 'u' }] }],
      cache: { scope: 'planet' },
    });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/server\.port/);
    expect(r.stderr).toMatch(/models\.0\.pricing/);
    expect(r.stderr).toMatch(/cache\.scope/);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
  }, 20_000);

  it('exits with code 2 when a model has no usable route', async () => {
    const r = await runGatewayToExit({
      upstreams: [{ name: 'u', type: 'openai', apiKey: '${TG_SURELY_UNSET_VAR}' }],
      models: [{ id: 'gpt-4.1-mini', pricing, routes: [{ upstream: 'u' }] }],
    });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/no usable route/);
    // The reason is in the message: the only upstream is disabled for want of its credential.
    expect(r.stderr).toMatch(/'u'.*apiKey/);
  }, 20_000);
});
