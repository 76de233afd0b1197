import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { type Config, configSchema } from './schema.js';

/** A configuration that cannot start the gateway; `issues` lists every problem as "path: reason". */
export class ConfigError extends Error {
  constructor(readonly issues: string[]) {
    super(`invalid configuration:\n${issues.map((i) => `  - ${i}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

export interface LoadedConfig {
  config: Config;
  /** Where the configuration came from: a file path, or "environment". */
  source: string;
  warnings: string[];
}

type Env = Record<string, string | undefined>;

const DEFAULT_FILE = 'config/gateway.yaml';
const REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;
const WHOLE_REF = /^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}$/;

export interface LoadOptions {
  /** Where `config/gateway.yaml` is looked for when no file is named (default: the process's cwd). */
  cwd?: string;
}

/** Loads, interpolates, validates and checks the configuration (SPEC sections 1-2). */
export function loadConfig(env: Env, file?: string, opts: LoadOptions = {}): LoadedConfig {
  const defaultFile = opts.cwd === undefined ? DEFAULT_FILE : resolve(opts.cwd, DEFAULT_FILE);
  const path = file || env['GATEWAY_CONFIG'] || (existsSync(defaultFile) ? defaultFile : undefined);
  let raw: unknown;
  let source = 'environment';
  if (path !== undefined) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new ConfigError([`${path}: cannot read (${(err as NodeJS.ErrnoException).code ?? 'error'})`]);
    }
    try {
      raw = interpolate(parseYaml(text) ?? {}, env);
    } catch (err) {
      throw new ConfigError([`${path}: not valid YAML (${(err as Error).message.split('\n')[0]})`]);
    }
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
      throw new ConfigError([`${path}: expected a YAML mapping (server:, upstreams:, models:, ...)`]);
    }
    source = path;
  } else {
    raw = fromEnvironment(env);
  }
  applyOverrides(raw as Record<string, unknown>, env);
  try {
    return { ...validateConfig(raw), source };
  } catch (err) {
    if (err instanceof ConfigError && source === 'environment' && !hasProvider(env)) {
      throw new ConfigError([
        ...err.issues,
        'no configuration file and no provider in the environment: set OPENAI_API_KEY, or AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY, or name a file in GATEWAY_CONFIG',
      ]);
    }
    throw err;
  }
}

const hasProvider = (env: Env): boolean =>
  !!env['OPENAI_API_KEY'] || (!!env['AZURE_OPENAI_ENDPOINT'] && !!env['AZURE_OPENAI_API_KEY']);

/** Validates an already-interpolated configuration object; throws ConfigError listing every problem. */
export function validateConfig(raw: unknown): { config: Config; warnings: string[] } {
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) throw new ConfigError(formatIssues(parsed.error.issues));
  const warnings: string[] = [];
  const config = checkReferences(parsed.data, warnings);
  return { config, warnings };
}

/**
 * Replaces `${VAR}` and `${VAR:-default}` in every string. A reference that resolves to nothing
 * (unset or empty, no default) leaves the whole value out, even inside a longer string: an
 * endpoint like `https://${RESOURCE}.openai.azure.com` must not become `https://.openai.azure.com`.
 */
export function interpolate(value: unknown, env: Env): unknown {
  if (typeof value === 'string') {
    const whole = WHOLE_REF.exec(value);
    if (whole) {
      const resolved = env[whole[1]!] || whole[2];
      return resolved === undefined || resolved === '' ? undefined : coerce(resolved);
    }
    let missing = false;
    const out = value.replace(REF, (_m, name: string, def?: string) => {
      const v = env[name] || def || '';
      if (v === '') missing = true;
      return v;
    });
    return missing ? undefined : out;
  }
  if (Array.isArray(value)) return value.map((v) => interpolate(v, env)).filter((v) => v !== undefined);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      const r = interpolate(v, env);
      if (r !== undefined) out[k] = r;
    }
    return out;
  }
  return value;
}

function coerce(s: string): unknown {
  if (/^-?\d+(\.\d+)?$/.test(s)) return Number(s);
  if (s === 'true') return true;
  if (s === 'false') return false;
  if (s === 'null') return null;
  return s;
}

/** The environment-only mode: gpt-4.1-mini through OpenAI first and Azure second. */
function fromEnvironment(env: Env): Record<string, unknown> {
  const upstreams: Record<string, unknown>[] = [];
  const routes: Record<string, unknown>[] = [];
  if (env['OPENAI_API_KEY']) {
    upstreams.push({
      name: 'openai',
      type: 'openai',
      baseURL: env['OPENAI_BASE_URL'] || 'https://api.openai.com/v1',
      apiKey: env['OPENAI_API_KEY'],
    });
    routes.push({ upstream: 'openai', priority: 1, weight: 1 });
  }
  // Half an Azure configuration still becomes an upstream, so its missing part is warned about.
  if (env['AZURE_OPENAI_ENDPOINT'] || env['AZURE_OPENAI_API_KEY']) {
    upstreams.push({
      name: 'azure',
      type: 'azure',
      ...(env['AZURE_OPENAI_ENDPOINT'] ? { endpoint: env['AZURE_OPENAI_ENDPOINT'] } : {}),
      ...(env['AZURE_OPENAI_API_KEY'] ? { apiKey: env['AZURE_OPENAI_API_KEY'] } : {}),
      deployment: env['AZURE_OPENAI_DEPLOYMENT'] || 'gpt-4.1-mini',
      ...(env['OPENAI_API_VERSION'] ? { apiVersion: env['OPENAI_API_VERSION'] } : {}),
    });
    routes.push({ upstream: 'azure', priority: 2, weight: 1 });
  }
  return {
    upstreams,
    models: [
      {
        id: 'gpt-4.1-mini',
        aliases: ['gpt-4.1-mini-2025-04-14'],
        contextWindow: 1047576,
        maxOutputTokens: 32768,
        pricing: { inputPerMTok: 0.4, cachedInputPerMTok: 0.1, outputPerMTok: 1.6 },
        routes,
      },
    ],
  };
}

function applyOverrides(raw: Record<string, unknown>, env: Env): void {
  const section = (name: string): Record<string, unknown> => {
    const existing = raw[name];
    if (existing !== null && typeof existing === 'object') return existing as Record<string, unknown>;
    const created: Record<string, unknown> = {};
    raw[name] = created;
    return created;
  };
  if (env['PORT']) section('server')['port'] = coerce(env['PORT']);
  if (env['HOST']) section('server')['host'] = env['HOST'];
  if (env['REDIS_URL']) section('redis')['url'] = env['REDIS_URL'];
  if (env['ADMIN_API_KEY']) section('admin')['apiKey'] = env['ADMIN_API_KEY'];
  if (env['LOG_LEVEL']) section('logging')['level'] = env['LOG_LEVEL'];
}

function formatIssues(issues: z.core.$ZodIssue[]): string[] {
  return issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`);
}

/** Cross-field checks zod cannot express: names, route targets, credentials. */
function checkReferences(config: Config, warnings: string[]): Config {
  const problems: string[] = [];
  const enabled = new Set<string>();
  const disabled = new Map<string, string>();
  const seen = new Set<string>();
  config.upstreams.forEach((u, i) => {
    if (seen.has(u.name)) problems.push(`upstreams.${i}.name: duplicate upstream name '${u.name}'`);
    seen.add(u.name);
    const missing = u.type === 'azure' && !u.endpoint ? 'endpoint' : !u.apiKey ? 'apiKey' : null;
    if (missing) {
      warnings.push(`upstream '${u.name}' has no ${missing}: disabled`);
      disabled.set(u.name, `upstream '${u.name}' is disabled: no ${missing}`);
    } else enabled.add(u.name);
  });
  const names = new Set<string>();
  config.models.forEach((m, i) => {
    for (const n of [m.id, ...m.aliases]) {
      if (names.has(n)) problems.push(`models.${i}: model id or alias '${n}' is used twice`);
      names.add(n);
    }
    m.routes.forEach((r, j) => {
      if (!seen.has(r.upstream))
        problems.push(`models.${i}.routes.${j}.upstream: no upstream named '${r.upstream}'`);
    });
    const live = m.routes.filter((r) => enabled.has(r.upstream));
    if (live.length === 0) {
      const why = [...new Set(m.routes.map((r) => disabled.get(r.upstream)).filter((w) => w !== undefined))];
      problems.push(
        `models.${i}.routes: model '${m.id}' has no usable route${why.length ? ` (${why.join('; ')})` : ''}`,
      );
    }
    m.routes = live;
  });
  if (config.models.length === 0) problems.push('models: at least one model is required');
  if (problems.length) throw new ConfigError(problems);
  return config;
}
