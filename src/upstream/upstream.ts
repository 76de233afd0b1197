import { Pool } from 'undici';
import type { Config, UpstreamConfig } from '../config/schema.js';

/**
 * One configured upstream deployment: where to send a chat completion, with which credential,
 * and which `model` value it wants. Built once at start-up; the connection pool is reused.
 */
export interface Upstream {
  readonly name: string;
  readonly type: 'openai' | 'azure';
  readonly pool: Pool;
  /** Request path (and query) of chat completions on this upstream. */
  readonly path: string;
  /** Credential and content headers; never shown to clients. */
  readonly headers: Record<string, string>;
  /** The `model` value to send for a configured model id. */
  modelFor(modelId: string): string;
}

export function createUpstream(cfg: UpstreamConfig, timeouts: Config['routing']['timeouts']): Upstream {
  const base = new URL(cfg.type === 'openai' ? cfg.baseURL : (cfg.endpoint ?? 'http://invalid'));
  const basePath = base.pathname.replace(/\/+$/, '');
  const pool = new Pool(base.origin, {
    connections: cfg.connections,
    pipelining: 1,
    connectTimeout: timeouts.connectMs,
    keepAliveTimeout: 30_000,
    keepAliveMaxTimeout: 600_000,
  });
  if (cfg.type === 'openai') {
    return {
      name: cfg.name,
      type: 'openai',
      pool,
      path: `${basePath}/chat/completions`,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${cfg.apiKey ?? ''}` },
      modelFor: (id) => cfg.model ?? id,
    };
  }
  const deployment = encodeURIComponent(cfg.deployment);
  const path = cfg.apiVersion
    ? `${basePath}/openai/deployments/${deployment}/chat/completions?api-version=${encodeURIComponent(cfg.apiVersion)}`
    : `${basePath}/openai/v1/chat/completions`;
  return {
    name: cfg.name,
    type: 'azure',
    pool,
    path,
    headers: { 'content-type': 'application/json', 'api-key': cfg.apiKey ?? '' },
    modelFor: () => cfg.deployment,
  };
}
