import { hash } from 'node:crypto';
import type { ChatRequest } from '../proxy/chat-request.js';

// Fields that cannot change the model's output, so they are not part of the cache key.
const IGNORED = new Set(['model', 'stream', 'stream_options', 'user', 'metadata', 'store']);

/**
 * The cache key of a request: SHA-256 of the resolved model plus every output-relevant field,
 * serialised with object keys sorted, so key order and the ignored fields never matter.
 */
export function cacheKeyOf(modelId: string, req: ChatRequest): string {
  let text = `${modelId}\n`;
  const fields = Object.keys(req)
    .filter((k) => !IGNORED.has(k) && req[k] !== undefined)
    .sort();
  for (const k of fields) text += `${JSON.stringify(k)}:${canonical(req[k])},`;
  return hash('sha256', text, 'base64url');
}

function canonical(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v) ?? 'null';
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`).join(',')}}`;
}
