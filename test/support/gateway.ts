import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { inject } from 'vitest';
import { validateConfig } from '../../src/config/load.js';
import { type RunningGateway, type StartOptions, startGateway } from '../../src/server/gateway.js';
import { createLogger } from '../../src/server/logger.js';

export interface TestGateway {
  url: string;
  adminKey: string;
  prefix: string;
  gateway: RunningGateway;
  /** Every log line the gateway wrote, at every level. */
  logs: string[];
  admin(
    method: string,
    path: string,
    body?: unknown,
    key?: string,
  ): Promise<{ status: number; body: any; headers: Headers }>;
  /** Issues a key through the admin API and returns its secret and id. */
  issueKey(body?: Record<string, unknown>): Promise<{ key: string; id: string }>;
  close(): Promise<void>;
}

type Raw = Record<string, any>;

export const MOCK_KEY = 'sk-mock-upstream';

/**
 * Config for one OpenAI-type and one Azure-type upstream on the given mock, each serving its own
 * model; `apiKey` is what the gateway sends upstream (the mock's key unless a test chooses one).
 */
export function twoUpstreams(mockUrl: string, apiKey = MOCK_KEY): Raw {
  return {
    upstreams: [
      { name: 'openai', type: 'openai', baseURL: `${mockUrl}/v1`, apiKey },
      {
        name: 'azure',
        type: 'azure',
        endpoint: mockUrl,
        apiKey,
        deployment: 'gpt-4.1-mini',
        apiVersion: '2024-10-21',
      },
      { name: 'azure-v1', type: 'azure', endpoint: mockUrl, apiKey, deployment: 'gpt-4.1-mini' },
    ],
    models: [
      model('gpt-4.1-mini', 'openai', ['gpt-4.1-mini-2025-04-14']),
      model('via-azure', 'azure'),
      model('via-azure-v1', 'azure-v1'),
    ],
  };
}

export function model(id: string, upstream: string, aliases: string[] = []): Raw {
  return {
    id,
    aliases,
    maxOutputTokens: 32768,
    pricing: { inputPerMTok: 0.4, cachedInputPerMTok: 0.1, outputPerMTok: 1.6 },
    routes: [{ upstream }],
  };
}

/** Starts a gateway in this process on a free port, against the test Redis unless `redis: false`. */
export async function startTestGateway(
  raw: Raw,
  opts: StartOptions & { redis?: boolean; prefix?: string } = {},
): Promise<TestGateway> {
  const adminKey = `admin-${randomBytes(12).toString('hex')}`;
  const prefix = opts.prefix ?? `test:${randomBytes(6).toString('hex')}:`;
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logs.push(chunk.toString('utf8'));
      cb();
    },
  });
  const { config } = validateConfig({
    ...raw,
    server: { host: '127.0.0.1', port: 0, drainDelaySeconds: 0, shutdownGraceSeconds: 5, ...raw['server'] },
    admin: { apiKey: adminKey, ...raw['admin'] },
    logging: { level: 'trace' },
    ...(opts.redis !== false && { redis: { url: inject('redisUrl'), keyPrefix: prefix, ...raw['redis'] } }),
  });
  const gateway = await startGateway(config, createLogger('trace', sink), opts);
  const url = gateway.url;
  const admin: TestGateway['admin'] = async (method, path, body, key = adminKey) => {
    const res = await fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      ...(body !== undefined && { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {}
    return { status: res.status, body: parsed, headers: res.headers };
  };
  return {
    url,
    adminKey,
    prefix,
    gateway,
    logs,
    admin,
    async issueKey(body = {}) {
      const res = await admin('POST', '/admin/keys', {
        name: `k-${randomBytes(4).toString('hex')}`,
        ...body,
      });
      if (res.status !== 201) throw new Error(`issueKey failed: ${res.status} ${JSON.stringify(res.body)}`);
      return { key: res.body.key as string, id: res.body.id as string };
    },
    close: () => gateway.shutdown(),
  };
}
